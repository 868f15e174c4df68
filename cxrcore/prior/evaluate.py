"""Scoring change calls against a folder of pairs with known change (``cxr eval-change``), and tuning the change
thresholds on one.

A folder of pairs holds ``pairs.csv`` (``prior, current, label, change``; :mod:`cxrcore.data.phantom.pairs` writes
one, a user may write their own) and the films. Every film is read once by the model; for every (pair, label) the
model's labels share (matched through :func:`cxrcore.labels.canonical`):

- ``accuracy``: the share of (pair, label) whose call (:func:`cxrcore.prior.change.call`) is the truth, with a 95 %
  patient-bootstrap interval; ``balanced_accuracy``: the mean recall over the changes that occur;
- ``change_auroc``: the AUROC of |Δp| for "changed" (any change) against "unchanged", with its interval: whether the
  size of the model's change tells a change from none, whatever the threshold;
- ``triage``: each pair's largest |Δp| over its labels; at the cut that keeps 90 % of the pairs with any change
  above it (DetNochange's operating point), the share of no-change pairs below it: what a reader could set aside as
  unchanged;
- ``registration`` (a sample of pairs, ``register``): NCC over the lung fields before and after, and, where the
  folder has ``landmarks.csv``, the landmark distance before and after (target registration error), in pixels
  and in mm (the NIH table's pixel spacing).

:func:`tune` picks each label's τ on a folder (the grid's τ with the best balanced accuracy of the calls); scoring
on the folder that tuned it is optimistic, so the answer says when it did (``tuned_here``).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..compare import load_image
from ..data.phantom.pairs import LANDMARKS_FILE, read_pairs
from ..errors import ConfigError
from ..eval.bootstrap import patient_bootstrap
from ..labels import CHANGES, canonical
from ..predictor import Predictor
from .change import DEFAULT_CHANGE_THRESHOLD, call, calls
from .register import register

TAU_GRID = np.round(np.arange(0.05, 0.81, 0.01), 2)   # below 0.05 a call follows the model's jitter
TRIAGE_SENSITIVITY = 0.9


@dataclass
class PairScores:
    """The model's probabilities on every (pair, label) of a folder, with the truth."""
    labels: list[str]            # the model's labels scored (shared with the folder)
    pairs: list[tuple[str, str]]  # (prior, current) per pair
    patients: np.ndarray         # (P,) a patient key per pair (pairs of one patient resampled together)
    truth: np.ndarray            # (P, L) change index into CHANGES, -1 where the folder has no truth
    p_prior: np.ndarray          # (P, L)
    p_current: np.ndarray        # (P, L)
    thresholds: np.ndarray       # (L,) decision thresholds
    change_thresholds: np.ndarray  # (L,) τ of the card (or the default)
    tuned_card: bool
    skipped: list[str]           # labels of the folder the model does not have


def score_pairs(data: str | Path, predictor: Predictor,
                progress: Callable[[int, int], None] | None = None) -> PairScores:
    """Read every film of the folder ``data`` once with ``predictor`` (no heatmaps) and line up the truth."""
    root = Path(data)
    table = read_pairs(root)
    model = {canonical(x): j for j, x in enumerate(predictor.labels)}
    folder_labels = list(dict.fromkeys(table["label"].astype(str)))
    shared = [x for x in folder_labels if canonical(x) in model]
    if not shared:
        raise ConfigError(f"The model's labels ({', '.join(predictor.labels)}) share none with {root / 'pairs.csv'} "
                          f"({', '.join(folder_labels)}); nothing to score.")
    cols = [model[canonical(x)] for x in shared]
    pairs = list(dict.fromkeys(zip(table["prior"].astype(str), table["current"].astype(str))))
    films = list(dict.fromkeys([f for pair in pairs for f in pair]))
    probs = {}
    for k, f in enumerate(films):
        img, raw = load_image(root / f)
        probs[f] = predictor.predict(img, heatmaps=False).probs[cols]
        if progress:
            progress(k + 1, len(films))
    where = {p: i for i, p in enumerate(pairs)}
    lab = {x: j for j, x in enumerate(shared)}
    truth = np.full((len(pairs), len(shared)), -1, np.int64)
    code = {c: i for i, c in enumerate(CHANGES)}
    for prior, current, x, change in zip(table["prior"].astype(str), table["current"].astype(str),
                                         table["label"].astype(str), table["change"]):
        if x in lab:
            truth[where[(prior, current)], lab[x]] = code[change]
    patients = (table.drop_duplicates(["prior", "current"])["patient"].astype(str).to_numpy()
                if "patient" in table.columns else np.array([p[0] for p in pairs]))
    card = predictor.card
    tau_all = np.array(card.change_threshold_list(DEFAULT_CHANGE_THRESHOLD))
    return PairScores(shared, pairs, patients, truth,
                      np.stack([probs[a] for a, _ in pairs]), np.stack([probs[b] for _, b in pairs]),
                      predictor.thresholds[cols], tau_all[cols], card.change_tuned,
                      [x for x in folder_labels if x not in lab])


