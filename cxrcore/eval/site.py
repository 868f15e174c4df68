"""Site profiles (issue 23 §1): a model recalibrated for a new hospital on a small labelled sample of its films.

Per label, on the site's sample: the **temperature** that makes the model's probabilities honest there (temperature
scaling, :func:`cxrcore.eval.calibration.fit_temperature`) and the **operating threshold** by the site's rule
(:data:`cxrcore.eval.thresholds.STRATEGIES`: max F1, Youden's J, a target sensitivity or specificity), each with a
95 % percentile interval from a patient-level bootstrap (:class:`cxrcore.eval.bootstrap.Clusters`); before and
after on the same sample (ECE; sensitivity, specificity and PPV at the card's threshold, then at the site's); and
how wide the threshold's interval is at smaller samples (``curve``: the median over labels at n = 50, 100, 200,
... cases), so an operator sees how many labelled cases are enough.

A profile is stored under its name in the card's ``sites`` (several per model; written where thresholds are:
:func:`cxrcore.eval.thresholds.save_site`, so a shipped model stays untouched), and a model *used at* a site is its
card with the profile's thresholds and temperatures in place (:meth:`cxrcore.models.card.Card.with_site`): every
surface that shows a call or a calibrated probability takes the site's name and says which profile it used.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np

from ..errors import DataError
from ..inference import logits_from_probs
from .bootstrap import Clusters, percentile_ci
from .calibration import calibrate_probs, expected_calibration_error, fit_temperature
from .thresholds import STRATEGIES, TARGETED, suggest_thresholds

DEFAULT_STRATEGY = "max F1"
CURVE_SIZES = (50, 100, 200, 400, 800, 1600)
MIN_CASES = 20


@dataclass
class SiteProfile:
    """What :func:`fit_site` found; :meth:`to_dict` is what the card stores."""

    name: str
    fitted_on: str
    n: int
    strategy: str
    target: float | None
    labels: dict[str, dict] = field(default_factory=dict)
    curve: list[dict] = field(default_factory=list)
    created: str = ""

    def to_dict(self) -> dict:
        return {"fitted_on": self.fitted_on, "n": self.n, "strategy": self.strategy, "target": self.target,
                "labels": self.labels, "curve": self.curve, "created": self.created}

    def thresholds(self) -> dict[str, float]:
        return {x: v["threshold"] for x, v in self.labels.items() if v.get("threshold") is not None}

    def temperatures(self) -> dict[str, float]:
        return {x: v["temperature"] for x, v in self.labels.items() if v.get("temperature") is not None}


def _rates(y: np.ndarray, p: np.ndarray, t: float) -> dict:
    call = p >= t
    tp, fp = int((call & (y == 1)).sum()), int((call & (y == 0)).sum())
    fn, tn = int((~call & (y == 1)).sum()), int((~call & (y == 0)).sum())
    div = lambda a, b: None if b == 0 else round(a / b, 4)  # noqa: E731
    return {"sensitivity": div(tp, tp + fn), "specificity": div(tn, tn + fp), "ppv": div(tp, tp + fp),
            "calls": tp + fp}


def _fit_one(y: np.ndarray, p: np.ndarray, strategy: str, target: float | None) -> tuple[float, float]:
    """(temperature, threshold) of one label on one sample."""
    t = float(suggest_thresholds(strategy, y[:, None], p[:, None], target)[0])
    return fit_temperature(y, logits_from_probs(p)), t


def _boot(y: np.ndarray, p: np.ndarray, clusters: Clusters, strategy: str, target: float | None, n_boot: int,
          rng: np.random.Generator) -> np.ndarray:
    """(n_boot, 2) replicates of (temperature, threshold); NaN where a replicate lacks a class."""
    out = np.full((n_boot, 2), np.nan)
    for b in range(n_boot):
        rows = clusters.rows(rng.integers(0, clusters.n_patients, clusters.n_patients))
        yb = y[rows]
        if yb.min() == yb.max():
            continue
        out[b] = _fit_one(yb, p[rows], strategy, target)
    return out


def _check(strategy: str, target: float | None) -> None:
    if strategy not in STRATEGIES:
        raise DataError(f"Unknown threshold rule {strategy!r}; use one of {', '.join(STRATEGIES)}.")
    if strategy in TARGETED and target is None:
        raise DataError(f"The rule {strategy!r} needs a target (e.g. 0.9).")


def fit_site(name: str, labels: list[str], targets: np.ndarray, probs: np.ndarray, thresholds: dict[str, float],
             *, patient_ids=None, fitted_on: str = "", strategy: str = DEFAULT_STRATEGY, target: float | None = None,
             n_boot: int = 200, seed: int = 0, curve_boot: int = 50) -> SiteProfile:
    """A site profile from the model's probabilities ``probs`` (N, L) on the site's labelled sample ``targets``
    (N, L; NaN or -1 where unknown) with ``thresholds`` the card's (before). A label without a positive and a
    negative case keeps the card's threshold and temperature 1 (``fitted`` False says so)."""
    _check(strategy, target)
    targets, probs = np.asarray(targets, dtype=np.float64), np.asarray(probs, dtype=np.float64)
    if len(targets) < MIN_CASES:
        raise DataError(f"A site profile needs at least {MIN_CASES} labelled cases; this sample has {len(targets)}.")
    rng = np.random.default_rng(seed)
    out: dict[str, dict] = {}
    kept: dict[str, tuple] = {}
    for j, label in enumerate(labels):
        known = ~np.isnan(targets[:, j]) & (targets[:, j] >= 0)
        y, p = targets[known, j], probs[known, j]
        ids = None if patient_ids is None else np.asarray(patient_ids)[known]
        before_t = float(thresholds.get(label, 0.5))
        entry = {"n": int(known.sum()), "positives": int(y.sum()), "card_threshold": before_t, "fitted": False,
                 "temperature": None, "threshold": None}
        if len(y) < MIN_CASES or y.min() == y.max():
            out[label] = entry
            continue
        temp, thr = _fit_one(y, p, strategy, target)
        clusters = Clusters.of(ids, len(y))
        reps = _boot(y, p, clusters, strategy, target, n_boot, rng)
        lo, hi, _ = percentile_ci(reps)
        cal = calibrate_probs(p, temp)
        entry.update(fitted=True, temperature=round(temp, 4), temperature_ci=[round(float(lo[0]), 4),
                                                                               round(float(hi[0]), 4)],
                     threshold=round(thr, 4), threshold_ci=[round(float(lo[1]), 4), round(float(hi[1]), 4)],
                     before={"ece": round(expected_calibration_error(y, p), 4), **_rates(y, p, before_t)},
                     after={"ece": round(expected_calibration_error(y, cal), 4), **_rates(y, p, thr)})
        out[label] = entry
        kept[label] = (y, p, ids)
    curve = _curve(kept, strategy, target, curve_boot, rng)
    return SiteProfile(name, fitted_on, int(len(targets)), strategy, target, out, curve,
                       dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))


