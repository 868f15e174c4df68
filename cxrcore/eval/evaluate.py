"""Evaluate a checkpoint on a dataset split: every metric with a patient-bootstrap CI.

Model outputs come from :func:`cxrcore.eval.predictions.predict_split`, so they are cached in the
workspace and a second evaluation (another ``n_boot``, a comparison) runs no model. Patients come
from the dataset index (``patient_id``, matched by ``image_id``); all intervals resample patients.

``evaluate`` returns a JSON-ready dict (None where a metric is undefined). ``run_evaluation``
also returns the arrays behind it (:class:`EvalData`) for the predictions CSV and the HTML report.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.index import DatasetIndex
from ..data.readers import read_dataset
from ..errors import AccessError, ConfigError, DataError
from ..labels import match_labels
from ..predictor import Predictor
from .bootstrap import _f, bootstrap_mean, paired_bootstrap_delta, patient_bootstrap, percentile_ci
from .calibration import (LOG_T_BOUNDS, binary_nll, calibrate_probs, fit_temperatures, logits_from_probs,
                          per_label_brier, per_label_ece, per_label_reliability)
from .delong import delong_test, per_label_delong_ci
from .metrics import confusion_at, mean_ignoring_nan
from .predictions import SplitPredictions, align_to, fuse_studies, predict_split, trained_on_laterals
from .subgroups import subgroup_metrics, to_records

RATES = ("sensitivity", "specificity", "ppv", "npv", "f1")


@dataclass
class EvalData:
    """The arrays an evaluation rests on (rows = images of the split, columns = the model's labels)."""
    labels: list[str]
    image_ids: list[str]
    patient_ids: np.ndarray
    targets: np.ndarray
    probs: np.ndarray
    thresholds: np.ndarray
    calibrated: np.ndarray | None = None               # temperature-scaled probs, when fitted
    compare: dict | None = field(default=None)         # shared labels, targets, probs_a, probs_b, patient_ids


def _mean_over_labels(res, cols: list[int], alpha: float) -> dict:
    """Mean of a per-label metric over ``cols`` with a CI from the replicates in which every one
    of those labels was defined (the same set of labels in every replicate)."""
    if not cols:
        return {"value": None, "low": None, "high": None, "n_valid": 0}
    reps = res.replicates[:, cols]
    ok = ~np.isnan(reps).any(1)
    means = np.where(ok, reps.mean(1) if reps.size else np.nan, np.nan)
    lo, hi, n_valid = percentile_ci(means[:, None], alpha)
    return {"value": _f(mean_ignoring_nan(res.estimate[cols])), "low": _f(lo[0]), "high": _f(hi[0]),
            "n_valid": int(n_valid[0])}


def _index(data) -> DatasetIndex:
    return data if isinstance(data, DatasetIndex) else read_dataset(data)


def _patients(index: DatasetIndex, image_ids: list[str]) -> np.ndarray:
    lookup = dict(zip(index.frame["image_id"].astype(str), index.frame["patient_id"].astype(str)))
    missing = [i for i in image_ids if i not in lookup]
    if missing:
        raise DataError(f"{len(missing)} predicted images are not in the index of {index.name} "
                        f"(e.g. {missing[0]}); the prediction cache does not match the dataset.")
    return np.array([lookup[i] for i in image_ids], dtype=object)


def samples_prf(true: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image precision, recall and F1 over its labels (boolean (N, L) arrays): the terms whose mean is
    sklearn's ``precision_recall_fscore_support(average="samples", zero_division=1)`` (an image with nothing
    to find and nothing predicted scores 1). Per image, so the patient bootstrap can resample them."""
    tp = (true & pred).sum(1).astype(float)
    n_pred, n_true = pred.sum(1).astype(float), true.sum(1).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(n_pred > 0, tp / n_pred, 1.0)
        recall = np.where(n_true > 0, tp / n_true, 1.0)
        f1 = np.where(n_pred + n_true > 0, 2 * tp / (n_pred + n_true), 1.0)
    return precision, recall, f1


def _multilabel(targets, probs, thresholds, cols, pids, n_boot, seed, alpha) -> dict:
    """Hamming loss, subset accuracy and samples-averaged precision / recall / F1 (seed 004) over the labels
    in ``cols`` on images labelled for all of them, at the card's thresholds."""
    if not cols:
        return {"labels": [], "n_images": 0, "hamming_loss": None, "subset_accuracy": None,
                "samples_precision": None, "samples_recall": None, "samples_f1": None}
    t = targets[:, cols]
    rows = ~np.isnan(t).any(1)
    pred = probs[rows][:, cols] >= thresholds[cols]
    true = t[rows] == 1
    wrong = pred != true
    precision, recall, f1 = samples_prf(true, pred)
    boot = lambda v: bootstrap_mean(v, pids[rows], n_boot, seed, alpha)  # noqa: E731
    return {
        "labels": cols, "n_images": int(rows.sum()),
        "hamming_loss": boot(wrong.mean(1)), "subset_accuracy": boot(~wrong.any(1)),
        "samples_precision": boot(precision), "samples_recall": boot(recall), "samples_f1": boot(f1),
    }


def _temperature(predictor: Predictor, index: DatasetIndex, split: str, targets, probs,
                 progress, policy: str = "zeros", tta: str = "none", limits=None) -> tuple[dict, np.ndarray | None]:
    """Per-label temperatures fitted on the val split, applied to this split (only for ``test``)."""
    if split != "test":
        return {"fitted": False, "note": f"temperature scaling is fitted on the val split and reported on the test "
                                          f"split; not done for split={split!r}"}, None
    try:
        val = predict_split(predictor, index, "val", policy=policy, progress=progress, tta=tta, limits=limits)
    except DataError as exc:
        return {"fitted": False, "note": f"no val split to fit temperatures on: {exc}"}, None
    except AccessError as exc:  # a visitor's ceiling on images: the evaluation stands, uncalibrated
        return {"fitted": False, "note": f"temperatures not fitted: {exc}"}, None
    temps = fit_temperatures(val.targets, logits_from_probs(val.probs))
    fitted = [j for j in range(len(temps)) if j in set(val.evaluable())]
    cal = calibrate_probs(probs, temps)
    per = {}
    for j, x in enumerate(predictor.labels):
        m = ~np.isnan(targets[:, j])
        y = targets[m, j]
        per[x] = {"temperature": float(temps[j]), "fitted": j in fitted,
                  "at_bound": bool(np.isclose(np.log(temps[j]), LOG_T_BOUNDS, atol=1e-3).any()),
                  "nll_before": _f(binary_nll(y, probs[m, j])) if y.size else None,
                  "nll_after": _f(binary_nll(y, cal[m, j])) if y.size else None}
    ece_after, brier_after = per_label_ece(targets, cal), per_label_brier(targets, cal)
    for j, x in enumerate(predictor.labels):
        per[x].update(ece_after=_f(ece_after[j]), brier_after=_f(brier_after[j]))
    return {"fitted": True, "fitted_on": "val", "n_val_images": len(val.image_ids), "per_label": per}, cal


def _comparison(preds: SplitPredictions, pids: np.ndarray, other: Predictor, index: DatasetIndex, split: str,
                n_boot: int, seed: int, alpha: float, progress, tta: str = "none", fuse: str = "none",
                laterals: bool | None = None, limits=None) -> tuple[dict, dict]:
    other_preds = predict_split(other, index, split, progress=progress, tta=tta, laterals=laterals, limits=limits)
    if fuse and fuse != "none":
        other_preds, _ = fuse_studies(other_preds, index, fuse)
    pos_b = {x: i for i, x in enumerate(other_preds.image_ids)}
    rows_a = np.array([i for i, x in enumerate(preds.image_ids) if x in pos_b], dtype=int)
    if not rows_a.size:
        raise DataError(f"The two checkpoints' {split} splits of {index.name} share no image "
                        "(they were trained with different split seeds); use --split all.")
    rows_b = np.array([pos_b[preds.image_ids[i]] for i in rows_a], dtype=int)
    _, probs_b_all, shared = align_to(other_preds, preds.labels)
    if not shared:
        raise ConfigError(f"The two checkpoints share no label ({', '.join(preds.labels[:4])}, … vs "
                          f"{', '.join(other.labels[:4])}, …); nothing to compare.")
    cols_a = [preds.labels.index(x) for x in shared]
    names_b = {preds.labels[j]: other.labels[i] for j, i in match_labels(other.labels, preds.labels).items()}
    T = preds.targets[rows_a][:, cols_a]
    Pa = preds.probs[rows_a][:, cols_a]
    Pb = probs_b_all[rows_b]
    P = pids[rows_a]
    delta = paired_bootstrap_delta(T, Pa, Pb, P, "auroc", n_boot, seed, alpha)
    dl = delong_test(T, Pa, Pb, shared)
    per, wins, losses, ties, sig_w, sig_l = {}, [], [], [], [], []
    for j, x in enumerate(shared):
        d = delta.delta[j]
        entry = {"label_compare": names_b[x], "n": int(dl.n_pos[j] + dl.n_neg[j]), "positives": int(dl.n_pos[j]),
                 "auroc_checkpoint": _f(delta.estimate_a[j]), "auroc_compare": _f(delta.estimate_b[j]),
                 "delta_auroc": delta.label(j), "delong": dl.label(j)}
        if not np.isnan(d):
            (wins if d > 0 else losses if d < 0 else ties).append(x)
            if dl.p[j] < alpha:
                (sig_w if d > 0 else sig_l).append(x)
        per[x] = entry
    cols = [j for j in range(len(shared)) if not np.isnan(delta.delta[j])]
    ok = ~np.isnan(delta.replicates[:, cols]).any(1) if cols else np.zeros(n_boot, bool)
    mean_reps = np.where(ok, delta.replicates[:, cols].mean(1) if cols else np.nan, np.nan)
    lo, hi, nv = percentile_ci(mean_reps[:, None], alpha)
    out = {
        "compare_to": str(other.path), "compare_model": other.name, "delta_definition": "compare_to - checkpoint",
        "n_images": int(len(rows_a)), "n_patients": int(len(set(P))), "shared_labels": shared,
        "evaluable_labels": [shared[j] for j in cols],
        "per_label": per,
        "mean_delta_auroc": {"value": _f(np.mean(delta.delta[cols])) if cols else None, "low": _f(lo[0]),
                             "high": _f(hi[0]), "n_valid": int(nv[0])},
        "mean_auroc_checkpoint": _f(mean_ignoring_nan(delta.estimate_a)),
        "mean_auroc_compare": _f(mean_ignoring_nan(delta.estimate_b)),
        "wins": wins, "losses": losses, "ties": ties,
        "significant_wins": sig_w, "significant_losses": sig_l,
        "note": "wins / losses are labels where compare_to has the higher / lower AUROC; significant: DeLong p < "
                f"{alpha} (DeLong assumes independent images; the bootstrap CI resamples patients)",
    }
    arrays = {"labels": shared, "targets": T, "probs_a": Pa, "probs_b": Pb, "patient_ids": P,
              "name_a": None, "name_b": other.name}
    return out, arrays


def eval_policy(predictor: Predictor, policy: str | dict | None) -> tuple[str | dict, str]:
    """(policy, where it came from): the one asked for, else the model's training policy, else U-Zeros."""
    if policy is not None:
        from ..data.index import parse_policy

        parse_policy(policy)  # DataError for a bad one
        return policy, "chosen"
    trained = (predictor.card.data or {}).get("policy")
    if trained:
        return trained, "the model's training policy"
    return "zeros", "default (the model's card records no training policy)"


def describe_split(predictor: Predictor, index: DatasetIndex, split: str) -> str:
    """What the evaluated images are, in words (the page and the report show it)."""
    method = (predictor.card.data or {}).get("split_method", "hash")
    same_data = (predictor.card.data or {}).get("name") == index.name
    if split == "official_test":
        what = "test_list.txt" if index.format == "nih" else "valid.csv" if index.format == "chexpert" else "test list"
        text = f"official test split ({what})"
        if same_data and method != "official":
            text += ("; this model trained on this dataset with a " + method + " split, so some of these images "
                     "may have been in its training split")
        return text
    if split == "all":
        return "every image" + ("" if not same_data else " (including the model's training images)")
    if method == "official":
        return (f"official test split ({'test_list.txt' if index.format == 'nih' else 'valid.csv'})" if split == "test"
                else f"the model's {split} split (patients of the official training part)")
    return f"the model's own {split} split ({method} by patient)"


def reference_columns(labels: list[str]) -> dict:
    """Published per-label AUROCs on NIH ChestX-ray14 for ``labels`` (see cxrcore.eval.reference)."""
    from .reference import SOURCES, published_auroc

    return {k: {**SOURCES[k], "auroc": published_auroc(labels, k)} for k in SOURCES}


def run_evaluation(checkpoint: str | Path, data: str | Path | DatasetIndex, split: str = "test", n_boot: int = 1000,
                   compare_to: str | Path | None = None, *, seed: int = 0, alpha: float = 0.05, n_bins: int = 10,
                   calibrate: bool = True, progress=None, policy: str | dict | None = None,
                   tta: str = "none", fuse: str = "none", laterals: bool | None = None,
                   limits=None, site: str | None = None) -> tuple[dict, EvalData]:
    """``policy``: how uncertain (-1) labels become targets; None: the model's own training policy (its
    card), so a model trained with U-Ones is scored with U-Ones; any of zeros / ones / ignore or a mix.
    ``limits``: a visitor's ceilings (:func:`cxrcore.hosting.limits`; None for the operator's own tools):
    AccessError before any model runs for more bootstrap replicates than ``CXR_MAX_BOOTSTRAP``, more
    test-time views than ``CXR_MAX_TTA_VIEWS`` or a split of more images than ``CXR_MAX_EVAL_IMAGES``.
    ``site``: the model as used at that site (its profile's thresholds, :meth:`cxrcore.models.card.Card.with_site`);
    the result's ``site`` names it."""
    if n_boot < 1:
        raise ConfigError(f"n_boot must be at least 1 (got {n_boot}); 1000 or more for reported intervals.")
    if limits:
        from .tta import VIEWS, check_tta

        limits.check("bootstrap", n_boot, "Bootstrap replicates", "Choose fewer replicates.")
        mode = check_tta(tta)
        limits.check("tta_views", VIEWS[mode], f"Test-time augmentation {mode} ({VIEWS[mode]} views per image)",
                     "Choose fewer views (flip: 2, none: 1).")
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must lie in (0, 1) (got {alpha}).")
    t0 = time.perf_counter()
    index = _index(data)
    predictor = Predictor(checkpoint)
    predictor.set_card(predictor.card.with_site(site))
    policy, policy_source = eval_policy(predictor, policy)
    preds = predict_split(predictor, index, split, policy=policy, progress=progress, tta=tta, laterals=laterals,
                          limits=limits)
    t_pred = time.perf_counter() - t0
    n_views = len(preds.image_ids)
    if fuse and fuse != "none":  # study level: a study's frontal and lateral predictions combined
        preds, pids = fuse_studies(preds, index, fuse)
    else:
        pids = _patients(index, preds.image_ids)
    targets, probs = preds.targets.astype(np.float64), preds.probs.astype(np.float64)
    thresholds = predictor.thresholds.astype(np.float64)
    labels = preds.labels
    evaluable = preds.evaluable()

    boot = lambda scores, metric: patient_bootstrap(targets, scores, pids, metric, n_boot, seed, alpha)  # noqa: E731
    auroc, auprc = boot(probs, "auroc"), boot(probs, "auprc")
    decisions = (probs >= thresholds[None, :]).astype(np.float64)
    rates = {r: boot(decisions, r) for r in RATES}
    ece_b, brier_b = boot(probs, "ece"), boot(probs, "brier")
    conf = confusion_at(targets, probs, thresholds)
    ece, brier = per_label_ece(targets, probs, n_bins), per_label_brier(targets, probs)
    dl_ci = per_label_delong_ci(targets, probs, alpha)
    bins = per_label_reliability(targets, probs, n_bins)

    per_label = {}
    for j, x in enumerate(labels):
        m = ~np.isnan(targets[:, j])
        n_pos = int((targets[m, j] == 1).sum())
        entry = {
            "n": int(m.sum()), "positives": n_pos, "negatives": int(m.sum()) - n_pos,
            "prevalence": _f(n_pos / m.sum()) if m.sum() else None, "evaluable": j in evaluable,
            "auroc": auroc.label(j), "auroc_delong_ci": {"low": _f(dl_ci[j, 1]), "high": _f(dl_ci[j, 2])},
            "auprc": auprc.label(j),
            "threshold": float(thresholds[j]),
            "threshold_source": "card" if x in predictor.card.thresholds else "default 0.5",
            **{k: int(conf[k][j]) for k in ("tp", "fp", "fn", "tn")},
        }
        for r in RATES:
            entry[r] = {**rates[r].label(j), "value": _f(conf[r][j])}
        entry["ece"] = {**ece_b.label(j), "value": _f(ece[j])}
        entry["brier"] = {**brier_b.label(j), "value": _f(brier[j])}
        entry["reliability"] = {k: [(_f(v) if k != "count" else int(v)) for v in a] for k, a in bins[j].items()} \
            if m.any() else None
        per_label[x] = entry

    with_pos = [j for j in range(len(labels)) if j in evaluable]
    summary = {
        "labels_evaluated": [labels[j] for j in with_pos],
        "labels_not_evaluated": {labels[j]: ("not in the dataset" if per_label[labels[j]]["n"] == 0 else
                                             "no positives" if per_label[labels[j]]["positives"] == 0 else "no negatives")
                                 for j in range(len(labels)) if j not in with_pos},
        "mean_auroc": _mean_over_labels(auroc, with_pos, alpha),
        "mean_auprc": _mean_over_labels(auprc, with_pos, alpha),
    }
    ml = _multilabel(targets, probs, thresholds, with_pos, pids, n_boot, seed, alpha)
    summary.update(hamming_loss=ml["hamming_loss"], subset_accuracy=ml["subset_accuracy"],
                   samples_precision=ml["samples_precision"], samples_recall=ml["samples_recall"],
                   samples_f1=ml["samples_f1"],
                   multilabel_images=ml["n_images"], multilabel_labels=[labels[j] for j in ml["labels"]])

    calibration, calibrated = ({"fitted": False, "note": "not requested"}, None)
    if calibrate:
        calibration, calibrated = _temperature(predictor, index, split, targets, probs, progress, policy, tta, limits)

    comparison, compare_arrays = None, None
    if compare_to is not None:
        comparison, compare_arrays = _comparison(preds, pids, Predictor(compare_to), index, split, n_boot, seed,
                                                 alpha, progress, tta, fuse, laterals, limits)
        compare_arrays["name_a"] = predictor.name

    key = "study_id" if fuse and fuse != "none" else "image_id"   # a study's sex / age / view: its first image's
    meta = index.frame.drop_duplicates(key)
    meta = meta.set_index(meta[key].astype(str).to_numpy()).reindex([str(i) for i in preds.image_ids])
    meta = meta.reset_index(drop=True)
    meta["patient_id"] = pids
    subgroups = to_records(subgroup_metrics(targets, probs, thresholds, meta, labels))

    sizes = np.unique(pids.astype(str), return_counts=True)[1]
    result = {
        "checkpoint": str(Path(checkpoint)), "model": predictor.name, "labels": labels,
        "site": predictor.card.metrics.get("site"),
        "dataset": index.name, "dataset_root": str(index.root), "split": split,
        "split_description": describe_split(predictor, index, split), "dataset_format": index.format,
        "policy": policy, "policy_source": policy_source,
        "tta": tta, "fusion": fuse or "none", "n_views": n_views,
        "laterals": bool(laterals if laterals is not None else trained_on_laterals(predictor)),
        "reference": reference_columns(labels) if index.format == "nih" else None,
        "n_images": len(preds.image_ids), "n_patients": int(len(sizes)), "max_images_per_patient": int(sizes.max()),
        "bootstrap": {"n_boot": n_boot, "seed": seed, "alpha": alpha, "unit": "patient", "interval": "percentile",
                      "note": "images are resampled by patient; n_valid = replicates in which the metric was defined"},
        "per_label": per_label, "summary": summary, "calibration": calibration, "comparison": comparison,
        "subgroups": subgroups,
        "seconds": {"predict": round(t_pred, 3), "total": round(time.perf_counter() - t0, 3)},
    }
    data_out = EvalData(labels, list(preds.image_ids), pids, targets, probs, thresholds, calibrated, compare_arrays)
    return result, data_out


def evaluate(checkpoint: str | Path, data: str | Path | DatasetIndex, split: str = "test", n_boot: int = 1000,
             compare_to: str | Path | None = None, **kwargs) -> dict:
    """Metrics of ``checkpoint`` on ``split`` of ``data`` with patient-bootstrap CIs (see module doc).

    Keys: ``per_label`` (n, positives, AUROC / AUPRC with CI and the DeLong CI of AUROC, sensitivity,
    specificity, PPV, NPV, F1 at the card's thresholds with CIs, ECE, Brier, reliability bins),
    ``summary`` (mean AUROC / AUPRC over labels with positives and negatives, Hamming loss, subset
    accuracy), ``calibration`` (per-label temperatures fitted on val when ``split='test'``) and, with
    ``compare_to``, ``comparison`` (per shared label ΔAUROC = compare_to − checkpoint with a paired
    patient-bootstrap CI, DeLong z and p; wins / losses), ``subgroups`` (records of
    :func:`cxrcore.eval.subgroups.subgroup_metrics`: per sex / age band / AP-PA view / source and label,
    n images and patients, AUROC, sensitivity and specificity at the card's thresholds and their gaps
    to the whole split; None where undefined).
    """
    return run_evaluation(checkpoint, data, split, n_boot, compare_to, **kwargs)[0]
