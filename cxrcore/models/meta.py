"""Building models on the meta device (no memory, no weights), on this thread only.

Building is safe in a server whose sessions are threads of one process: no library global is
patched while a model is built. Meta-device checks use a thread-local torch-function mode
(:func:`on_meta`) and, for builders that cannot run on meta, torch's parameter / buffer
registration hooks gated by a thread-local flag (:func:`params_on_meta`).
"""
from __future__ import annotations

import threading
from contextlib import contextmanager

import torch
from torch import nn
from torch.overrides import TorchFunctionMode


class _MetaDeviceMode(TorchFunctionMode):
    """``torch.device("meta")`` as a context manager, minus its process-wide side effect.

    torch's own device context pushes a mode on this thread's torch-function mode stack (thread
    local) but also sets the module global ``torch.utils._device.CURRENT_DEVICE`` on enter and
    restores it on exit; two threads interleaving enter/exit can leave it at "meta" for
    everyone (torch.compile guards read it). This mode only does the thread-local part: tensor
    constructors called without a device make meta tensors.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _DEVICE_CONSTRUCTORS and kwargs.get("device") is None:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


def _device_constructors() -> frozenset:
    try:
        from torch.utils._device import _device_constructors as constructors

        return frozenset(constructors())
    except (ImportError, AttributeError):  # a torch without the private list: the common constructors
        return frozenset({torch.empty, torch.empty_strided, torch.zeros, torch.ones, torch.full, torch.arange,
                          torch.rand, torch.randn, torch.randint, torch.tensor, torch.as_tensor, torch.linspace,
                          torch.eye, torch.scalar_tensor})


_DEVICE_CONSTRUCTORS = _device_constructors()


def on_meta():
    """A context in which this thread builds models on the meta device (other threads are unaffected)."""
    return _MetaDeviceMode()


_META_PARAMS = threading.local()


def _param_to_meta(module, name, param):
    if getattr(_META_PARAMS, "on", False) and param is not None and param.device.type != "meta":
        return nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
    return None


def _buffer_to_meta(module, name, tensor):
    if getattr(_META_PARAMS, "on", False) and tensor is not None and tensor.device.type != "meta":
        return tensor.to("meta")
    return None


# torch's registration hooks, registered once when this module is imported; they do something
# only on a thread inside params_on_meta() (a thread-local flag), so building a model never
# changes anything global.
nn.modules.module.register_module_parameter_registration_hook(_param_to_meta)
nn.modules.module.register_module_buffer_registration_hook(_buffer_to_meta)


@contextmanager
def params_on_meta():
    """On this thread only: every parameter and buffer a module registers is moved to meta at once."""
    before = getattr(_META_PARAMS, "on", False)
    _META_PARAMS.on = True
    try:
        yield
    finally:
        _META_PARAMS.on = before
