"""Obuchowski-Rockette analysis of a multi-reader multi-case study with Hillis's degrees of freedom.

Figure of merit: the empirical (Wilcoxon) AUROC of each reader in each modality. The covariance of these AUROCs
over case samples is estimated by the jackknife over cases (Efron & Stein's inflation, ``(K-1)/K`` times the sum
of products of the leave-one-case-out AUROCs' deviations; the default, as in OR-DBM MRMC and RJafroc) or by
DeLong's structural components (DeLong, DeLong & Clarke-Pearson 1988, :mod:`cxrcore.eval.delong`). Averaging
its entries gives the four OR error terms: Var (same reader, same modality), Cov1 (same reader, different
modalities), Cov2 (different readers, same modality), Cov3 (different readers, different modalities).

The three analyses, with their formulas (t modalities, r readers; MS from the modality x reader ANOVA of AUROCs):

- random readers, random cases (RRRC; Obuchowski & Rockette 1995, Hillis 2007 Stat Med 26:596-619,
  Hillis, Berbaum & Metz 2008 Acad Radiol 15:647-661)::

      F = MS(T) / [MS(TR) + r max(Cov2 - Cov3, 0)],  ndf = t - 1,
      ddf_H = [MS(TR) + r max(Cov2 - Cov3, 0)]^2 / {MS(TR)^2 / [(t - 1)(r - 1)]}
      difference of two modalities: +- t(ddf_H) sqrt{(2/r) [MS(TR) + r max(Cov2 - Cov3, 0)]}
      one modality i: +- t(df_i) sqrt{[MS(R)_i + r max(Cov2_i, 0)] / r},
                      df_i = [MS(R)_i + r max(Cov2_i, 0)]^2 / [MS(R)_i^2 / (r - 1)]

- fixed readers, random cases (FRRC)::

      X2 = (t - 1) MS(T) / [Var - Cov1 + (r - 1) max(Cov2 - Cov3, 0)]  ~ chi-square(t - 1)
      difference: +- z sqrt{(2/r) [Var - Cov1 + (r - 1) max(Cov2 - Cov3, 0)]}
      one modality: +- z sqrt{[Var_i + (r - 1) max(Cov2_i, 0)] / r}
      one reader's difference: +- z sqrt[2 (Var_j - Cov1_j)]

- random readers, fixed cases (RRFC)::

      F = MS(T) / MS(TR) ~ F(t - 1, (t - 1)(r - 1)); difference: +- t sqrt[(2/r) MS(TR)]
      one modality: +- t(r - 1) sqrt[MS(R)_i / r]

These are the formulas OR-DBM MRMC 2.51 prints with its results and that RJafroc implements; the tests check
the Van Dyke and Franken example data against OR-DBM MRMC's printed output to all printed digits.

The variance components are those OR-DBM MRMC reports: Var(TR) = MS(TR) - Var + Cov1 + (Cov2 - Cov3) and
Var(R) = [MS(R) - Var - (t - 1) Cov1 + Cov2 + (t - 1) Cov3 - Var(TR)] / t (ANOVA estimates, may be negative).

A result that cannot be computed (one reader for the random-reader analyses, no variability at all) is ``None``
with a note, never NaN.
"""
from __future__ import annotations

from itertools import combinations

import numpy as np
from scipy import stats

from ...errors import ConfigError
from ..delong import delong_covariance, structural_components

COVARIANCE_METHODS = ("jackknife", "delong")


def pair_key(a: str, b: str) -> str:
    """The key of a modality pair's difference: ``"A - B"`` is A minus B (A listed first)."""
    return f"{a} - {b}"


def fom_covariance(truth: np.ndarray, scores: np.ndarray, method: str = "jackknife") -> tuple[np.ndarray, np.ndarray]:
    """AUROCs (N,) of N score rows (N, K) on the same cases and their covariance (N, N) over case samples,
    by the jackknife over cases or by DeLong's method."""
    if method not in COVARIANCE_METHODS:
        raise ConfigError(f"unknown covariance method {method!r}: use one of {', '.join(COVARIANCE_METHODS)}.")
    truth = np.asarray(truth)
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    if method == "delong":
        aucs, cov = delong_covariance(truth, scores)
        return aucs, np.atleast_2d(cov)
    aucs, v10, v01 = structural_components(truth, scores)
    m, n = v10.shape[1], v01.shape[1]
    K = truth.size
    # leave-one-case-out AUROCs, exactly: without positive p the AUROC is the mean of the other positives'
    # components, (m AUC - V10_p)/(m - 1); likewise (n AUC - V01_q)/(n - 1) without negative q
    jk = np.empty((scores.shape[0], K))
    jk[:, truth == 1] = (m * aucs[:, None] - v10) / (m - 1)
    jk[:, truth == 0] = (n * aucs[:, None] - v01) / (n - 1)
    d = jk - jk.mean(axis=1, keepdims=True)
    return aucs, (K - 1) / K * (d @ d.T)