def _curve(kept: dict[str, tuple], strategy: str, target: float | None, n_boot: int,
           rng: np.random.Generator) -> list[dict]:
    """The median (over labels) width of the threshold's and the temperature's 95 % interval when only n of the
    sample's cases are used, for each n of :data:`CURVE_SIZES` below the sample's size, and the full sample."""
    if not kept:
        return []
    full = min(len(v[0]) for v in kept.values())
    sizes = [n for n in CURVE_SIZES if n < full] + [full]
    rows = []
    for n in sizes:
        widths_t, widths_temp = [], []
        for y, p, ids in kept.values():
            pick = rng.choice(len(y), size=min(n, len(y)), replace=False)
            ys, ps = y[pick], p[pick]
            if ys.min() == ys.max():
                continue
            clusters = Clusters.of(None if ids is None else ids[pick], len(ys))
            lo, hi, _ = percentile_ci(_boot(ys, ps, clusters, strategy, target, n_boot, rng))
            widths_temp.append(hi[0] - lo[0])
            widths_t.append(hi[1] - lo[1])
        if widths_t:
            rows.append({"n": int(n), "threshold_ci_width": round(float(np.nanmedian(widths_t)), 4),
                         "temperature_ci_width": round(float(np.nanmedian(widths_temp)), 4)})
    return rows


