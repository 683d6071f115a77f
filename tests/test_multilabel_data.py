"""Multi-label data: the embedded digits_multilabel canvases, the MIMIC-CXR-LT (CXR-LT) adapter and the
prepared folder's ``labels`` column."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from tailsynth.data import digits_multilabel as dml
from tailsynth.data.manifest import join_labels, read_manifest, split_labels
from tailsynth.data.mimic_cxr_lt import finding_value, scan_mimic_cxr_lt
from tailsynth.data.prepare import Record, write_prepared
from tailsynth.errors import TailsynthError
from tailsynth.not_applicable import reason
from tailsynth.seeding import derive_seed

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = {"size": 32, "imbalance_ratio": 30, "max_per_class": 120, "test_per_class": 50, "val_per_class": 4}


@pytest.fixture(scope="module")
def canvases():
    return dml.load_digits_multilabel(seed=0, **DEFAULTS)


def label_counts(labels, num=10):
    c = Counter(k for ls in labels for k in ls)
    return [c[k] for k in range(num)]


def test_train_counts_known_answer():
    """Head half from 120 to 60 (ratio 2), tail half from 3 x 120 / 30 = 12 to 4 (ratio 3)."""
    assert dml.multilabel_train_counts(10, 120, 30) == [120, 101, 85, 71, 60, 12, 9, 7, 5, 4]
    with pytest.raises(TailsynthError, match="data.imbalance_ratio"):
        dml.multilabel_train_counts(10, 120, 5)


def test_canvas_labels_hit_the_counts_exactly_with_partner_co_occurrence():
    counts = [30, 25, 20, 15, 10, 9, 7, 5, 3, 1]
    sets = dml.canvas_labels(counts, np.random.default_rng(0))
    assert label_counts(sets) == counts
    assert all(1 <= len(s) <= 3 and len(set(s)) == len(s) and list(s) == sorted(s) for s in sets)
    for t in range(5, 10):  # every other canvas of a tail label also shows its partner, t - 5
        with_t = [s for s in sets if t in s]
        assert len(with_t) == counts[t]
        assert sum((t - 5) in s for s in with_t) == (counts[t] + 1) // 2
        assert all(len(s) <= 2 for s in with_t)  # tail canvases hold the tail label and at most its partner
    assert dml.canvas_labels(counts, np.random.default_rng(0)) == sets


def test_canvas_labels_partner_only_while_it_has_occurrences_left():
    sets = dml.canvas_labels([1, 0, 4, 3], np.random.default_rng(1))  # tail 2 -> partner 0, tail 3 -> partner 1
    assert label_counts(sets, 4) == [1, 0, 4, 3]
    assert sorted(sets) == [(0, 2), (2,), (2,), (2,), (3,), (3,), (3,)]


def test_digits_multilabel_split_counts_are_exact(canvases):
    labels, split = canvases["labels"], canvases["split"]
    by = {s: [ls for ls, sp in zip(labels, split, strict=True) if sp == s] for s in ("train", "val", "test")}
    assert label_counts(by["train"]) == [120, 101, 85, 71, 60, 12, 9, 7, 5, 4]
    assert label_counts(by["val"]) == [4] * 10
    assert label_counts(by["test"]) == [50] * 10
    pool = [ls for ls, p in zip(labels, canvases["in_pool"], strict=True) if p]
    assert label_counts(pool) == [124] * 10  # balanced pool: max_per_class + val_per_class per label
    assert not canvases["in_pool"][split == "test"].any() and canvases["in_pool"][split != "test"].all()
    assert canvases["images"].shape == (len(labels), 1, 32, 32)
    assert canvases["names"][0] == "zero" and len(canvases["names"]) == 10
    # at the default buckets (many > 60, few < 15): 4 many, 1 medium (60) and 5 few labels
    assert [n for n in label_counts(by["train"]) if n < 15] == [12, 9, 7, 5, 4]


def test_digits_multilabel_is_deterministic_and_seeded(canvases):
    again = dml.load_digits_multilabel(seed=0, **DEFAULTS)
    assert torch.equal(again["images"], canvases["images"]) and again["labels"] == canvases["labels"]
    other = dml.load_digits_multilabel(seed=1, **DEFAULTS)
    assert other["labels"] != canvases["labels"]


def test_digits_multilabel_cells_hold_real_digits_and_test_canvases_only_test_images(canvases):
    """Every non-empty cell is exactly one digit image's tile, of a class in the canvas's labels; the
    test canvases use only each class's first test_per_class images (in the seeded order), the others never."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    tiles = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False).clamp(0, 1)
    lookup = {t.numpy().tobytes(): i for i, t in enumerate(tiles)}
    rng = np.random.default_rng(derive_seed(0, "digits_multilabel"))
    test_images = set()
    for c in range(10):
        test_images |= set(rng.permutation(np.flatnonzero(digits.target == c))[:50].tolist())
    uses = Counter()
    for img, labels, split in zip(canvases["images"], canvases["labels"], canvases["split"], strict=True):
        found = []
        for cell in range(4):
            r, c = divmod(cell, 2)
            tile = img[:, r * 16 : (r + 1) * 16, c * 16 : (c + 1) * 16]
            if tile.any():
                found.append(lookup[tile.contiguous().numpy().tobytes()])
        assert sorted(int(digits.target[i]) for i in found) == list(labels)
        assert all((i in test_images) == (split == "test") for i in found)
        uses.update(found)
    assert max(uses.values()) == 1  # no digit image in two canvases (e.g. a train and a val canvas)
    # at the defaults each class's 174 or more images cover 50 test + 120 + 4 other canvases exactly
    assert len(uses) == 10 * (50 + 120 + 4)


