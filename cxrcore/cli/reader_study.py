"""``cxr reader-study``: a multi-reader multi-case (MRMC) reader study analysed (``analyze``: Obuchowski-Rockette
with Hillis's degrees of freedom, readers vs a standalone model, kappa) or planned from a pilot (``power``).

The ratings file is the long CSV of MRMC tools: columns reader, modality (or treatment), case, truth (0/1) and
rating, one row per reader, modality and case (see :mod:`cxrcore.eval.readers.ratings`).

``cxr reader-study analyze RATINGS.csv --json`` prints JSON with at least the keys ``modalities``, ``readers``,
``fom`` {modality: {reader: AUROC}}, ``rrrc`` {f, ndf, ddf, p, diff {"A - B": {estimate, ci}}, per_modality
{modality: {estimate, ci, df}}}, ``frrc`` {chi2, p, ...}, ``rrfc`` {...} and ``kappa`` {...}; a pair key "A - B"
is modality A minus modality B, A listed first in the file. Missing values are null, never NaN.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import ConfigError
from .common import CHECKPOINT_HELP, Command


def _cutoff(text: str | None):
    """``--cutoff``: none (the scale's default), a number, or READER=NUMBER pairs separated by commas."""
    if text is None:
        return None
    text = text.strip()
    try:
        if "=" not in text:
            return float(text)
        out = {}
        for part in text.split(","):
            reader, _, value = part.partition("=")
            out[reader.strip()] = float(value)
        return out
    except ValueError:
        raise ConfigError(f"--cutoff takes a number (e.g. 3) or READER=NUMBER pairs (e.g. R1=3,R2=4), "
                          f"not {text!r}.") from None


def _readers(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise ConfigError(f"--readers takes a number of readers or a list such as 4,6,8,10, not {text!r}.")
    return values


def _write(path: str, writer, what: str) -> None:
    try:
        writer(path)
    except OSError as exc:
        raise ConfigError(f"cannot write the {what} to {path}: {exc.strerror or exc}. Choose a writable path.") from None
    print(f"wrote the {what} to {path}", file=sys.stderr)


def cmd_analyze(a) -> int:
    from ..eval.readers import analyze, format_report, read_ratings, to_imrmc, to_long_csv

    study = read_ratings(a.ratings, model_reader=a.model_reader)
    result = analyze(study, covariance=a.covariance, alpha=a.alpha, cutoff=_cutoff(a.cutoff),
                     model_threshold=a.model_threshold, n_boot=a.n_boot, seed=a.seed)
    if a.export_long:
        _write(a.export_long, lambda p: to_long_csv(study, p), "long-format ratings")
    if a.export_imrmc:
        _write(a.export_imrmc, lambda p: to_imrmc(study, p), "iMRMC input file")
    print(json.dumps(result, indent=1) if a.json else format_report(result))
    return 0


def cmd_power(a) -> int:
    from ..eval.readers import pilot_components, power, power_table, read_ratings
    from ..eval.readers.power import ANALYSES

    if not 0 < a.alpha < 1 or not 0 < a.power < 1:
        raise ConfigError(f"--alpha and --power must be between 0 and 1 (got {a.alpha} and {a.power}).")
    study = read_ratings(a.ratings, model_reader=a.model_reader)
    modalities = None
    if a.modalities:
        modalities = tuple(m.strip() for m in a.modalities.split(","))
        if len(modalities) != 2:
            raise ConfigError(f"--modalities names two modalities of the pilot, e.g. A,B; not {a.modalities!r}.")
    pilot = pilot_components(study, modalities, a.covariance)
    effect = a.effect if a.effect is not None else pilot.observed_effect
    readers = _readers(a.readers)
    analyses = ANALYSES if a.analysis == "all" else (a.analysis,)
    table = power_table(pilot, effect, readers, a.alpha, a.power, analyses)
    at = [{**power(pilot, J, a.cases, effect, a.alpha, an), "analysis": an}
          for J in readers for an in analyses if an == "FRRC" or J >= 2] if a.cases else []
    result = {"pilot": pilot.to_dict(), "source": study.source, "covariance": a.covariance, "effect": effect,
              "effect_source": "given" if a.effect is not None else "observed in the pilot",
              "alpha": a.alpha, "target_power": a.power, "method": "Hillis, Obuchowski & Berbaum 2011 (OR)",
              "cases_needed": table, "power_at_cases": at}
    if a.json:
        print(json.dumps(result, indent=1))
        return 0
    p = pilot
    print(f"pilot {study.source}: modalities {p.modalities[0]} vs {p.modalities[1]}, {p.j_pilot} readers, "
          f"{p.k_pilot} cases; OR components ({a.covariance}): Var {p.var:.6f}, Cov1 {p.cov1:.6f}, "
          f"Cov2 {p.cov2:.6f}, Cov3 {p.cov3:.6f}, Var(TR) {p.var_tr:.6f} (Hillis 2011 Eqn 9, at least 0); observed difference "
          f"{p.observed_effect:+.4f}")
    print(f"effect size {effect:+.4f} ({result['effect_source']}), alpha {a.alpha}, target power {a.power} "
          "(Hillis, Obuchowski & Berbaum 2011)")
    print("cases needed:")
    print(f"  {'readers':>7}  " + "  ".join(f"{an + ' cases (power)':>20}" for an in analyses))
    for row in table:
        cells = []
        for an in analyses:
            c = row[an]
            if c is None:
                cells.append(f"{'needs 2+ readers':>20}")
            elif c["cases"] is None:
                cells.append(f"{'> ' + str(c['max_cases']) + ' (' + format(c['power'], '.3f') + ')':>20}")
            else:
                cells.append(f"{str(c['cases']) + ' (' + format(c['power'], '.3f') + ')':>20}")
        print(f"  {row['readers']:>7}  " + "  ".join(cells))
    if at:
        print(f"power with {a.cases} cases:")
        for x in at:
            print(f"  {x['readers']:>3} readers, {x['analysis']}: {x['power']:.3f}")
    if any(row.get(an) and row[an]["cases"] is None for row in table for an in analyses):
        print("'> N': the target is not reached even with N cases: with few readers, reader variability caps the "
              "power of the random-reader analyses (RRRC, RRFC); plan more readers.")
    return 0


def _common(s, covariance_help: str) -> None:
    s.add_argument("ratings", metavar="RATINGS.csv",
                   help="long-format ratings: columns reader, modality (or treatment), case, truth (0/1), rating")
    s.add_argument("--covariance", choices=["jackknife", "delong"], default="jackknife", help=covariance_help)
    s.add_argument("--alpha", type=float, default=0.05, help="significance level; intervals are 1 - alpha (0.05)")
    s.add_argument("--model-reader", metavar="ID",
                   help="the reader id whose rows are a standalone model's scores (left out of the reader panel)")
    s.add_argument("--json", action="store_true", help="print the results as JSON")


def _flags(s) -> None:
    sub = s.add_subparsers(dest="reader_study_action", required=True)
    an = sub.add_parser("analyze", help="AUROCs, OR-Hillis RRRC / FRRC / RRFC tests and intervals, readers vs "
                                        "a model, kappa, per-reader sensitivity / specificity",
                        description="Obuchowski-Rockette analysis with Hillis's degrees of freedom (as OR-DBM "
                                    "MRMC): every modality pair's AUROC difference with its interval, each "
                                    "modality's AUROC; readers vs a standalone model (--model-reader); Cohen's and "
                                    "Fleiss' kappa on calls at a cut-off.")
    _common(an, "covariance of the AUROCs over cases: jackknife (default, as OR-DBM MRMC) or DeLong")
    an.add_argument("--cutoff", help="a reader's call is positive at rating >= cut-off: a number, or "
                                     "READER=NUMBER,... (default: 3 on a 1-5 scale, 0.5 for scores in [0, 1], 50 "
                                     "on a 0-100 scale)")
    an.add_argument("--model-threshold", type=float,
                    help="the model's call is positive at score >= this (kappa of each reader with the model)")
    an.add_argument("--n-boot", type=int, default=2000, help="bootstrap replicates for the kappa intervals")
    an.add_argument("--seed", type=int, default=0, help="seed of the kappa bootstrap")
    an.add_argument("--export-long", metavar="PATH", help="also write the ratings as a long CSV")
    an.add_argument("--export-imrmc", metavar="PATH", help="also write the ratings as an iMRMC input file")
    an.set_defaults(func=cmd_analyze)
    pw = sub.add_parser("power", help="cases needed (and power) for a two-modality study, from a pilot",
                        description="Sample size from the pilot's Obuchowski-Rockette variance components "
                                    "(Hillis, Obuchowski & Berbaum 2011): the smallest number of cases reaching "
                                    "--power for each number of readers, for RRRC, FRRC and RRFC analyses.")
    _common(pw, "covariance used for the pilot's variance components")
    pw.add_argument("--effect", type=float, help="AUROC difference to detect (default: the pilot's observed one)")
    pw.add_argument("--readers", default="5", help="number(s) of readers of the planned study, e.g. 5 or 4,6,8,10")
    pw.add_argument("--power", type=float, default=0.8, help="target power (0.8)")
    pw.add_argument("--cases", type=int, help="also the power with this many cases")
    pw.add_argument("--modalities", metavar="A,B", help="the two pilot modalities to use (default: the first two)")
    pw.add_argument("--analysis", choices=["all", "RRRC", "FRRC", "RRFC"], default="all")
    pw.set_defaults(func=cmd_power)
    _study_flags(sub)


# ---------------------------------------------------------------- studies run in this workspace

def _study_json(store, study) -> dict:
    from ..readerstudy.session import progress

    return {"id": study.id, "name": study.name, "status": study.status, "created": study.created,
            "design": study.design.to_dict(), "cases": len(store.cases(study.id)), "source": study.source,
            "readers": progress(store, study.id)}


def cmd_create(a) -> int:
    from ..readerstudy.design import StudyDesign
    from ..readerstudy.setup import cases_from_dataset, create_study
    from .common import bar

    findings = tuple(f.strip() for f in a.findings.split(",") if f.strip())
    design = StudyDesign(name=a.name, findings=findings, design=a.design, scale=a.scale, mark_location=a.mark_location,
                         model=a.model, heatmap=a.heatmap, washout_days=a.washout_days, seed=a.seed).check()
    cases, source = cases_from_dataset(a.data, list(findings), a.split, a.sampling, a.n, a.seed)
    study = create_study(design, cases, source, owner=_operator(), progress=bar("model output per case"))
    from ..readerstudy.store import StudyStore

    out = _study_json(StudyStore(), study)
    print(json.dumps(out, indent=1) if a.json else f"study {study.id}: {out['cases']} cases, {design.design}; add "
          f"readers with `cxr reader-study add-reader {study.id} NAME`")
    return 0


def _operator() -> str:
    from ..hosting import operator_user

    return operator_user().id


def cmd_list(a) -> int:
    from ..readerstudy.store import StudyStore

    store = StudyStore()
    rows = [_study_json(store, s) for s in store.studies()]
    if a.json:
        print(json.dumps(rows, indent=1))
        return 0
    for r in rows:
        done = sum(x["done"] for x in r["readers"])
        total = sum(x["total"] for x in r["readers"])
        print(f"{r['id']}  {r['status']:<6}  {r['design']['design']:<10}  {r['cases']:>4} cases  "
              f"{len(r['readers'])} readers  {done}/{total} reads  {r['name']}")
    if not rows:
        print("no reader studies yet: `cxr reader-study create --help`", file=sys.stderr)
    return 0


def cmd_add_reader(a) -> int:
    from ..readerstudy.store import StudyStore

    reader, token = StudyStore().add_reader(a.study, a.name, user_id=a.user.lower() if a.user else None)
    print(f"reader {reader.number} ({reader.name}): their link is the app's Reader study page with "
          f"?token={token}  (shown once; `cxr reader-study new-link` replaces it)")
    return 0


def cmd_new_link(a) -> int:
    from ..readerstudy.store import StudyStore

    store = StudyStore()
    reader = next((r for r in store.readers(a.study) if r.name == a.name), None)
    if reader is None:
        raise ConfigError(f"Study {a.study} has no reader named {a.name!r}.")
    print(f"new link for {reader.name}: ?token={store.new_token(a.study, reader.number)} (the old one stops working)")
    return 0


def cmd_progress(a) -> int:
    from ..readerstudy.store import StudyStore

    out = _study_json(StudyStore(), StudyStore().study(a.study))
    if a.json:
        print(json.dumps(out, indent=1))
        return 0
    for r in out["readers"]:
        t = r["median_seconds"]
        print(f"{r['name']:<24} {r['done']:>4}/{r['total']:<4} median {'-' if t is None else f'{t:.1f} s'} per read")
    return 0


def cmd_status(a) -> int:
    from ..readerstudy.store import StudyStore

    StudyStore().set_status(a.study, "closed" if a.reader_study_action == "close" else "open")
    print(f"study {a.study} is {'closed' if a.reader_study_action == 'close' else 'open'}")
    return 0


def cmd_export(a) -> int:
    from ..readerstudy.analysis import export

    text = export(_store(), a.study, a.finding, a.format)
    if a.out:
        _write(a.out, lambda p: Path(p).write_text(text), f"{a.format} ratings")
    else:
        print(text, end="")
    return 0


def _store():
    from ..readerstudy.store import StudyStore

    return StudyStore()


def cmd_report(a) -> int:
    import time

    from ..eval.readers import format_report
    from ..readerstudy.analysis import study_analysis
    from ..readerstudy.report import html_report

    result = study_analysis(_store(), a.study, a.finding, a.covariance, a.alpha)
    if a.html:
        _write(a.html, lambda p: Path(p).write_text(html_report(result, time.time())), "HTML report")
    print(json.dumps(result, indent=1) if a.json else format_report(result))
    return 0


def _study_flags(sub) -> None:
    from ..readerstudy.design import DESIGNS, EXPORT_FORMATS, HEATMAPS, SCALES
    from ..readerstudy.setup import SAMPLING

    cr = sub.add_parser("create", help="set up a study from a dataset folder (the aided arm's model run once)")
    cr.add_argument("--name", required=True)
    cr.add_argument("--data", required=True, help="dataset folder (NIH, CheXpert or a labelled CSV layout)")
    cr.add_argument("--findings", required=True, help="findings to read, comma-separated (the dataset's label names)")
    cr.add_argument("--split", default="test", help="test (default), val, train, all or official_test")
    cr.add_argument("--sampling", choices=list(SAMPLING), default="random",
                    help="; ".join(f"{k}: {v}" for k, v in SAMPLING.items()))
    cr.add_argument("--n", type=int, default=20, help="N of the sampling (20)")
    cr.add_argument("--design", choices=list(DESIGNS), default="sequential",
                    help="; ".join(f"{k}: {v}" for k, v in DESIGNS.items()))
    cr.add_argument("--scale", choices=list(SCALES), default="0-100")
    cr.add_argument("--model", help="the model the aided arm shows: " + CHECKPOINT_HELP)
    cr.add_argument("--heatmap", choices=list(HEATMAPS), default="gradcam")
    cr.add_argument("--mark-location", action="store_true", help="readers click where the finding is")
    cr.add_argument("--washout-days", type=float, default=28.0, help="crossover: days between the two sessions (28)")
    cr.add_argument("--seed", type=int, default=0, help="seed of the sampling and of each reader's case order")
    cr.add_argument("--json", action="store_true")
    cr.set_defaults(func=cmd_create)
    ls = sub.add_parser("list", help="the reader studies of this workspace")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)
    ad = sub.add_parser("add-reader", help="invite a reader: prints their link's token (once)")
    ad.add_argument("study")
    ad.add_argument("name")
    ad.add_argument("--user", help="the e-mail they sign in with (then they may also read without the link)")
    ad.set_defaults(func=cmd_add_reader)
    nl = sub.add_parser("new-link", help="replace a reader's link (the old one stops working; answers are kept)")
    nl.add_argument("study")
    nl.add_argument("name")
    nl.set_defaults(func=cmd_new_link)
    pr = sub.add_parser("progress", help="reads done per reader")
    pr.add_argument("study")
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(func=cmd_progress)
    for action, words in (("close", "end reading (answers kept; no more answers)"), ("reopen", "let readers go on")):
        c = sub.add_parser(action, help=words)
        c.add_argument("study")
        c.set_defaults(func=cmd_status)
    ex = sub.add_parser("export", help="a study's answers for one finding: the long format or iMRMC's (to check the "
                                       "analysis with other tools), or the audit trail of every answer given")
    ex.add_argument("study")
    ex.add_argument("--finding", required=True)
    ex.add_argument("--format", choices=list(EXPORT_FORMATS), default="long",
                    help="; ".join(f"{k}: {v.what}" for k, v in EXPORT_FORMATS.items()))
    ex.add_argument("--out", metavar="PATH", help="write to PATH (default: print)")
    ex.set_defaults(func=cmd_export)
    rp = sub.add_parser("report", help="a study's analysis for one finding (text, --json, --html PATH)")
    rp.add_argument("study")
    rp.add_argument("--finding", required=True)
    rp.add_argument("--covariance", choices=["jackknife", "delong"], default="jackknife")
    rp.add_argument("--alpha", type=float, default=0.05)
    rp.add_argument("--json", action="store_true")
    rp.add_argument("--html", metavar="PATH", help="also write a self-contained HTML report")
    rp.set_defaults(func=cmd_report)


READER_STUDY = Command("reader-study", "multi-reader multi-case reader studies: OR-Hillis analysis, readers vs a "
                                       "model, kappa (analyze); cases needed from a pilot (power); studies run "
                                       "here (create, add-reader, progress, report, export)", _flags,
                       description="analyze: test modality differences in a fully crossed reader study; power: "
                                   "plan the number of cases from a pilot.")