def _mean(values: np.ndarray) -> float | None:
    return float(values.mean()) if values.size else None


def variance_components(fom: np.ndarray, cov: np.ndarray) -> dict:
    """OR error terms from the (T, R) AUROCs' covariance ``cov`` ((T*R, T*R), modality-major): Var, Cov1, Cov2,
    Cov3 over all entries, and per modality (Var_i, Cov2_i) and per reader (Var_j, Cov1_j). ``None`` where no
    pair of that kind exists (Cov2 with one reader, Cov1 with one modality)."""
    T, R = fom.shape
    c = cov.reshape(T, R, T, R)
    same_t = np.eye(T, dtype=bool)[:, None, :, None]
    same_r = np.eye(R, dtype=bool)[None, :, None, :]
    out = {
        "var": _mean(c[same_t & same_r]),
        "cov1": _mean(c[~same_t & same_r]),
        "cov2": _mean(c[same_t & ~same_r]),
        "cov3": _mean(c[~same_t & ~same_r]),
    }
    off_r = ~np.eye(R, dtype=bool)
    off_t = ~np.eye(T, dtype=bool)
    out["each_modality"] = [{"var": float(np.diag(c[i, :, i, :]).mean()),
                             "cov2": _mean(c[i, :, i, :][off_r])} for i in range(T)]
    out["each_reader"] = [{"var": float(np.diag(c[:, j, :, j]).mean()),
                           "cov1": _mean(c[:, j, :, j][off_t])} for j in range(R)]
    return out


def anova(fom: np.ndarray) -> dict:
    """Mean squares of the modality x reader ANOVA of the AUROCs (``None`` where a factor has one level)."""
    T, R = fom.shape
    grand = fom.mean()
    mt, mr = fom.mean(axis=1), fom.mean(axis=0)
    ms_t = R * ((mt - grand) ** 2).sum() / (T - 1) if T > 1 else None
    ms_r = T * ((mr - grand) ** 2).sum() / (R - 1) if R > 1 else None
    ms_tr = ((fom - mt[:, None] - mr[None, :] + grand) ** 2).sum() / ((T - 1) * (R - 1)) if T > 1 and R > 1 else None
    ms_r_each = [float(((fom[i] - mt[i]) ** 2).sum() / (R - 1)) if R > 1 else None for i in range(T)]
    ms_t_each = [float(((fom[:, j] - mr[j]) ** 2).sum() / (T - 1)) if T > 1 else None for j in range(R)]
    df = {"t": T - 1, "r": R - 1, "tr": (T - 1) * (R - 1)}
    return {"ms_t": _f(ms_t), "ms_r": _f(ms_r), "ms_tr": _f(ms_tr),
            "ss_t": _f(None if ms_t is None else ms_t * df["t"]), "ss_r": _f(None if ms_r is None else ms_r * df["r"]),
            "ss_tr": _f(None if ms_tr is None else ms_tr * df["tr"]),
            "df_t": df["t"], "df_r": df["r"], "df_tr": df["tr"], "ms_r_each": ms_r_each, "ms_t_each": ms_t_each}


def _f(x) -> float | None:
    """A JSON-safe number: ``None`` for missing, NaN or infinite values."""
    if x is None:
        return None
    x = float(x)
    return x if np.isfinite(x) else None


def _t_quantile(q: float, df: float) -> float:
    return float(stats.norm.ppf(q)) if not np.isfinite(df) else float(stats.t.ppf(q, df))


def _t_sf(x: float, df: float) -> float:
    return float(stats.norm.sf(x)) if not np.isfinite(df) else float(stats.t.sf(x, df))


def _f_sf(f: float, ndf: float, ddf: float) -> float:
    return float(stats.chi2.sf(f * ndf, ndf)) if not np.isfinite(ddf) else float(stats.f.sf(f, ndf, ddf))