def _calls(s: PairScores, tau: np.ndarray) -> np.ndarray:
    code = {c: i for i, c in enumerate(CHANGES)}
    return np.array([[code[c] for c in calls(s.p_prior[i], s.p_current[i], s.thresholds, tau)]
                     for i in range(len(s.pairs))], np.int64).reshape(s.truth.shape)


def _balanced(truth: np.ndarray, called: np.ndarray) -> float | None:
    m = truth >= 0
    recalls = [float((called[m & (truth == c)] == c).mean()) for c in range(len(CHANGES)) if (m & (truth == c)).any()]
    return float(np.mean(recalls)) if recalls else None


def tune(s: PairScores) -> dict[str, float]:
    """Per label, the τ of :data:`TAU_GRID` whose calls have the best balanced accuracy on these pairs (the smallest
    such τ); labels without a change in the folder keep the card's τ."""
    out = {}
    for j, x in enumerate(s.labels):
        t = s.truth[:, j]
        if not ((t >= 0) & (t != CHANGES.index("unchanged"))).any():
            continue
        best, best_tau = -1.0, float(s.change_thresholds[j])
        for tau in TAU_GRID:
            c = np.array([CHANGES.index(call(float(a), float(b), float(s.thresholds[j]), float(tau)))
                          for a, b in zip(s.p_prior[:, j], s.p_current[:, j])])
            b = _balanced(t, c)
            if b is not None and b > best + 1e-12:
                best, best_tau = b, float(tau)
        out[x] = best_tau
    return out


def _triage(s: PairScores) -> dict:
    m = s.truth >= 0
    changed = ((s.truth != CHANGES.index("unchanged")) & m).any(1)
    score = np.where(m, np.abs(s.p_current - s.p_prior), 0.0).max(1)
    if not changed.any() or changed.all():
        return {"pairs": int(len(changed)), "changed": int(changed.sum()), "sensitivity": TRIAGE_SENSITIVITY,
                "cut": None, "no_change_triaged": None,
                "note": "needs pairs with a change and pairs without one"}
    # the largest cut that keeps at least 90 % of the changed pairs at or above it
    cut = float(np.quantile(score[changed], 1 - TRIAGE_SENSITIVITY, method="lower"))
    kept = float((score[changed] >= cut).mean())
    return {"pairs": int(len(changed)), "changed": int(changed.sum()), "sensitivity": round(kept, 4),
            "cut": round(cut, 4), "no_change_triaged": round(float((score[~changed] < cut).mean()), 4),
            "no_change_pairs": int((~changed).sum())}


def registration_quality(root: str | Path, pairs: list[tuple[str, str]], n: int, deformable: bool = True
                         ) -> dict | None:
    """Register ``n`` of ``pairs`` (spread over the list; (prior, current) paths relative to ``root``): the mean NCC
    over the lung fields before and after, the warnings, the time, and, where ``root`` has ``landmarks.csv``, the
    landmark error before and after (pixels; mm with the NIH table's pixel spacing). None for ``n`` = 0."""
    if n <= 0:
        return None
    import pandas as pd

    root = Path(root)
    marks = None
    if (root / LANDMARKS_FILE).is_file():
        marks = pd.read_csv(root / LANDMARKS_FILE)
        marks = {f: g.set_index("landmark")[["x", "y"]] for f, g in marks.groupby("image")}
    spacing = _pixel_mm(root)
    pick = np.linspace(0, len(pairs) - 1, min(n, len(pairs))).round().astype(int)
    before, after, ncc0, ncc1, warned, secs = [], [], [], [], 0, []
    for i in dict.fromkeys(pick.tolist()):
        a, _ = load_image(root / pairs[i][0])
        b, _ = load_image(root / pairs[i][1])
        reg = register(a.pixels, b.pixels, deformable=deformable)
        ncc0.append(reg.ncc_before)
        ncc1.append(reg.ncc_after)
        warned += not reg.ok
        secs.append(reg.seconds)
        if marks is not None and pairs[i][0] in marks and pairs[i][1] in marks:
            lp = marks[pairs[i][0]]
            lc = marks[pairs[i][1]].loc[lp.index]
            before += np.linalg.norm(lc.to_numpy() - lp.to_numpy(), axis=1).tolist()
            after += np.linalg.norm(reg.to_prior(lc.to_numpy()) - lp.to_numpy(), axis=1).tolist()
    out = {"pairs": len(ncc0), "ncc_before": round(float(np.mean(ncc0)), 4),
           "ncc_after": round(float(np.mean(ncc1)), 4), "warnings": warned,
           "seconds_per_pair": round(float(np.mean(secs)), 3)}
    if before:
        out["landmark_error_px"] = {"before": {"mean": round(float(np.mean(before)), 2),
                                               "median": round(float(np.median(before)), 2)},
                                    "after": {"mean": round(float(np.mean(after)), 2),
                                              "median": round(float(np.median(after)), 2),
                                              "p95": round(float(np.percentile(after, 95)), 2)},
                                    "landmarks": len(after)}
        if spacing:
            out["landmark_error_mm"] = {"pixel_mm": spacing,
                                        "before": round(float(np.mean(before)) * spacing, 2),
                                        "after": round(float(np.mean(after)) * spacing, 2)}
    return out