def test_digits_multilabel_refuses_counts_that_would_reuse_digit_images():
    """The smallest digit class has 174 images: 50 for test leave 124 = 120 + 4; one more would repeat one."""
    with pytest.raises(TailsynthError, match=r"data.max_per_class \+ data.val_per_class \(121 \+ 4\) exceeds the 124"):
        dml.load_digits_multilabel(seed=0, **{**DEFAULTS, "max_per_class": 121})
    with pytest.raises(TailsynthError, match=r"\(120 \+ 5\) exceeds the 124"):
        dml.load_digits_multilabel(seed=0, **{**DEFAULTS, "val_per_class": 5})


def test_join_and_split_labels_round_trip():
    assert join_labels([7, 3, 3]) == "3|7" and join_labels([]) == ""
    assert split_labels("3|7") == [3, 7] and split_labels(5) == [5] and split_labels(float("nan")) == []
    assert split_labels("") == [] and split_labels(join_labels([0, 9])) == [0, 9]


def test_write_prepared_multilabel_manifest(tmp_path):
    img = torch.zeros(1, 8, 8)
    records = [
        Record("a", img, 1, "train", True, labels=(1, 2)),
        Record("b", img, 2, "train", True, labels=(2,)),
        Record("c", img, 0, "test", False, labels=()),
    ]
    table = write_prepared(
        tmp_path / "ds",
        records,
        names=["x", "y", "z"],
        prompt_names=["x", "y", "z"],
        size=8,
        channels=1,
        many_above=1,
        few_below=1,
    )
    df = pd.read_csv(tmp_path / "ds/manifest.csv", keep_default_na=False, dtype={"labels": str})
    assert "label" not in df and df["labels"].tolist() == ["1|2", "2", ""]
    assert [c["train_count"] for c in table] == [0, 1, 2]
    assert [c["bucket"] for c in table] == ["few", "medium", "many"]
    mixed = [Record("a", img, 1, "train", labels=(1,)), Record("b", img, 1, "train")]
    with pytest.raises(ValueError, match="mix"):
        write_prepared(
            tmp_path / "mix",
            mixed,
            names=["x", "y"],
            prompt_names=["x", "y"],
            size=8,
            channels=1,
            many_above=1,
            few_below=1,
        )
    assert not (tmp_path / "mix").exists()


# ---------------------------------------------------------------- MIMIC-CXR-LT

FINDINGS = ["Atelectasis", "Cardiomegaly", "No Finding", "Pneumothorax"]


