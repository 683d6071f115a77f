"""Catch tensors left on the wrong device without a GPU.

Run the code under test with its models on the ``meta`` device and :func:`inputs_on_weights_device`
active: every module that owns weights checks, before its forward, that each positional tensor
input sits on the device of those weights. A CPU tensor fed to a module on ``meta`` is exactly
the mistake that crashes on CUDA (a CPU conv would accept a CPU input on ``meta`` weights without
complaint, so the hook is what catches it).

What this proves: every tensor that reaches a module's forward was moved to the model's device,
on every code path the run took. What it cannot prove: anything after the first operation that
needs real data (``.item()``, ``.cpu().numpy()``; the run stops there), CUDA-only behaviour
(kernels, fp16/bf16 numerics, memory), and tensors combined outside modules (plain ``a + b``
between devices, which meta tolerates with a CPU scalar tensor).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch


class DeviceMismatch(AssertionError):
    """A module received an input on another device than its weights."""


def _tensors(obj) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


@contextlib.contextmanager
def inputs_on_weights_device() -> Iterator[list[str]]:
    """Check every module forward while active; yields the list of checked module names (to prove it ran)."""
    checked: list[str] = []

    def hook(module: torch.nn.Module, args, kwargs):
        own = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        own = [t for t in own if t.is_floating_point()]
        if not own:
            return None
        device = own[0].device
        for t in _tensors((args, kwargs)):
            if t.is_floating_point() and t.device != device and t.dim() > 0:
                raise DeviceMismatch(f"{type(module).__name__} got an input on {t.device}, its weights are on {device}")
        checked.append(type(module).__name__)
        return None

    handle = torch.nn.modules.module.register_module_forward_pre_hook(lambda m, a: hook(m, a, {}))
    try:
        yield checked
    finally:
        handle.remove()


def run_on_meta(fn: Callable[[], object]) -> list[str]:
    """Run ``fn`` (which puts its models on ``meta``) under the hooks; return the modules checked.

    A ``DeviceMismatch`` propagates (the test fails). The run may stop early at the first
    operation that needs real data (meta tensors have none): that error is expected and ends
    the check there.
    """
    with inputs_on_weights_device() as checked:
        try:
            fn()
        except DeviceMismatch:
            raise
        except (RuntimeError, NotImplementedError) as exc:
            if "meta" not in str(exc).lower():
                raise
    return checked
