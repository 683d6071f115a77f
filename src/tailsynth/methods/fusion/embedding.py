"""The sparse feature space: a student S (latent -> simplicial embedding), a decoder D (embedding ->
latent) and a classifier C on the embedding, trained with Iterated Learning.

Simplicial embedding (Lavoie et al.): at every position the ``channels`` logits are split into
groups of ``group`` channels and each group goes through a softmax at temperature ``tau``, so the
embedding is a stack of probability vectors (simplices). Unlike the reference code there is no
Tanh on the logits: a Tanh bounds them to [-1, 1], which caps the largest probability of a
simplex at e/(e + (group-1)/e) (0.105 for its 64-way simplices) and keeps the embedding nearly
uniform. D's output is unbounded (the reference's Tanh cannot reach scaled latents beyond ±1).

Iterated Learning (Ren et al.): each generation has an interaction phase (S, D and C trained
jointly on reconstruction L1 + classification) and, but for the last generation, an imitation
phase in which a freshly initialised student learns to imitate the frozen previous one from
one-hot codes sampled from its simplices (cross-entropy; the reference uses BCE). D and C, and
their optimiser, persist across generations.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tailsynth.checks import real_number, whole_number
from tailsynth.errors import TailsynthError
from tailsynth.seeding import derive_seed


@dataclass(frozen=True)
class EmbeddingConfig:
    """Shapes of S, D and C: ``latent_channels`` in, ``channels`` = (channels / group) simplices of ``group``."""

    latent_channels: int
    num_classes: int
    channels: int = 64
    group: int = 8
    tau: float = 0.5
    hidden: int = 64
    multilabel: bool = False

    def __post_init__(self):
        for name in ("channels", "hidden"):
            whole_number(getattr(self, name), f"fusion.se.{name}", 1)
        whole_number(self.group, "fusion.se.group", 2)
        if self.channels % self.group:
            raise TailsynthError(
                f"fusion.se.group ({self.group}) must be at least 2 and divide fusion.se.channels ({self.channels})"
            )
        real_number(self.tau, "fusion.se.tau", positive=True)


def simplicial(logits: torch.Tensor, group: int, tau: float) -> torch.Tensor:
    """Softmax over each group of ``group`` channels of ``logits`` (N, C, H, W) at temperature ``tau``."""
    n, c, h, w = logits.shape
    return torch.softmax(logits.view(n, c // group, group, h, w) / tau, dim=2).view(n, c, h, w)


def sparsity(embedding: torch.Tensor, group: int) -> float:
    """Mean over simplices of their largest probability (1 / group for uniform, 1 for one-hot)."""
    n, c, h, w = embedding.shape
    return float(embedding.view(n, c // group, group, h, w).amax(dim=2).mean())


def tanh_capped_sparsity(group: int, tau: float = 1.0) -> float:
    """The largest probability a ``group``-way simplex can reach when its logits are bounded to [-1, 1]
    by a Tanh, at temperature ``tau``: e^(1/τ) / (e^(1/τ) + (group-1)·e^(-1/τ)). The reference runs at
    τ = 1 (0.105 for its 64-way simplices, 0.514 for 8-way ones); at τ = 0.2 the bound is 0.9997, so a
    Tanh would barely bind there."""
    top = math.exp(2 / tau)  # the ratio of the two extreme probabilities, e^(1/τ) / e^(-1/τ)
    return top / (top + group - 1)


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8 if cout % 8 == 0 else 1, cout), nn.SiLU()]


class Student(nn.Module):
    """S: latent (N, c, h, w) -> simplicial embedding (N, channels, h, w); ``logits`` gives the pre-softmax values."""

    def __init__(self, config: EmbeddingConfig):
        super().__init__()
        self.group, self.tau = config.group, config.tau
        self.net = nn.Sequential(
            *_block(config.latent_channels, config.hidden),
            *_block(config.hidden, config.hidden),
            nn.Conv2d(config.hidden, config.channels, 1),
        )

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return simplicial(self.net(z), self.group, self.tau)


class Decoder(nn.Module):
    """D: embedding (N, channels, h, w) -> latent (N, c, h, w), unbounded."""

    def __init__(self, config: EmbeddingConfig):
        super().__init__()
        self.net = nn.Sequential(
            *_block(config.channels, config.hidden),
            *_block(config.hidden, config.hidden),
            nn.Conv2d(config.hidden, config.latent_channels, 3, padding=1),
        )

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return self.net(s)


class EmbeddingClassifier(nn.Module):
    """C: embedding (N, channels, h, w) -> logits (N, num_classes). ``features`` (named layers
    ``features.0`` ...) keep the spatial layout, which is what EigenCAM reads."""

    def __init__(self, config: EmbeddingConfig):
        super().__init__()
        width = config.hidden
        self.features = nn.Sequential(
            *_block(config.channels, width), *_block(width, 2 * width), *_block(2 * width, 2 * width)
        )
        self.head = nn.Linear(2 * width, config.num_classes)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(s).mean(dim=(2, 3)))


@dataclass(frozen=True)
class ILConfig:
    generations: int = 10
    interaction_steps: int = 200
    imitation_steps: int = 100
    batch_size: int = 64
    lr: float = 1e-3
    lr_cls: float = 1e-3
    weight_decay: float = 1e-2
    cls_weight: float = 1.0
    seed: int = 0

    def __post_init__(self):
        for name in ("generations", "interaction_steps", "batch_size"):
            whole_number(getattr(self, name), f"fusion.il.{name}", 1)
        for name in ("imitation_steps", "seed"):
            whole_number(getattr(self, name), f"fusion.il.{name}", 0)
        for name in ("lr", "lr_cls"):
            real_number(getattr(self, name), f"fusion.il.{name}", positive=True)
        for name in ("weight_decay", "cls_weight"):
            real_number(getattr(self, name), f"fusion.il.{name}", minimum=0)


@dataclass
class FusionModels:
    student: Student
    decoder: Decoder
    classifier: EmbeddingClassifier
    config: EmbeddingConfig


def class_weights(targets: torch.Tensor, num_classes: int, multilabel: bool) -> torch.Tensor:
    """Per-class weights N / (n_c · K) (the reference's positive weights; CE class weights when single-label)."""
    counts = targets.sum(0) if multilabel else torch.bincount(targets, minlength=num_classes)
    counts = counts.float().clamp(min=1)
    return float(len(targets)) / (counts * num_classes)


def classification_loss(logits, targets, weights, multilabel: bool) -> torch.Tensor:
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits, targets.float(), pos_weight=weights)
    return F.cross_entropy(logits, targets, weight=weights)


