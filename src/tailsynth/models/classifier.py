"""Image classifiers (a small CNN for the embedded default, torchvision ResNets for real data).

A classifier folder holds ``config.json`` (architecture, classes, input shape, normalisation)
and ``model.safetensors``. Inputs are always float images in [0, 1], shape (N, C, H, W); the
model normalises them itself, so callers never need to know the statistics.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from tailsynth.errors import TailsynthError
from tailsynth.io import read_json, write_json

ARCHS = ("small_cnn", "resnet18", "resnet34", "resnet50")


class SmallCNN(nn.Module):
    """A stride-2 stem, three conv stages and global pooling; ``width`` channels in the stem and first stage.

    (N, C, H, W) -> features (N, 4 * width) -> logits (N, K); stages at H/2 (width), H/4 (2 * width)
    and H/8 (4 * width), so inputs need H, W >= 8. The stem halves the resolution at once, as
    ResNet stems do: 3x3 convolutions at full resolution cost the most and add little (the
    embedded digits are 8x8 images upsampled to 32x32). ``stem_stride=1`` is the earlier
    variant, all stages at full, 1/2 and 1/4 resolution (same weights' names and shapes).
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, dropout: float = 0.1, stem_stride: int = 2):
        super().__init__()

        def block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
            conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
            return nn.Sequential(conv, nn.BatchNorm2d(c_out), nn.ReLU())

        w = width
        self.features = nn.Sequential(
            block(in_channels, w, stride=stem_stride),
            block(w, w),
            nn.MaxPool2d(2),
            block(w, 2 * w),
            block(2 * w, 2 * w),
            nn.MaxPool2d(2),
            block(2 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(4 * w, num_classes)
        self.feature_dim = 4 * w

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.forward_features(x)))


class TorchvisionNet(nn.Module):
    """A torchvision ResNet with its first conv adapted to ``in_channels`` and a new head."""

    def __init__(self, arch: str, in_channels: int, num_classes: int):
        super().__init__()
        import torchvision

        net = getattr(torchvision.models, arch)(weights=None)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.feature_dim = net.fc.in_features
        net.fc = nn.Identity()
        self.backbone = net
        self.head = nn.Linear(self.feature_dim, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


class Classifier(nn.Module):
    """Normalisation + a backbone + a linear head. ``forward`` maps (N, C, H, W) in [0, 1] to (N, K) logits."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = dict(config)
        arch, c, k = config["arch"], config["in_channels"], config["num_classes"]
        if arch == "small_cnn":
            # Folders saved before the stride-2 stem have no stem_stride: they hold the stride-1 variant.
            self.net: nn.Module = SmallCNN(
                c, k, width=config.get("width", 32), stem_stride=config.get("stem_stride", 1)
            )
        elif arch in ARCHS:
            self.net = TorchvisionNet(arch, c, k)
        else:
            raise TailsynthError(f"unknown classifier arch {arch!r}; choose one of {', '.join(ARCHS)}")
        mean = torch.tensor(config.get("mean", [0.5] * c)).view(1, c, 1, 1)
        std = torch.tensor(config.get("std", [0.5] * c)).view(1, c, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    @property
    def feature_dim(self) -> int:
        return self.net.feature_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features, (N, D)."""
        return self.net.forward_features((x - self.mean) / self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def build_classifier(
    arch: str,
    num_classes: int,
    in_channels: int,
    image_size: int,
    *,
    width: int = 32,
    stem_stride: int = 2,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    seed: int = 0,
) -> Classifier:
    """A fresh classifier initialised from ``seed``. ``mean``/``std`` default to 0.5 per channel.

    ``width`` and ``stem_stride`` (1 or 2) apply to ``small_cnn`` only.
    """
    if stem_stride not in (1, 2):
        raise TailsynthError(f"stem_stride must be 1 or 2, got {stem_stride!r}")
    cfg = {
        "arch": arch,
        "num_classes": int(num_classes),
        "in_channels": int(in_channels),
        "image_size": int(image_size),
        "width": int(width),
        "mean": mean or [0.5] * in_channels,
        "std": std or [0.5] * in_channels,
    }
    if arch == "small_cnn":
        cfg["stem_stride"] = int(stem_stride)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Classifier(cfg)


def load_pretrained_backbone(model: Classifier, path: str | Path) -> None:
    """Load backbone weights (e.g. ImageNet ResNet weights) from a safetensors or ``.pth`` file.

    The classification head is skipped. ``.pth`` files are read with ``weights_only=True``.
    """
    path = Path(path)
    if not path.is_file():
        raise TailsynthError(f"classifier.weights: file {path} not found; give a safetensors or .pth file")
    state = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path, weights_only=True)
    target = model.net.backbone if isinstance(model.net, TorchvisionNet) else model.net
    own = target.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith(("fc.", "head."))}
    first = "conv1.weight"
    if first in state and first in own and state[first].shape[1] != own[first].shape[1] and own[first].shape[1] == 1:
        # Grayscale input: an RGB stem summed over its colour channels sees the same image.
        state[first] = state[first].sum(dim=1, keepdim=True)
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if mismatched:
        raise TailsynthError(f"classifier.weights: {path} has shapes that do not fit the model at {mismatched[:3]}")
    missing, unexpected = target.load_state_dict(state, strict=False)
    if unexpected or missing:
        raise TailsynthError(
            f"classifier.weights: {path} does not match arch {model.config['arch']!r} "
            f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})"
        )


def save_classifier(model: Classifier, folder: str | Path, extra: dict | None = None) -> None:
    """Write ``config.json`` and ``model.safetensors`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    write_json(folder / "config.json", {**model.config, **(extra or {})})


def load_classifier(folder: str | Path, device: str | torch.device = "cpu") -> Classifier:
    """Load a classifier folder written by :func:`save_classifier`, in eval mode."""
    folder = Path(folder)
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise TailsynthError(f"{folder} is not a classifier folder (needs config.json and model.safetensors)")
    model = Classifier(read_json(folder / "config.json"))
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model.to(device).eval()


@torch.no_grad()
def predict(model: Classifier, images, batch_size: int = 256, workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, K) and penultimate features (N, D) of ``images`` in eval mode, on the CPU.

    ``images``: a float tensor (N, C, H, W) in [0, 1], or an image set of :mod:`tailsynth.data.stream`
    (a uint8 tensor, or an ``ImageFiles`` that ``workers`` processes decode), scaled to [0, 1] a batch
    at a time on the model's device, so no float copy of the whole set is made.
    """
    from tailsynth.data.stream import batches, in_order

    model.eval()
    device = next(model.parameters()).device
    logits, feats = [], []
    for x in batches(images, in_order(len(images), batch_size), workers):
        x = x.to(device)
        x = x.float() / 255 if x.dtype == torch.uint8 else x
        f = model.features(x)
        feats.append(f.float().cpu())
        logits.append(model.net.head(f).float().cpu())
    return torch.cat(logits), torch.cat(feats)
