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

from ..errors import ConfigError
from .common import Command


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
    from ..eval.readers import cases_needed, pilot_components, power, power_table, read_ratings
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
          f"Cov2 {p.cov2:.6f}, Cov3 {p.cov3:.6f}, Var(TR) {p.var_tr:.6f}; observed difference "
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
    if any(row.get("RRRC") and row["RRRC"]["cases"] is None for row in table):
        print("> N: even that many cases do not reach the target; reader variability caps the power of the "
              "random-reader analyses: add readers.")
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
    sub = s.add_subparsers(dest="reader_study_action", required=True, metavar="{analyze,power}")
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


READER_STUDY = Command("reader-study", "multi-reader multi-case reader studies: OR-Hillis analysis, readers vs a "
                                       "model, kappa (analyze); cases needed from a pilot (power)", _flags,
                       description="analyze: test modality differences in a fully crossed reader study; power: "
                                   "plan the number of cases from a pilot.")
