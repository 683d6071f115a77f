"""Group-imbalanced data: digits_groups, the NICO++ adapter, worst-/average-group metrics, group-balanced sampling."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from pipeline_utils import ROOT, deep_update, run

from tailsynth.data.digits import load_digits_split
from tailsynth.data.digits_groups import CONTEXTS, apply_context, context_shares, load_digits_groups, split_counts
from tailsynth.data.nico_pp import scan_nico_pp
from tailsynth.errors import TailsynthError
from tailsynth.metrics.accuracy import evaluate_runs, group_accuracy
from tailsynth.report.summary import summary_markdown, summary_rows
from tailsynth.train.fit import FitConfig, draw_indices, group_balanced_weights

NICO = ROOT / "tests" / "fixtures" / "nico_pp"
DIGITS = {"size": 16, "imbalance_ratio": 30, "max_per_class": 120, "test_per_class": 50, "val_per_class": 4, "seed": 0}


def test_context_shares_and_whole_counts():
    shares = context_shares(8.0)
    assert shares / shares[0] == pytest.approx([1.0, 0.5, 0.25, 0.125])  # ratio**(-j/3), 8 -> halving
    assert split_counts(120, context_shares(20.0)) == [77, 28, 11, 4]  # 77.2, 28.4, 10.5, 3.9: largest remainders
    assert split_counts(4, context_shares(20.0)) == [3, 1, 0, 0]  # a tail class: two groups absent
    with pytest.raises(TailsynthError, match="data.group_ratio"):
        context_shares(0.5)


def test_contexts_are_the_stated_transforms():
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 1, 2] = 1.0
    assert torch.equal(apply_context(x, "plain"), x)
    assert torch.equal(apply_context(x, "inverted"), 1 - x)
    assert apply_context(x, "rotated")[0, 0, 2, 1] == 1.0 and apply_context(x, "rotated").sum() == 1
    assert apply_context(x, "thick")[0, 0, :3, 1:4].eq(1).all() and apply_context(x, "thick").sum() == 9


def test_digits_groups_keeps_the_digits_splits_and_skews_only_train():
    plain = load_digits_split(**DIGITS)
    d = load_digits_groups(group_ratio=20, **DIGITS)
    assert np.array_equal(d["labels"], plain["labels"]) and np.array_equal(d["split"], plain["split"])
    df = pd.DataFrame({"label": d["labels"], "split": d["split"], "group": d["groups"]})
    test = df[df["split"] == "test"].groupby(["label", "group"]).size()
    assert test.groupby("label").agg(["min", "max"]).values.tolist() == [[12, 13]] * 10  # 50 = 13+13+12+12
    train = df[df["split"] == "train"].groupby(["label", "group"]).size().unstack(fill_value=0)
    assert train.loc[0].to_dict() == {"plain": 77, "inverted": 28, "rotated": 11, "thick": 4}
    for c in range(10):
        assert train.loc[c].idxmax() == CONTEXTS[c % 4]  # class c's dominant context
    assert (train.loc[9] == 0).sum() == 2  # the 4-image tail class lacks two groups in train
    images = d["images"][torch.from_numpy(d["groups"] == "inverted")]
    originals = plain["images"][torch.from_numpy(d["groups"] == "inverted")]
    assert torch.equal(images, 1 - originals)


def test_nico_pp_from_folders_and_from_split_files():
    records, names = scan_nico_pp(NICO, val_fraction=0.25, test_fraction=0.25, seed=0)
    assert names == ["cat", "dog"] and len(records) == 16
    cells = pd.DataFrame([{"group": r.group, "label": r.label, "split": r.split} for r in records])
    assert (cells.groupby(["group", "label", "split"]).size() == [1, 2, 1] * 4).all()  # test 1, train 2, val 1
    records, _ = scan_nico_pp(NICO, split_files={"train": "train.txt", "test": "test.txt"})
    by_split = {
        s: {(r.group, names[r.label], r.image.name) for r in records if r.split == s} for s in ("train", "test")
    }  # noqa: E501
    assert by_split["test"] == {(g, c, "3.png") for g in ("autumn", "water") for c in ("cat", "dog")}
    assert len(by_split["train"]) == 12 and all(r.in_pool == (r.split == "train") for r in records)


def test_nico_pp_bad_layouts(tmp_path):
    with pytest.raises(TailsynthError, match="no context folders"):
        scan_nico_pp(tmp_path)
    (tmp_path / "cat").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "cat" / "a.png")
    with pytest.raises(TailsynthError, match=r"context folder .*cat has no class folders"):
        scan_nico_pp(tmp_path)
    shutil.copytree(NICO, tmp_path / "nico")
    (tmp_path / "nico" / "train.txt").write_text("../outside/cat/0.png 0\n")
    with pytest.raises(TailsynthError, match="points outside"):
        scan_nico_pp(tmp_path / "nico", split_files={"train": "train.txt", "test": "test.txt"})
    with pytest.raises(TailsynthError, match="must name a train and a test file"):
        scan_nico_pp(tmp_path / "nico", split_files={"train": "train.txt"})


def test_group_accuracy_known_answer():
    classes = [{"index": 0, "name": "a", "bucket": "many"}, {"index": 1, "name": "b", "bucket": "few"}]
    labels = np.array([0, 0, 0, 0, 1, 1])
    groups = np.array(["x", "x", "y", "y", "x", "y"])
    pred = np.array([0, 0, 0, 1, 0, 1])
    assert group_accuracy(pred, labels, groups, classes) == {"a/x": 1.0, "a/y": 0.5, "b/x": 0.0, "b/y": 1.0}
    result, runs = evaluate_runs([pred, labels.copy()], labels, classes, groups)
    assert [r["worst_group"] for r in runs] == [0.0, 1.0] and [r["avg_group"] for r in runs] == [0.625, 1.0]
    assert result["worst_group"] == 0.5 and result["avg_group"] == pytest.approx(0.8125)
    assert result["worst_group_std"] == pytest.approx(np.std([0.0, 1.0], ddof=1))
    assert result["group_acc"] == {"a/x": 1.0, "a/y": 0.75, "b/x": 0.5, "b/y": 1.0}
    assert "worst_group" not in result["acc"]  # bucket accuracies stay as they are
    md = summary_markdown(summary_rows({"none": result}))
    assert "| avg group | worst group |" in md and "| 81.2 ± 26.5 | 50.0 ± 70.7 |" in md


def test_group_balanced_sampling_draws_every_class_then_every_group_equally():
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    groups = torch.tensor([0, 0, 0, 1, 0, 2, 2])
    w = group_balanced_weights(labels, groups, 2)
    assert w.tolist() == pytest.approx([1 / 6, 1 / 6, 1 / 6, 1 / 2, 1 / 2, 1 / 4, 1 / 4])
    config = FitConfig(steps=500, batch_size=64, balanced="group")
    draws = draw_indices(labels, 2, config, torch.Generator().manual_seed(0), groups)
    share = torch.bincount(labels[draws] * 3 + groups[draws], minlength=6).float() / len(draws)
    assert share[[0, 1, 3, 5]].tolist() == pytest.approx([0.25, 0.25, 0.25, 0.25], abs=0.01)
    with pytest.raises(ValueError, match="needs a group per sample"):
        draw_indices(labels, 2, config, torch.Generator())


@pytest.fixture
def stage_dir(tmp_path):
    shutil.copytree(ROOT / "stages", tmp_path / "stages")

    def stage(script: str, *args: str, params: dict):
        p = deep_update(yaml.safe_load((ROOT / "params.yaml").read_text()), params)
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
        return run([sys.executable, f"stages/{script}", *args], tmp_path, check=False)

    stage.root = tmp_path
    return stage


def test_prepare_writes_groups_and_retrain_refuses_group_sampling_without_them(stage_dir):
    proc = stage_dir("prepare.py", params={"data": {"dataset": "nico_pp", "root": str(NICO), "channels": 3}})
    assert proc.returncode == 0, proc.stderr[-2000:]
    df = pd.read_csv(stage_dir.root / "data/prepared/nico_pp/manifest.csv")
    assert set(df["group"]) == {"autumn", "water"} and len(df) == 16
    classes = json.loads((stage_dir.root / "data/prepared/nico_pp/classes.json").read_text())
    assert [c["name"] for c in classes] == ["cat", "dog"]
    proc = stage_dir("prepare.py", params={"data": {"dataset": "digits"}})
    assert proc.returncode == 0 and "group" not in pd.read_csv(stage_dir.root / "data/prepared/digits/manifest.csv")
    proc = stage_dir("retrain.py", "none", params={"retrain": {"balanced": "group", "steps": 1}})
    assert proc.returncode == 2 and "retrain.balanced is group but the data has no groups" in proc.stderr
    proc = stage_dir("retrain.py", "none", params={"retrain": {"balanced": "yes", "steps": 1}})
    assert proc.returncode == 2 and "retrain.balanced must be true, false or group" in proc.stderr
    assert not Path(stage_dir.root / "models").exists()