def _interval(estimate: float, se: float | None, df: float, alpha: float, dist: str = "t") -> dict:
    """Estimate, SE, df, t (or z), two-sided p and the (1 - alpha) interval."""
    out = {"estimate": _f(estimate), "se": _f(se)}
    if dist == "t":
        out["df"] = _f(df)
    if se is None or not np.isfinite(se) or se <= 0:
        out.update({"t" if dist == "t" else "z": None, "p": None, "ci": [None, None]})
        return out
    d = df if dist == "t" else np.inf
    stat = estimate / se
    crit = _t_quantile(1 - alpha / 2, d)
    out.update({"t" if dist == "t" else "z": _f(stat), "p": _f(2 * _t_sf(abs(stat), d)),
                "ci": [_f(estimate - crit * se), _f(estimate + crit * se)]})
    return out


def _ratio_df(num: float, ms: float, df: float) -> float:
    """Satterthwaite-type df num^2 / (ms^2 / df); infinite when ms is 0 (no variability of that kind)."""
    return np.inf if ms == 0 else num ** 2 / (ms ** 2 / df)


def _readers_random(section: dict, name: str, n_readers: int, notes: list[str]) -> bool:
    """Whether an analysis that treats readers as random can run (2 readers or more); if not, ``section`` gets
    no numerator df and ``notes`` says why."""
    if n_readers >= 2:
        return True
    section["ndf"] = None
    notes.append(f"{name} needs at least 2 readers: not computed.")
    return False


