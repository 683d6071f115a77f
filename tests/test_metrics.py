from pathlib import Path

import numpy as np
import pytest
import torch

from tailsynth.metrics.accuracy import bucket_accuracy, mean_std, per_class_accuracy
from tailsynth.metrics.frechet import INCEPTION_FILE, frechet_distance, inception_features, inception_weights_path
from tailsynth.report.summary import (
    bucket_table,
    chosen_r_table,
    omega_sweep_markdown,
    per_class_table,
    summary_markdown,
    summary_rows,
)

CLASSES = [{"index": 0, "name": "a", "bucket": "many"}, {"index": 1, "name": "b", "bucket": "few"}]


def test_bucket_and_per_class_accuracy():
    labels = np.array([0, 0, 1, 1])
    pred = np.array([0, 1, 1, 1])
    acc = bucket_accuracy(pred, labels, CLASSES)
    assert acc == {"overall": 0.75, "many": 0.5, "few": 1.0}
    assert list(per_class_accuracy(pred, labels, 3)[:2]) == [0.5, 1.0]
    assert np.isnan(per_class_accuracy(pred, labels, 3)[2])
    stats = mean_std([{"x": 0.5}, {"x": 0.7}])
    assert stats["x"]["mean"] == pytest.approx(0.6) and stats["x"]["std"] == pytest.approx(0.1414, abs=1e-4)
    assert mean_std([{"x": 0.5}])["x"]["std"] == 0.0


def test_frechet_distance_is_zero_for_same_gaussian_and_grows_with_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    b = rng.normal(size=(4000, 3))
    assert frechet_distance(a, b) < 0.02
    assert frechet_distance(a, b + 2.0) == pytest.approx(12.0, rel=0.05)  # |mu|^2 = 3 * 2^2


def test_inception_fid_is_absent_with_a_reason_without_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path, reason = inception_weights_path()
    assert path is None and "pt_inception-2015-12-05-6726825d.pth" in reason and str(tmp_path) in reason
    with pytest.raises(FileNotFoundError, match="Inception FID skipped"):
        inception_features(torch.rand(2, 3, 32, 32))


class Payload:
    """Not a tensor: a weights file holding this must be refused."""