def _init(module: nn.Module, seed: int) -> nn.Module:
    """Re-initialise every parameter of ``module`` from ``seed`` (a fresh student of a new generation).

    The fresh values are drawn on a CPU copy and then copied in, so they are the same whatever device
    ``module`` is on, and no device's random state is touched.
    """
    fresh = copy.deepcopy(module).cpu()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in fresh.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    module.load_state_dict(fresh.state_dict())
    return module


def _draws(n: int, batch_size: int, steps: int, gen: torch.Generator):
    perm, pos = torch.randperm(n, generator=gen), 0
    for _ in range(steps):
        if pos + min(batch_size, n) > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        yield perm[pos : pos + min(batch_size, n)]
        pos += batch_size


@torch.no_grad()
def generation_metrics(models: FusionModels, latents, targets, batch_size: int = 256) -> dict[str, float]:
    """Reconstruction L1, accuracy (single-label) or mAP (multi-label) and sparsity on ``latents``."""
    from tailsynth.metrics.average_precision import mean_average_precision

    param = next(models.student.parameters())
    l1, top, logits_all = 0.0, 0.0, []
    for start in range(0, len(latents), batch_size):
        z = latents[start : start + batch_size].to(param.device)
        s = models.student(z)
        l1 += float((models.decoder(s) - z).abs().mean()) * len(z)
        top += sparsity(s, models.config.group) * len(z)
        logits_all.append(models.classifier(s).float().cpu())
    logits = torch.cat(logits_all)
    n = len(latents)
    out = {"recon_l1": l1 / n, "sparsity": top / n}
    if models.config.multilabel:
        out["map"] = mean_average_precision(targets.numpy(), torch.sigmoid(logits).numpy())
    else:
        out["acc"] = float((logits.argmax(1) == targets).float().mean())
    return out


