"""Write a prepared dataset folder from any adapter's records."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from tailsynth.data.images import encode_png, load_image, load_image_uint8, match_channels, resize_batch
from tailsynth.data.manifest import CLASSES, MANIFEST, ORIGINALS, class_table, join_labels, split_labels
from tailsynth.errors import TailsynthError
from tailsynth.io import atomic_dir, atomic_write_bytes, sha, write_json


@dataclass
class Record:
    """One image of a source dataset. ``image`` is a (C, H, W) tensor in [0, 1] or a file path.

    ``labels``: the label indices of a multi-label image (possibly none, e.g. "No Finding" left
    out); ``label`` is then only where its file goes (its first label, or 0).
    """

    key: str
    image: torch.Tensor | Path
    label: int
    split: str
    in_pool: bool = False
    group: str | None = None
    extra: dict = field(default_factory=dict)
    labels: tuple[int, ...] | None = None


@dataclass
class Scan:
    """An adapter's result: the records and, per class in index order, id, name, prompt name and superclass."""

    records: list[Record]
    ids: list[str]
    names: list[str]
    prompt_names: list[str]
    superclasses: list[str | None]


class _EncodedRecords(Dataset):
    """Chunks of records, each read, resized, PNG-encoded and written in whichever process loads it.

    Item ``i`` is the ``i``-th chunk of ``chunk`` records; it returns, per record, its path in the
    folder and the digest of its PNG bytes (the images themselves never cross a process boundary).
    With ``originals`` (a dataset root), nothing is written: each file is read and resized as the
    stages will read it, and the path is the original's, relative to that root, with the digest
    of the resized pixels.
    """

    def __init__(
        self, records: list[Record], tmp: Path, size: int, channels: int, chunk: int, originals: Path | None = None
    ):
        self.records, self.tmp, self.size, self.channels, self.chunk = records, tmp, size, channels, chunk
        self.originals = originals

    def __len__(self) -> int:
        return -(-len(self.records) // self.chunk)

    def __getitem__(self, i: int) -> list[tuple[str, str]] | TailsynthError:
        try:
            return [self._write(rec) for rec in self.records[i * self.chunk : (i + 1) * self.chunk]]
        except TailsynthError as exc:
            # Returned, not raised: a DataLoader re-raises a worker's error wrapped in its traceback,
            # and the stage's error must stay the one line that names the file.
            return exc

    def _write(self, rec: Record) -> tuple[str, str]:
        size, channels = self.size, self.channels
        if self.originals is not None:
            return self._keep(rec)
        img = rec.image if isinstance(rec.image, torch.Tensor) else load_image(rec.image, size, channels)
        if img.shape[-1] != size or img.shape[0] != channels:
            img = resize_batch(match_channels(img[None], channels), size)[0]
        rel = f"images/{rec.label:04d}/{rec.key}.png"
        data = encode_png(img)
        atomic_write_bytes(self.tmp / rel, data)
        return rel, sha(data)

    def _keep(self, rec: Record) -> tuple[str, str]:
        if isinstance(rec.image, torch.Tensor):
            raise TailsynthError(
                "data.keep_originals needs a dataset read from image files under data.root; this one is made in "
                "memory (set data.keep_originals: false)"
            )
        rel = os.path.relpath(os.path.abspath(rec.image), self.originals)
        if rel.startswith(".."):
            raise TailsynthError(
                f"data.keep_originals: image {rec.image} is not under data.root {self.originals}; keep a copy instead "
                "(data.keep_originals: false)"
            )
        pixels = load_image_uint8(rec.image, self.size, self.channels)  # read as every stage will read it
        return Path(rel).as_posix(), sha(f"{tuple(pixels.shape)}".encode() + pixels.numpy().tobytes())


def _one_thread(_worker_id: int) -> None:
    # Each worker already is one of the parallel lanes; torch threads inside it would only contend.
    torch.set_num_threads(1)


def encoded_records(
    records: list[Record],
    tmp: Path,
    *,
    size: int,
    channels: int,
    workers: int = 0,
    chunk: int = 32,
    originals: Path | None = None,
) -> Iterator[tuple[Record, str, str]]:
    """Write every record's PNG under ``tmp``, yielding ``(record, path, digest)`` in record order
    (with ``originals``, a dataset root: write nothing, see :class:`_EncodedRecords`).

    ``workers`` > 0 decodes, resizes and encodes in that many worker processes (a torch
    ``DataLoader``); 0 does it in this process. Every image goes through the same function either
    way, so the bytes written do not depend on ``workers`` or ``chunk``.
    """
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    dataset = _EncodedRecords(records, tmp, size, channels, chunk, originals)
    loader = DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        worker_init_fn=_one_thread if workers else None,
        prefetch_factor=4 if workers else None,
    )
    it = iter(records)
    for written in loader:
        if isinstance(written, TailsynthError):
            raise written
        for rel, digest in written:
            yield next(it), rel, digest


