"""One entry point: :func:`analyze` a reader study into JSON-safe results (the ``cxr reader-study analyze --json``
contract), and :func:`format_report`, the same results as a text report."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ...errors import ConfigError
from .agreement import N_BOOT, SEED, agreement
from .orh import COVARIANCE_METHODS, fom_covariance, or_analysis, standalone
from .ratings import ReaderStudy, read_ratings


def analyze(data: ReaderStudy | str | Path | pd.DataFrame, covariance: str = "jackknife", alpha: float = 0.05,
            model_reader: str | None = None, cutoff=None, model_threshold: float | None = None,
            n_boot: int = N_BOOT, seed: int = SEED) -> dict:
    """The whole analysis of a reader study (a :class:`ReaderStudy`, or a CSV path / DataFrame in the long format
    read with ``model_reader``): AUROCs, OR variance components, RRRC / FRRC / RRFC tests and intervals, the
    standalone-model comparison when there is a model, kappa and per-reader operating points. Every number is a
    float or ``None`` (never NaN); ``notes`` says what could not be computed and why.

    Keys: ``modalities``, ``readers`` (first-seen order), ``fom`` {modality: {reader: AUROC}}, ``fom_mean``,
    ``anova``, ``variance_components``, ``rrrc`` {f, ndf, ddf, p, diff {"A - B": {estimate, ci, ...}},
    per_modality {m: {estimate, ci, df, ...}}}, ``frrc`` {chi2, df, p, diff, per_modality, per_reader}, ``rrfc``
    {f, ndf, ddf, p, diff, per_modality}, ``standalone`` ({modality: ...} or None), ``kappa``, ``per_reader``,
    ``notes``. A pair key "A - B" is modality A minus modality B, A listed first in the file."""
    if covariance not in COVARIANCE_METHODS:
        raise ConfigError(f"unknown covariance method {covariance!r}: use one of {', '.join(COVARIANCE_METHODS)}.")
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must be between 0 and 1 (e.g. 0.05 for 95% intervals), not {alpha}.")
    if n_boot < 10:
        raise ConfigError(f"the kappa bootstrap needs at least 10 replicates, not {n_boot}.")
    study = data if isinstance(data, ReaderStudy) else read_ratings(data, model_reader=model_reader)
    T, R, K = study.ratings.shape
    modalities, readers = list(study.modalities), list(study.readers)
    notes = list(study.notes)
    if T < 2 and study.model is None:
        notes.append(f"only one modality ({modalities[0]!r}) and no model: the per-reader results, the modality's "
                     "reader-averaged AUROC and agreement apply; a comparison needs at least 2 modalities, or the "
                     "reader id that holds a standalone model's scores (--model-reader).")
    aucs, cov = fom_covariance(study.truth, study.ratings.reshape(T * R, K), covariance)
    fom = aucs.reshape(T, R)
    orh = or_analysis(fom, cov, modalities, readers, alpha)
    notes += orh.pop("notes")
    if T < 2:
        notes.append("one modality: no modality comparison (RRRC / FRRC / RRFC tests are none); the per-modality "
                     "intervals and the comparison with the model apply.")
    result = {
        "modalities": modalities,
        "readers": readers,
        "n_cases": K, "n_positive": study.n_positive, "n_negative": study.n_negative,
        "id_order": "first-seen in the file",
        "pair_key": "'A - B' = modality A minus modality B (A listed first)",
        "covariance": covariance,
        "alpha": alpha,
        "fom": {m: {r: float(fom[i, j]) for j, r in enumerate(readers)} for i, m in enumerate(modalities)},
        "fom_mean": {m: float(fom[i].mean()) for i, m in enumerate(modalities)},
        **orh,
        "standalone": None,
    }
    if study.model is not None:
        result["model"] = study.model_name
        result["standalone"] = {}
        for i, m in enumerate(modalities):
            s = standalone(study.truth, study.ratings[i], study.model, readers, covariance, alpha)
            notes += [f"standalone model vs readers in {m!r}: {n}" for n in s.pop("notes")]
            result["standalone"][m] = s
    kappa, per_reader, knotes = agreement(study.ratings, study.truth, modalities, readers, cutoff, study.model,
                                          study.model_name, model_threshold, alpha, n_boot, seed)
    result["kappa"] = kappa
    result["per_reader"] = per_reader
    result["notes"] = notes + knotes
    return result


# ---------------------------------------------------------------- text report

def _n(x, d: int = 4) -> str:
    return "-" if x is None else f"{x:.{d}f}"


def _p(x) -> str:
    return "-" if x is None else (f"{x:.4f}" if x >= 1e-4 else f"{x:.1e}")


def _ci(ci, d: int = 4) -> str:
    return "-" if ci is None or ci[0] is None else f"[{ci[0]:.{d}f}, {ci[1]:.{d}f}]"


def format_report(r: dict) -> str:
    """The results of :func:`analyze` as a readable text report."""
    level = int(round(100 * (1 - r["alpha"])))
    out: list[str] = []
    w = out.append
    w(f"Reader study: {len(r['modalities'])} modalities, {len(r['readers'])} readers, {r['n_cases']} cases "
      f"({r['n_positive']} positive, {r['n_negative']} negative); AUROC = empirical (Wilcoxon); covariance by "
      f"{'the jackknife over cases' if r['covariance'] == 'jackknife' else 'DeLong'}; {level}% intervals")
    w("")
    w("AUROC per reader and modality")
    width = max([6] + [len(x) for x in r["readers"]])
    w(f"  {'reader':<{width}} " + " ".join(f"{m[:12]:>12}" for m in r["modalities"]))
    for rd in r["readers"]:
        w(f"  {rd:<{width}} " + " ".join(f"{r['fom'][m][rd]:>12.4f}" for m in r["modalities"]))
    w(f"  {'mean':<{width}} " + " ".join(f"{r['fom_mean'][m]:>12.4f}" for m in r["modalities"]))
    vc, a = r["variance_components"], r["anova"]
    w("")
    w(f"OR variance components: Var {_n(vc['var'], 6)}, Cov1 {_n(vc['cov1'], 6)}, Cov2 {_n(vc['cov2'], 6)}, "
      f"Cov3 {_n(vc['cov3'], 6)}, Var(R) {_n(vc['var_r'], 6)}, Var(TR) {_n(vc['var_tr'], 6)}; "
      f"MS(T) {_n(a['ms_t'], 6)}, MS(TR) {_n(a['ms_tr'], 6)}")

    def diffs(section: dict, stat: str) -> None:
        for key, d in section["diff"].items():
            w(f"    {key:<24} {d['estimate']:+.4f}  SE {_n(d['se'])}  {stat} {_n(d.get(stat), 2)}  p {_p(d['p'])}  "
              f"{level}% CI {_ci(d['ci'])}")

    def per_mod(section: dict) -> None:
        for m, e in section["per_modality"].items():
            df = f"  df {e['df']:.2f}" if e.get("df") is not None else ""
            w(f"    {m:<24} {_n(e['estimate'])}  SE {_n(e['se'])}{df}  {level}% CI {_ci(e['ci'])}")

    sections = (
        ("rrrc", "Random readers, random cases (RRRC; OR with Hillis ddf): results generalise to readers and cases", "t",
         lambda s: s["f"] is not None and f"F = {s['f']:.3f}, ndf {s['ndf']}, ddf {_n(s['ddf'], 2)}, p = {_p(s['p'])}"),
        ("frrc", "Fixed readers, random cases (FRRC): results hold for these readers only", "z",
         lambda s: s["chi2"] is not None and f"chi-square = {s['chi2']:.3f}, df {s['df']}, p = {_p(s['p'])}"),
        ("rrfc", "Random readers, fixed cases (RRFC): results hold for these cases only", "t",
         lambda s: s["f"] is not None and f"F = {s['f']:.3f}, df ({s['ndf']}, {s['ddf']}), p = {_p(s['p'])}"))
    for key, title, stat, test in sections:
        s = r[key]
        w("")
        w(title)
        if test(s):
            w("  " + test(s))
        if s["diff"]:
            w("  differences of reader-averaged AUROC:")
            diffs(s, stat)
        if s["per_modality"]:
            w("  each modality:")
            per_mod(s)
        if s.get("per_reader"):
            w("  each reader:")
            for rd, pairs in s["per_reader"].items():
                for pair, d in pairs.items():
                    w(f"    {rd + ': ' + pair:<24} {d['estimate']:+.4f}  SE {_n(d['se'])}  p {_p(d['p'])}  "
                      f"{level}% CI {_ci(d['ci'])}")
    if r.get("standalone"):
        w("")
        w(f"Readers vs the standalone model {r.get('model')!r} (1T-RRRC: reader-minus-model AUROC differences)")
        for m, st in r["standalone"].items():
            mo = st["model_auroc"]
            w(f"  modality {m}: model AUROC {_n(mo['estimate'])} {_ci(mo['ci'])}, readers' mean "
              f"{_n(st['reader_mean_auroc'])}")
            if st["diff"]:
                d = st["diff"]
                w(f"    readers - model {d['estimate']:+.4f}  SE {_n(d['se'])}  df {_n(d['df'], 2)}  p {_p(d['p'])}  "
                  f"{level}% CI {_ci(d['ci'])}  (random readers and cases)")
                fc = st["fixed_case"]
                w(f"    readers - model {fc['estimate']:+.4f}  p {_p(fc['p'])}  {level}% CI {_ci(fc['ci'])}  "
                  "(fixed cases: t test over readers)")
            for rd, d in st["per_reader"].items():
                w(f"    {rd:<22} {d['estimate']:+.4f}  p {_p(d['p'])}  {level}% CI {_ci(d['ci'])}")
    k = r["kappa"]
    w("")
    w(f"Agreement (calls: {k['cutoff_rule']}; intervals: {k['ci_method']})")
    for m, e in k["per_modality"].items():
        if e["fleiss"]:
            w(f"  modality {m}: Fleiss' kappa {_n(e['fleiss']['kappa'], 3)} {_ci(e['fleiss']['ci'], 3)}")
        elif e["cohen"] or e["model"]:
            w(f"  modality {m}:")
        for key, p in e["cohen"].items():
            extra = (f", weighted {_n(p['weighted_kappa'], 3)} {_ci(p['weighted_ci'], 3)}"
                     if "weighted_kappa" in p else "")
            w(f"    {key:<24} kappa {_n(p['kappa'], 3)} {_ci(p['ci'], 3)}{extra}")
        for rd, p in e["model"].items():
            w(f"    {rd + ' ~ model':<24} kappa {_n(p['kappa'], 3)} {_ci(p['ci'], 3)}")
    w("")
    w("Each reader (AUROC with DeLong interval; sensitivity / specificity at the cut-off with Wilson intervals)")
    for m, rows in r["per_reader"].items():
        for rd, row in rows.items():
            line = f"  {m + ' | ' + rd:<22} AUROC {_n(row['auroc']['estimate'])} {_ci(row['auroc']['ci'])}"
            if "sensitivity" in row:
                se, sp = row["sensitivity"], row["specificity"]
                line += (f"  cut-off {row['cutoff']:g}: sens {_n(se['estimate'], 3)} {_ci(se['ci'], 3)}, "
                         f"spec {_n(sp['estimate'], 3)} {_ci(sp['ci'], 3)}")
            w(line)
    if r["notes"]:
        w("")
        w("Notes")
        for n in r["notes"]:
            w(f"  - {n}")
    return "\n".join(out)


__all__ = ["analyze", "format_report"]
