import numpy as np
import pandas as pd
import pytest
import torch

from tailsynth.data.csv_source import scan_csv
from tailsynth.data.digits import load_digits_split, long_tail_counts
from tailsynth.data.episodes import novel_classes
from tailsynth.data.imagefolder import scan_imagefolder
from tailsynth.data.images import load_image
from tailsynth.data.manifest import load_split, read_classes, read_manifest, resolve_inside, select_rows, shot_bucket
from tailsynth.data.prepare import Record, write_prepared
from tailsynth.errors import TailsynthError


def test_long_tail_profile_spans_the_ratio():
    counts = long_tail_counts(10, 120, 30)
    assert counts[0] == 120 and counts[-1] == 4
    assert all(a >= b for a, b in zip(counts, counts[1:], strict=False))


def test_digits_splits_are_disjoint_balanced_and_long_tailed():
    d = load_digits_split(size=16, imbalance_ratio=30, max_per_class=120, test_per_class=50, val_per_class=4, seed=0)
    assert d["images"].shape[1:] == (1, 16, 16)
    assert 0 <= d["images"].min() and d["images"].max() <= 1
    labels, split, pool = d["labels"], d["split"], d["in_pool"]
    test_counts = np.bincount(labels[split == "test"], minlength=10)
    assert (test_counts == 50).all()
    train_counts = np.bincount(labels[split == "train"], minlength=10)
    assert list(train_counts) == long_tail_counts(10, 120, 30)
    assert (np.bincount(labels[split == "val"], minlength=10) == 4).all()
    pool_counts = np.bincount(labels[pool], minlength=10)
    assert len(set(pool_counts)) == 1  # balanced
    assert not pool[split == "test"].any()
    assert pool[split == "train"].all()


def test_digits_refuses_more_train_than_available():
    with pytest.raises(TailsynthError, match="max_per_class"):
        load_digits_split(size=8, imbalance_ratio=10, max_per_class=170, test_per_class=50, val_per_class=4, seed=0)


@pytest.mark.parametrize(("count", "bucket"), [(101, "many"), (100, "medium"), (20, "medium"), (19, "few")])
def test_shot_buckets_use_paper_thresholds_by_default(count, bucket):
    assert shot_bucket(count) == bucket


def test_write_prepared_writes_contract_files(tmp_path):
    records = [
        Record(key=f"{i}", image=torch.rand(1, 8, 8), label=int(i >= 4), split="train" if i < 6 else "test")
        for i in range(8)
    ]
    table = write_prepared(
        tmp_path / "ds",
        records,
        names=["a", "b"],
        prompt_names=["a", "b"],
        size=8,
        channels=1,
        many_above=3,
        few_below=2,
    )
    assert [c["train_count"] for c in table] == [4, 2]
    assert [c["bucket"] for c in table] == ["many", "medium"]
    df = read_manifest(tmp_path / "ds")
    assert list(df.columns[:4]) == ["image", "label", "split", "in_pool"]
    assert read_classes(tmp_path / "ds")[1]["name"] == "b"
    x, y = load_split(tmp_path / "ds", "train", channels=1)
    assert x.shape == (6, 1, 8, 8) and x.dtype == torch.uint8 and y.tolist() == [0, 0, 0, 0, 1, 1]


def test_write_prepared_leaves_nothing_on_failure(tmp_path):
    def records():
        yield Record(key="0", image=torch.rand(1, 8, 8), label=0, split="train")
        raise TailsynthError("boom")

    with pytest.raises(TailsynthError):
        write_prepared(
            tmp_path / "ds", records(), names=["a"], prompt_names=["a"], size=8, channels=1, many_above=1, few_below=1
        )
    assert list(tmp_path.iterdir()) == []