def write_prepared(
    out_dir: str | Path,
    records: Iterable[Record],
    *,
    names: list[str],
    prompt_names: list[str],
    size: int,
    channels: int,
    many_above: int,
    few_below: int,
    progress: Callable[[int], None] | None = None,
    superclasses: list[str | None] | None = None,
    ids: list[str] | None = None,
    workers: int = 0,
    chunk: int = 32,
    keep_originals: str | Path | None = None,
) -> list[dict]:
    """Resize every record to ``size``×``size`` with ``channels`` channels and write the folder.

    ``keep_originals`` (the dataset root every record's file lies under) writes no images: the manifest's
    paths point at the original files, relative to that root, which ``originals.json`` names with the
    size and channels that every reader resizes them to (:func:`tailsynth.data.manifest.originals`). The
    stages then read the same pixels as from a resized copy.

    The folder appears only when complete (it is built under a temporary name). Returns the
    class table written to ``classes.json`` (with ``superclass`` and ``id`` keys when those are given).
    Multi-label records (``labels`` set; all or none of them) give a ``labels`` column of
    ``|``-joined indices instead of ``label``, and a class's train count is the number of train
    images showing it. ``workers`` > 0 reads and encodes the images in that many processes,
    ``chunk`` records per task; the folder is byte-identical to the one ``workers=0`` writes.
    """
    records = list(records)
    kinds = {rec.labels is not None for rec in records}
    if len(kinds) > 1:
        raise ValueError("records mix single-label and multi-label images")
    multilabel = kinds == {True}
    rows = []
    root = None if keep_originals is None else Path(os.path.abspath(keep_originals))
    with atomic_dir(out_dir) as tmp:
        for rec, rel, digest in encoded_records(
            records, tmp, size=size, channels=channels, workers=workers, chunk=chunk, originals=root
        ):
            # The content digest makes manifest.csv stand for the whole folder: stages depend on it alone.
            label = {"labels": join_labels(rec.labels)} if multilabel else {"label": rec.label}
            row = {"image": rel, **label, "split": rec.split, "in_pool": int(rec.in_pool), "sha": digest}
            if rec.group is not None:
                row["group"] = rec.group
            rows.append(row)
            if progress is not None:
                progress(1)
        df = pd.DataFrame(rows)
        train = df[df["split"] == "train"]
        if multilabel:
            shown = [set(split_labels(v)) for v in train["labels"]]
            train_counts = [sum(k in s for s in shown) for k in range(len(names))]
        else:
            train_counts = [int((train["label"] == k).sum()) for k in range(len(names))]
        table = class_table(
            names, prompt_names, train_counts, many_above, few_below, superclasses=superclasses, ids=ids
        )
        df.to_csv(tmp / MANIFEST, index=False)
        write_json(tmp / CLASSES, table)
        if root is not None:
            write_json(tmp / ORIGINALS, {"root": str(root), "size": size, "channels": channels})
    return table
