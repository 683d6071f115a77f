"""VAE latents of prepared images, written in shards (never one tensor for a whole split).

A shard is a safetensors file holding ``latents`` (n, c, h, w), scaled by the VAE's
``scaling_factor`` as the diffusion model sees them; ``index.csv`` lists every encoded image with
its shard and offset. A shard's file name carries a digest of what determines it (the VAE, the
posterior mode, the seed when posterior samples are drawn, the resolution and its images'
content), so an interrupted encode resumes by skipping the shards that already exist (and removes
the one it was writing) and a changed input never reuses one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from tailsynth.errors import TailsynthError
from tailsynth.io import atomic_write_text, sha
from tailsynth.seeding import derive_seed

INDEX = "index.csv"
POSTERIORS = ("mode", "sample")


def check_posterior(mode: str) -> str:
    if mode not in POSTERIORS:
        raise TailsynthError(f"fusion.encode.posterior must be one of {', '.join(POSTERIORS)}, got {mode!r}")
    return mode


@torch.no_grad()
def encode_images(vae, images: torch.Tensor, *, posterior: str, seeds: list[int] | None = None) -> torch.Tensor:
    """Scaled latents (N, c, h, w) float32 on the CPU of ``images`` (N, C, H, W) in [0, 1], already at the
    VAE's resolution and channel count.

    ``posterior`` ``mode`` takes the posterior's mode (its mean); ``sample`` draws one sample per image
    from a CPU generator seeded with that image's entry of ``seeds``, so a latent does not depend on
    the batch it was encoded in.
    """
    check_posterior(posterior)
    param = next(vae.parameters())
    dist = vae.encode((images * 2 - 1).to(param.device, param.dtype)).latent_dist
    z = dist.mode()
    if posterior == "sample":
        if seeds is None or len(seeds) != len(images):
            raise ValueError("posterior 'sample' needs one seed per image")
        noise = torch.stack([torch.randn(z.shape[1:], generator=torch.Generator().manual_seed(int(s))) for s in seeds])
        z = dist.mean + dist.std * noise.to(z.device, z.dtype)
    return (z * vae.config.scaling_factor).float().cpu()


def encoding_identity(vae_digest: str, posterior: str, seed: int, resolution: int) -> str:
    """What besides its images determines a shard: the VAE, the posterior, the resolution and, for
    posterior samples only, the seed (the mode does not depend on it, so changing it keeps the shards)."""
    return f"{vae_digest}-{check_posterior(posterior)}-{seed if posterior == 'sample' else ''}-{resolution}"


def image_seed(seed: int, image: str) -> int:
    """The seed of one image's posterior sample: from the run's seed and the image's path."""
    return derive_seed(seed, "latent", image)


def write_latents(
    rows: pd.DataFrame,
    folder: str | Path,
    encode: Callable[[pd.DataFrame], torch.Tensor],
    *,
    identity: str,
    shard_size: int,
    progress: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """Encode ``rows`` (manifest rows with ``image`` and ``sha``) shard by shard into ``folder``.

    ``encode(shard_rows)`` returns their latents; ``identity`` names what else determines them (the
    VAE's weights, the posterior, the seed). Shards that exist under their digest are skipped, stale
    ones removed, and ``index.csv`` (the rows with ``shard`` and ``offset``) is written last: its
    presence marks the set complete. Returns the index.
    """
    if shard_size < 1:
        raise TailsynthError(f"fusion.encode.shard_size must be >= 1, got {shard_size}")
    if not len(rows):
        raise TailsynthError("no image to encode: the selected split is empty")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for leftover in folder.glob(".shard-*.tmp"):  # a shard an interrupted run was writing
        leftover.unlink()
    index, wanted = [], set()
    for i, start in enumerate(range(0, len(rows), shard_size)):
        part = rows.iloc[start : start + shard_size]
        digest = sha(json.dumps([identity, *part["image"], *part["sha"]]).encode(), 12)
        name = f"shard-{i:05d}-{digest}.safetensors"
        wanted.add(name)
        if not (folder / name).is_file():
            tmp = folder / f".{name}.tmp"
            save_file({"latents": encode(part).contiguous()}, str(tmp))
            os.replace(tmp, folder / name)
        index.append(part.assign(shard=name, offset=range(len(part))))
        if progress is not None:
            progress(len(part))
    for path in folder.glob("shard-*.safetensors"):
        if path.name not in wanted:
            path.unlink()
    table = pd.concat(index, ignore_index=True)
    atomic_write_text(folder / INDEX, table.to_csv(index=False))
    return table


def read_index(folder: str | Path) -> pd.DataFrame:
    path = Path(folder) / INDEX
    if not path.is_file():
        raise TailsynthError(f"{path} not found; run the encode_latents stage first")
    return pd.read_csv(path, keep_default_na=False)


def iter_shards(folder: str | Path, index: pd.DataFrame) -> Iterator[tuple[pd.DataFrame, torch.Tensor]]:
    """(index rows, latents) of each shard in index order."""
    for name, part in index.groupby("shard", sort=False):
        latents = load_file(str(Path(folder) / name))["latents"]
        yield part, latents[torch.as_tensor(part["offset"].to_numpy(copy=True))]


def load_latents(folder: str | Path, index: pd.DataFrame | None = None) -> tuple[pd.DataFrame, torch.Tensor]:
    """Every latent of the set in one tensor (N, c, h, w), in index order.

    The shards bound the encoder's memory, not this: train_il_se, cams and fuse hold the whole split's
    latents (N·c·h·w float32: 1 KiB per image for the embedded 4×8×8, 64 KiB for SD's 4×64×64, about
    7 GiB for ImageNet-LT's 115,846 train images).
    """
    index = read_index(folder) if index is None else index
    parts = list(iter_shards(folder, index))
    return pd.concat([p for p, _ in parts], ignore_index=True), torch.cat([z for _, z in parts])