def cxr_fixture(root: Path, rows: dict[str, list[tuple[str, list[str]]]], findings=FINDINGS) -> Path:
    """A CXR-LT layout: files/p10/.../<dicom>.jpg and one label CSV per split (ids, fpath, one column per finding)."""
    names = {"train": "train.csv", "val": "development.csv", "test": "test.csv"}
    for split, entries in rows.items():
        lines = []
        for n, (rel, values) in enumerate(entries):
            path = root / rel
            if not path.exists() and ".." not in rel:
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((12, 10), 40 * n % 255, dtype=np.uint8)).save(path)
            lines.append(
                {
                    "dicom_id": f"d{split}{n}",
                    "subject_id": "10",
                    "study_id": "5",
                    "ViewPosition": "PA",
                    "fpath": rel,
                    **dict(zip(findings, values, strict=True)),
                }
            )
        pd.DataFrame(lines).to_csv(root / names[split], index=False)
    return root


def small_cxr(root):
    return cxr_fixture(
        root,
        {
            "train": [
                ("files/p10/a.jpg", ["1", "0", "0", "1"]),
                ("files/p10/b.jpg", ["0", "", "1", "0"]),
                ("files/p11/c.jpg", ["-1", "1", "0", "0"]),
            ],
            "val": [("files/p12/d.jpg", ["0", "1", "0", "0"])],
            "test": [("files/p13/e.jpg", ["1.0", "0.0", "0", "1"]), ("files/p13/f.jpg", ["0", "0", "0", "0"])],
        },
    )


def test_mimic_cxr_lt_scan_known_answer(tmp_path):
    """Findings in the train file's column order; blanks are 0, -1 is 0 under U-Zeros; splits from the files."""
    scan = scan_mimic_cxr_lt(small_cxr(tmp_path))
    assert scan.names == FINDINGS and scan.prompt_names == ["atelectasis", "cardiomegaly", "no finding", "pneumothorax"]
    got = [(r.split, r.image.name, r.labels, r.in_pool) for r in scan.records]
    assert got == [
        ("train", "a.jpg", (0, 3), True),
        ("train", "b.jpg", (2,), True),
        ("train", "c.jpg", (1,), True),
        ("val", "d.jpg", (1,), False),
        ("test", "e.jpg", (0, 3), False),
        ("test", "f.jpg", (), False),
    ]
    ones = scan_mimic_cxr_lt(tmp_path, uncertain="one")
    assert ones.records[2].labels == (0, 1)  # U-Ones: the uncertain Atelectasis counts as present


def test_mimic_cxr_lt_without_development_file(tmp_path):
    small_cxr(tmp_path)
    (tmp_path / "development.csv").unlink()
    assert {r.split for r in scan_mimic_cxr_lt(tmp_path).records} == {"train", "test"}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda r: r.__setitem__("train", [("files/p10/a.jpg", ["2", "0", "0", "1"])]),
            r"train.csv line 2 column 'Atelectasis' is '2'",
        ),
        (lambda r: r.__setitem__("train", [("files/p10/a.jpg", ["yes", "0", "0", "1"])]), "finding columns take"),
        (lambda r: r.__setitem__("train", [("../outside.jpg", ["1", "0", "0", "1"])]), "points outside"),
        (lambda r: r.__setitem__("train", [("files/none.jpg", ["1", "0", "0", "1"])]), "not found"),
    ],
)
def test_mimic_cxr_lt_bad_files_are_one_line_errors(tmp_path, edit, message):
    rows = {"train": [], "test": [("files/p13/e.jpg", ["1", "0", "0", "1"])]}
    edit(rows)
    cxr_fixture(tmp_path, rows)
    if (tmp_path / "files/none.jpg").exists():
        (tmp_path / "files/none.jpg").unlink()
    with pytest.raises(TailsynthError, match=message) as err:
        scan_mimic_cxr_lt(tmp_path)
    assert "\n" not in str(err.value)


def test_mimic_cxr_lt_missing_path_column_and_mismatched_findings(tmp_path):
    small_cxr(tmp_path)
    with pytest.raises(TailsynthError, match="no image path column 'path'.*data.path_column"):
        scan_mimic_cxr_lt(tmp_path, path_column="path")
    test = pd.read_csv(tmp_path / "test.csv", dtype=str).drop(columns=["Pneumothorax"])
    test.to_csv(tmp_path / "test.csv", index=False)
    with pytest.raises(TailsynthError, match=r"test.csv lists findings \['Pneumothorax'\]"):
        scan_mimic_cxr_lt(tmp_path)


