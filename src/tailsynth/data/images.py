"""Reading, resizing and writing images as tensors (C, H, W) in [0, 1]."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from tailsynth.errors import TailsynthError
from tailsynth.io import atomic_write_bytes

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def load_image(path: str | Path, size: int | None = None, channels: int = 3) -> torch.Tensor:
    """Read an image file as float (channels, size, size) in [0, 1]: :func:`load_image_uint8` / 255."""
    return load_image_uint8(path, size, channels).float() / 255


def load_image_uint8(path: str | Path, size: int | None = None, channels: int = 3) -> torch.Tensor:
    """Read an image file as uint8 (channels, size, size).

    Resizes the shorter side to ``size`` and centre-crops (no resizing when ``size`` is None).
    Raises ``TailsynthError`` naming the file when it cannot be decoded.
    """
    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            if size is not None:
                im = _resize_center_crop(im, size)
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise TailsynthError(f"cannot read image {path}: {exc}; remove or replace the file") from exc
    t = torch.from_numpy(arr.copy())
    return t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1).contiguous()


def _resize_center_crop(im: Image.Image, size: int) -> Image.Image:
    w, h = im.size
    scale = size / min(w, h)
    if (w, h) != (size, size):
        im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
        w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        im = im.crop((left, top, left + size, top + size))
    return im


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) float in [0, 1] -> (H, W) or (H, W, C) uint8, rounding to nearest."""
    arr = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)


def encode_png(image: torch.Tensor, text: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    info = None
    if text:
        info = PngImagePlugin.PngInfo()
        for key, value in text.items():
            info.add_text(key, str(value))
    Image.fromarray(to_uint8(image)).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def save_png(image: torch.Tensor, path: str | Path, text: dict[str, str] | None = None) -> None:
    """Write (C, H, W) in [0, 1] as PNG atomically (temp name, then rename), with optional text fields."""
    atomic_write_bytes(path, encode_png(image, text))


def png_text(path: str | Path) -> dict[str, str]:
    """The text fields stored in a PNG by :func:`save_png`."""
    with Image.open(path) as im:
        return dict(getattr(im, "text", {}) or {})


def resize_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, size, size), bilinear with antialiasing when shrinking."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)


def match_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Convert (N, C, H, W) between grayscale and RGB (luma weights for RGB -> gray)."""
    c = images.shape[1]
    if c == channels:
        return images
    if c == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    if c == 3 and channels == 1:
        w = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        return (images * w).sum(1, keepdim=True)
    raise ValueError(f"cannot convert {c} channels to {channels}")
