"""Sample size for a two-modality reader study from a pilot study's Obuchowski-Rockette variance components.

Hillis, Obuchowski & Berbaum (2011), "Power estimation for multireader ROC methods: an updated and unified
approach", Acad Radiol 18:129-142 (Eqns 9-10), as implemented in RJafroc's ``SsPowerGivenJKOrVarCom``: for a
pivotal study with J readers and K cases, a pilot with K* cases and OR components Var, Cov1, Cov2, Cov3 and

    sigma2_TR = max(MS(TR) - Var + Cov1 + max(Cov2 - Cov3, 0), 0)        (Hillis 2011 Eqn 9, clamped at 0)

the RRRC test's F statistic follows a noncentral F(1, ddf, lambda) with

    den    = sigma2_TR + (K*/K) [Var - Cov1 + (J - 1) max(Cov2 - Cov3, 0)]
    lambda = J d^2 / (2 den)
    ddf    = den^2 / {[sigma2_TR + (K*/K) (Var - Cov1 - max(Cov2 - Cov3, 0))]^2 / (J - 1)}

for an effect size d (difference of the reader-averaged AUROCs); power = P(F > F_crit(1 - alpha; 1, ddf)).
FRRC: lambda with den = (K*/K)[Var - Cov1 + (J-1) max(Cov2 - Cov3, 0)], noncentral chi-square with 1 df.
RRFC: den = sigma2_TR + (K*/K)(Var - Cov1 - max(Cov2 - Cov3, 0)), noncentral F(1, J - 1).

The pilot's components scale with 1/K (case variance), which is what K*/K does. The smallest number of cases for
a given power is found by search over K (power increases with K).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from ...errors import ConfigError

ANALYSES = ("RRRC", "FRRC", "RRFC")
MAX_CASES = 100_000


@dataclass(frozen=True)
class PilotComponents:
    """OR variance components of a two-modality pilot study (``k_pilot`` cases, ``j_pilot`` readers) and its
    observed effect (the first modality's reader-averaged AUROC minus the second's)."""

    k_pilot: int
    j_pilot: int
    ms_tr: float
    var: float
    cov1: float
    cov2: float
    cov3: float
    observed_effect: float
    modalities: tuple[str, str] = ("", "")

    @property
    def var_tr(self) -> float:
        """Hillis (2011) Eqn 9, clamped at 0 (as RJafroc does for sample size)."""
        return max(self.ms_tr - self.var + self.cov1 + max(self.cov2 - self.cov3, 0.0), 0.0)

    def to_dict(self) -> dict:
        return asdict(self) | {"var_tr": self.var_tr, "modalities": list(self.modalities)}


def _check(readers: int, cases: int | None, effect: float, alpha: float, analysis: str) -> None:
    if analysis not in ANALYSES:
        raise ConfigError(f"unknown analysis {analysis!r}: use one of {', '.join(ANALYSES)}.")
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must be between 0 and 1, not {alpha}.")
    if readers < (2 if analysis != "FRRC" else 1):
        raise ConfigError(f"{analysis} needs at least 2 readers in the planned study (got {readers}).")
    if cases is not None and cases < 2:
        raise ConfigError(f"the planned study needs at least 2 cases (got {cases}).")
    if not np.isfinite(effect) or effect == 0:
        raise ConfigError(f"the effect size must be a non-zero AUROC difference, not {effect}.")


def power(pilot: PilotComponents, readers: int, cases: int, effect: float, alpha: float = 0.05,
          analysis: str = "RRRC") -> dict:
    """Power of a study with ``readers`` readers and ``cases`` cases to detect an AUROC difference ``effect``:
    {power, ncp, ddf (None for FRRC's chi-square), critical value}."""
    _check(readers, cases, effect, alpha, analysis)
    J, K, r = readers, cases, pilot.k_pilot / cases
    d23 = max(pilot.cov2 - pilot.cov3, 0.0)
    if analysis == "RRRC":
        den = pilot.var_tr + r * (pilot.var - pilot.cov1 + (J - 1) * d23)
        ddf = den ** 2 / ((pilot.var_tr + r * (pilot.var - pilot.cov1 - d23)) ** 2 / (J - 1))
    elif analysis == "FRRC":
        den = r * (pilot.var - pilot.cov1 + (J - 1) * d23)
        ddf = np.inf
    else:
        den = pilot.var_tr + r * (pilot.var - pilot.cov1 - d23)
        ddf = J - 1
    if not den > 0:
        raise ConfigError("the pilot's variance components give no variance for the modality difference "
                          f"({analysis} error term {den:g}): power cannot be estimated from this pilot.")
    ncp = J * effect ** 2 / (2 * den)
    if np.isfinite(ddf):
        crit = stats.f.ppf(1 - alpha, 1, ddf)
        pw = stats.ncf.sf(crit, 1, ddf, ncp)
    else:
        crit = stats.chi2.ppf(1 - alpha, 1)
        pw = stats.ncx2.sf(crit, 1, ncp)
    return {"power": float(pw), "ncp": float(ncp), "ddf": float(ddf) if np.isfinite(ddf) else None,
            "critical": float(crit), "readers": J, "cases": K, "effect": float(effect), "alpha": alpha,
            "analysis": analysis}


def cases_needed(pilot: PilotComponents, readers: int, effect: float, alpha: float = 0.05,
                 target: float = 0.8, analysis: str = "RRRC", max_cases: int = MAX_CASES) -> dict:
    """The smallest number of cases K (>= 2) whose power reaches ``target`` with ``readers`` readers:
    {cases, power} (cases ``None`` with the power at ``max_cases`` when even that is not enough: the reader
    variance alone can cap the power of the random-reader analyses)."""
    _check(readers, None, effect, alpha, analysis)
    if not 0 < target < 1:
        raise ConfigError(f"the target power must be between 0 and 1, not {target}.")
    at = lambda k: power(pilot, readers, k, effect, alpha, analysis)["power"]  # noqa: E731
    top = at(max_cases)
    if top < target:
        return {"cases": None, "power": top, "max_cases": max_cases, "readers": readers, "analysis": analysis}
    lo, hi = 1, 2
    while at(hi) < target:                   # power increases with K: bracket, then bisect
        lo, hi = hi, min(2 * hi, max_cases)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if at(mid) < target else (lo, mid)
    return {"cases": hi, "power": at(hi), "readers": readers, "analysis": analysis}


def power_table(pilot: PilotComponents, effect: float, readers: list[int], alpha: float = 0.05,
                target: float = 0.8, analyses: tuple[str, ...] = ANALYSES) -> list[dict]:
    """For each number of readers, the cases needed for ``target`` power in each analysis."""
    rows = []
    for J in readers:
        row = {"readers": J}
        for analysis in analyses:
            if analysis != "FRRC" and J < 2:
                row[analysis] = None
                continue
            row[analysis] = cases_needed(pilot, J, effect, alpha, target, analysis)
        rows.append(row)
    return rows


def pilot_components(study, modalities: tuple[str, str] | None = None, covariance: str = "jackknife") -> PilotComponents:
    """The OR components of a pilot :class:`~cxrcore.eval.readers.ratings.ReaderStudy` for two of its modalities
    (default: its first two); the observed effect is the first's reader-averaged AUROC minus the second's."""
    from .orh import anova, fom_covariance, variance_components

    names = list(study.modalities)
    if modalities is None:
        if len(names) < 2:
            raise ConfigError(f"a pilot for a two-modality study needs 2 modalities; {study.source or 'it'} has "
                              f"{len(names)} ({', '.join(names)}).")
        modalities = (names[0], names[1])
    unknown = [m for m in modalities if m not in names]
    if unknown or len(modalities) != 2 or modalities[0] == modalities[1]:
        raise ConfigError(f"name two different modalities of the pilot (it has {', '.join(names)}), "
                          f"not {', '.join(modalities)}.")
    if len(study.readers) < 2:
        raise ConfigError("a pilot needs at least 2 readers to estimate reader variability.")
    sel = [names.index(m) for m in modalities]
    ratings = study.ratings[sel]
    T, R, K = ratings.shape
    aucs, cov = fom_covariance(study.truth, ratings.reshape(T * R, K), covariance)
    fom = aucs.reshape(T, R)
    vc = variance_components(fom, cov)
    return PilotComponents(k_pilot=K, j_pilot=R, ms_tr=float(anova(fom)["ms_tr"]), var=vc["var"], cov1=vc["cov1"],
                           cov2=vc["cov2"], cov3=vc["cov3"], observed_effect=float(fom[0].mean() - fom[1].mean()),
                           modalities=tuple(modalities))
