"""What a progress view needs, read from a job's ``events.jsonl`` (no torch import).

``progress_summary(events)`` folds the event stream into one dict: phase, epoch / step counters,
ETA, curves (loss and learning rate per step, mean and per-label validation AUROC per epoch),
images/s, GPU memory, best / test AUROC. A resumed run restarts from its last complete epoch:
steps logged after that epoch by the interrupted attempt are dropped from the curves.
"""
from __future__ import annotations

import math

from .scoring import LENS_TASKS, SCORE, WATCH, task_of


def _num(v) -> float | None:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) or math.isinf(f) else f


HISTORY_COLUMNS = ("train_loss", "val_loss", "val_mean_auroc", "val_mean_ap", "val_f1", "val_accuracy", "lr", "seconds")


def overfitting_note(history: list[dict], best_x=None, rise: float = 0.02) -> str | None:
    """A sentence when validation loss has risen (by more than ``rise``, relative) over at least the last two
    validations since its minimum while the training loss kept falling: the usual sign of overfitting.
    None when it has not, or when there is too little history to say."""
    pts = [h for h in history if h.get("val_loss") is not None]
    if len(pts) < 3:
        return None
    k = min(range(len(pts)), key=lambda i: pts[i]["val_loss"])
    low, last = pts[k], pts[-1]
    if len(pts) - 1 - k < 2 or last["val_loss"] <= low["val_loss"] * (1 + rise):
        return None
    tl_low, tl_last = low.get("train_loss"), last.get("train_loss")
    if tl_low is None or tl_last is None or not tl_last < tl_low:
        return None
    where = f"epoch {low['epochs_done']:g}"
    kept = f" The best checkpoint is from epoch {best_x:g}." if best_x is not None else ""
    return (f"Validation loss has risen from {low['val_loss']:.4f} ({where}) to {last['val_loss']:.4f} while the "
            f"training loss fell from {tl_low:.4f} to {tl_last:.4f}: the model is overfitting the training split."
            f"{kept} Fewer epochs, early stopping on validation loss, more augmentation, dropout or weight decay "
            "are the usual answers.")


