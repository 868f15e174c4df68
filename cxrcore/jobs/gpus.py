"""The GPUs of this machine, for the local job queue and the Training page.

``list_gpus()`` gives the GPU indices local jobs may be placed on; ``utilisation()`` what each
GPU is doing now. Both use NVIDIA's management library (the ``nvidia-ml-py`` package, imported
as ``pynvml``) when the driver answers; without it ``list_gpus`` falls back to
``torch.cuda.device_count()`` only when torch is already imported (importing torch just to count
GPUs would make ``cxr jobs list`` slow), and otherwise reports no GPUs. A failure is never silent:
``nvml_problem()`` says why NVML gave nothing (package missing, driver not loaded, ...), the
Training page shows it beside "no GPUs", and the reason is logged (once per distinct reason).

Environment variable ``CXR_GPUS`` overrides the detection: a comma-separated list of GPU
indices local jobs may use ("0,1"), or empty ("") for none. It restricts jobs to some GPUs of a
shared machine, and lets tests simulate GPUs on a CPU-only machine. Indices are physical (as
``nvidia-smi`` numbers them); a job gets them as its ``CUDA_VISIBLE_DEVICES``.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
from contextlib import contextmanager

from ..errors import ConfigError

ENV = "CXR_GPUS"

log = logging.getLogger(__name__)
_logged: set[str] = set()
_logged_lock = threading.Lock()


def _report(reason: str, level: int = logging.WARNING) -> str:
    """Log why NVML gave nothing, once per distinct reason (the GPU panel asks every few seconds).

    ``level``: INFO for what a machine without NVIDIA GPUs always says (no library), WARNING otherwise.
    """
    with _logged_lock:
        first = reason not in _logged
        _logged.add(reason)
    if first:
        log.log(level, "GPU detection: %s", reason)
    return reason


def _nvml_error(what: str, exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return f"{what}: {text} ({type(exc).__name__})"


def _from_env(value: str) -> list[int]:
    out: list[int] = []
    for part in value.replace(" ", "").split(","):
        if not part:
            continue
        try:
            i = int(part)
        except ValueError:
            i = -1
        if i < 0:
            raise ConfigError(f"{ENV}={value!r} is not a list of GPU indices; use e.g. {ENV}=0,1 or {ENV}= for none.")
        if i not in out:
            out.append(i)
    return sorted(out)


@contextmanager
def _nvml():
    """Yields ``(pynvml, None)`` initialised, or ``(None, reason)`` when the package or the driver is missing."""
    try:
        import pynvml
    except ImportError as exc:
        yield None, _report(f"NVML is not available: the nvidia-ml-py package is not installed ({exc})",
                            logging.INFO)
        return
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - NVMLError_LibraryNotFound, DriverNotLoaded, ...
        missing = type(exc).__name__ == "NVMLError_LibraryNotFound"  # no NVIDIA driver: a CPU-only machine
        yield None, _report(_nvml_error("NVML could not be initialised (no NVIDIA driver or library?)", exc),
                            logging.INFO if missing else logging.WARNING)
        return
    try:
        yield pynvml, None
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


def list_gpus() -> list[int]:
    """GPU indices local jobs may use: ``CXR_GPUS`` if set, else NVML's count, else torch's if already imported."""
    value = os.environ.get(ENV)
    if value is not None:
        return _from_env(value)
    with _nvml() as (nv, _):
        if nv is not None:
            try:
                return list(range(int(nv.nvmlDeviceGetCount())))
            except Exception as exc:  # noqa: BLE001
                _report(_nvml_error("NVML could not count the GPUs", exc))
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            return list(range(int(torch.cuda.device_count())))
        except Exception as exc:  # noqa: BLE001
            _report(_nvml_error("torch could not count the GPUs", exc))
            return []
    return []


def nvml_problem() -> str | None:
    """None when NVML answers, else why it does not (what a page shows instead of a bare "0 GPUs")."""
    with _nvml() as (nv, reason):
        if nv is None:
            return reason
        try:
            nv.nvmlDeviceGetCount()
        except Exception as exc:  # noqa: BLE001
            return _report(_nvml_error("NVML could not count the GPUs", exc))
    return None


def _text(v) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def utilisation() -> list[dict]:
    """Per GPU: {index, name, util_percent, mem_used_mib, mem_total_mib} from NVML; [] without NVML
    (:func:`nvml_problem` says why)."""
    out: list[dict] = []
    with _nvml() as (nv, _):
        if nv is None:
            return []
        try:
            n = int(nv.nvmlDeviceGetCount())
        except Exception as exc:  # noqa: BLE001
            _report(_nvml_error("NVML could not count the GPUs", exc))
            return []
        for i in range(n):
            row = {"index": i, "name": "", "util_percent": None, "mem_used_mib": None, "mem_total_mib": None}
            try:
                h = nv.nvmlDeviceGetHandleByIndex(i)
                row["name"] = _text(nv.nvmlDeviceGetName(h))
                try:
                    row["util_percent"] = float(nv.nvmlDeviceGetUtilizationRates(h).gpu)
                except Exception:  # noqa: BLE001 - not supported on some devices (MIG)
                    pass
                mem = nv.nvmlDeviceGetMemoryInfo(h)
                row["mem_used_mib"] = mem.used / 2**20
                row["mem_total_mib"] = mem.total / 2**20
            except Exception as exc:  # noqa: BLE001 - the row stays, with what could not be read left empty
                _report(_nvml_error(f"NVML could not read GPU {i}", exc))
            out.append(row)
    return out


__all__ = ["ENV", "list_gpus", "nvml_problem", "utilisation"]