def test_mimic_cxr_lt_uncertain_policy(tmp_path):
    small_cxr(tmp_path)
    with pytest.raises(TailsynthError, match=r"train.csv line 4 column 'Atelectasis' is -1 \(uncertain\)"):
        scan_mimic_cxr_lt(tmp_path, uncertain="refuse")
    with pytest.raises(TailsynthError, match="data.uncertain must be one of zero, one, refuse"):
        scan_mimic_cxr_lt(tmp_path, uncertain="maybe")
    assert [finding_value(v, uncertain="one", where="f") for v in ["", " 1", "-1.0", "0.0"]] == [0, 1, 1, 0]
    assert [finding_value(v, uncertain="zero", where="f") for v in ["-1", "1.0"]] == [0, 1]


def test_mimic_cxr_lt_split_files_are_checked(tmp_path):
    small_cxr(tmp_path)
    with pytest.raises(TailsynthError, match="data.split_files must map train and test"):
        scan_mimic_cxr_lt(tmp_path, split_files={"train": "train.csv"})
    with pytest.raises(TailsynthError, match="data.split_files: val file .*dev2.csv not found"):
        scan_mimic_cxr_lt(tmp_path, split_files={"train": "train.csv", "val": "dev2.csv", "test": "test.csv"})
    with pytest.raises(TailsynthError, match="data.root: dataset folder"):
        scan_mimic_cxr_lt(tmp_path / "nothing")


HEADER = "dicom_id,fpath,Atelectasis,Cardiomegaly,No Finding,Pneumothorax\n"


@pytest.mark.parametrize(
    ("train_csv", "message"),
    [
        (b"", "train.csv is empty; it needs a header"),
        (HEADER.encode(), "train.csv has a header but no rows"),
        ((HEADER + "d1,files/p10/a.jpg,1,0,0\n").encode(), "train.csv line 2 has 5 cells but the header has 6"),
        ((HEADER + "d1,files/p10/a.jpg,1,0,0,1,0\n").encode(), "train.csv line 2 has 7 cells but the header has 6"),
        ((HEADER + "d1,files/p10/a.jpg,1,0,0,\xe9\n").encode("latin-1"), "train.csv is not UTF-8 text"),
        (b"dicom_id,fpath,,Pneumothorax\nd1,files/p10/a.jpg,1,0\n", "train.csv column 3 of the header has no name"),
        (b"dicom_id,fpath,Edema,Edema\nd1,files/p10/a.jpg,1,0\n", r"train.csv header repeats columns \['Edema'\]"),
        ((HEADER + 'd1,"files/p10/a.jpg,1,0,0,1\n').encode(), "train.csv line .*: not valid CSV"),
        (
            (HEADER + "d1,files/p10/a.jpg,1,0,0,1\nd2,files/p10/a.jpg,0,1,0,0\n").encode(),
            r"train.csv line 3 lists 'files/p10/a.jpg' again \(also at .*train.csv line 2\)",
        ),
    ],
)
def test_mimic_cxr_lt_malformed_csvs_are_one_line_errors(tmp_path, train_csv, message):
    small_cxr(tmp_path)
    (tmp_path / "train.csv").write_bytes(train_csv)
    with pytest.raises(TailsynthError, match=message) as err:
        scan_mimic_cxr_lt(tmp_path)
    assert "\n" not in str(err.value)


def test_mimic_cxr_lt_line_numbers_count_blank_lines_and_quoted_line_breaks(tmp_path):
    """The bad cell is on file line 6: a blank line (3) and a dicom id quoted over two lines (4-5) come first."""
    small_cxr(tmp_path)
    (tmp_path / "train.csv").write_text(
        HEADER + "d1,files/p10/a.jpg,1,0,0,1\n\n" + '"d2\nx",files/p10/b.jpg,0,0,1,0\n' + "d3,files/p11/c.jpg,7,1,0,0\n"
    )
    with pytest.raises(TailsynthError, match=r"train.csv line 6 column 'Atelectasis' is '7'"):
        scan_mimic_cxr_lt(tmp_path)