def train_iterated(
    latents: torch.Tensor,
    targets: torch.Tensor,
    embedding: EmbeddingConfig,
    il: ILConfig,
    *,
    device: str | torch.device = "cpu",
    callback: Callable[[int, dict], None] | None = None,
) -> FusionModels:
    """Train S, D and C on ``latents`` (N, c, h, w) with ``targets`` (N,) class indices or (N, K) 0/1.

    ``callback(generation, metrics)`` gets :func:`generation_metrics` on the training latents after
    each generation's interaction phase. Draws come from CPU generators seeded per generation and
    phase, so a run repeats on any device.
    """
    with torch.random.fork_rng(devices=[]):  # built on the CPU from the seed, then moved
        torch.manual_seed(derive_seed(il.seed, "init"))
        models = FusionModels(Student(embedding), Decoder(embedding), EmbeddingClassifier(embedding), embedding)
    for m in (models.student, models.decoder, models.classifier):
        m.to(device).train()
    weights = class_weights(targets, embedding.num_classes, embedding.multilabel).to(device)
    latents_dev, targets_dev = latents.to(device), targets.to(device)
    shared = torch.optim.AdamW(
        [
            {"params": models.decoder.parameters(), "lr": il.lr},
            {"params": models.classifier.parameters(), "lr": il.lr_cls},
        ],
        weight_decay=il.weight_decay,
    )
    for g in range(il.generations):
        student_opt = torch.optim.AdamW(models.student.parameters(), lr=il.lr, weight_decay=il.weight_decay)
        gen = torch.Generator().manual_seed(derive_seed(il.seed, "interaction", g))
        for idx in _draws(len(latents), il.batch_size, il.interaction_steps, gen):
            z, y = latents_dev[idx.to(device)], targets_dev[idx.to(device)]
            s = models.student(z)
            loss = F.l1_loss(models.decoder(s), z) + il.cls_weight * classification_loss(
                models.classifier(s), y, weights, embedding.multilabel
            )
            student_opt.zero_grad(set_to_none=True)
            shared.zero_grad(set_to_none=True)
            loss.backward()
            student_opt.step()
            shared.step()
        if callback is not None:
            for m in (models.student, models.decoder, models.classifier):
                m.eval()
            callback(g, generation_metrics(models, latents, targets))
            for m in (models.student, models.decoder, models.classifier):
                m.train()
        if g == il.generations - 1 or il.imitation_steps == 0:
            continue
        teacher = copy.deepcopy(models.student).eval().requires_grad_(False)
        _init(models.student, derive_seed(il.seed, "student", g + 1))
        imitate(models.student, teacher, latents_dev, il, derive_seed(il.seed, "imitation", g))
    for m in (models.student, models.decoder, models.classifier):
        m.eval()
    return models


def imitate(student: Student, teacher: Student, latents: torch.Tensor, il: ILConfig, seed: int) -> None:
    """Train ``student`` (in place) to imitate ``teacher``: at every position and group a one-hot code is
    sampled from the teacher's simplex and the student's cross-entropy to it is minimised."""
    opt = torch.optim.AdamW(student.parameters(), lr=il.lr, weight_decay=il.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    group = student.group
    for idx in _draws(len(latents), il.batch_size, il.imitation_steps, gen):
        z = latents[idx.to(latents.device)]
        with torch.no_grad():
            p = teacher(z)
            n, c, h, w = p.shape
            flat = p.view(n, c // group, group, h, w).permute(0, 1, 3, 4, 2).reshape(-1, group)
            codes = torch.multinomial(flat.float().cpu(), 1, generator=gen).squeeze(1).to(z.device)
        logits = student.logits(z).view(n, c // group, group, h, w).permute(0, 1, 3, 4, 2).reshape(-1, group)
        loss = F.cross_entropy(logits / student.tau, codes)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def save_models(models: FusionModels, folder, extra: dict | None = None) -> None:
    """``folder``/{student,decoder,classifier}.safetensors and config.json (written by the caller's atomic folder)."""
    from pathlib import Path

    from safetensors.torch import save_file

    from tailsynth.io import write_json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("student", "decoder", "classifier"):
        state = {k: v.detach().cpu().contiguous() for k, v in getattr(models, name).state_dict().items()}
        save_file(state, str(folder / f"{name}.safetensors"))
    write_json(folder / "config.json", {"embedding": asdict(models.config), **(extra or {})})


def load_models(folder, device: str | torch.device = "cpu") -> FusionModels:
    """S, D and C saved by :func:`save_models`, in eval mode on ``device``."""
    from pathlib import Path

    from safetensors.torch import load_file

    from tailsynth.io import read_json

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise TailsynthError(f"{folder}/config.json not found; run the train_il_se stage first")
    config = EmbeddingConfig(**read_json(folder / "config.json")["embedding"])
    models = FusionModels(Student(config), Decoder(config), EmbeddingClassifier(config), config)
    for name in ("student", "decoder", "classifier"):
        module = getattr(models, name)
        module.load_state_dict(load_file(str(folder / f"{name}.safetensors")))
        module.to(device).eval()
    return models