def or_analysis(fom: np.ndarray, cov: np.ndarray, modalities: list[str], readers: list[str],
                alpha: float = 0.05) -> dict:
    """The ANOVA, the variance components and the RRRC, FRRC and RRFC analyses of (T, R) AUROCs ``fom`` whose
    covariance over case samples is ``cov`` ((T*R, T*R), modality-major). Returns JSON-safe dicts and notes."""
    T, R = fom.shape
    notes: list[str] = []
    a = anova(fom)
    vc = variance_components(fom, cov)
    var, cov1 = vc["var"], vc["cov1"] if vc["cov1"] is not None else 0.0
    cov2, cov3 = (vc["cov2"] or 0.0), (vc["cov3"] or 0.0)
    means = fom.mean(axis=1)
    pairs = list(combinations(range(T), 2))
    ms_t = a["ms_t"]
    components = {
        "var": _f(var), "cov1": vc["cov1"], "cov2": vc["cov2"], "cov3": vc["cov3"],
        "rho1": _f(vc["cov1"] / var) if vc["cov1"] is not None and var > 0 else None,
        "rho2": _f(vc["cov2"] / var) if vc["cov2"] is not None and var > 0 else None,
        "rho3": _f(vc["cov3"] / var) if vc["cov3"] is not None and var > 0 else None,
        "var_tr": None, "var_r": None,
        "each_modality": {m: {"var": _f(e["var"]), "cov2": _f(e["cov2"])}
                          for m, e in zip(modalities, vc["each_modality"])},
        "each_reader": {r: {"var": _f(e["var"]), "cov1": _f(e["cov1"])} for r, e in zip(readers, vc["each_reader"])},
    }
    if a["ms_tr"] is not None:
        var_tr = a["ms_tr"] - var + cov1 + (cov2 - cov3)
        components["var_tr"] = _f(var_tr)
        components["var_r"] = _f((a["ms_r"] - var - (T - 1) * cov1 + cov2 + (T - 1) * cov3 - var_tr) / T)
    elif a["ms_r"] is not None:   # one modality: Var(R) = MS(R) - Var + Cov2
        components["var_r"] = _f(a["ms_r"] - var + cov2)

    # ---- RRRC
    rrrc = {"f": None, "ndf": T - 1 if T > 1 else None, "ddf": None, "p": None, "error_term": None,
            "diff": {}, "per_modality": {}}
    if _readers_random(rrrc, "RRRC (random readers, random cases)", R, notes):
        if T > 1:
            ms_tr = a["ms_tr"]
            den = ms_tr + R * max(cov2 - cov3, 0.0)
            ddf = _ratio_df(den, ms_tr, (T - 1) * (R - 1))
            rrrc["error_term"] = _f(den)
            if den > 0:
                f = ms_t / den
                rrrc.update({"f": _f(f), "ddf": _f(ddf), "p": _f(_f_sf(f, T - 1, ddf))})
                if not np.isfinite(ddf):
                    notes.append("RRRC: MS(T*R) is 0, so its denominator degrees of freedom are infinite "
                                 "(normal and chi-square reference distributions used; ddf shown as none).")
            else:
                notes.append("RRRC: the error term MS(T*R) + r max(Cov2 - Cov3, 0) is 0 (no variability): "
                             "no F test.")
            se = np.sqrt(2 / R * den) if den > 0 else None
            for i, k in pairs:
                rrrc["diff"][pair_key(modalities[i], modalities[k])] = _interval(means[i] - means[k], se, ddf, alpha)
        for i, m in enumerate(modalities):
            ms_ri = a["ms_r_each"][i]
            cov2_i = vc["each_modality"][i]["cov2"] or 0.0
            den_i = ms_ri + R * max(cov2_i, 0.0)
            df_i = _ratio_df(den_i, ms_ri, R - 1)
            entry = _interval(means[i], np.sqrt(den_i / R) if den_i > 0 else None, df_i, alpha)
            entry.pop("t"), entry.pop("p")
            if ms_ri == 0 and den_i > 0:
                notes.append(f"RRRC, modality {m!r}: every reader has the same AUROC (MS(R) = 0), so the interval's "
                             "degrees of freedom are infinite (normal quantile used; df shown as none).")
            entry.update({"ms_r": _f(ms_ri), "cov2": _f(vc["each_modality"][i]["cov2"])})
            rrrc["per_modality"][m] = entry
    rrrc["ddf"] = rrrc["ddf"] if rrrc["f"] is not None else None

    # ---- FRRC
    frrc = {"chi2": None, "df": T - 1 if T > 1 else None, "p": None, "error_term": None, "diff": {},
            "per_modality": {}, "per_reader": {}}
    if T > 1:
        den = var - cov1 + (R - 1) * max(cov2 - cov3, 0.0)
        frrc["error_term"] = _f(den)
        if den > 0:
            chi2 = (T - 1) * ms_t / den
            frrc.update({"chi2": _f(chi2), "p": _f(stats.chi2.sf(chi2, T - 1))})
        else:
            notes.append("FRRC: the error term Var - Cov1 + (r-1) max(Cov2 - Cov3, 0) is not positive: no "
                         "chi-square test.")
        se = np.sqrt(2 / R * den) if den > 0 else None
        for i, k in pairs:
            frrc["diff"][pair_key(modalities[i], modalities[k])] = _interval(means[i] - means[k], se, np.inf,
                                                                              alpha, dist="z")
        for j, r in enumerate(readers):
            e = vc["each_reader"][j]
            v = 2 * (e["var"] - (e["cov1"] or 0.0))
            se_j = np.sqrt(v) if v > 0 else None
            frrc["per_reader"][r] = {pair_key(modalities[i], modalities[k]):
                                     _interval(fom[i, j] - fom[k, j], se_j, np.inf, alpha, dist="z")
                                     for i, k in pairs}
    for i, m in enumerate(modalities):
        e = vc["each_modality"][i]
        v = (e["var"] + (R - 1) * max(e["cov2"] or 0.0, 0.0)) / R
        entry = _interval(means[i], np.sqrt(v) if v > 0 else None, np.inf, alpha, dist="z")
        entry.pop("z"), entry.pop("p")
        entry.update({"var": _f(e["var"]), "cov2": _f(e["cov2"])})
        frrc["per_modality"][m] = entry

    # ---- RRFC
    rrfc = {"f": None, "ndf": T - 1 if T > 1 else None, "ddf": None, "p": None, "diff": {}, "per_modality": {}}
    if _readers_random(rrfc, "RRFC (random readers, fixed cases)", R, notes):
        if T > 1:
            ms_tr = a["ms_tr"]
            ddf = (T - 1) * (R - 1)
            rrfc["ddf"] = ddf
            if ms_tr > 0:
                f = ms_t / ms_tr
                rrfc.update({"f": _f(f), "p": _f(stats.f.sf(f, T - 1, ddf))})
            else:
                notes.append("RRFC: MS(T*R) is 0 (every reader shows the same modality differences): no F test.")
            se = np.sqrt(2 / R * ms_tr) if ms_tr > 0 else None
            for i, k in pairs:
                rrfc["diff"][pair_key(modalities[i], modalities[k])] = _interval(means[i] - means[k], se, ddf, alpha)
        for i, m in enumerate(modalities):
            ms_ri = a["ms_r_each"][i]
            entry = _interval(means[i], np.sqrt(ms_ri / R) if ms_ri > 0 else None, R - 1, alpha)
            entry.pop("t"), entry.pop("p")
            entry["ms_r"] = _f(ms_ri)
            rrfc["per_modality"][m] = entry

    return {"anova": a | {"ms_r_each": dict(zip(modalities, a["ms_r_each"])),
                          "ms_t_each": dict(zip(readers, a["ms_t_each"]))},
            "variance_components": components, "rrrc": rrrc, "frrc": frrc, "rrfc": rrfc, "notes": notes}


