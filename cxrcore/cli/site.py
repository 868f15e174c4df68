"""``cxr site``: a model recalibrated for a new hospital (cxrcore.eval.site): fit a site profile on a labelled
sample, list a model's profiles. ``--site S`` on ``predict``, ``eval`` and ``score`` uses one."""
from __future__ import annotations

import json

from .common import CHECKPOINT_HELP, Command, bar


def _fit(a) -> int:
    from pathlib import Path

    from ..errors import DataError
    from ..eval.site import MIN_CASES, fit_site_on
    from ..readerstudy.sitefit import fit_site_on_study
    from ..eval.thresholds import save_site

    if (a.data is None) == (a.reader_study is None):
        raise DataError("Give the site's labelled sample: --data LABELLED_FOLDER or --reader-study STUDY (its cases "
                        "and their truth), one of the two.")
    if a.reader_study is not None:
        profile = fit_site_on_study(a.checkpoint, a.reader_study, a.name, strategy=a.strategy, target=a.target,
                                    n_boot=a.n_boot, seed=a.seed, progress=None if a.json else bar("cases"))
    else:
        profile = fit_site_on(a.checkpoint, a.data, a.name, split=a.split, strategy=a.strategy, target=a.target,
                              policy=a.policy, n_boot=a.n_boot, seed=a.seed,
                              progress=None if a.json else bar("predict"))
    where = save_site(a.checkpoint, a.name, profile.to_dict())   # the operator's tool: as save_thresholds decides
    if a.json:
        print(json.dumps({"site": a.name, "card": str(where / "card.json"), **profile.to_dict()}, indent=1))
        return 0
    print(f"site profile {a.name!r} fitted on {profile.fitted_on} ({profile.strategy}"
          + (f", target {profile.target}" if profile.target is not None else "") + f"); saved in {where / 'card.json'}"
          + ("" if Path(where).resolve() == Path(a.checkpoint).resolve() else
             f" (the workspace's copy of the model: use it with --checkpoint {where} --site {a.name})"))
    print(f"  {'label':<28} {'n':>5} {'pos':>4}  {'T [95% CI]':<22} {'threshold [95% CI]':<24} "
          f"{'ECE before→after':<18} {'sens':>11} {'spec':>11} {'PPV':>11}")
    for x, v in profile.labels.items():
        if not v["fitted"]:
            why = "no label for it in the sample" if not v["n"] else (
                f"needs {MIN_CASES} cases with positives and negatives")
            print(f"  {x:<28} {v['n']:>5} {v['positives']:>4}  not fitted ({why}); keeps the card's threshold "
                  f"{v['card_threshold']:.2f}")
            continue
        b, f = v["before"], v["after"]
        pair = lambda k: f"{_n(b[k])}→{_n(f[k])}"  # noqa: E731
        print(f"  {x:<28} {v['n']:>5} {v['positives']:>4}  {v['temperature']:.2f} [{v['temperature_ci'][0]:.2f}, "
              f"{v['temperature_ci'][1]:.2f}]{'':<5} {v['threshold']:.3f} [{v['threshold_ci'][0]:.3f}, "
              f"{v['threshold_ci'][1]:.3f}]{'':<3} {pair('ece'):<18} {pair('sensitivity'):>11} "
              f"{pair('specificity'):>11} {pair('ppv'):>11}")
    if profile.curve:
        print("  how the threshold's 95% CI narrows with the sample (median width over labels): "
              + ", ".join(f"n={c['n']}: {c['threshold_ci_width']:.3f}" for c in profile.curve))
    return 0