def fit_site_on(checkpoint, data, name: str, *, split: str = "all", strategy: str = DEFAULT_STRATEGY,
                target: float | None = None, policy: str | None = None, n_boot: int = 200, seed: int = 0,
                progress=None, limits=None) -> SiteProfile:
    """:func:`fit_site` on the site's labelled dataset folder ``data`` (its ``split``; default every image): the
    model's probabilities (cached like an evaluation's), its targets under ``policy`` (default: the model's own),
    the patients for the bootstrap. ``limits``: a visitor's ceilings (:func:`cxrcore.hosting.limits`: the images
    predicted, the bootstrap replicates), checked before any model runs."""
    from ..data.readers import read_dataset
    from ..predictor import Predictor
    from .evaluate import eval_policy
    from .predictions import predict_split

    _check(strategy, target)
    if limits:
        limits.check("bootstrap", n_boot, "Bootstrap replicates", "Choose fewer.")
    predictor = Predictor(checkpoint)
    index = read_dataset(data)
    policy, _ = eval_policy(predictor, policy)
    preds = predict_split(predictor, index, split, policy=policy, progress=progress, limits=limits)
    patients = index.frame.set_index("image_id")["patient_id"].reindex(preds.image_ids).astype(str).to_numpy()
    return fit_site(name, list(preds.labels), preds.targets, preds.probs, predictor.card.thresholds,
                    patient_ids=patients, fitted_on=f"{index.name} ({split}, {len(preds.image_ids)} images)",
                    strategy=strategy, target=target, n_boot=n_boot, seed=seed)


def with_thresholds(profile: dict, chosen: dict[str, float], source: str) -> dict:
    """A copy of a stored profile (:meth:`SiteProfile.to_dict`) with the thresholds ``chosen`` set by hand (the
    Thresholds page at a site): each such label records ``edited`` (where, when) and keeps its fitted threshold as
    ``fitted_threshold``; its temperature, a fitted one, is kept. :meth:`cxrcore.models.card.Card.with_site` uses
    fitted and edited thresholds alike."""
    import copy

    out = copy.deepcopy(profile)
    labels = out.setdefault("labels", {})
    when = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    for label, t in chosen.items():
        entry = labels.setdefault(label, {"fitted": False})
        if entry.get("threshold") is not None and abs(float(entry["threshold"]) - float(t)) < 1e-9:
            continue   # unchanged: a fitted threshold stays fitted
        if entry.get("fitted") and "fitted_threshold" not in entry:
            entry["fitted_threshold"] = entry.get("threshold")
        entry["threshold"] = round(float(t), 6)
        entry["edited"] = {"by": "hand", "on": source, "at": when}
    return out



def profile_table(profile: dict) -> list[dict]:
    """One row per label of a stored profile, as a page shows it: cases, positives, the temperature and threshold
    with their intervals, and before → after on the sample (ECE, sensitivity, specificity, PPV); a label not fitted
    says why."""
    def num(x) -> str:
        return "-" if x is None else f"{x:.3f}"

    def pair(v: dict, key: str) -> str:
        b, a = (v.get("before") or {}).get(key), (v.get("after") or {}).get(key)
        return "" if b is None and a is None else f"{num(b)} → {num(a)}"

    rows = []
    for label, v in (profile.get("labels") or {}).items():
        row = {"label": label, "cases": v.get("n", 0), "positives": v.get("positives", 0)}
        if v.get("fitted"):
            t_ci, th_ci = v.get("temperature_ci") or [None, None], v.get("threshold_ci") or [None, None]
            row.update(temperature=f"{v['temperature']:.2f} [{t_ci[0]:.2f}, {t_ci[1]:.2f}]",
                       threshold=f"{v['threshold']:.3f} [{th_ci[0]:.3f}, {th_ci[1]:.3f}]",
                       **{f"{k} before → after": pair(v, key) for k, key in (
                           ("ECE", "ece"), ("sensitivity", "sensitivity"), ("specificity", "specificity"),
                           ("PPV", "ppv"))})
        else:
            why = "no label in the sample" if not v.get("n") else f"needs {MIN_CASES} cases, positive and negative"
            row.update(temperature="not fitted", threshold=(
                f"{v['threshold']:.3f} (set by hand)" if v.get("edited") and v.get("threshold") is not None else
                f"the model's ({why})"))
        rows.append(row)
    return rows