def test_mimic_cxr_lt_splits_read_in_a_fixed_order(tmp_path):
    """Record keys follow train, val, test whatever order data.split_files lists them in."""
    small_cxr(tmp_path)
    given = {"train": "train.csv", "val": "development.csv", "test": "test.csv"}
    reordered = {k: given[k] for k in ("test", "val", "train")}
    a, b = scan_mimic_cxr_lt(tmp_path, split_files=given), scan_mimic_cxr_lt(tmp_path, split_files=reordered)
    assert [(r.key, r.image, r.split) for r in a.records] == [(r.key, r.image, r.split) for r in b.records]
    assert [r.split for r in b.records] == ["train"] * 3 + ["val"] + ["test"] * 2
    with pytest.raises(TailsynthError, match="data.split_files.val must be a CSV file name under data.root, got None"):
        scan_mimic_cxr_lt(tmp_path, split_files={"train": "train.csv", "val": None, "test": "test.csv"})
    with pytest.raises(TailsynthError, match="data.split_files must map train and test .* got 'train.csv'"):
        scan_mimic_cxr_lt(tmp_path, split_files="train.csv")


# ---------------------------------------------------------------- the prepare stage


def run_prepare(tmp_path, data: dict):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(data)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "TAILSYNTH_PARAMS": str(tmp_path / "params.yaml"), "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [sys.executable, str(ROOT / "stages/prepare.py")], cwd=tmp_path, env=env, capture_output=True, text=True
    )


def test_prepare_stage_writes_digits_multilabel(tmp_path):
    proc = run_prepare(tmp_path, {"dataset": "digits_multilabel"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    folder = tmp_path / "data/prepared/digits_multilabel"
    df = pd.read_csv(folder / "manifest.csv", keep_default_na=False, dtype={"labels": str})
    classes = json.loads((folder / "classes.json").read_text())
    assert "label" not in df
    train = df[df["split"] == "train"]
    assert label_counts([split_labels(v) for v in train["labels"]]) == [c["train_count"] for c in classes]
    assert [c["bucket"] for c in classes] == ["many"] * 4 + ["medium"] + ["few"] * 5
    # the few-shot stages take single-label data only: they record why, and the pipeline goes on
    env = {**os.environ, "TAILSYNTH_PARAMS": str(tmp_path / "params.yaml"), "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "stages/fewshot_episodes.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    episodes = tmp_path / "data/fewshot/episodes"
    assert [p.name for p in episodes.iterdir()] == ["not_applicable.json"]
    assert reason(episodes) == "N-way K-shot episodes need one label per image"


def test_read_manifest_refuses_multilabel_unless_asked(tmp_path):
    img = torch.zeros(1, 8, 8)
    records = [Record("a", img, 1, "train", True, labels=(0, 1)), Record("b", img, 0, "test", labels=())]
    write_prepared(
        tmp_path, records, names=["x", "y"], prompt_names=["x", "y"], size=8, channels=1, many_above=5, few_below=1
    )
    with pytest.raises(TailsynthError, match="manifest.csv is multi-label"):
        read_manifest(tmp_path)
    df = read_manifest(tmp_path, multilabel=True)
    assert [split_labels(v) for v in df["labels"]] == [[0, 1], []]


def test_prepare_stage_mimic_cxr_lt_and_its_bad_input(tmp_path):
    root = small_cxr(tmp_path / "cxr")
    proc = run_prepare(tmp_path, {"dataset": "mimic_cxr_lt", "root": str(root), "channels": 1, "size": 8})
    assert proc.returncode == 0, proc.stderr[-2000:]
    df = pd.read_csv(tmp_path / "data/prepared/mimic_cxr_lt/manifest.csv", keep_default_na=False, dtype=str)
    assert df["labels"].tolist() == ["0|3", "2", "1", "1", "0|3", ""]
    assert df["split"].tolist() == ["train"] * 3 + ["val"] + ["test"] * 2
    # a bad cell: one line, exit 2, and the prepared folder that was there is kept as it was
    before = (tmp_path / "data/prepared/mimic_cxr_lt/manifest.csv").read_bytes()
    bad = pd.read_csv(root / "test.csv", dtype=str, keep_default_na=False)
    bad.loc[1, "Cardiomegaly"] = "0.5"
    bad.to_csv(root / "test.csv", index=False)
    proc = run_prepare(tmp_path, {"dataset": "mimic_cxr_lt", "root": str(root), "channels": 1, "size": 8})
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and len(errors) == 1 and "test.csv line 3 column 'Cardiomegaly' is '0.5'" in errors[0]
    assert (tmp_path / "data/prepared/mimic_cxr_lt/manifest.csv").read_bytes() == before
