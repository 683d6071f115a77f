"""Where and in what precision models run: the ``runtime.device`` and ``runtime.dtype`` values, resolved and checked."""

from __future__ import annotations

import torch

from tailsynth.errors import TailsynthError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(value: str) -> torch.device:
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:<index>`` as a torch device.

    Raises ``TailsynthError`` naming ``runtime.device`` for an unknown value or a GPU that is not there.
    """
    if value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(value)
    except (RuntimeError, TypeError) as exc:
        raise TailsynthError(f"runtime.device {value!r} is not a device; use auto, cpu, cuda or cuda:<index>") from exc
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise TailsynthError(f"runtime.device {value!r} is not supported; use auto, cpu, cuda or cuda:<index>")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise TailsynthError(f"runtime.device is {value!r} but no CUDA device is visible; use cpu or auto")
    if dev.index is not None and dev.index >= count:
        raise TailsynthError(
            f"runtime.device is {value!r} but only {count} CUDA device(s) are visible; use cuda:0..cuda:{count - 1}"
        )
    return dev


def resolve_dtype(value: str, device: torch.device | str) -> torch.dtype:
    """The inference precision: ``auto`` (fp16 on CUDA, fp32 elsewhere), ``fp32``, ``fp16`` or ``bf16``.

    Raises ``TailsynthError`` naming ``runtime.dtype`` for an unknown value or one ``device`` cannot
    run: fp16 on CPU (many of its CPU kernels are missing or slower than fp32), bf16 on a GPU without it.
    """
    device = torch.device(device)
    if value == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if value not in DTYPES:
        raise TailsynthError(f"runtime.dtype {value!r} is not one of auto, {', '.join(DTYPES)}")
    if value == "fp16" and device.type == "cpu":
        raise TailsynthError("runtime.dtype fp16 is not supported on the CPU; use fp32 or bf16 there")
    if value == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise TailsynthError(f"runtime.dtype bf16 is not supported by {torch.cuda.get_device_name(device)}; use fp16")
    return DTYPES[value]