def progress_summary(events: list[dict]) -> dict:
    """Keys: phase (waiting | preparing | training | stopped | done), epoch, epochs, step, total_steps,
    fraction (0..1), last_loss, images_per_s, eta_seconds, elapsed_seconds, best_val_mean_auroc, best_epoch,
    test_mean_auroc, loss_curve [(step, loss)], lr_curve [(step, lr)], auroc_curve [(epoch, val_mean_auroc)],
    epoch_loss_curve [(epoch, train_loss)], per_label_auroc (the last epoch's {label: auroc|None}),
    auroc_history {label: [(epoch, auroc|None)]}, labels, n_images, stopped, early_stopped, resumes,
    gpu_mem_mib, mode, trainable_params, total_params, world_size; per validation (at each epoch's end, and
    every N steps when asked, at fractional epochs): val_loss_curve [(epoch, val_loss)],
    metric_curves {"mean AP" | "F1" | "accuracy": [(epoch, value)]}, history [one flat dict per validation:
    epoch, step, epochs_done, train_loss, val_loss, val_mean_auroc, val_mean_ap, val_f1, val_accuracy, lr,
    seconds], monitor (auroc | loss), best_x (the best checkpoint's position in epochs), best_val_loss,
    overfitting (a sentence, or None; see :func:`overfitting_note`), box_supervision (None, or weight, images,
    pairs and the last step's box term: see cxrcore/train/boxes.py).
    Epoch-valued curves use fractional epochs for validations inside an epoch.

    A two-network run (hierarchy two_network) tags its networks' events with ``network``: then each key
    describes the network training now (or the last one), ``networks`` holds each network's own summary
    ({"gate": ..., "disease": ...}), ``network`` names the current one, ``fraction`` spans both, and the
    combined model's figures (``best_val_mean_auroc``, ``test_mean_auroc``) come once both are done.
    """
    roles = list(dict.fromkeys(e.get("network") for e in events or [] if e.get("network") in ("gate", "disease")))
    if roles:
        return _two_network_summary(events, roles)
    s: dict = {"phase": "waiting", "epoch": 0, "epochs": None, "step": 0, "total_steps": None, "fraction": 0.0,
               "last_loss": None, "images_per_s": None, "eta_seconds": None, "elapsed_seconds": None,
               "best_val_mean_auroc": None, "best_epoch": None, "test_mean_auroc": None,
               "loss_curve": [], "lr_curve": [], "auroc_curve": [], "epoch_loss_curve": [], "per_label_auroc": {},
               "auroc_history": {}, "labels": [], "n_images": None, "stopped": False, "early_stopped": False,
               "resumes": 0, "gpu_mem_mib": None, "mode": None, "trainable_params": None, "total_params": None,
               "world_size": 1, "val_loss_curve": [], "metric_curves": {"mean AP": [], "F1": [], "accuracy": []},
               "history": [], "monitor": "auroc", "best_x": None, "best_val_loss": None, "overfitting": None,
               "box_supervision": None, "_checkpoint_events": False}
    t_start = t_train = t_last = None
    step_at_train = 0
    for e in events or []:
        kind, t = e.get("type"), _num(e.get("time"))
        if t is not None:
            t_last = t
        if kind == "start":
            s["phase"] = "preparing"
            t_start = t
            s["epochs"] = (e.get("config") or {}).get("epochs")
            s["monitor"] = (e.get("config") or {}).get("monitor") or "auroc"
        elif kind == "resume":
            s["resumes"] += 1
            s["phase"] = "preparing"
            s["stopped"] = False
            ep, st = int(e.get("epoch") or 0), int(e.get("step") or 0)
            s["epoch"], s["step"] = ep, st
            s["loss_curve"] = [p for p in s["loss_curve"] if p[0] <= st]
            s["lr_curve"] = [p for p in s["lr_curve"] if p[0] <= st]
            s["auroc_curve"] = [p for p in s["auroc_curve"] if p[0] <= ep]
            s["epoch_loss_curve"] = [p for p in s["epoch_loss_curve"] if p[0] <= ep]
            s["auroc_history"] = {k: [p for p in v if p[0] <= ep] for k, v in s["auroc_history"].items()}
            s["val_loss_curve"] = [p for p in s["val_loss_curve"] if p[0] <= ep]
            s["metric_curves"] = {k: [p for p in v if p[0] <= ep] for k, v in s["metric_curves"].items()}
            s["history"] = [h for h in s["history"] if (h.get("epochs_done") or 0) <= ep]
            if t_start is None:
                t_start = t
        elif kind == "data":
            s["phase"] = "training"
            t_train, step_at_train = t, s["step"]
            s["labels"] = list(e.get("labels") or [])
            s["n_images"] = e.get("n_images")
            for k in ("mode", "trainable_params", "total_params"):
                s[k] = e.get(k, s[k])
            s["world_size"] = e.get("world_size") or 1
            if e.get("steps_per_epoch") is not None and s["epochs"]:
                s["total_steps"] = int(e["steps_per_epoch"]) * int(s["epochs"])
        elif kind == "box_supervision":
            s["box_supervision"] = {"weight": _num(e.get("weight")), "images": e.get("train_images_with_boxes"),
                                    "pairs": e.get("pairs"), "last": None}
        elif kind == "step":
            s["phase"] = "training"
            box = (e.get("loss_parts") or {}).get("box")
            if s["box_supervision"] is not None and _num(box) is not None:
                s["box_supervision"]["last"] = _num(box)
            s["epoch"] = e.get("epoch", s["epoch"])
            s["step"] = int(e.get("step") or 0)
            s["total_steps"] = e.get("total_steps", s["total_steps"])
            s["last_loss"] = _num(e.get("loss"))
            s["images_per_s"] = _num(e.get("images_per_s"))
            if _num(e.get("gpu_mem_mib")) is not None:
                s["gpu_mem_mib"] = _num(e.get("gpu_mem_mib"))
            if s["last_loss"] is not None:
                s["loss_curve"].append((s["step"], s["last_loss"]))
            if _num(e.get("lr")) is not None:
                s["lr_curve"].append((s["step"], _num(e.get("lr"))))
        elif kind in ("epoch", "validation"):
            ep = e.get("epoch")
            x = _num(e.get("epochs_done"))
            x = ep if x is None else (int(x) if float(x).is_integer() else x)
            if kind == "epoch":
                s["epoch"] = ep
            auroc = _num(e.get("val_mean_auroc"))
            s["auroc_curve"].append((x, auroc))
            loss = _num(e.get("train_loss"))
            if loss is not None and kind == "epoch":
                s["epoch_loss_curve"].append((x, loss))
            if _num(e.get("val_loss")) is not None:
                s["val_loss_curve"].append((x, _num(e.get("val_loss"))))
            for name, key in (("mean AP", "val_mean_ap"), ("F1", "val_f1"), ("accuracy", "val_accuracy")):
                if _num(e.get(key)) is not None:
                    s["metric_curves"][name].append((x, _num(e.get(key))))
            s["per_label_auroc"] = {k: _num(v) for k, v in (e.get("val_auroc") or {}).items()}
            for k, v in s["per_label_auroc"].items():
                s["auroc_history"].setdefault(k, []).append((x, v))
            s["history"].append({"epoch": ep, "step": e.get("step"), "epochs_done": x, "at": kind,
                                 **{k: _num(e.get(k)) for k in HISTORY_COLUMNS},
                                 "val_auroc": dict(s["per_label_auroc"])})
            if not s["_checkpoint_events"] and auroc is not None and (
                    s["best_val_mean_auroc"] is None or auroc > s["best_val_mean_auroc"]):
                s["best_val_mean_auroc"], s["best_epoch"], s["best_x"] = auroc, ep, x  # logs from before checkpoint events said more
        elif kind == "checkpoint":
            s["_checkpoint_events"] = True
            s["best_epoch"] = e.get("epoch", s["best_epoch"])
            s["best_val_mean_auroc"] = _num(e.get("val_mean_auroc"))
            s["best_val_loss"] = _num(e.get("val_loss"))
            s["best_x"] = s["history"][-1]["epochs_done"] if s["history"] else s["best_epoch"]
        elif kind == "stopped":
            s["phase"] = "stopped"
            s["stopped"] = True
        elif kind == "early_stop":
            s["early_stopped"] = True
        elif kind == "done":
            s["phase"] = "stopped" if e.get("stopped") else "done"
            s["stopped"] = bool(e.get("stopped")) or s["stopped"]
            s["early_stopped"] = bool(e.get("early_stopped")) or s["early_stopped"]
            s["test_mean_auroc"] = _num(e.get("test_mean_auroc"))
            if e.get("best_epoch") is not None:
                s["best_epoch"] = e.get("best_epoch")
    s.pop("_checkpoint_events", None)
    s["overfitting"] = overfitting_note(s["history"], s["best_x"])
    total = s["total_steps"]
    if s["phase"] == "done":
        s["fraction"] = 1.0
    elif total:
        s["fraction"] = min(1.0, max(0.0, s["step"] / total))
    if t_start is not None and t_last is not None:
        s["elapsed_seconds"] = max(0.0, t_last - t_start)
    done_here = s["step"] - step_at_train
    if s["phase"] == "training" and total and done_here > 0 and t_train is not None and t_last is not None:
        # Seconds per step since training (re)started, validation included after the first epoch.
        per_step = (t_last - t_train) / done_here
        s["eta_seconds"] = max(0.0, per_step * (total - s["step"]))
    elif s["phase"] in ("done", "stopped"):
        s["eta_seconds"] = 0.0
    return s


