"""Known-answer tests of the evaluation: classifiers whose predictions we control give exact accuracies.

The stage test fails if evaluate read the wrong split (train instead of test) or mixed up the
class-index -> name mapping, which range checks on real runs cannot see.
"""

import json
import shutil
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from pipeline_utils import ROOT, run

from tailsynth.data.prepare import Record, write_prepared
from tailsynth.metrics.accuracy import evaluate_runs
from tailsynth.metrics.paired import paired_difference
from tailsynth.models.classifier import build_classifier, save_classifier

# class 0: 5 train images (many), class 1: 2 (medium), class 2: 1 (few); test: 2, 4 and 4 images
CLASSES = [
    {"index": 0, "name": "c0", "bucket": "many"},
    {"index": 1, "name": "c1", "bucket": "medium"},
    {"index": 2, "name": "c2", "bucket": "few"},
]
TRAIN = [0] * 5 + [1] * 2 + [2]
TEST = [0] * 2 + [1] * 4 + [2] * 4


def test_evaluate_runs_gives_the_exact_known_answer():
    labels = np.array(TEST)
    always_2 = np.full(10, 2)
    mixed = np.array([0, 0, 1, 1, 0, 0, 2, 2, 2, 1])  # c0 2/2, c1 2/4, c2 3/4 -> 7/10
    result, runs = evaluate_runs([always_2, mixed], labels, CLASSES)
    assert runs[0] == {"overall": 0.4, "many": 0.0, "medium": 0.0, "few": 1.0}
    assert runs[1] == {"overall": 0.7, "many": 1.0, "medium": 0.5, "few": 0.75}
    assert result["acc"] == pytest.approx({"overall": 0.55, "many": 0.5, "medium": 0.25, "few": 0.875})
    assert result["acc_std"]["overall"] == pytest.approx(np.std([0.4, 0.7], ddof=1))
    assert result["per_class_acc"] == pytest.approx({"c0": 0.5, "c1": 0.25, "c2": 0.875})
    assert result["n_seeds"] == 2


def test_paired_difference_known_answers():
    d = paired_difference([0.5, 0.62, 0.74], [0.4, 0.5, 0.6])  # differences 0.10, 0.12, 0.14
    assert d["diff"] == pytest.approx(0.12) and d["n"] == 3
    assert d["ci"] == pytest.approx(4.302653 * 0.02 / np.sqrt(3), rel=1e-5)  # t(0.975, 2) = 4.3027
    assert d["verdict"] == "better"  # 0.12 - 0.0497 > 0
    wide = paired_difference([0.5, 0.6, 0.7], [0.4, 0.5, 0.5])  # 0.133 ± 0.143: the interval spans 0
    assert wide["verdict"] == "inconclusive"
    noisy = paired_difference([0.5, 0.9, 0.1], [0.5, 0.5, 0.5])
    assert noisy["verdict"] == "inconclusive"
    assert paired_difference([0.1, 0.2, 0.3, 0.4], [0.3, 0.4, 0.5, 0.6])["verdict"] == "worse"
    single = paired_difference([0.9], [0.1])
    assert single["verdict"] == "inconclusive" and np.isnan(single["ci"])
    with pytest.raises(ValueError, match="equal"):
        paired_difference([0.1, 0.2], [0.1])


def constant_classifier(predicted: int):
    model = build_classifier("small_cnn", 3, 1, 8, width=8, seed=0)
    with torch.no_grad():
        model.net.head.weight.zero_()
        model.net.head.bias.copy_(torch.tensor([0.0, 0.0, 0.0]))
        model.net.head.bias[predicted] = 10.0
    return model.eval()


def test_evaluate_stage_reads_the_test_split_and_maps_labels_to_names(tmp_path):
    shutil.copytree(ROOT / "stages", tmp_path / "stages")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    g = torch.Generator().manual_seed(0)
    records = [
        Record(
            key=f"{split}{i}", image=torch.rand(1, 8, 8, generator=g), label=y, split=split, in_pool=split == "train"
        )
        for split, labels in (("train", TRAIN), ("test", TEST))
        for i, y in enumerate(labels)
    ]
    write_prepared(
        tmp_path / "data/prepared" / params["data"]["dataset"],
        records,
        names=["c0", "c1", "c2"],
        prompt_names=["c0", "c1", "c2"],
        size=8,
        channels=1,
        many_above=3,
        few_below=2,
    )
    save_classifier(constant_classifier(2), tmp_path / "models/retrain/none/seed0")
    save_classifier(constant_classifier(1), tmp_path / "models/retrain/none/seed1")
    run([sys.executable, "stages/evaluate.py", "none"], tmp_path)
    result = json.loads((tmp_path / "metrics/evaluate/none.json").read_text())
    # On the test split (2/4/4): seed 0 always says c2 -> 0.4 overall, seed 1 always c1 -> 0.4.
    # On the train split (5/2/1) it would be 1/8 and 2/8; with names reversed c0 and c2 would swap.
    assert result["acc"] == pytest.approx({"overall": 0.4, "many": 0.0, "medium": 0.5, "few": 0.5})
    assert result["acc_std"]["medium"] == pytest.approx(np.std([0.0, 1.0], ddof=1))
    assert result["per_class_acc"] == pytest.approx({"c0": 0.0, "c1": 0.5, "c2": 0.5})
    assert result["n_seeds"] == 2 and result["n_synthetic"] == 0
    seeds = pd.read_csv(tmp_path / "metrics/evaluate/none_seeds.csv")
    assert seeds.to_dict("records") == [
        {"seed": 0, "overall": 0.4, "many": 0.0, "medium": 0.0, "few": 1.0},
        {"seed": 1, "overall": 0.4, "many": 0.0, "medium": 1.0, "few": 0.0},
    ]