def _folder_bytes(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_prepare_with_worker_processes_is_byte_identical_to_serial(tmp_path):
    from PIL import Image

    gen = np.random.default_rng(0)
    records = []
    for i in range(23):  # files of several sizes and modes (decoded and resized in the workers) and tensors
        if i % 3:
            path = tmp_path / "src" / f"{i}.png"
            path.parent.mkdir(exist_ok=True)
            h, w = 20 + i, 50 - i
            Image.fromarray(gen.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
            image = path
        else:
            image = torch.from_numpy(gen.random((3, 40, 40), dtype=np.float32))
        records.append(Record(key=f"{i:03d}", image=image, label=i % 2, split="train" if i < 15 else "test"))
    kw = dict(names=["a", "b"], prompt_names=["a", "b"], size=16, channels=3, many_above=3, few_below=2)
    serial = write_prepared(tmp_path / "serial", records, **kw)
    # 2 processes with chunks of 4 records: items arrive from both workers, and the last chunk is short.
    parallel = write_prepared(tmp_path / "parallel", records, workers=2, chunk=4, **kw)
    assert parallel == serial
    a, b = _folder_bytes(tmp_path / "serial"), _folder_bytes(tmp_path / "parallel")
    assert len(a) == 23 + 2 and a == b


def test_prepare_worker_error_is_the_one_line_naming_the_file(tmp_path, rgb_image_file):
    good = rgb_image_file(tmp_path / "src" / "a.png")
    bad = tmp_path / "src" / "broken.png"
    bad.write_bytes(b"\x89PNG garbage")
    records = [Record(key=str(i), image=p, label=0, split="train") for i, p in enumerate([good] * 5 + [bad])]
    with pytest.raises(TailsynthError) as err:
        write_prepared(
            tmp_path / "ds",
            records,
            names=["a"],
            prompt_names=["a"],
            size=8,
            channels=3,
            many_above=1,
            few_below=1,
            workers=2,
        )
    assert "broken.png" in str(err.value) and "\n" not in str(err.value) and "DataLoader" not in str(err.value)
    assert not (tmp_path / "ds").exists()


def test_imagefolder_with_split_folders_any_size_and_mode(tmp_path, rgb_image_file):
    root = tmp_path / "root"
    rgb_image_file(root / "train" / "golden retriever" / "a.jpg", size=(50, 20))
    rgb_image_file(root / "train" / "golden retriever" / "b.png", mode="L")
    rgb_image_file(root / "train" / "cat" / "c.png")
    rgb_image_file(root / "test" / "cat" / "d.png", size=(7, 9))
    records, names = scan_imagefolder(root)
    assert names == ["cat", "golden retriever"]
    assert sorted((r.split, r.label) for r in records) == [("test", 0), ("train", 0), ("train", 1), ("train", 1)]
    table = write_prepared(
        tmp_path / "out", records, names=names, prompt_names=names, size=12, channels=3, many_above=5, few_below=2
    )
    assert table[1]["train_count"] == 2
    x, _ = load_split(tmp_path / "out", ["train", "test"], channels=3)
    assert x.shape == (4, 3, 12, 12)


def test_imagefolder_without_splits_uses_fractions(tmp_path, rgb_image_file):
    for i in range(10):
        rgb_image_file(tmp_path / "r" / "x" / f"{i}.png")
    records, _ = scan_imagefolder(tmp_path / "r", val_fraction=0.1, test_fraction=0.2, seed=0)
    assert sorted(r.split for r in records).count("test") == 2
    assert sorted(r.split for r in records).count("val") == 1


def test_imagefolder_errors_name_the_folder(tmp_path, rgb_image_file):
    with pytest.raises(TailsynthError, match="data.root.*nothere"):
        scan_imagefolder(tmp_path / "nothere")
    (tmp_path / "r" / "empty").mkdir(parents=True)
    rgb_image_file(tmp_path / "r" / "full" / "a.png")
    with pytest.raises(TailsynthError, match="empty.*no images"):
        scan_imagefolder(tmp_path / "r")


def test_an_empty_test_class_folder_is_an_error_naming_it(tmp_path, rgb_image_file):
    rgb_image_file(tmp_path / "r" / "train" / "cat" / "a.png")
    rgb_image_file(tmp_path / "r" / "train" / "dog" / "b.png")
    rgb_image_file(tmp_path / "r" / "test" / "cat" / "c.png")
    (tmp_path / "r" / "test" / "dog").mkdir()
    with pytest.raises(TailsynthError, match=r"test/dog has no images"):
        scan_imagefolder(tmp_path / "r")


def test_symlinked_class_folders_and_files_are_inside_the_root(tmp_path, rgb_image_file):
    # The usual ImageNet layout: class folders (or files) are symlinks into a shared store.
    store = tmp_path / "store"
    rgb_image_file(store / "n01" / "a.png")
    rgb_image_file(store / "n02" / "b.png")
    root = tmp_path / "root"
    (root / "train").mkdir(parents=True)
    (root / "train" / "n01").symlink_to(store / "n01", target_is_directory=True)
    (root / "train" / "n02").mkdir()
    (root / "train" / "n02" / "b.png").symlink_to(store / "n02" / "b.png")
    records, names = scan_imagefolder(root)
    assert names == ["n01", "n02"] and len(records) == 2
    assert resolve_inside(root, "train/n01/a.png") == root.absolute() / "train" / "n01" / "a.png"
    assert resolve_inside(root, "train/n01/../n02/b.png") == root.absolute() / "train" / "n02" / "b.png"
    for bad in ("../store/n01/a.png", "train/../../store/n01/a.png", "/etc/passwd", "train/n01/../../../x.png"):
        with pytest.raises(TailsynthError, match="outside"):
            resolve_inside(root, bad)


def test_pool_selects_the_in_pool_flag_and_splits_select_their_rows():
    df = pd.DataFrame(
        {
            "image": [f"{i}.png" for i in range(6)],
            "label": [0, 0, 1, 1, 2, 2],
            "split": ["train", "val", "pool_only", "test", "pool_only", "train"],
            "in_pool": [1, 1, 1, 0, 1, 1],
        }
    )
    assert select_rows(df, "pool")["image"].tolist() == ["0.png", "1.png", "2.png", "4.png", "5.png"]
    assert select_rows(df, "train")["image"].tolist() == ["0.png", "5.png"]
    assert select_rows(df, ["test", "val"])["image"].tolist() == ["1.png", "3.png"]
    with pytest.raises(TailsynthError, match="oracle.train_split must be one of pool, train, val, test"):
        select_rows(df, "everything", "oracle.train_split")
    # novel = classes with episode-split images and none in the base selection ("pool" = in_pool rows)
    df.loc[3, "label"] = 3
    assert novel_classes(df, "pool", "test", None) == [3]
    assert novel_classes(df, "train", "test", None) == [3]
    assert novel_classes(df, "pool", "test", [2, 1]) == [1, 2]


def test_unreadable_image_error_names_the_file(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(TailsynthError, match="bad.png"):
        load_image(bad, 8, 1)


def test_csv_adapter_and_path_safety(tmp_path, rgb_image_file):
    rgb_image_file(tmp_path / "imgs" / "a.png")
    rgb_image_file(tmp_path / "imgs" / "b.png")
    pd.DataFrame({"image": ["imgs/a.png", "imgs/b.png"], "label": ["dog", "cat"], "split": ["train", "test"]}).to_csv(
        tmp_path / "m.csv", index=False
    )
    records, names = scan_csv(tmp_path / "m.csv")
    assert names == ["cat", "dog"] and [r.label for r in records] == [1, 0]
    pd.DataFrame({"image": ["../outside.png"], "label": ["dog"], "split": ["train"]}).to_csv(
        tmp_path / "evil.csv", index=False
    )
    with pytest.raises(TailsynthError, match="outside"):
        scan_csv(tmp_path / "evil.csv")
    with pytest.raises(TailsynthError, match="outside"):
        resolve_inside(tmp_path, "/etc/passwd")


def test_csv_adapter_rejects_empty_cells_and_empty_files(tmp_path, rgb_image_file):
    rgb_image_file(tmp_path / "a.png")
    (tmp_path / "empty.csv").write_text("image,label,split\n")
    with pytest.raises(TailsynthError, match="no rows"):
        scan_csv(tmp_path / "empty.csv")
    (tmp_path / "blank.csv").write_text("image,label,split\na.png,,train\n")
    with pytest.raises(TailsynthError, match="row 2 has an empty 'label'"):
        scan_csv(tmp_path / "blank.csv")
    # "NA" and "None" are class names, not missing values; numeric labels keep numeric order
    (tmp_path / "names.csv").write_text("image,label,split\na.png,NA,train\na.png,None,test\n")
    assert scan_csv(tmp_path / "names.csv")[1] == ["NA", "None"]
    (tmp_path / "ints.csv").write_text("image,label,split\na.png,10,train\na.png,9,train\na.png,09,test\n")
    records, names = scan_csv(tmp_path / "ints.csv")
    assert names == ["9", "10"] and [r.label for r in records] == [1, 0, 0]


def write_photos(root):
    """An image folder of odd sizes and modes, with random pixels (so resizing is not trivially exact)."""
    from PIL import Image

    gen = np.random.default_rng(0)
    for i, (split, name, size) in enumerate(
        [("train", "cat", (50, 20)), ("train", "cat", (33, 47)), ("train", "dog", (40, 40)), ("test", "dog", (7, 9))]
    ):
        path = root / split / name / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(gen.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


@pytest.mark.parametrize("channels", [1, 3])
def test_kept_originals_read_as_the_pixels_of_the_resized_copy(tmp_path, rgb_image_file, channels):
    from tailsynth.data.manifest import image_shape, load_rows, originals
    from tailsynth.data.stream import open_images

    root = tmp_path / "root"
    write_photos(root)
    records, names = scan_imagefolder(root)
    kw = {"names": names, "prompt_names": names, "size": 12, "channels": channels, "many_above": 5, "few_below": 2}
    write_prepared(tmp_path / "copy", records, **kw)
    write_prepared(tmp_path / "kept", records, keep_originals=root, workers=2, chunk=1, **kw)
    kept = read_manifest(tmp_path / "kept")
    assert not (tmp_path / "kept" / "images").exists() and originals(tmp_path / "kept") == {
        "root": str(root.absolute()),
        "size": 12,
        "channels": channels,
    }
    assert sorted(kept["image"]) == ["test/dog/3.png", "train/cat/0.png", "train/cat/1.png", "train/dog/2.png"]
    assert image_shape(tmp_path / "kept") == image_shape(tmp_path / "copy") == (channels, 12)
    copy = read_manifest(tmp_path / "copy")
    assert torch.equal(load_rows(tmp_path / "kept", kept, channels), load_rows(tmp_path / "copy", copy, channels))
    streamed = open_images(tmp_path / "kept", kept, channels, in_memory_bytes=0)
    assert torch.equal(torch.stack([streamed[i] for i in range(4)]), load_rows(tmp_path / "copy", copy, channels))
    # The digest is of the pixels the stages read: it changes with an original, so consumers re-run.
    before = dict(zip(kept["image"], kept["sha"], strict=True))
    rgb_image_file(root / "train" / "cat" / "0.png", size=(50, 20))
    write_prepared(tmp_path / "kept2", records, keep_originals=root, **kw)
    rewritten = read_manifest(tmp_path / "kept2")
    after = dict(zip(rewritten["image"], rewritten["sha"], strict=True))
    assert [k for k in before if before[k] != after[k]] == ["train/cat/0.png"]


def test_keeping_originals_needs_files_under_the_root(tmp_path, rgb_image_file):
    kw = {"names": ["a"], "prompt_names": ["a"], "size": 8, "channels": 1, "many_above": 5, "few_below": 2}
    in_memory = [Record(key="0", image=torch.zeros(1, 8, 8), label=0, split="train")]
    with pytest.raises(TailsynthError, match="data.keep_originals needs a dataset read from image files"):
        write_prepared(tmp_path / "out", in_memory, keep_originals=tmp_path, **kw)
    outside = [Record(key="0", image=rgb_image_file(tmp_path / "elsewhere" / "a.png"), label=0, split="train")]
    with pytest.raises(TailsynthError, match="is not under data.root"):
        write_prepared(tmp_path / "out", outside, keep_originals=tmp_path / "root", **kw)
    assert not (tmp_path / "out").exists()
