"""Data-parallel training: each process's share of a global batch, batch norm and dropout of the global batch,
and the training precision. accelerate (DDP) averages the gradients; this module decides what each process
computes.

The guarantee: N processes draw the same images in the same order as one process (the global batch of
step s is draws ``s*B .. s*B + B - 1``; process i takes the i-th contiguous ``B/N`` of them, each augmented
by its draw number), normalise batch norm over the whole global batch, drop the same units as one
process would (every process draws the global batch's dropout mask from the same seeded stream and
keeps its rows), and average gradients over it, so they compute the one-process update up to
floating-point summation order.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.nn.functional import all_reduce  # differentiable: its backward all-reduces the gradient

from tailsynth.errors import TailsynthError

# runtime.train_precision -> accelerate's mixed_precision
PRECISIONS = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


def resolve_precision(value: str, device: torch.device | str) -> str:
    """accelerate's ``mixed_precision`` for ``runtime.train_precision`` (fp32 | bf16 | fp16) on ``device``.

    Raises ``TailsynthError`` naming the param for an unknown value, fp16 on the CPU (no loss scaling
    there) or bf16 on a GPU without it.
    """
    device = torch.device(device)
    if value not in PRECISIONS:
        raise TailsynthError(f"runtime.train_precision {value!r} is not one of {', '.join(PRECISIONS)}")
    if value == "fp16" and device.type == "cpu":
        raise TailsynthError("runtime.train_precision fp16 needs a CUDA device; use fp32 or bf16 on the CPU")
    if value == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise TailsynthError(
            f"runtime.train_precision bf16 is not supported by {torch.cuda.get_device_name(device)}; use fp16"
        )
    return PRECISIONS[value]


def shard(batch_size: int, process_index: int, num_processes: int) -> slice:
    """The positions in a global batch of ``batch_size`` draws that process ``process_index`` trains on.

    Contiguous and equal: a global batch that does not split evenly is a ``ValueError`` (the mean
    gradient over unequal shards would weight them unequally).
    """
    if batch_size % num_processes:
        raise ValueError(f"a batch of {batch_size} does not split evenly over {num_processes} processes")
    local = batch_size // num_processes
    return slice(process_index * local, (process_index + 1) * local)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` whose training statistics cover the global batch of every process in the default process
    group (torch's ``SyncBatchNorm`` does this on GPUs only; this one runs on any backend, gloo included).

    Mean first, then the centred second moment (two all-reduces, as numerically stable as one process);
    the all-reduces are differentiable, so the backward pass is that of the global batch too. Outside
    training, or in a single process, it is a plain ``BatchNorm2d``. Same parameters and buffers.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = (0, 2, 3)
        xf = x.float()
        count = torch.tensor([xf.numel() / xf.shape[1]], device=x.device)
        total = all_reduce(torch.cat([xf.sum(dims), count]))
        n = total[-1]
        mean = total[:-1] / n
        centred = xf - mean[None, :, None, None]
        var = all_reduce((centred * centred).sum(dims)) / n
        with torch.no_grad():
            self.num_batches_tracked += 1
            momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), momentum)
            unbiased = var.detach() * (n / (n - 1))
            self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


class GlobalDropout(nn.Dropout):
    """``Dropout`` whose mask is this process's rows of the mask one process would draw for the global batch.

    Every process holds the same random state (seeded alike, consumed alike), draws the mask of the
    whole global batch (equal shares, this process's the ``rank``-th) exactly as ``F.dropout`` would on
    it, and keeps its own rows: the units dropped do not depend on the number of processes.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.p > 0 and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        world, rank = dist.get_world_size(), dist.get_rank()
        local = x.shape[0]
        ones = torch.ones((local * world, *x.shape[1:]), dtype=x.dtype, device=x.device)
        mask = nn.functional.dropout(ones, self.p, training=True)
        return x * mask[rank * local : (rank + 1) * local]


GLOBAL = {nn.BatchNorm2d: GlobalBatchNorm2d, nn.Dropout: GlobalDropout}


def average_gradients(params, world: int) -> None:
    """Average the gradients of ``params`` over the ``world`` processes of the default group, in one all-reduce.

    What DDP's backward hooks do, for models trained through methods other than ``forward`` (a VAE's
    ``encode`` and ``decode``), which DDP's wrapper would not see. A parameter without a gradient takes
    part as zeros, so every process reduces the same buffer.
    """
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    start = 0
    for g in grads:
        g.copy_(flat[start : start + g.numel()].view_as(g))
        start += g.numel()


def mean_over_processes(value: torch.Tensor, world: int) -> torch.Tensor:
    """The mean of ``value`` over the ``world`` processes (a copy; ``value`` itself when alone)."""
    if world == 1:
        return value
    total = value.detach().clone()
    dist.all_reduce(total)
    return total / world


class _GatherRows(torch.autograd.Function):
    """All processes' (B/N, ...) shares stacked in process order; the backward sums every process's gradient
    of this process's rows (a reduce-scatter, made of one all-reduce: gloo has no reduce-scatter)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rows = x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.contiguous().clone()
        dist.all_reduce(total)
        start = dist.get_rank() * ctx.rows
        return total[start : start + ctx.rows]


def gather_rows(x: torch.Tensor, world: int) -> torch.Tensor:
    """The global batch (B, ...) from every process's equal share ``x`` (B/N, ...), in process order, with a
    backward; ``x`` itself in one process. For losses that contrast the whole batch (InfoNCE)."""
    return x if world == 1 else _GatherRows.apply(x)


def global_batch(module: nn.Module) -> nn.Module:
    """``module`` with every ``BatchNorm2d`` and ``Dropout`` made its global-batch version
    (:class:`GlobalBatchNorm2d`, :class:`GlobalDropout`) in place: same weights and buffers."""
    for child in module.modules():
        if type(child) in GLOBAL:
            child.__class__ = GLOBAL[type(child)]
    return module


def local_batch(module: nn.Module) -> nn.Module:
    """Undo :func:`global_batch` in place: the trained model is an ordinary one."""
    back = {v: k for k, v in GLOBAL.items()}
    for child in module.modules():
        if type(child) in back:
            child.__class__ = back[type(child)]
    return module


class OptimizerSteps:
    """The optimiser steps of a model trained through methods DDP's wrapper does not see (a VAE's ``encode``
    and ``decode``, a contrastive image encoder), data-parallel and at an accelerator's mixed precision.

    ``accelerator`` is an ``accelerate.Accelerator`` or None (one process, fp32). :meth:`autocast` is the
    context the forward pass runs in (bf16 / fp16 autocast, or nothing at fp32); :meth:`step` does one
    update from ``loss``: backward (fp16: the scaled loss), the gradients of ``params`` averaged over
    the processes (:func:`average_gradients`), unscaled, clipped to norm ``max_norm``, then the
    optimiser's step (fp16: skipped where a gradient overflowed, as accelerate's scaler decides). In
    one process at fp32 this is exactly ``zero_grad``, ``backward``, ``clip_grad_norm_``, ``step``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, params, accelerator=None, max_norm: float = 1.0):
        self.accelerator, self.max_norm = accelerator, max_norm
        self.params = list(params)
        self.world = 1 if accelerator is None else accelerator.num_processes
        if accelerator is not None:  # a prepared optimiser steps through accelerate's fp16 gradient scaler
            optimizer = accelerator.prepare_optimizer(optimizer, device_placement=False)
        self.optimizer = optimizer

    def autocast(self):
        return contextlib.nullcontext() if self.accelerator is None else self.accelerator.autocast()

    def step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.accelerator is None:
            loss.backward()
        else:
            self.accelerator.backward(loss)
        if self.world > 1:
            average_gradients(self.params, self.world)
        if self.accelerator is not None:
            self.accelerator.unscale_gradients(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.params, self.max_norm)
        self.optimizer.step()
