"""How prevalence shifted at a site, from its unlabelled images (issue 23 §2): per label, the prevalence among the
site's images estimated two ways, each with a bootstrap interval, beside the reference (the model's validation
split, where the labels are known).

- **BBSE** (black-box shift estimation, Lipton, Wang & Smola, ICML 2018): the model's calls at its threshold on the
  reference give its true- and false-positive rates; the share of the site's images it calls positive, ``r``, then
  gives the prevalence ``q = (r - FPR) / (TPR - FPR)`` (the 2x2 confusion-matrix inversion for one label), clipped to
  [0, 1]. Needs the calls to mean the same at the site as on the reference (the label shift assumption: what a
  finding looks like does not change, only how often it occurs).
- **EM** (Saerens, Latinne & Decaestecker, Neural Computation 2002): the model's probabilities, adjusted by Bayes'
  rule to a candidate prevalence, averaged, until the prevalence they average to stops moving. It needs calibrated
  probabilities, so they are first recalibrated on the labelled reference with a slope and a bias on the logit
  (bias-corrected calibration: Alexandari, Kundaje & Shrikumar, ICML 2020, found EM with it hard to beat); without
  it, on the phantom, EM was off by 0.26 on average where BBSE was off by 0.007 (bench/RESULTS.md).

The interval of each is the 2.5th and 97.5th percentile over bootstrap replicates that redraw the site's images
and the reference's together (both are samples). :func:`adjust_probabilities` gives the probabilities at an
estimated prevalence (Bayes' rule with the estimated priors): an option a page or a table labels as such.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DataError
from ..inference import logits_from_probs

EPS = 1e-6
EM_TOL = 1e-6
EM_MAX_ITER = 200
MIN_REFERENCE_CASES = 20


def bbse(ref_targets: np.ndarray, ref_probs: np.ndarray, site_probs: np.ndarray, threshold: float) -> float:
    """One label's BBSE estimate of the site's prevalence (NaN where the reference's calls do not separate the
    classes: TPR = FPR)."""
    y, call = ref_targets.astype(bool), ref_probs >= threshold
    if y.all() or not y.any():
        return float("nan")
    tpr, fpr = call[y].mean(), call[~y].mean()
    if abs(tpr - fpr) < EPS:
        return float("nan")
    r = float((site_probs >= threshold).mean())
    return float(np.clip((r - fpr) / (tpr - fpr), 0.0, 1.0))


def adjust(probs: np.ndarray, ref_prior: float, new_prior: float) -> np.ndarray:
    """Bayes' rule: probabilities made under prevalence ``ref_prior``, restated under ``new_prior``."""
    p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1 - EPS)
    a = p * (new_prior / max(ref_prior, EPS))
    b = (1 - p) * ((1 - new_prior) / max(1 - ref_prior, EPS))
    return a / (a + b)