TWO_NETWORKS = ("gate", "disease")


def _two_network_summary(events: list[dict], roles: list[str]) -> dict:
    per = {r: progress_summary([{k: v for k, v in e.items() if k != "network"} for e in events
                                if e.get("network") == r]) for r in roles}
    current = roles[-1]
    s = dict(per[current])
    s["networks"], s["network"] = per, current
    k = TWO_NETWORKS.index(current) if current in TWO_NETWORKS else 0
    s["fraction"] = min(1.0, (k + float(per[current]["fraction"])) / len(TWO_NETWORKS))
    if per[current]["phase"] == "done":
        s["phase"] = "training"   # the other network, or the combination, is still to come
    s["best_val_mean_auroc"] = s["test_mean_auroc"] = s["best_epoch"] = None
    s["eta_seconds"] = None if current != TWO_NETWORKS[-1] else s["eta_seconds"]
    s["elapsed_seconds"] = sum(x["elapsed_seconds"] or 0 for x in per.values()) or None
    for e in events:
        if e.get("network") == "combined" and e.get("type") == "done":
            s["phase"], s["fraction"] = "done", 1.0
            s["best_val_mean_auroc"] = _num(e.get("val_mean_auroc"))
            s["test_mean_auroc"] = _num(e.get("test_mean_auroc"))
        elif e.get("type") == "stopped" and e.get("network") in TWO_NETWORKS and "step" not in e:
            s["phase"], s["stopped"] = "stopped", True
    return s


