"""``cxr prior`` and ``cxr eval-change``: a current film against the same patient's prior."""
from __future__ import annotations

import json
from pathlib import Path

from .common import CHECKPOINT_HELP, Command, bar, check_mc_samples, use_site


def cmd_prior(a) -> int:
    from ..compare import load_image, model_name
    from ..predictor import Predictor
    from ..prior.change import compare_prior

    check_mc_samples(a.mc_samples)
    predictor = Predictor(a.checkpoint)
    use_site(predictor, a.checkpoint, a.site)
    model = model_name(a.checkpoint, predictor)
    prior, prior_raw = load_image(a.prior)
    current, current_raw = load_image(a.current)
    result = compare_prior(prior, current, predictor, model, prior_raw=prior_raw, current_raw=current_raw,
                           mc_samples=a.mc_samples, heatmaps=bool(a.panel), deformable=not a.no_deformable)
    if a.panel:
        from ..explain.visual import png_bytes
        from ..prior.pictures import change_panel

        label = a.label or (result.changed() or [result.labels[int(abs(result.delta).argmax())]])[0]
        Path(a.panel).write_bytes(png_bytes(change_panel(prior.pixels, current.pixels, result, label)))
    if a.json:
        print(json.dumps(result.to_dict(), indent=1))
        return 0
    reg = result.registration
    if reg.warning:
        print(f"WARNING: {reg.warning}")
    print(f"{Path(a.prior).name} -> {Path(a.current).name} ({model}); registration NCC over the lung fields "
          f"{reg.ncc_before:.2f} -> {reg.ncc_after:.2f}; change thresholds "
          + ("tuned" if result.tuned else "default (not tuned: cxr eval-change --tune --save)"))
    for row in sorted(result.rows(), key=lambda r: -abs(r["delta"])):
        sd = f" ± {1.96 * row['delta_sd']:.3f}" if "delta_sd" in row else ""
        flag = "" if row.get("confident", True) else "  (uncertain)"
        print(f"  {row['call']:<10} {row['label']:<28} {row['prior']:.3f} -> {row['current']:.3f}  "
              f"Δ {row['delta']:+.3f}{sd}  (τ {row['change_threshold']:.2f}){flag}")
    return 0


def cmd_eval_change(a) -> int:
    from ..compare import model_name
    from ..predictor import Predictor
    from ..prior.evaluate import eval_change

    predictor = Predictor(a.checkpoint)
    use_site(predictor, a.checkpoint, a.site)
    out = eval_change(a.data, predictor, tune_here=a.tune, register_n=a.register, n_boot=a.n_boot,
                      progress=None if a.json else bar("films"))
    out["model"] = model_name(a.checkpoint, predictor)
    out["data"] = str(a.data)
    if a.save:
        from ..errors import ConfigError
        from ..eval.thresholds import save_change_thresholds

        if not a.tune:
            raise ConfigError("--save stores the thresholds --tune found: give both.")
        folder = save_change_thresholds(a.checkpoint, out["tuned"], f"pairs in {Path(a.data).resolve()}", out["pairs"])
        out["saved_to"] = str(folder)
    if a.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"{out['model']} on {out['pairs']} pairs in {a.data}; change thresholds: {out['change_thresholds']}")
    print(f"  {'label':<28} {'n':>5} {'changed':>7} {'accuracy':>9} {'bal.acc':>8} {'AUROC |Δp|':>11}")
    for x, d in out["labels"].items():
        auc = "-" if d["change_auroc"] is None else f"{d['change_auroc']:.3f}"
        print(f"  {x:<28} {d['n']:>5} {d['n_changed']:>7} {d['accuracy']:>9.3f} "
              f"{(d['balanced_accuracy'] or 0):>8.3f} {auc:>11}")
    m = out["mean"]
    print(f"  mean: accuracy {m['accuracy']}, balanced accuracy {m['balanced_accuracy']}, AUROC of |Δp| "
          f"{m['change_auroc']}")
    t = out["triage"]
    if t.get("no_change_triaged") is not None:
        print(f"  triage at {t['sensitivity']:.0%} sensitivity for change: {t['no_change_triaged']:.0%} of "
              f"{t['no_change_pairs']} no-change pairs set aside as unchanged")
    r = out.get("registration")
    if r:
        line = f"  registration ({r['pairs']} pairs): NCC {r['ncc_before']} -> {r['ncc_after']}"
        if "landmark_error_px" in r:
            e = r["landmark_error_px"]
            line += f"; landmark error {e['before']['mean']} -> {e['after']['mean']} px (mean)"
        print(line)
    if a.save:
        print(f"saved the tuned change thresholds in {out['saved_to']}")
    return 0


def _prior_flags(s) -> None:
    s.add_argument("prior", help="the earlier film (PNG, JPEG or DICOM)")
    s.add_argument("current", help="the later film of the same patient")
    s.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    s.add_argument("--site", help="use this site profile's thresholds")
    s.add_argument("--mc-samples", type=int, default=20,
                   help="Monte-Carlo dropout passes with test-time augmentation per film, for the spread of each "
                        "change (0: none)")
    s.add_argument("--no-deformable", action="store_true", help="register with the similarity and affine steps only")
    s.add_argument("--panel", help="write a PNG: both films registered, the subtraction and one label's change map")
    s.add_argument("--label", help="the label of --panel's change map (default: the largest change)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_prior)


def _eval_change_flags(s) -> None:
    s.add_argument("--data", required=True, help="a folder of pairs with pairs.csv (cxr phantom --pairs writes one)")
    s.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    s.add_argument("--site", help="use this site profile's thresholds")
    s.add_argument("--tune", action="store_true", help="tune each label's change threshold on this folder first "
                                                       "(scores with them are optimistic)")
    s.add_argument("--save", action="store_true", help="with --tune: store the tuned thresholds in the model's card")
    s.add_argument("--register", type=int, default=20,
                   help="register this many pairs for the registration's quality and landmark error (0: none)")
    s.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates of the intervals")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_eval_change)


PRIOR = Command("prior", "compare a current film with the same patient's prior: per-label change and a call",
                _prior_flags)
EVAL_CHANGE = Command("eval-change", "score change calls on a folder of pairs with known change (pairs.csv)",
                      _eval_change_flags)
