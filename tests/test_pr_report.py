"""The pull-request report's tables and plot discovery, on known inputs."""

from pathlib import Path

import pandas as pd
import yaml

from tailsynth.report import pr

ROOT = Path(__file__).resolve().parents[1]

DIFF = {
    "metrics/evaluate/genie.json": {
        "acc.overall": {"old": 0.91234, "new": 0.92345, "diff": 0.01111},
        "acc.few": {"old": 0.80004, "new": 0.85006, "diff": 0.05002},
        "acc_std.few": {"old": 0.01, "new": 0.02, "diff": 0.01},
    },
    "metrics/fewshot/genie.json": {
        "5shot.mean": {"old": 0.5, "new": 0.55, "diff": 0.05},
        "5shot.ci95": {"old": 0.03, "new": 0.02, "diff": -0.01},
    },
    "metrics/evaluate/nico.json": {"acc.worst_group": {"old": None, "new": 0.4, "diff": None}},
}


def test_few_class_and_worst_group_rows_come_first_and_spreads_last():
    rows = pr.metric_rows(DIFF)
    assert [(r[1].split("/")[-1], r[2]) for r in rows] == [
        ("genie.json", "acc.few"),
        ("nico.json", "acc.worst_group"),
        ("genie.json", "acc.overall"),
        ("genie.json", "5shot.mean"),
        ("genie.json", "acc_std.few"),
        ("genie.json", "5shot.ci95"),
    ]


def test_metrics_markdown_is_rounded_and_folds_all_but_the_headline():
    text = pr.metrics_markdown(DIFF, "main", "pr", digits=3)
    head, folded = text.split("<details>")
    assert "| metrics/evaluate/genie.json | acc.few | 0.800 | 0.850 | +0.050 |" in head
    assert "| metrics/evaluate/nico.json | acc.worst_group | — | 0.400 | — |" in head
    assert "acc.overall" not in head
    assert "| metrics/evaluate/genie.json | acc.overall | 0.912 | 0.923 | +0.011 |" in folded
    assert "4 more changed metrics" in folded
    assert pr.metrics_markdown({}, "a", "b") == "No metric changed.\n"


def test_params_markdown():
    diff = {"params.yaml": {"genie.r": {"old": 0.7, "new": 0.8}, "augment.weak.hflip": {"old": False, "new": True}}}
    assert pr.params_markdown(diff, "main", "pr") == (
        "| param | main | pr |\n|---|---|---|\n| augment.weak.hflip | False | True |\n| genie.r | 0.7 | 0.8 |\n"
    )


def test_plot_definitions_of_this_pipeline():
    tables, images = pr.plot_definitions(yaml.safe_load((ROOT / "dvc.yaml").read_text()))
    files = {f for t in tables for f in t["files"]}
    assert files == {
        "metrics/plots/per_class.csv",
        "metrics/plots/by_bucket.csv",
        "metrics/plots/chosen_r.csv",
        "metrics/plots/r_sweep.csv",
        "metrics/plots/feedback_omega.csv",
        "metrics/plots/il_generations.csv",
    }
    assert images == [
        "metrics/plots/generator_samples.png",
        "metrics/plots/generator_unclip_samples.png",
        "metrics/plots/samples",
    ]
    sweep = next(t for t in tables if "r_sweep" in next(iter(t["files"])))
    assert sweep["x"] == "r" and sweep["files"]["metrics/plots/r_sweep.csv"] == ["oracle_acc", "acc_1shot", "acc_5shot"]


def test_render_plot_writes_a_png_with_either_side_missing():
    frame = pd.DataFrame({"r": [0.5, 0.6], "acc": [0.4, 0.5]})
    for base, head in ((frame, frame * 1.1), (None, frame), (frame, None)):
        png = pr.render_plot("sweep", "r", ["acc"], base, head)
        assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_only_changed_columns_are_plotted():
    base = pd.DataFrame({"x": [0, 1], "none": [0.5, 0.6], "genie": [0.7, 0.8]})
    head = base.assign(genie=[0.7, 0.9])
    assert pr.changed_columns(["none", "genie"], base, head) == ["genie"]
    assert pr.changed_columns(["none", "genie"], None, head) == ["none", "genie"]


def test_params_diff_keeps_lists_whole():
    old = {"genie": {"r": 0.7, "ada": {"grid": [0.5, 0.6]}}, "fewshot": {"shots": [1, 5]}, "gone": 1}
    new = {"genie": {"r": 0.8, "ada": {"grid": [0.5, 0.6]}}, "fewshot": {"shots": [1, 5, 10]}, "added": {"x": 2}}
    assert pr.params_diff(old, new) == {
        "added.x": {"old": None, "new": 2},
        "fewshot.shots": {"old": [1, 5], "new": [1, 5, 10]},
        "genie.r": {"old": 0.7, "new": 0.8},
        "gone": {"old": 1, "new": None},
    }
