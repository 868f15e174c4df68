"""The models a page's model picker offers: display name -> checkpoint folder or library model name.

Read from the workspace and the shipped checkpoints on every call (no state kept); who is asking decides which
threshold copies are offered (:func:`cxrcore.eval.thresholds.save_target` is where their saves go).
"""
from __future__ import annotations

from pathlib import Path

from . import workspace

LIBRARY_TAG = " (library)"
MY_THRESHOLDS = " (your thresholds)"         # cxrcore.eval.thresholds.OWN_COPY_TAG
SHARED_THRESHOLDS = " (shared thresholds)"  # cxrcore.eval.thresholds.SHARED_COPY_TAG
SHIPPED = ("baseline", "finetuned")


def checkpoint_choices(user=None, settings=None, library: bool = True) -> dict[str, str]:
    """Display name -> checkpoint folder or library model name: the shipped demo models, finished runs
    in the workspace (a two-network run's gate and disease networks listed under it, named for what they are:
    :func:`cxrcore.workspace.run_label`), then the library's pretrained models (``xrv:…``, ``clip:…``, used as
    they are) and your threshold copies of them. ``library=False``: the shipped models and runs only (no library
    import: fast on a fresh server).

    ``user`` / ``settings``: who asks (a :class:`cxrcore.hosting.User` and the server's settings, read now when
    only ``user`` is given); None: the operator's view. "(your thresholds)" is the copy this user's saves go to:
    on one person's own machine (and for an admin) the workspace's shared copy; on a shared server every other
    visitor has their own, offered to them only, and sees the shared copy as "(shared thresholds)"."""
    from .checkpoint import shipped_copy_state
    from .eval.thresholds import own_copies_root, run_copy_name  # (sklearn: not imported with the module)

    if user is not None and settings is None:
        from . import hosting

        settings = hosting.settings()
    out: dict[str, str] = {}
    shipped = workspace.shipped_checkpoints()
    saved = workspace.sub("checkpoints")  # shipped / library models with thresholds saved on the Thresholds page
    mine = own_copies_root(user, settings) if user is not None else None  # None: saves go to the shared copies
    single = user is None or user.operator or settings.single_user
    shared_tag = MY_THRESHOLDS if single else SHARED_THRESHOLDS

    def own(folder_name: str) -> Path | None:
        copy = mine / folder_name if mine is not None else None
        return copy if copy is not None and (copy / "card.json").is_file() else None

    for name in SHIPPED:
        if mine is not None and shipped_copy_state(name, mine) == "current":
            out[f"{name}{MY_THRESHOLDS}"] = str(mine / name)
        if shipped_copy_state(name) == "current":   # a copy made from an earlier build is not offered
            out[f"{name}{shared_tag}"] = str(saved / name)
        if (shipped / name / "card.json").exists():
            out[f"{name} (shipped demo)"] = str(shipped / name)
    for parts, checkpoint in workspace.finished_runs():
        label = workspace.run_label(parts, checkpoint)
        copy = own(run_copy_name(parts))
        if copy is not None:
            out[f"{label}{MY_THRESHOLDS}"] = str(copy)
        out[label] = str(checkpoint)
    if not library:
        return out
    from .models.library import library_names, slug

    for name in library_names():
        copy = own(slug(name))
        if copy is not None and (copy / "weights.safetensors").exists():
            out[f"{name}{MY_THRESHOLDS}"] = str(copy)
        copy = saved / slug(name)
        if (copy / "card.json").exists() and (copy / "weights.safetensors").exists():
            out[f"{name}{shared_tag}"] = str(copy)
        out[f"{name}{LIBRARY_TAG}"] = name
    return out
