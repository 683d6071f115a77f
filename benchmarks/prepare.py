"""`prepare` with worker processes against the serial path, on a synthetic ImageFolder.

    python benchmarks/prepare.py [--images 3000] [--source-size 256] [--size 64] [--workers 2]

Writes ``images`` random-texture JPEGs of ``source-size`` px in 10 class folders (once, into
``--work``), then builds the prepared folder from them twice with the library's own
``write_prepared``: serially (``workers=0``) and with ``workers`` processes. Prints both wall
times, the speedup (serial / parallel) and whether the two folders are byte-identical.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from tailsynth.data.imagefolder import scan_imagefolder
from tailsynth.data.prepare import write_prepared
from tailsynth.io import folder_digest


def make_imagefolder(root: Path, images: int, size: int, classes: int = 10) -> None:
    """``images`` JPEGs of smooth random colour fields (a realistic decode cost, unlike flat colour)."""
    gen = np.random.default_rng(0)
    for i in range(images):
        path = root / "train" / f"class_{i % classes:02d}" / f"{i:06d}.jpg"
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        coarse = gen.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((size, size), Image.BICUBIC)
        noise = gen.integers(-20, 21, (size, size, 3))
        Image.fromarray(np.clip(np.asarray(img, dtype=np.int64) + noise, 0, 255).astype(np.uint8)).save(
            path, quality=90
        )
    # imagefolder with split folders needs every class in test too: one copied image each
    for k in range(classes):
        test = root / "test" / f"class_{k:02d}" / "000000.jpg"
        if not test.exists():
            test.parent.mkdir(parents=True, exist_ok=True)
            test.write_bytes(next((root / "train" / f"class_{k:02d}").iterdir()).read_bytes())


def timed_prepare(root: Path, out: Path, size: int, workers: int) -> float:
    records, names = scan_imagefolder(root, val_fraction=0.0, test_fraction=0.0, seed=0)
    start = time.perf_counter()
    write_prepared(
        out,
        records,
        names=names,
        prompt_names=names,
        size=size,
        channels=3,
        many_above=100,
        few_below=20,
        workers=workers,
    )
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--source-size", type=int, default=256)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "tailsynth_bench_prepare")
    args = ap.parse_args()
    root = args.work / f"src_{args.images}_{args.source_size}"
    make_imagefolder(root, args.images, args.source_size)
    serial = timed_prepare(root, args.work / "serial", args.size, 0)
    parallel = timed_prepare(root, args.work / "parallel", args.size, args.workers)
    identical = folder_digest(args.work / "serial") == folder_digest(args.work / "parallel")
    print(
        f"prepare of {args.images} {args.source_size}px JPEGs -> {args.size}px: serial {serial:.2f} s, "
        f"{args.workers} workers {parallel:.2f} s: {serial / parallel:.2f}x; byte-identical: {identical}"
    )


if __name__ == "__main__":
    main()