def test_inception_weights_are_loaded_without_unpickling_objects(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    path.parent.mkdir(parents=True)
    torch.save({"fc.weight": torch.zeros(2), "trojan": Payload()}, path)
    with pytest.raises(ValueError, match="not a plain tensor weights file"):
        inception_features(torch.rand(2, 3, 32, 32))


def test_summary_table_and_plot_tables():
    results = {
        "none": {
            "acc": {"overall": 0.5, "many": 0.9, "few": 0.1},
            "acc_std": {"overall": 0.01, "many": 0, "few": 0},
            "per_class_acc": {"a": 0.9, "b": 0.1},
            "n_synthetic": 0,
        },
        "txt2img": {
            "acc": {"overall": 0.6, "many": 0.9, "few": 0.3},
            "acc_std": {"overall": 0.02, "many": 0, "few": 0},
            "per_class_acc": {"a": 0.9, "b": 0.3},
            "n_synthetic": 50,
            "oracle_acc": 0.97,
            "fd_oracle": 1.5,
            "density": 0.8,
            "coverage": 0.25,
            "criterion_loss": 0.125,
            "criterion_entropy": 0.5,
            "criterion_hardness": 42.0,
        },
    }
    rows = summary_rows(results)
    md = summary_markdown(rows)
    row = "| txt2img | 60.0 ± 2.0 | 90.0 ± 0.0 | — | 30.0 ± 0.0 | 97.0 | 1.5 | 0.8 | 25.0 | — | 0.125 | 0.5 | 42 | 50 |"
    assert row in md
    assert "| none | 50.0 ± 1.0 | 90.0 ± 0.0 | — | 10.0 ± 0.0 | — | — | — | — | — | — | — | — | 0 |" in md
    assert "| FID | loss | entropy | hardness | n synthetic |" in md
    assert list(per_class_table(results, CLASSES)["txt2img"]) == [0.9, 0.3]
    assert list(bucket_table(results)["bucket"]) == ["overall", "many", "few"]


def test_chosen_r_table_keeps_every_level_of_every_column():
    fewshot = {"genie_ada": {"chosen_r": {"1shot": {"r70": 3, "r60": 1}, "5shot": {"r90": 2}}}, "txt2img": {}}
    table = chosen_r_table([0.6, 0.6, 0.8], fewshot)
    assert table["r"].tolist() == [0.6, 0.7, 0.8, 0.9]  # 0.7 and 0.9 were never chosen in long-tail mode
    assert table["count"].tolist() == [2, 0, 1, 0]
    assert table["genie_ada_1shot"].tolist() == [1, 3, 0, 0]
    assert table["genie_ada_5shot"].tolist() == [0, 0, 0, 2]


def test_density_and_coverage_known_answers():
    from tailsynth.metrics.coverage import class_density_coverage, density_coverage

    real = np.array([[0.0], [1.0], [2.0], [3.0]])  # k = 1: every ball has radius 1
    # 0.5 lies in the balls of 0 and 1 (2 hits), 10 in none: density 2 / (1 * 2); reals 0 and 1 covered.
    assert density_coverage(real, np.array([[0.5], [10.0]]), k=1) == (1.0, 0.5)
    assert density_coverage(real, real, k=1) == (2.5, 1.0)  # ends in 2 balls, inner points in 3: 10 / 4
    # Class-conditional: a class-0 sample sitting on the class-1 reals counts for nothing.
    labels = np.array([0, 0, 1, 1])
    fake, fake_labels = np.array([[2.5], [0.5]]), np.array([0, 1])
    assert class_density_coverage(real, labels, fake, fake_labels, k=1) == (0.0, 0.0)
    assert class_density_coverage(real, labels, fake[::-1], fake_labels, k=1) == (2.0, 1.0)  # 2 balls each
    with pytest.raises(ValueError, match="class 0: 2 real samples, need more than k = 2"):
        class_density_coverage(real, labels, fake, fake_labels, k=2)


def test_density_and_coverage_of_the_real_distribution_itself():
    from tailsynth.metrics.coverage import density_coverage

    rng = np.random.default_rng(0)
    real, same, shifted = rng.normal(size=(1000, 4)), rng.normal(size=(1000, 4)), rng.normal(size=(1000, 4)) + 3
    density, coverage = density_coverage(real, same, k=5)
    # Naeem et al.: for identical distributions E[density] = 1 and E[coverage] = 1 - 1/2^k (M = N).
    assert density == pytest.approx(1.0, abs=0.06) and coverage == pytest.approx(1 - 0.5**5, abs=0.02)
    assert density_coverage(real, shifted, k=5)[1] < 0.2


def test_omega_sweep_table_lists_every_point_in_omega_order():
    def point(omega, few, criterion, where):
        acc = {"few": few, "overall": 0.9}
        return {
            "omega": omega,
            "acc": acc,
            "acc_std": {"few": 0.01, "overall": 0.0},
            "criterion": criterion,
            "set": where,
        }

    sweep = {
        "criterion": "loss",
        "omega0_1": point(0.1, 0.95, 1.75, "data/synthetic/feedback_sweep/omega0_1"),
        "omega0": point(0.0, 0.925, 0.155, "data/synthetic/ldm_text_image_dropout"),
    }
    lines = omega_sweep_markdown(sweep).splitlines()
    assert lines[0] == "## Feedback guidance step sweep (feedback_loss's plan at each omega)"
    assert lines[4] == "| 0 | 92.5 ± 1.0 | 90.0 ± 0.0 | 0.155 | data/synthetic/ldm_text_image_dropout |"
    assert lines[5] == "| 0.1 | 95.0 ± 1.0 | 90.0 ± 0.0 | 1.750 | data/synthetic/feedback_sweep/omega0_1 |"