def score_summary(events: list[dict]) -> dict:
    """What a scoring job's view needs (:mod:`cxrcore.jobs.scoring`), with :func:`progress_summary`'s keys (so
    a table of jobs reads both kinds the same): phase (waiting | scoring | stopped | done), fraction of the input
    in the table, images_per_s (this attempt's, every shard's together), eta_seconds, elapsed_seconds; and total
    (images in the input), scored (rows and errors so far, every attempt), errors (this attempt's unreadable files
    until the end, then the table's), attempts, input, model, out, rows (at the end), runtime (onnx | torch),
    runtime_note (why not the runtime asked for), shards and shards_done (a sharded job: a Slurm array)."""
    s = progress_summary([])
    s.update(phase="waiting", total=None, scored=0, errors=0, attempts=0, input=None, model=None, out=None, rows=None,
             runtime=None, runtime_note=None, shards=1, shards_done=0)
    per: dict = {}   # shard (None: unsharded) -> its total, todo, done, errors, images/s, state
    starts: dict = {}   # shard -> how many attempts started it
    done_shards: set = set()
    t_first = None
    for e in events or []:
        kind, t, k = e.get("type"), _num(e.get("time")), e.get("shard")
        if kind == "score_start":
            starts[k] = starts.get(k, 0) + 1
            per[k] = {"total": int(e.get("total") or 0), "todo": int(e.get("total") or 0), "done": 0, "errors": 0,
                      "rate": None, "state": "scoring"}
            s.update(phase="scoring", input=e.get("input"), model=e.get("model"), out=e.get("out"),
                     runtime=e.get("runtime"), runtime_note=e.get("runtime_note"), shards=e.get("shards") or 1,
                     total=e.get("input_total") or s["total"])
            done_shards.discard(k)
            t_first = t_first if t_first is not None else t
        elif kind == "score_progress" and k in per:
            x = per[k]
            x.update(done=int(e.get("done") or 0), todo=int(e.get("todo") or 0), errors=int(e.get("errors") or 0))
            seconds = _num(e.get("seconds"))
            x["rate"] = x["done"] / seconds if seconds else None
        elif kind in ("score_stopped", "score_shard_done") and k in per:
            per[k]["state"] = "stopped" if kind == "score_stopped" else "done"
            if kind == "score_shard_done":
                done_shards.add(k)
        elif kind == "score_done":
            s.update(phase="done", rows=e.get("rows"), errors=e.get("errors"))
            for x in per.values():
                x["state"] = "done"
        if t is not None and t_first is not None:
            s["elapsed_seconds"] = t - t_first
    if per:
        s["attempts"] = max(starts.values())
        s["total"] = s["total"] or sum(x["total"] for x in per.values())
        s["scored"] = sum(x["total"] - x["todo"] + x["done"] for x in per.values())
        if s["phase"] != "done":
            s["errors"] = sum(x["errors"] for x in per.values())
            running = [x for x in per.values() if x["state"] == "scoring"]
            rates = [x["rate"] for x in running if x["rate"]]
            s["images_per_s"] = sum(rates) if rates else None
            left = s["total"] - s["scored"]
            s["eta_seconds"] = left / s["images_per_s"] if s["images_per_s"] else None
            stopped = any(x["state"] == "stopped" for x in per.values())
            s["phase"] = "stopped" if stopped and not running else "scoring"
        else:
            s["scored"] = s["total"]
        s["shards_done"] = len(done_shards)
    if s["total"]:
        s["fraction"] = min(1.0, s["scored"] / s["total"])
    s["stopped"] = s["phase"] == "stopped"
    return s


def job_summary(config: dict, events: list[dict]) -> dict:
    """The summary of a job's events for its kind: a scoring job's (:func:`score_summary`), a training's, or a
    watch's (it writes no events: its phase only; its studies are in its table, :mod:`cxrcore.pacs.watch`)."""
    task = task_of(config)
    if task == WATCH:
        return progress_summary([]) | {"phase": "watching"}
    if task in LENS_TASKS:
        from .lensjobs import lens_summary

        return lens_summary(events, progress_summary([]))
    return (score_summary if task == SCORE else progress_summary)(events)
