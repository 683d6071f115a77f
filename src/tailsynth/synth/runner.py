"""Execute a plan: batched, seeded per row, resumable, sharded across processes, atomic outputs."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
from PIL import Image

from tailsynth.data.images import match_channels, png_text, resize_batch, save_png
from tailsynth.io import atomic_write_text, file_digest
from tailsynth.seeding import derive_seed
from tailsynth.synth.plan import MANIFEST, write_plan

# (rows of one batch, their source images or None) -> images (N, C, H, W) in [0, 1]
# ... or (images, per-row result columns as a DataFrame aligned with the batch)
GenerateFn = Callable[[pd.DataFrame, torch.Tensor | None], torch.Tensor | tuple[torch.Tensor, pd.DataFrame]]
SourceFn = Callable[[pd.DataFrame], torch.Tensor | None]
BATCH_KEYS = ("mode", "r", "steps", "cfg")
# Manifest columns of the NaN / black-sample check, in every synthetic set (0 where nothing happened).
CHECK_COLUMNS = ("retry_seed", "failed")


def bad_image(image: torch.Tensor) -> bool:
    """True for a sample that is no image: any NaN or infinite value, or all black (below half a grey level)."""
    return not bool(torch.isfinite(image).all()) or float(image.max()) < 0.5 / 255


def retry_seed(seed: int) -> int:
    """The seed of a row's one retry, derived from its own seed only."""
    return derive_seed(int(seed), "retry")


def image_ok(path: Path, size: int) -> bool:
    """True when ``path`` is a readable image of the expected size (a finished row)."""
    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            return im.size == (size, size)
    except (OSError, ValueError):
        return False


def pending_rows(plan: pd.DataFrame, folder: Path, size: int) -> pd.DataFrame:
    """The rows whose image is missing or unreadable."""
    done = [image_ok(folder / rel, size) for rel in plan["image"]]
    return plan[[not d for d in done]]


def batches(rows: pd.DataFrame, batch_size: int):
    """Batches of rows that can share one pipeline call (same mode, r, steps and cfg), in plan order."""
    keys = [k for k in BATCH_KEYS if k in rows.columns]
    for _, group in rows.groupby(keys, sort=True) if keys else [(None, rows)]:
        for start in range(0, len(group), batch_size):
            yield group.iloc[start : start + batch_size]


def run_plan(
    plan: pd.DataFrame,
    folder: str | Path,
    generate: GenerateFn,
    load_sources: SourceFn,
    *,
    image_size: int,
    channels: int,
    batch_size: int,
    progress: Callable[[int], None] | None = None,
    process_index: int = 0,
    num_processes: int = 1,
) -> pd.DataFrame:
    """Generate every pending row of ``plan`` into ``folder`` and return the plan.

    The plan is written first. Batches are fixed on the whole plan (rows that share mode, r,
    steps and cfg, ``batch_size`` at a time, in plan order), so every row is always generated in
    the same batch, whatever is already done or how many processes share the work: a batch with
    a missing image is generated whole and only its missing images are written, which makes an
    interrupted run resume to the same bytes. Each process takes every ``num_processes``-th
    batch; only process 0 writes the plan (call :func:`finish` after all processes finished).
    Images are resized to ``image_size`` with ``channels`` channels and written atomically.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if process_index == 0:
        write_plan(plan, folder)
    for i, batch in enumerate(batches(plan, batch_size)):
        if i % num_processes != process_index:
            continue
        written = write_batch(batch, folder, generate, load_sources, image_size=image_size, channels=channels)
        if written and progress is not None:
            progress(written)
    return plan


def write_batch(
    batch: pd.DataFrame,
    folder: Path,
    generate: GenerateFn,
    load_sources: SourceFn,
    *,
    image_size: int,
    channels: int,
) -> int:
    """Generate one batch of plan rows (see :func:`batches`) and write its missing images; returns how many.

    A batch with any image missing is generated whole, so its images are the same bytes whatever
    was already done. A NaN or black sample is generated once more alone, with a seed derived from
    its own; the PNG records that retry.
    """
    missing = [not image_ok(folder / rel, image_size) for rel in batch["image"]]
    if not any(missing):
        return 0
    sources = load_sources(batch)
    images, extras = _generated(generate(batch, sources), channels, image_size)
    for pos, (rel, img) in enumerate(zip(batch["image"], images, strict=True)):
        if not missing[pos]:
            continue
        # Per-row results (e.g. Ada's chosen_r) travel inside the PNG, so a resumed run keeps them.
        text = {} if extras is None else {k: repr(float(v)) for k, v in extras.iloc[pos].items()}
        if bad_image(img):  # NaN or black: once more, alone, with a derived seed; then reported, not hidden
            row = batch.iloc[[pos]]
            seed = retry_seed(row["seed"].iloc[0])
            one = None if sources is None else sources[pos : pos + 1]
            again, again_extras = _generated(generate(row.assign(seed=seed), one), channels, image_size)
            img = again[0]
            text = {} if again_extras is None else {k: repr(float(v)) for k, v in again_extras.iloc[0].items()}
            text |= {"retry_seed": repr(float(seed)), "failed": repr(float(bad_image(img)))}
        save_png(img.nan_to_num(0.0), folder / rel, text or None)
    return sum(missing)


def _generated(out, channels: int, image_size: int) -> tuple[torch.Tensor, pd.DataFrame | None]:
    """A generate function's result as (images in the output format, per-row extras or None)."""
    images, extras = out if isinstance(out, tuple) else (out, None)
    return resize_batch(match_channels(images, channels), image_size), extras


def finish(plan: pd.DataFrame, folder: str | Path, image_size: int) -> pd.DataFrame:
    """Remove images not in the plan (left by earlier params), check every row; return the manifest.

    Per-row results stored in the PNGs (numbers) become extra manifest columns, and every manifest
    has ``retry_seed`` (the seed of the one retry of a NaN or black sample, else 0) and ``failed``
    (1 when the retry was no image either: :func:`tailsynth.synth.plan.read_synthetic` leaves such
    rows out). The manifest is not written here: :func:`write_manifest` marks the set complete,
    after any method extras.
    """
    folder = Path(folder)
    wanted = {str(folder / rel) for rel in plan["image"]}
    for path in (folder / "images").rglob("*"):
        if path.is_file() and str(path) not in wanted:
            os.unlink(path)
    missing = pending_rows(plan, folder, image_size)
    if len(missing):
        raise RuntimeError(f"{len(missing)} planned images are missing in {folder}; re-run to resume")
    extras = pd.DataFrame([{k: float(v) for k, v in png_text(folder / rel).items()} for rel in plan["image"]])
    manifest = pd.concat([plan.reset_index(drop=True), extras], axis=1) if len(extras.columns) else plan.copy()
    if "chosen_r" in manifest:  # rows planned with r = "ada" record the ratio that was kept
        manifest["r"] = manifest["chosen_r"]
    for col in CHECK_COLUMNS:  # only retried rows carry them in their PNG
        manifest[col] = manifest[col].fillna(0).astype("int64") if col in manifest else 0
    # With the image digests the manifest stands for the whole set: consumers depend on it alone.
    manifest["sha"] = [file_digest(folder / rel) for rel in manifest["image"]]
    return manifest


def write_manifest(manifest: pd.DataFrame, folder: str | Path) -> None:
    """Write ``manifest.csv`` atomically: its presence is what marks a synthetic set complete."""
    atomic_write_text(Path(folder) / MANIFEST, manifest.to_csv(index=False))