def calibrator(y: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    """(slope, bias) of ``sigmoid(slope * logit(p) + bias)`` fitted to the labels ``y`` by maximum likelihood
    (Platt scaling of the model's logits; scipy's BFGS)."""
    from scipy.optimize import minimize

    z = logits_from_probs(probs)
    y = np.asarray(y, dtype=np.float64)

    def nll(w):
        s = w[0] * z + w[1]
        return float(np.mean(np.logaddexp(0.0, s) - y * s))

    res = minimize(nll, x0=np.array([1.0, 0.0]), method="BFGS")
    return float(res.x[0]), float(res.x[1])


def recalibrated(probs: np.ndarray, slope: float, bias: float) -> np.ndarray:
    from scipy.special import expit

    return expit(slope * logits_from_probs(probs) + bias)


def em(site_probs: np.ndarray, ref_prior: float) -> float:
    """One label's EM (Saerens) estimate of the site's prevalence from calibrated probabilities."""
    if not 0 < ref_prior < 1:
        return float("nan")
    q = ref_prior
    for _ in range(EM_MAX_ITER):
        new = float(adjust(site_probs, ref_prior, q).mean())
        if abs(new - q) < EM_TOL:
            return new
        q = new
    return q


def adjust_probabilities(probs: np.ndarray, ref_priors: np.ndarray, new_priors: np.ndarray) -> np.ndarray:
    """(N, L) probabilities restated under the estimated prevalences ``new_priors`` (L,) (Bayes' rule per label;
    labels whose estimate is NaN unchanged)."""
    out = np.array(probs, dtype=np.float64, copy=True)
    for j, (p0, p1) in enumerate(zip(ref_priors, new_priors)):
        if np.isfinite(p0) and np.isfinite(p1) and 0 < p0 < 1:
            out[:, j] = adjust(out[:, j], p0, p1)
    return out


@dataclass
class PrevalenceEstimate:
    labels: dict[str, dict]     # label -> {"bbse", "em", "bbse_ci", "em_ci", "reference", "called"}
    n_images: int
    n_reference: int
    n_boot: int

    def to_dict(self) -> dict:
        return {"labels": self.labels, "n_images": self.n_images, "n_reference": self.n_reference,
                "n_boot": self.n_boot}


def _ci(values: list[float]) -> list[float | None]:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return [None, None]
    lo, hi = np.percentile(v, [2.5, 97.5])
    return [round(float(lo), 4), round(float(hi), 4)]


def _r(x: float) -> float | None:
    return None if not np.isfinite(x) else round(float(x), 4)


def estimate_prevalence(labels: list[str], ref_targets: np.ndarray, ref_probs: np.ndarray,
                        site_probs: np.ndarray, thresholds: list[float],
                        n_boot: int = 200, seed: int = 0) -> PrevalenceEstimate:
    """Per label: BBSE (the calls at ``thresholds``) and EM (the probabilities recalibrated on the reference, see
    the module's text) estimates of the site's prevalence, their bootstrap intervals (each replicate refits the
    calibration on its reference draw), the reference's prevalence and the share the model calls. Reference
    targets: 1 / 0, NaN (or negative) where unknown."""
    ref_targets = np.asarray(ref_targets, dtype=np.float64)
    if len(site_probs) < 1:
        raise DataError("No site image to estimate from.")
    rng = np.random.default_rng(seed)
    out: dict[str, dict] = {}
    for j, label in enumerate(labels):
        known = np.isfinite(ref_targets[:, j]) & (ref_targets[:, j] >= 0)
        y, rp = ref_targets[known, j], ref_probs[known, j]
        sp, t = site_probs[:, j], float(thresholds[j])
        if known.sum() < MIN_REFERENCE_CASES or y.min() == y.max():
            out[label] = {"bbse": None, "em": None, "bbse_ci": [None, None], "em_ci": [None, None],
                          "reference": _r(y.mean()) if len(y) else None, "called": _r((sp >= t).mean()),
                          "note": "the reference has too few cases, or no positive or no negative one"}
            continue
        prior = float(y.mean())
        boot_b, boot_e = [], []
        for _ in range(n_boot):
            ri = rng.integers(0, len(y), len(y))
            si = rng.integers(0, len(sp), len(sp))
            boot_b.append(bbse(y[ri], rp[ri], sp[si], t))
            yb = y[ri]
            boot_e.append(em(recalibrated(sp[si], *calibrator(yb, rp[ri])), float(yb.mean()))
                          if 0 < yb.mean() < 1 else float("nan"))
        em_full = em(recalibrated(sp, *calibrator(y, rp)), prior)
        out[label] = {"bbse": _r(bbse(y, rp, sp, t)), "em": _r(em_full), "bbse_ci": _ci(boot_b),
                      "em_ci": _ci(boot_e), "reference": _r(prior), "called": _r((sp >= t).mean())}
    return PrevalenceEstimate(out, int(len(site_probs)), int(len(ref_targets)), int(n_boot))


ADJUST_WITH = ("em", "bbse")


def adjusted_table(paths: list[str], labels: list[str], ref_targets: np.ndarray, ref_probs: np.ndarray,
                   site_probs: np.ndarray, estimate: PrevalenceEstimate, method: str = "em"):
    """Each site image's probabilities restated under the estimated prevalence (an option, labelled as such): per
    label the model's probability (``LABEL``), recalibrated on the reference as EM uses it (``LABEL recalibrated``)
    and adjusted by Bayes' rule from the reference's prevalence to the ``method``'s estimate (``LABEL adjusted``);
    ``adjusted_with`` says so on every row. A label without an estimate keeps its recalibrated probability (and
    its row says so). For EM the adjusted probabilities average to the estimate itself (its fixed point)."""
    import pandas as pd

    if method not in ADJUST_WITH:
        raise DataError(f"Adjust with {' or '.join(ADJUST_WITH)}, not {method!r}.")
    ref_targets = np.asarray(ref_targets, dtype=np.float64)
    out = {"path": list(paths)}
    notes = []
    for j, label in enumerate(labels):
        known = np.isfinite(ref_targets[:, j]) & (ref_targets[:, j] >= 0)
        y, rp, sp = ref_targets[known, j], ref_probs[known, j], site_probs[:, j]
        out[label] = sp
        est = estimate.labels[label]
        if est.get(method) is None or len(y) == 0 or y.min() == y.max():
            out[f"{label} recalibrated"], out[f"{label} adjusted"] = sp, sp
            notes.append(f"{label}: not adjusted (no estimate)")
            continue
        cal = recalibrated(sp, *calibrator(y, rp))
        out[f"{label} recalibrated"] = cal
        out[f"{label} adjusted"] = adjust(cal, float(y.mean()), float(est[method]))
    words = {"em": "EM (Saerens 2002)", "bbse": "BBSE (Lipton 2018)"}[method]
    table = pd.DataFrame(out)
    table["adjusted_with"] = (f"Bayes' rule to the site prevalence estimated by {words}, from probabilities "
                              "recalibrated on the reference; not the model's own output"
                              + (f"; {', '.join(notes)}" if notes else ""))
    return table


def estimate_on(checkpoint, images, *, reference=None, split: str = "val", site: str | None = None,
                n_boot: int = 200, seed: int = 0, progress=None, adjusted_out=None,
                adjust_with: str = "em") -> PrevalenceEstimate:
    """:func:`estimate_prevalence` for the site's unlabelled ``images`` (a folder, or a CSV with a ``path`` column)
    against the model's ``split`` of ``reference`` (a labelled dataset folder; default: the folder the card says the
    model was trained on, when it is on this machine). ``site``: the model as used at that site (its profile's
    thresholds and temperatures). ``adjusted_out``: a CSV file that gets each image's probabilities adjusted to the
    estimate of ``adjust_with`` (:func:`adjusted_table`; written whole, then renamed)."""
    from pathlib import Path

    from ..data.imageio import read_image
    from ..predictor import Predictor
    from ..score import source_of
    from .predictions import predict_split

    predictor = Predictor(checkpoint)
    predictor.set_card(predictor.card.with_site(site))
    card = predictor.card
    if reference is None:
        root = (card.data or {}).get("root")
        if not root or not Path(root).is_dir():
            raise DataError("The model's card names no training folder on this machine to take the reference from: "
                            "give a labelled reference dataset (--reference DATA; its validation split is used).")
        reference = root
    ref = predict_split(predictor, reference, split)
    source = source_of(str(images))
    squares = []
    for k, path in enumerate(source.paths):
        squares.append(predictor.prep.square(read_image(source.read(path), Path(path).name).pixels))
        if progress:
            progress(k + 1, len(source.paths))
    site_probs = predictor.predict_squares(np.stack(squares))
    est = estimate_prevalence(list(predictor.labels), ref.targets, ref.probs, site_probs, card.threshold_list(),
                              n_boot=n_boot, seed=seed)
    if adjusted_out is not None:
        target = Path(adjusted_out)
        table = adjusted_table(source.paths, list(predictor.labels), ref.targets, ref.probs, site_probs, est,
                               adjust_with)
        tmp = target.with_name(f".{target.name}.tmp")
        table.to_csv(tmp, index=False)
        tmp.replace(target)
    return est