def _pixel_mm(root: Path) -> float | None:
    import pandas as pd

    table = root / "Data_Entry_2017.csv"
    if not table.is_file():
        return None
    try:
        t = pd.read_csv(table, usecols=["OriginalImagePixelSpacing[x"], nrows=1)
        return float(t.iloc[0, 0])
    except (ValueError, KeyError, IndexError):
        return None


def evaluate(s: PairScores, tau: np.ndarray | None = None, n_boot: int = 1000, seed: int = 0) -> dict:
    """The answer of ``cxr eval-change --json`` for scores ``s`` at change thresholds ``tau`` (default: the card's)."""
    tau = s.change_thresholds if tau is None else np.asarray(tau, dtype=np.float64)
    called = _calls(s, tau)
    m = s.truth >= 0
    unchanged = CHANGES.index("unchanged")
    delta = np.abs(s.p_current - s.p_prior)
    correct = np.where(m, (called == s.truth).astype(np.float64), np.nan)
    ones = np.where(m, 1.0, np.nan)
    acc = patient_bootstrap(ones, np.nan_to_num(correct), s.patients, "accuracy", n_boot, seed)
    changed = np.where(m, (s.truth != unchanged).astype(np.float64), np.nan)
    auc = patient_bootstrap(changed, delta, s.patients, "auroc", n_boot, seed)
    labels = {}
    for j, x in enumerate(s.labels):
        mj = m[:, j]
        conf = {CHANGES[t]: {CHANGES[c]: int(((s.truth[:, j] == t) & (called[:, j] == c) & mj).sum())
                             for c in range(len(CHANGES)) if ((s.truth[:, j] == t) & (called[:, j] == c) & mj).any()}
                for t in range(len(CHANGES)) if ((s.truth[:, j] == t) & mj).any()}
        n_changed = int(((s.truth[:, j] != unchanged) & mj).sum())
        labels[x] = {
            "n": int(mj.sum()), "n_changed": n_changed,
            "accuracy": _r(acc.estimate[j]), "accuracy_ci": [_r(acc.low[j]), _r(acc.high[j])],
            "balanced_accuracy": _r(_balanced(s.truth[:, j], called[:, j])),
            "change_auroc": _r(auc.estimate[j]) if 0 < n_changed < mj.sum() else None,
            "change_auroc_ci": [_r(auc.low[j]), _r(auc.high[j])] if 0 < n_changed < mj.sum() else None,
            "change_threshold": round(float(tau[j]), 4), "threshold": round(float(s.thresholds[j]), 4),
            "confusion": conf,
        }

    def mean(key):
        v = [d[key] for d in labels.values() if d[key] is not None]
        return _r(float(np.mean(v))) if v else None

    return {"labels": labels,
            "mean": {"accuracy": mean("accuracy"), "change_auroc": mean("change_auroc"),
                     "balanced_accuracy": mean("balanced_accuracy")},
            "triage": _triage(s), "pairs": len(s.pairs), "skipped_labels": s.skipped,
            "calls": list(CHANGES)}


def _r(v) -> float | None:
    return None if v is None or not np.isfinite(v) else round(float(v), 4)


def eval_change(data: str | Path, predictor: Predictor, *, tune_here: bool = False, register_n: int = 20,
                n_boot: int = 1000, progress: Callable[[int, int], None] | None = None) -> dict:
    """Score ``predictor``'s change calls on the folder of pairs ``data`` (the module's docstring). ``tune_here``:
    tune τ on this folder first and score with it (``tuned`` holds the values; optimistic, said in the answer)."""
    t0 = time.perf_counter()
    s = score_pairs(data, predictor, progress)
    tuned = tune(s) if tune_here else None
    tau = None if tuned is None else np.array([tuned.get(x, float(s.change_thresholds[j]))
                                               for j, x in enumerate(s.labels)])
    out = evaluate(s, tau, n_boot)
    out["change_thresholds"] = ("tuned on this folder (optimistic)" if tuned else
                                "the model's tuned values" if s.tuned_card else
                                f"default {DEFAULT_CHANGE_THRESHOLD} (not tuned)")
    if tuned is not None:
        out["tuned"] = tuned
    out["registration"] = registration_quality(data, s.pairs, register_n)
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out