def _estimate(a) -> int:
    from ..eval.prevalence import estimate_on

    est = estimate_on(a.checkpoint, a.images, reference=a.reference, split=a.split, site=a.site, n_boot=a.n_boot,
                      seed=a.seed, progress=None if a.json else bar("images"), adjusted_out=a.adjusted_out,
                      adjust_with=a.adjust_with)
    if a.json:
        print(json.dumps(est.to_dict(), indent=1))
        return 0
    print(f"prevalence among {est.n_images} unlabelled image(s) of {a.images}, against {est.n_reference} reference "
          f"image(s); 95% intervals from {est.n_boot} bootstrap replicates (site and reference redrawn)")
    print(f"  {'label':<28} {'reference':>9} {'called':>7}  {'BBSE [95% CI]':<24} {'EM [95% CI]':<24}")
    for x, v in est.labels.items():
        if v["bbse"] is None and v["em"] is None:
            print(f"  {x:<28} {_n(v['reference']):>9} {_n(v['called']):>7}  {v.get('note', '')}")
            continue
        cell = lambda k: f"{_n(v[k])} [{_n(v[k + '_ci'][0])}, {_n(v[k + '_ci'][1])}]"  # noqa: E731
        print(f"  {x:<28} {_n(v['reference']):>9} {_n(v['called']):>7}  {cell('bbse'):<24} {cell('em'):<24}")
    if a.adjusted_out:
        print(f"each image's probabilities adjusted to the {a.adjust_with.upper()} estimate (labelled as such): "
              f"{a.adjusted_out}")
    return 0


def _n(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def _list(a) -> int:
    from ..checkpoint import read_card

    sites = read_card(a.checkpoint).sites or {}
    if a.json:
        print(json.dumps(sites, indent=1))
        return 0
    if not sites:
        print("no site profile yet; fit one with `cxr site fit --checkpoint C --data LABELLED --name S`")
    for name, p in sites.items():
        fitted = [x for x, v in (p.get("labels") or {}).items() if v.get("fitted")]
        print(f"{name}: fitted on {p.get('fitted_on')}, {p.get('strategy')}, {len(fitted)} label(s), {p.get('created')}")
    return 0


def _flags(s) -> None:
    from ..eval.predictions import SPLIT_CHOICES
    from ..eval.prevalence import ADJUST_WITH
    from ..eval.site import DEFAULT_STRATEGY
    from ..eval.thresholds import STRATEGIES

    sub = s.add_subparsers(dest="site_action", required=True)
    f = sub.add_parser("fit", help="fit a site profile (per-label temperature and threshold with bootstrap CIs) on "
                                   "a labelled sample of the site's films and save it in the model's card")
    f.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    f.add_argument("--data", default=None, help="the site's labelled sample: a dataset folder (NIH- or "
                                                "CheXpert-style, or images + a CSV of labels)")
    f.add_argument("--reader-study", default=None, help="instead of --data: a reader study's cases and their truth "
                                                        "(its id, `cxr reader-study list`)")
    f.add_argument("--name", required=True, help="the site's name (what --site takes)")
    f.add_argument("--split", choices=list(SPLIT_CHOICES), default="all", help="which images of --data (default all)")
    f.add_argument("--strategy", choices=list(STRATEGIES), default=DEFAULT_STRATEGY, help="how the threshold is chosen")
    f.add_argument("--target", type=float, default=None, help="the target of a target-sensitivity / -specificity rule")
    f.add_argument("--policy", default=None, help="uncertain labels as zeros / ones / ignore (default: the model's)")
    f.add_argument("--n-boot", type=int, default=200, help="patient-bootstrap replicates for the intervals")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--json", action="store_true")
    f.set_defaults(func=_fit)
    e = sub.add_parser("estimate-prevalence", help="each label's prevalence among a site's unlabelled images (BBSE "
                                                   "and EM, with bootstrap intervals) beside the reference's")
    e.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    e.add_argument("--images", required=True, help="the site's images: a folder (images only, no labels) or a CSV "
                                                   "with a path column")
    e.add_argument("--reference", default=None, help="a labelled dataset folder whose --split is the reference "
                                                     "(default: the model's training folder, when on this machine)")
    e.add_argument("--split", choices=list(SPLIT_CHOICES), default="val")
    e.add_argument("--site", default=None, help="the model as used at a site (its profile's thresholds)")
    e.add_argument("--n-boot", type=int, default=200)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--adjusted-out", default=None, help="a CSV that gets each image's probabilities restated under "
                                                        "the estimated prevalence (Bayes' rule), labelled as such")
    e.add_argument("--adjust-with", choices=list(ADJUST_WITH), default="em", help="whose estimate --adjusted-out uses")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=_estimate)
    ls = sub.add_parser("list", help="a model's site profiles")
    ls.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_list)


SITE = Command("site", "a model at a new hospital: fit and list site profiles (recalibrated thresholds and "
                       "temperatures)", _flags)