def standalone(truth: np.ndarray, readers_scores: np.ndarray, model_scores: np.ndarray, readers: list[str],
               method: str = "jackknife", alpha: float = 0.05) -> dict:
    """Readers (R, K) of one modality against a standalone model (K,): the single-treatment random-reader
    random-case analysis of reader-minus-model AUROC differences (Chakraborty's "1T-RRRC", RJafroc
    ``StCadVsRad``; Hillis 2007's single-treatment OR analysis applied to the differences psi_j = AUROC_j -
    AUROC_model, whose error variance and Cov2 include the model's case-sampling variance).

    psi_bar +- t(ddf) sqrt{[MS(R) + max(r Cov2, 0)] / r}, ddf = [MS(R) + max(r Cov2, 0)]^2 / [MS(R)^2 / (r-1)]
    with MS(R), Var, Cov2 of the differences. Also the fixed-case version ("1T-RRFC": a one-sample t test of
    the r differences) and, for each reader, the fixed-reader difference +- z sqrt(Var(psi_j))."""
    R = readers_scores.shape[0]
    scores = np.vstack([model_scores[None, :], readers_scores])
    aucs, c = fom_covariance(truth, scores, method)
    A = np.hstack([-np.ones((R, 1)), np.eye(R)])          # psi_j = theta_j - theta_model
    psi = A @ aucs
    cpsi = A @ c @ A.T
    var = float(np.diag(cpsi).mean())
    cov2 = float(cpsi[~np.eye(R, dtype=bool)].mean()) if R > 1 else None
    notes: list[str] = []
    z = _t_quantile(1 - alpha / 2, np.inf)
    sd0 = np.sqrt(c[0, 0]) if c[0, 0] > 0 else None
    out = {
        "method": "1T-RRRC: single-treatment OR analysis of reader-minus-model AUROC differences "
                  "(Chakraborty; RJafroc StCadVsRad; Hillis 2007)",
        "covariance": method,
        "model_auroc": {"estimate": _f(aucs[0]), "se": _f(sd0),
                        "ci": [_f(aucs[0] - z * sd0), _f(aucs[0] + z * sd0)] if sd0 else [None, None]},
        "reader_mean_auroc": _f(aucs[1:].mean()),
        "var_r": _f(np.var(aucs[1:], ddof=1)) if R > 1 else None,
        "var": _f(var), "cov2": _f(cov2), "ms_r": None,
        "diff": None, "fixed_case": None,
        "per_reader": {r: _interval(psi[j], np.sqrt(cpsi[j, j]) if cpsi[j, j] > 0 else None, np.inf, alpha,
                                    dist="z") for j, r in enumerate(readers)},
        "notes": notes,
    }
    if R < 2:
        notes.append("the reader-average comparison with the model (1T-RRRC) needs at least 2 readers; the "
                     "per-reader differences (fixed reader, random cases) still apply.")
        return out
    ms_r = float(np.var(psi, ddof=1))
    den = ms_r + max(R * cov2, 0.0)
    ddf = _ratio_df(den, ms_r, R - 1)
    d = _interval(float(psi.mean()), np.sqrt(den / R) if den > 0 else None, ddf, alpha)
    d["f"] = _f(d["t"] ** 2) if d["t"] is not None else None
    out.update({"ms_r": _f(ms_r), "diff": d})
    fc = _interval(float(psi.mean()), np.sqrt(ms_r / R) if ms_r > 0 else None, R - 1, alpha)
    fc["f"] = _f(fc["t"] ** 2) if fc["t"] is not None else None
    out["fixed_case"] = fc
    return out
