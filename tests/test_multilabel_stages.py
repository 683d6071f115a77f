"""The stages that train and evaluate on multi-label data, end to end on digits_multilabel (tiny step counts)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from pipeline_utils import (
    SIDE_RUN_NICE,
    command_env,
    deep_update,
    finished_run,
    make_project,
    ran_stages,
    run,
    smoke_overrides,
    start_repro,
)

from tailsynth.data.targets import load_targets
from tailsynth.methods import registry
from tailsynth.metrics.average_precision import mean_average_precision
from tailsynth.metrics.multilabel import bucket_map
from tailsynth.models.classifier import load_classifier, predict
from tailsynth.not_applicable import reason

ROOT = Path(__file__).resolve().parents[1]
DVC = str(Path(sys.executable).parent / "dvc")
pytestmark = pytest.mark.slow
FOLDER = "data/prepared/digits_multilabel"


def run_stage(cwd, *argv):
    """``python stages/<argv[0]>.py argv[1:]`` in ``cwd`` (which links ``stages``), as dvc.yaml runs it, on the
    tests' stage server (a preloaded interpreter: seconds saved per stage)."""
    if not (cwd / "stages").exists():
        (cwd / "stages").symlink_to(ROOT / "stages")
    cmd, env = command_env([sys.executable, f"stages/{argv[0]}.py", *argv[1:]])
    env |= {"TAILSYNTH_PARAMS": str(cwd / "params.yaml"), "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)


# The smoke profile, with the classifiers trained long enough that their mAP is well above chance.
OVERRIDES = {
    "oracle": {"steps": 30, "batch_size": 32, "width": 32},
    "classifier": {"steps": 30, "batch_size": 32, "width": 16},
    "retrain": {"steps": 30, "batch_size": 32, "width": 16},
    "generator_eval": {"per_class": 2, "batch_size": 10, "steps": 3},
    "synth": {"per_class": 3, "batch_size": 8, "steps": 4},
    "fusion": {"labels": "soft"},
}
SINGLE_LABEL = registry.names(registry.LONG_TAIL, registry.GENIE) + registry.names(
    registry.LONG_TAIL, registry.FEEDBACK
)


def start_multilabel(tmp_path_factory) -> tuple[Path, subprocess.Popen]:
    """The whole pipeline on digits_multilabel by params alone: ``dvc repro``, started in the background,
    after the README's ``-S data.dataset=digits_multilabel`` applied to params.yaml as ``dvc exp run``
    applies it."""
    from dvc.utils.hydra import apply_overrides

    root = make_project(tmp_path_factory.mktemp("multilabel"), deep_update(smoke_overrides(), OVERRIDES))
    apply_overrides(root / "params.yaml", ["data.dataset=digits_multilabel"])
    return root, start_repro(root, SIDE_RUN_NICE)


def start_early(fixtures: set[str]) -> dict:
    """For conftest: the multi-label run, started before the first test, if ``workspace`` is used."""
    return {"multilabel": start_multilabel} if "workspace" in fixtures else {}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """The finished digits_multilabel project (started by conftest before the first test, else here)."""
    return finished_run("multilabel", start_multilabel, tmp_path_factory)


def test_every_stage_runs_and_the_single_label_ones_record_why_not(workspace):
    log = (workspace / "repro.log").read_text()
    ran = ran_stages(log)
    listed = run([DVC, "stage", "list", "--all", "--name-only"], workspace).stdout.split()
    assert ran == {name.rpartition(":")[2] for name in listed}
    for m in SINGLE_LABEL:
        why = registry.not_applicable(True, family=registry.get(m).family)
        assert why is not None and reason(workspace / "data/synthetic" / m) == why
        assert reason(workspace / "data/synthetic" / m / "manifest.csv") == why
        assert reason(workspace / "models/retrain" / m) == why
        assert reason(workspace / f"metrics/evaluate/{m}.json") == why
        assert reason(workspace / f"metrics/evaluate/{m}_seeds.csv") == why
    fewshot = registry.not_applicable(True, mode=registry.FEWSHOT)
    for path in ["data/fewshot/episodes", "models/fewshot_backbone", "metrics/fewshot/r_sweep.json"]:
        assert reason(workspace / path) == fewshot
    for m in registry.names(registry.FEWSHOT):
        assert reason(workspace / f"metrics/fewshot/{m}.json") == fewshot
    feedback = registry.not_applicable(True, family=registry.FEEDBACK)
    for path in ["models/generator_unclip", "metrics/generator_unclip.json", "metrics/feedback_sweep.json"]:
        assert reason(workspace / path) == feedback
    # What does apply ran for real.
    for m in registry.names(registry.LONG_TAIL):
        if m not in SINGLE_LABEL:
            assert reason(workspace / f"metrics/evaluate/{m}.json") is None
            assert sorted(p.name for p in (workspace / "models/retrain" / m).glob("seed*")) == ["seed0", "seed1"]
    assert run([DVC, "status", "-q"], workspace, check=False).returncode == 0  # nothing left to run


def test_the_report_is_a_multi_label_table_of_what_applies(workspace):
    summary = json.loads((workspace / "metrics/summary.json").read_text())
    applicable = [m for m in registry.names(registry.LONG_TAIL) if m not in SINGLE_LABEL]
    assert list(summary) == applicable
    for m in applicable:
        result = json.loads((workspace / f"metrics/evaluate/{m}.json").read_text())
        assert summary[m]["map_tail"] == result["map"]["tail"] and summary[m]["map_head"] == result["map"]["head"]
        seeds = pd.read_csv(workspace / f"metrics/evaluate/{m}_seeds.csv")
        none = pd.read_csv(workspace / "metrics/evaluate/none_seeds.csv")
        if m != "none":
            assert summary[m]["paired_tail_vs_none"] == pytest.approx((seeds["tail"] - none["tail"]).mean())
    text = (workspace / "metrics/summary.md").read_text()
    assert "| method | mAP overall | mAP many | mAP medium | mAP few | mAP head | mAP tail |" in text
    assert "## Not applicable to this data" in text and "the few-shot comparison" in text
    assert all(f"| {m} " not in text for m in SINGLE_LABEL)
    per_class = pd.read_csv(workspace / "metrics/plots/per_class.csv")
    assert list(per_class.columns) == ["class_index", "class", *registry.names(registry.LONG_TAIL)]
    assert per_class[SINGLE_LABEL].isna().all().all()
    ap = json.loads((workspace / "metrics/evaluate/none.json").read_text())["per_class_ap"]
    assert per_class["none"].tolist() == pytest.approx([ap[c] for c in per_class["class"]])


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
    assert result["map"]["head"] > oracle["chance"] + 0.15


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


def test_txt2img_on_multi_label_data_fills_the_tail_labels_and_is_scored(workspace):
    """synth@txt2img adds per_class images to each tail label, labelled with that label alone; retrain trains
    on them as multi-hot rows; evaluate scores the set with the multi-label oracle."""
    classes = json.loads((workspace / FOLDER / "classes.json").read_text())
    tail = [c["index"] for c in classes if c["bucket"] == "few"]
    rows = pd.read_csv(workspace / "data/synthetic/txt2img/manifest.csv", keep_default_na=False, dtype={"labels": str})
    assert sorted(rows["target"]) == sorted(tail * 3) and (rows["labels"] == rows["target"].astype(str)).all()
    info = json.loads((workspace / "models/retrain/txt2img/seed0/config.json").read_text())
    assert info["n_synthetic"] == 3 * len(tail)
    proc = run_stage(workspace, "evaluate", "txt2img")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((workspace / "metrics/evaluate/txt2img.json").read_text())
    from tailsynth.data.manifest import load_rows

    images = load_rows(workspace / "data/synthetic/txt2img", rows, 1).float() / 255
    logits = predict(load_classifier(workspace / "models/oracle"), images)[0]
    made_for = torch.tensor(rows["target"].tolist())
    assert result["oracle_acc"] == pytest.approx(float((logits[torch.arange(len(rows)), made_for] > 0).float().mean()))
    assert result["n_synthetic"] == len(rows) and "fd_oracle" in result and "criterion_loss" not in result
    assert set(result["map"]) == {"overall", "many", "medium", "few", "head", "tail"}
    prompts = json.loads((workspace / "metrics/generator.json").read_text())
    assert prompts["n_samples"] == 2 * len(classes)


def test_fusion_on_multi_label_data_fuses_tail_and_head_label_sets(workspace):
    """Tail samples show a tail label, head neighbours none; the soft policy weighs each label by the share of
    positions from the sample showing it, and retrain and evaluate take the set."""
    from tailsynth.data.manifest import split_labels
    from tailsynth.methods.fusion.fuse import fused_labels

    classes = json.loads((workspace / FOLDER / "classes.json").read_text())
    tail = {c["index"] for c in classes if c["bucket"] == "few"}
    rows = pd.read_csv(workspace / "data/synthetic/fusion_0step/manifest.csv", keep_default_na=False)
    assert sorted(rows["target"]) == sorted(list(tail) * 2)
    for r in rows.itertuples():
        assert r.target in split_labels(r.source_labels) and not set(split_labels(r.head_labels)) & tail
    again = fused_labels(rows.drop(columns=["labels", "soft_labels"]), "soft")
    assert again["soft_labels"].tolist() == rows["soft_labels"].tolist() and (rows["labels_policy"] == "soft").all()
    il = json.loads((workspace / "metrics/fusion/il.json").read_text())
    assert "map" in il and "accuracy" not in il  # C is trained with BCE on multi-label data
    result = json.loads((workspace / "metrics/evaluate/fusion_0step.json").read_text())
    assert result["n_synthetic"] == len(rows) and set(result["map"]) >= {"head", "tail"}
