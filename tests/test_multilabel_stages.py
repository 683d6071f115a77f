"""The stages that train and evaluate on multi-label data, end to end on digits_multilabel (tiny step counts)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from tailsynth.data.targets import load_targets
from tailsynth.metrics.average_precision import mean_average_precision
from tailsynth.metrics.multilabel import bucket_map
from tailsynth.models.classifier import load_classifier, predict

ROOT = Path(__file__).resolve().parents[1]
FOLDER = "data/prepared/digits_multilabel"


def run_stage(cwd, *argv):
    env = {**os.environ, "TAILSYNTH_PARAMS": str(cwd / "params.yaml"), "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "stages" / f"{argv[0]}.py"), *argv[1:]],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    return proc


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("multilabel")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["dataset"] = "digits_multilabel"
    for section in ("oracle", "classifier", "retrain"):
        params[section].update(steps=40, batch_size=32)
    params["eval"]["seeds"] = 2
    (cwd / "params.yaml").write_text(yaml.safe_dump(params))
    for argv in (["prepare"], ["oracle"], ["classifier"], ["retrain", "none"], ["retrain", "mixup"]):
        proc = run_stage(cwd, *argv)
        assert proc.returncode == 0, (argv, proc.stderr[-3000:])
    return cwd


def test_evaluate_reports_the_map_of_the_saved_models(workspace):
    proc = run_stage(workspace, "evaluate", "none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((workspace / "metrics/evaluate/none.json").read_text())
    classes = json.loads((workspace / FOLDER / "classes.json").read_text())
    x, t = load_targets(workspace / FOLDER, "test", 1, len(classes))
    runs = []
    for seed in range(2):
        model = load_classifier(workspace / f"models/retrain/none/seed{seed}")
        runs.append(bucket_map(t.numpy(), predict(model, x.float() / 255)[0].sigmoid().numpy(), classes))
    assert set(runs[0]) == {"overall", "many", "medium", "few", "head", "tail"}
    for key in runs[0]:
        assert result["map"][key] == pytest.approx(np.mean([r[key] for r in runs]), abs=1e-12)
    assert set(result["per_class_ap"]) == {c["name"] for c in classes} and result["n_seeds"] == 2
    seeds = pd.read_csv(workspace / "metrics/evaluate/none_seeds.csv")
    assert seeds["seed"].tolist() == [0, 1]
    assert seeds["tail"].tolist() == pytest.approx([r["tail"] for r in runs], abs=1e-12)
    # the models learnt something: well above the mAP of random scores (the labels' prevalence)
    oracle = json.loads((workspace / "metrics/oracle.json").read_text())
    assert oracle["chance"] == pytest.approx(float(t.mean(0).mean()))
    assert result["map"]["head"] > oracle["chance"] + 0.3


def test_oracle_and_classifier_score_multi_label_test_images(workspace):
    classes = json.loads((workspace / FOLDER / "classes.json").read_text())
    x, t = load_targets(workspace / FOLDER, "test", 1, len(classes))
    oracle = json.loads((workspace / "metrics/oracle.json").read_text())
    model = load_classifier(workspace / "models/oracle")
    scores = predict(model, x.float() / 255)[0].sigmoid().numpy()
    assert oracle["test_map"] == pytest.approx(mean_average_precision(t.numpy(), scores), abs=1e-12)
    assert oracle["n_test"] == len(t)
    baseline = json.loads((workspace / "metrics/classifier.json").read_text())["map"]
    model = load_classifier(workspace / "models/classifier")
    assert baseline == pytest.approx(
        bucket_map(t.numpy(), predict(model, x.float() / 255)[0].sigmoid().numpy(), classes)
    )
    assert not (workspace / "models/classifier/confusion_train.csv").exists()  # single-label data only


def test_retrain_is_deterministic_on_multi_label_data(workspace, tmp_path):
    """retrain@mixup again in another folder: the same weights (MixUp mixes the multi-hot rows)."""
    for name in ("params.yaml",):
        (tmp_path / name).write_text((workspace / name).read_text())
    (tmp_path / "data").symlink_to(workspace / "data")
    proc = run_stage(tmp_path, "retrain", "mixup")
    assert proc.returncode == 0, proc.stderr[-3000:]
    from safetensors.torch import load_file

    for seed in range(2):
        a = load_file(workspace / f"models/retrain/mixup/seed{seed}/model.safetensors")
        b = load_file(tmp_path / f"models/retrain/mixup/seed{seed}/model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_generated_methods_on_multi_label_data_are_one_line_errors(workspace):
    proc = run_stage(workspace, "evaluate", "txt2img")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and len(errors) == 1 and "not scored yet" in errors[0], proc.stderr[-2000:]
    assert not (workspace / "metrics/evaluate/txt2img.json").exists()
