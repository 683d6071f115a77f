"""Stage prepare: a dataset source -> data/prepared/<dataset>/ (images, manifest.csv, classes.json)."""

import os

from tailsynth.data.csv_source import scan_csv
from tailsynth.data.digits import load_digits_split
from tailsynth.data.digits_groups import load_digits_groups
from tailsynth.data.digits_multilabel import load_digits_multilabel
from tailsynth.data.imagefolder import scan_imagefolder
from tailsynth.data.imagenet_lt import scan_imagenet_lt
from tailsynth.data.mimic_cxr_lt import scan_mimic_cxr_lt
from tailsynth.data.mini_imagenet import scan_split_csvs
from tailsynth.data.nico_pp import scan_nico_pp
from tailsynth.data.prepare import Record, write_prepared
from tailsynth.errors import TailsynthError

from _common import load_params, log, prepared_dir, progress_bar, require, stage


@stage
def main() -> None:
    p = load_params()["data"]
    kind = p["dataset"]
    if p["channels"] not in (1, 3):
        raise TailsynthError(f"data.channels must be 1 or 3, got {p['channels']!r}")
    if not isinstance(p["size"], int) or p["size"] < 8:
        raise TailsynthError(f"data.size must be an integer >= 8, got {p['size']!r}")
    workers = prepare_workers(p.get("workers", "auto"))
    keep = p.get("keep_originals", False)
    if keep not in (True, False):
        raise TailsynthError(f"data.keep_originals must be true or false, got {keep!r}")
    if keep and not p.get("root"):
        raise TailsynthError(
            "data.keep_originals needs a dataset read from image files under data.root; set data.root, or "
            "data.keep_originals: false"
        )
    scan = None
    if kind in ("digits", "digits_groups", "digits_multilabel"):
        digits_args = {
            "size": p["size"],
            "imbalance_ratio": p["imbalance_ratio"],
            "max_per_class": p["max_per_class"],
            "test_per_class": p["test_per_class"],
            "val_per_class": p["val_per_class"],
            "seed": p["seed"],
        }
        if kind == "digits":
            d = load_digits_split(**digits_args)
        elif kind == "digits_groups":
            d = load_digits_groups(group_ratio=require(p, "group_ratio", "data"), **digits_args)
        else:
            d = load_digits_multilabel(**digits_args)
        groups = d.get("groups", [None] * len(d["labels"]))
        records = [
            Record(key=f"{i:05d}", image=img, label=int(y), split=str(s), in_pool=bool(pool), group=g)
            if kind != "digits_multilabel"
            else Record(key=f"{i:05d}", image=img, label=y[0], split=str(s), in_pool=bool(pool), labels=y)
            for i, (img, y, s, pool, g) in enumerate(
                zip(d["images"], d["labels"], d["split"], d["in_pool"], groups, strict=True)
            )
        ]
        names = d["names"]
    elif kind == "imagefolder":
        records, names = scan_imagefolder(
            require(p, "root", "data"), val_fraction=p["val_fraction"], test_fraction=p["test_fraction"], seed=p["seed"]
        )
    elif kind == "nico_pp":
        records, names = scan_nico_pp(
            require(p, "root", "data"),
            split_files=p.get("split_files"),
            val_fraction=p["val_fraction"],
            test_fraction=p["test_fraction"],
            seed=p["seed"],
        )
    elif kind == "csv":
        records, names = scan_csv(require(p, "csv", "data"), p.get("root"))
    elif kind == "mimic_cxr_lt":
        scan = scan_mimic_cxr_lt(
            require(p, "root", "data"),
            split_files=p.get("split_files"),
            path_column=p.get("path_column") or "fpath",
            uncertain=p.get("uncertain") or "zero",
        )
    elif kind == "mini_imagenet":  # also tiered-ImageNet, which uses the same split CSVs
        scan = scan_split_csvs(require(p, "root", "data"), class_names=p.get("class_names") or None)
    elif kind == "imagenet_lt":
        scan = scan_imagenet_lt(
            require(p, "root", "data"), split_files=p.get("split_files"), class_names=p.get("class_names") or None
        )
    else:
        raise TailsynthError(
            f"unknown data.dataset {kind!r}; use digits, digits_groups, digits_multilabel, imagefolder, csv, "
            "nico_pp, mini_imagenet (also tiered-ImageNet), imagenet_lt or mimic_cxr_lt"
        )
    if scan is not None:
        records, names = scan.records, scan.names
    prompt_names = scan.prompt_names if scan else [n.replace("_", " ") for n in names]
    # the older sources have no class ids or superclasses; their classes.json stays as it was
    described = {"ids": scan.ids, "superclasses": scan.superclasses} if scan else {}
    with progress_bar(len(records), "prepare") as bar:
        table = write_prepared(
            prepared_dir({"data": p}),
            records,
            names=names,
            prompt_names=prompt_names,
            size=p["size"],
            channels=p["channels"],
            many_above=p["buckets"]["many"],
            few_below=p["buckets"]["few"],
            progress=bar.update,
            workers=workers,
            keep_originals=p["root"] if keep else None,
            **described,
        )
    for c in table:
        log.info("class %d %-12s train=%4d %s", c["index"], c["name"], c["train_count"], c["bucket"])


def prepare_workers(value) -> int:
    """``data.workers``: worker processes that read and encode images; ``auto`` is one per usable core."""
    if value == "auto":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return cores if cores > 1 else 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TailsynthError(f"data.workers must be auto or an integer >= 0 (0: no worker processes), got {value!r}")
    return value


if __name__ == "__main__":
    main()
