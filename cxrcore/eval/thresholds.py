"""Per-label decision thresholds: pick them on a validation split, store them in the checkpoint card.

Where a save goes (:func:`save_target`): a card every visitor sees (a run's, the workspace's shared copy of a
shipped or library model) is changed in place only by whoever may (:func:`cxrcore.hosting.why_not_save`: the
run's owner, an admin, the operator, one person on their own machine); anyone else saves into their own copy,
``<workspace>/checkpoints/users/<user key>/<name>``, which only they are offered (:func:`own_copies_root`)."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import workspace
from ..checkpoint import read_card, shipped_copy_state, write_card
from ..errors import CheckpointError
from .metrics import best_f1_thresholds


def _labelled(targets: np.ndarray, scores: np.ndarray):
    """Each label's column ``j`` with its labelled rows only: ``(j, truths, scores as float64)``."""
    for j in range(targets.shape[1]):
        m = ~np.isnan(targets[:, j])
        yield j, targets[m, j], scores[m, j].astype(np.float64)


def youden_thresholds(targets: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per label, the threshold maximising sensitivity + specificity - 1 (0.5 where undefined)."""
    from sklearn.metrics import roc_curve

    out = np.full(targets.shape[1], 0.5)
    for j, y, s in _labelled(targets, scores):
        if y.size and 0 < y.sum() < y.size:
            fpr, tpr, thr = roc_curve(y, s)
            k = int(np.argmax(tpr - fpr))
            out[j] = float(min(1.0, thr[k]))
    return out


def _candidates(y: np.ndarray, s: np.ndarray):
    """Unique scores (ascending) and, at each as threshold (``score >= t`` is positive), TP and TN."""
    u, inv = np.unique(s, return_inverse=True)
    pos_at = np.bincount(inv, weights=(y == 1), minlength=len(u))
    neg_at = np.bincount(inv, weights=(y == 0), minlength=len(u))
    tp = np.cumsum(pos_at[::-1])[::-1]          # positives with score >= u[i]
    tn = np.cumsum(neg_at) - neg_at             # negatives with score < u[i]
    return u, tp, tn


def _check_target(target) -> float:
    if target is None or not 0.0 <= float(target) <= 1.0:
        raise ValueError(f"target must lie in [0, 1] (got {target!r}).")
    return float(target)


def target_sensitivity_thresholds(targets: np.ndarray, scores: np.ndarray, target: float = 0.9) -> np.ndarray:
    """Per label, the highest threshold (among the label's unique labelled scores) whose sensitivity
    (``score >= t`` called positive) is >= ``target``; 0.5 where the label has no positives.

    The lowest score always qualifies (sensitivity 1), so a threshold exists whenever there are positives.
    """
    target = _check_target(target)
    out = np.full(targets.shape[1], 0.5)
    for j, y, s in _labelled(targets, scores):
        P = (y == 1).sum()
        if P == 0:
            continue
        u, tp, _ = _candidates(y, s)
        ok = np.flatnonzero(tp / P >= target)   # sensitivity is non-increasing in t: ok is a prefix
        out[j] = float(u[ok[-1]])
    return out


def target_specificity_thresholds(targets: np.ndarray, scores: np.ndarray, target: float = 0.9) -> np.ndarray:
    """Per label, the lowest threshold (among the label's unique labelled scores) whose specificity
    (``score < t`` called negative) is >= ``target``; 0.5 where the label has no negatives.

    If no score qualifies (e.g. target 1 and a negative holds the top score) the threshold is the
    next float above the top score (specificity 1), capped at 1.0 (thresholds live in [0, 1]; a
    negative scored exactly 1.0 then keeps specificity below 1).
    """
    target = _check_target(target)
    out = np.full(targets.shape[1], 0.5)
    for j, y, s in _labelled(targets, scores):
        N = (y == 0).sum()
        if N == 0:
            continue
        u, _, tn = _candidates(y, s)
        ok = np.flatnonzero(tn / N >= target)   # specificity is non-decreasing in t: ok is a suffix
        out[j] = float(u[ok[0]]) if ok.size else float(min(1.0, np.nextafter(u[-1], np.inf)))
    return out


# name -> f(targets, scores[, target=]) -> per-label thresholds. Strategies in TARGETED take ``target=``.
STRATEGIES = {"max F1": best_f1_thresholds, "Youden's J": youden_thresholds,
              "target sensitivity": target_sensitivity_thresholds,
              "target specificity": target_specificity_thresholds}
TARGETED = ("target sensitivity", "target specificity")
MANUAL = "manual"


def suggest_thresholds(strategy: str, targets: np.ndarray, scores: np.ndarray, target: float | None = None) -> np.ndarray:
    """Per-label thresholds by ``strategy`` (a key of :data:`STRATEGIES`); ``target`` for the targeted ones."""
    if strategy not in STRATEGIES:
        raise ValueError(f"Unknown threshold strategy {strategy!r}; use one of {list(STRATEGIES)}.")
    if strategy in TARGETED:
        return STRATEGIES[strategy](targets, scores, target=_check_target(target))
    return STRATEGIES[strategy](targets, scores)


def snap(thresholds: np.ndarray, strategy: str, step: float = 0.01) -> np.ndarray:
    """Thresholds on a slider grid of ``step`` without losing what the strategy guarantees:
    target sensitivity rounds down (lower threshold: sensitivity can only rise), target
    specificity rounds up; the others round to the nearest step. Clipped to [0, 1]."""
    t = np.asarray(thresholds, dtype=np.float64)
    k = t / step
    if strategy == "target sensitivity":
        k = np.floor(k + 1e-9)
        g = k * step
        g = np.where(g > t, (k - 1) * step, g)   # float error must never push it above t
    elif strategy == "target specificity":
        k = np.ceil(k - 1e-9)
        g = k * step
        g = np.where(g < t, (k + 1) * step, g)
    else:
        g = np.round(k) * step
    return np.clip(np.round(g, 10), 0.0, 1.0)


class ThresholdSweep:
    """Confusion counts at any per-label thresholds in O(L log N): per label, the sorted scores of
    its labelled positives and negatives are cached once; a threshold move is two ``searchsorted``.

    ``at(thresholds)`` returns the same dict as :func:`cxrcore.eval.metrics.confusion_at`.
    """

    def __init__(self, targets: np.ndarray, scores: np.ndarray):
        self.pos, self.neg = [], []
        for j in range(targets.shape[1]):
            t = targets[:, j]
            self.pos.append(np.sort(scores[t == 1, j].astype(np.float64)))
            self.neg.append(np.sort(scores[t == 0, j].astype(np.float64)))
        self.P = np.array([len(a) for a in self.pos])
        self.N = np.array([len(a) for a in self.neg])

    def at(self, thresholds: np.ndarray) -> dict[str, np.ndarray]:
        thr = np.asarray(thresholds, dtype=np.float64)
        fn = np.array([np.searchsorted(a, t, "left") for a, t in zip(self.pos, thr)], dtype=np.int64)
        tn = np.array([np.searchsorted(a, t, "left") for a, t in zip(self.neg, thr)], dtype=np.int64)
        tp, fp = self.P - fn, self.N - tn
        with np.errstate(divide="ignore", invalid="ignore"):
            return {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "sensitivity": tp / (tp + fn), "specificity": tn / (tn + fp),
                    "ppv": tp / (tp + fp), "npv": tn / (tn + fn), "f1": 2 * tp / (2 * tp + fp + fn)}


def tunable_labels(targets: np.ndarray) -> list[int]:
    """Columns of ``targets`` with both positives and negatives (NaN = unknown): the labels a threshold can be tuned on."""
    return [j for j in range(targets.shape[1]) if np.nansum(targets[:, j]) > 0 and np.nansum(1 - targets[:, j]) > 0]


def label_curves(targets: np.ndarray, scores: np.ndarray) -> list[dict]:
    """Per column: ROC (fpr, tpr) and precision-recall curves over the known cases, and the prevalence."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    curves = []
    for j in range(targets.shape[1]):
        m = ~np.isnan(targets[:, j])
        fpr, tpr, _ = roc_curve(targets[m, j], scores[m, j])
        prec, rec, _ = precision_recall_curve(targets[m, j], scores[m, j])
        curves.append({"fpr": fpr, "tpr": tpr, "precision": prec, "recall": rec,
                       "prevalence": float(np.mean(targets[m, j] == 1))})
    return curves


def operating_table(labels: list[str], thresholds: np.ndarray, conf: dict, auroc: np.ndarray) -> pd.DataFrame:
    """The Thresholds page's table: one row per label."""
    return pd.DataFrame({
        "label": list(labels), "threshold": np.asarray(thresholds, dtype=np.float64), "AUROC": auroc,
        "sensitivity": conf["sensitivity"], "specificity": conf["specificity"], "PPV": conf["ppv"],
        "NPV": conf["npv"], "F1": conf["f1"], "TP": conf["tp"], "FP": conf["fp"], "FN": conf["fn"], "TN": conf["tn"],
    })


OWN_COPY_TAG = " (your thresholds)"        # the model lists' name of a copy with your thresholds (ui.common too)
SHARED_COPY_TAG = " (shared thresholds)"   # the workspace's shared copy, as a shared server's visitors see it
USERS = "users"                             # <workspace>/checkpoints/users/<user key>/: visitors' own copies
COPY_INFO = "copy.json"                     # beside an own copy's card: what it is a copy of, and whose
IN_PLACE, SHARED_COPY, OWN_COPY = "in place", "shared copy", "own copy"


def user_key(user) -> str:
    """A folder name for ``user`` (a :class:`cxrcore.hosting.User`): readable, and a hash of the whole id so
    two ids never share a folder (an anonymous visitor's id holds their browser session's token)."""
    ident = str(user.id)
    readable = re.sub(r"[^a-z0-9._@-]+", "_", ident.lower()).strip("._-")[:40] or "user"
    return f"{readable}-{hashlib.sha256(ident.encode()).hexdigest()[:10]}"


def own_copies_root(user, settings=None) -> Path | None:
    """The folder holding ``user``'s own copies, or None when their saves go to the workspace's shared copies
    (the operator, one person's own machine, an admin: see :func:`cxrcore.hosting.why_not_save`)."""
    from .. import hosting

    if hosting.why_not_save(user, None, settings) is None:
        return None
    return workspace.sub("checkpoints") / USERS / user_key(user)


def run_copy_name(run_parts) -> str:
    """The folder name of an own copy of run ``runs/<a>[/<b>]`` (``run-a[-b]``)."""
    return "run-" + "-".join(run_parts)


@dataclass(frozen=True)
class SaveTarget:
    """Where saving thresholds / temperatures for ``source`` goes, and why, in words for the page (shown
    before saving; empty when there is nothing to say: one person's own run, saved in place as always).

    ``kind``: ``in place`` (the card shown), ``shared copy`` (the workspace's copy of a shipped / library
    model: those are never changed) or ``own copy`` (the user's own, made on the first save). ``label``: the
    model as the lists name it; ``display``: the target's name in the lists."""

    source: str
    folder: Path
    kind: str
    label: str
    display: str
    reason: str
    library: str | None = None     # the library model name, for a library model
    origin: Path | None = None     # the checkpoint folder shown (None for a library model: made on saving)

    @property
    def in_place(self) -> bool:
        return self.kind == IN_PLACE


def _job_run(folder: Path) -> tuple[str | None, Path | None]:
    """(owner, run folder) of the job whose run folder holds ``folder``; (None, None) when no job made it."""
    db = workspace.jobs_db()
    if not db.is_file():
        return None, None
    from ..jobs.store import JobStore

    dirs = {}
    for job in JobStore(db).list(limit=None):
        try:
            dirs.setdefault(Path(job.run_dir).resolve(), job.owner)
        except (OSError, RuntimeError, ValueError):
            continue
    for parent in (folder, *folder.parents):
        if parent in dirs:
            return dirs[parent], parent
    return None, None


def _copy_label(folder: Path) -> str:
    """How the lists name the model a workspace copy was made of."""
    try:
        info = json.loads((folder / COPY_INFO).read_text())
        if info.get("label"):
            return str(info["label"])
    except (OSError, ValueError):
        pass
    from ..models.library import library_names, slug

    if folder.name in ("baseline", "finetuned"):
        return folder.name
    try:
        return next((n for n in library_names() if slug(n) == folder.name), folder.name)
    except Exception:  # noqa: BLE001 - the library's list is only used for a name here
        return folder.name


def save_target(checkpoint: str | Path, user=None, settings=None) -> SaveTarget:
    """Where saving into ``checkpoint`` goes for ``user`` (default: the operator, as the CLI and Python callers)
    under ``settings`` (default: read now), and why. Nothing is written.

    - Shipped and library models are never changed: a save goes to the workspace's shared copy when
      :func:`cxrcore.hosting.why_not_save` allows (the operator, one person's own machine, an admin),
      else to the user's own copy.
    - The shared copy and a run's card (whose owner is the job that produced the run) are changed in place by
      whoever it allows (for a run: its owner too); anyone else saves into their own copy.
    - A user's own copy is theirs: saved in place (an admin's save into someone's copy too)."""
    from .. import hosting
    from ..checkpoint import _resolve
    from ..models.library import library_ref, slug

    user = user or hosting.operator_user()
    s = settings or hosting.settings()
    shared_root = workspace.sub("checkpoints").resolve()
    single = user.operator or s.single_user
    lib = library_ref(checkpoint)
    owner, origin, run = None, None, False
    if lib:
        name, label, what = slug(lib), lib, "library"
    else:
        origin = _resolve(Path(checkpoint)).resolve()
        shipped = workspace.shipped_checkpoints().resolve()
        if origin == shipped or shipped in origin.parents:
            name, label, what = origin.name, origin.name, "shipped"
        elif origin.parent == shared_root:
            name, label, what = origin.name, _copy_label(origin), "shared"
        elif origin.parent.parent == shared_root / USERS:
            name, label, what = origin.name, _copy_label(origin), "personal"
        else:
            # the job table is read only when it matters: the operator / an admin may save in place anyway
            writer = hosting.why_not_save(user, None, s) is None
            owner, run_dir = (None, None) if writer else _job_run(origin)
            runs = workspace.runs().resolve()
            if runs in origin.parents:
                parts = list(origin.relative_to(runs).parts)
                if parts and parts[-1] in ("checkpoint", "checkpoint.old"):
                    parts = parts[:-1]
                name, label, run = run_copy_name(parts), workspace.run_label(parts), True
            elif run_dir is not None:
                name, label, run = run_copy_name([run_dir.name]), f"run {run_dir.name}", True
            else:
                name = f"ckpt-{origin.name}-{hashlib.sha256(str(origin).encode()).hexdigest()[:8]}"
                label = str(origin)
            what = "run" if run else "checkpoint"
    why = hosting.why_not_save(user, owner, s)
    mine = what == "personal" and origin.parent.name == user_key(user)
    shared_display = f"{label}{OWN_COPY_TAG if single else SHARED_COPY_TAG}"
    common = dict(source=str(checkpoint), label=label, library=lib, origin=origin)
    if why is None or mine:
        if what in ("shipped", "library"):
            kind = "shipped" if what == "shipped" else "library"
            head = f"The {kind} model is never changed: saving writes "
            where = (f"your workspace copy ‹{shared_display}›." if single else
                     f"the shared workspace copy ‹{shared_display}›, which every visitor of this server is offered "
                     "(you are an admin, CXR_JOB_ADMINS).")
            return SaveTarget(folder=shared_root / name, kind=SHARED_COPY, display=shared_display,
                              reason=head + where, **common)
        if single:
            reason = ""
        elif mine:
            reason = "This is your own copy: saving changes it, and only you are offered it."
        elif owner and owner.lower() == user.id.lower():
            reason = "You launched this run: saving changes its card, which every visitor of this server sees."
        else:
            reason = ("You are an admin (CXR_JOB_ADMINS): saving changes this card, which every visitor of this "
                      "server sees.")
        display = shared_display if what == "shared" else (f"{label}{OWN_COPY_TAG}" if mine else label)
        return SaveTarget(folder=origin, kind=IN_PLACE, display=display, reason=reason, **common)
    if what in ("shipped", "library"):
        why = f"The {what} model is never changed, and its shared workspace copy only by an admin (CXR_JOB_ADMINS)"
    elif what == "shared":
        why = "This shared copy, which every visitor of this server sees, is changed only by an admin (CXR_JOB_ADMINS)"
    elif what == "personal":
        why = "This is another visitor's own copy"
    elif run and not owner:
        why = "No owner is recorded for this run (it was not launched as a job here); " + why[0].lower() + why[1:]
    stays = {"shipped": "the shipped model and its shared copy stay", "library": "the library model and its shared "
             "copy stay", "shared": "the shared copy stays", "personal": "their copy stays",
             "run": "the run's card stays", "checkpoint": "its card stays"}[what]
    display = f"{label}{OWN_COPY_TAG}"
    reason = (f"{why}: saving creates your own copy ‹{display}›, offered only to you; {stays} as it is.")
    if user.anonymous:
        reason += (" You are not signed in: your copy is offered to you in this browser session only (a reload "
                   "starts a new one); sign in to keep it.")
    return SaveTarget(folder=workspace.sub("checkpoints") / USERS / user_key(user) / name, kind=OWN_COPY,
                      display=display, reason=reason, **common)


def _link_or_copy(src, dst):
    """Weights are never rewritten in place (save_checkpoint swaps in a new folder), so an own copy may share
    them with its source (a hard link: no disk); anything else is copied."""
    if str(src).endswith(".safetensors"):
        try:
            os.link(src, dst)
            return dst
        except OSError:
            pass
    return shutil.copy2(src, dst)


def _own_copy(t: SaveTarget, user) -> Path:
    """The user's own copy for ``t`` (made from what they were looking at on the first save; made again, the
    earlier one moved aside as ``NAME.older-<sha>``, when it holds other weights than its source)."""
    from ..models.library import materialize

    origin = materialize(t.library) if t.library else t.origin
    target = t.folder
    target.parent.mkdir(parents=True, exist_ok=True)
    with workspace.file_lock(target.with_name("." + target.name + ".lock")):
        if (target / "card.json").is_file():
            try:
                old = read_card(target).weights_sha256
                same = (target / "weights.safetensors").is_file() and old == read_card(origin).weights_sha256
            except CheckpointError:
                old, same = "", False
            if same:
                return target
            aside = target.with_name(f"{target.name}.older-{old[:12] or 'unknown'}")
            shutil.rmtree(aside, ignore_errors=True)
            target.rename(aside)
        tmp = target.with_name(target.name + ".copy")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(origin, tmp, copy_function=_link_or_copy)
        card = read_card(tmp)
        card.name = t.display
        write_card(tmp, card)
        (tmp / COPY_INFO).write_text(json.dumps({"label": t.label, "source": t.source, "owner": user.id,
                                                 "made": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=2))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    return target


def _shared_copy(t: SaveTarget) -> Path:
    """The workspace's shared copy of a shipped / library model. A copy made from an earlier build of the shipped
    models is moved aside (``NAME.older-<sha>``, kept for reference) and a new copy made."""
    if t.library:
        from ..models.library import editable_copy

        return editable_copy(t.library)
    target = t.folder
    if shipped_copy_state(target.name) == "older":
        old = read_card(target).weights_sha256[:12] or "unknown"
        aside = target.with_name(f"{target.name}.older-{old}")
        shutil.rmtree(aside, ignore_errors=True)
        target.rename(aside)
    if not (target / "card.json").exists():
        shutil.copytree(t.origin, target, dirs_exist_ok=True)
    return target


def _writable(checkpoint: str | Path, user=None, settings=None) -> tuple[Path, object]:
    """(folder, card) to write to for ``user`` (:func:`save_target`); a copy is made first where it goes to one."""
    from .. import hosting

    user = user or hosting.operator_user()
    t = save_target(checkpoint, user, settings)
    if t.kind == OWN_COPY:
        folder = _own_copy(t, user)
    elif t.kind == SHARED_COPY:
        folder = _shared_copy(t)
    else:
        folder = t.folder
    return folder, read_card(folder)


def save_thresholds(checkpoint: str | Path, thresholds: dict[str, float], user=None, settings=None) -> Path:
    """Write ``thresholds`` into the card; returns the folder written: see :func:`save_target` for where
    (``user`` default: the operator, as the CLI; pages pass their visitor and the server's settings)."""
    card = read_card(checkpoint)
    unknown = set(thresholds) - set(card.labels)
    if unknown:
        raise CheckpointError(f"Thresholds for labels the model does not have: {sorted(unknown)}.")
    bad = {k: v for k, v in thresholds.items() if not 0.0 <= float(v) <= 1.0}
    if bad:
        raise CheckpointError(f"Thresholds must lie in [0, 1]: {bad}.")
    folder, card = _writable(checkpoint, user, settings)
    card.thresholds.update({k: float(v) for k, v in thresholds.items()})
    write_card(folder, card)
    return folder


def save_temperatures(checkpoint: str | Path, temperatures: dict[str, float], fitted_on: str, user=None,
                      settings=None) -> Path:
    """Store per-label temperature-scaling factors in the card (used for calibrated probabilities); where: see
    :func:`save_target`, as for :func:`save_thresholds`."""
    card = read_card(checkpoint)
    unknown = set(temperatures) - set(card.labels)
    if unknown:
        raise CheckpointError(f"Temperatures for labels the model does not have: {sorted(unknown)}.")
    bad = {k: v for k, v in temperatures.items() if not float(v) > 0}
    if bad:
        raise CheckpointError(f"Temperatures must be positive: {bad}.")
    folder, card = _writable(checkpoint, user, settings)
    card.metrics.setdefault("calibration", {})
    card.metrics["calibration"] = {"temperatures": {k: float(v) for k, v in temperatures.items()},
                                   "fitted_on": fitted_on}
    write_card(folder, card)
    return folder


def save_change_thresholds(checkpoint: str | Path, thresholds: dict[str, float], tuned_on: str, n_pairs: int,
                           user=None, settings=None) -> Path:
    """Store per-label change thresholds τ (:mod:`cxrcore.prior.change`, tuned by ``cxr eval-change --tune``) in the
    card's ``metrics["change"]``; where: see :func:`save_target`, as for :func:`save_thresholds`."""
    card = read_card(checkpoint)
    unknown = set(thresholds) - set(card.labels)
    if unknown:
        raise CheckpointError(f"Change thresholds for labels the model does not have: {sorted(unknown)}.")
    bad = {k: v for k, v in thresholds.items() if not 0.0 < float(v) <= 1.0}
    if bad:
        raise CheckpointError(f"Change thresholds must lie in (0, 1]: {bad}.")
    folder, card = _writable(checkpoint, user, settings)
    old = (card.metrics.get("change") or {}).get("thresholds") or {}
    card.metrics["change"] = {"thresholds": {**old, **{k: float(v) for k, v in thresholds.items()}},
                              "tuned_on": tuned_on, "pairs": int(n_pairs)}
    write_card(folder, card)
    return folder


SITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}")


def save_site(checkpoint: str | Path, name: str, profile: dict, user=None, settings=None) -> Path:
    """Store the site profile ``profile`` (:meth:`cxrcore.eval.site.SiteProfile.to_dict`) under ``name`` in the
    card's ``sites`` (replacing a profile of that name); where: see :func:`save_target`, as for the thresholds (a
    shipped model's own files are never changed)."""
    if not isinstance(name, str) or not SITE_NAME.fullmatch(name):
        raise CheckpointError(f"A site's name is 1 to 64 letters, digits, spaces, '.', '_' or '-', starting with a "
                              f"letter or digit, not {name!r}.")
    card = read_card(checkpoint)
    unknown = set(profile.get("labels") or {}) - set(card.labels)
    if unknown:
        raise CheckpointError(f"The profile has labels the model does not have: {sorted(unknown)}.")
    folder, card = _writable(checkpoint, user, settings)
    card.sites = {**(card.sites or {}), name: profile}
    write_card(folder, card)
    return folder
