import numpy as np
import pandas as pd
import pytest
import torch

from tailsynth.errors import TailsynthError
from tailsynth.methods.genie import (
    GenieAda,
    ada_choice,
    ada_projections,
    check_grid,
    class_prototypes,
    confused_classes,
    l2_normalize,
    plan_genie_long_tail,
)
from tailsynth.methods.registry import SOURCE_KEY
from tailsynth.synth.plan import finalize_rows
from tailsynth.synth.runner import finish, run_plan

CLASSES = [
    {"index": 0, "name": "zero", "prompt_name": "zero", "train_count": 5, "bucket": "many"},
    {"index": 1, "name": "one", "prompt_name": "one", "train_count": 5, "bucket": "many"},
    {"index": 2, "name": "two", "prompt_name": "two", "train_count": 5, "bucket": "many"},
    {"index": 3, "name": "three", "prompt_name": "three", "train_count": 1, "bucket": "few"},
]
MANIFEST = pd.DataFrame(
    {
        "image": [f"images/{i}.png" for i in range(16)],
        "label": [0] * 5 + [1] * 5 + [2] * 5 + [3],
        "split": ["train"] * 16,
    }
)
# true class (row) predicted as (column): class 3 is rarely mistaken *as* anything (one image),
# but many images of class 2 are predicted as 3 — the column carries the evidence.
CONFUSION = np.array([[5, 0, 0, 0], [0, 4, 0, 1], [0, 0, 2, 3], [0, 0, 0, 1]])


def test_confusion_is_read_in_both_directions():
    assert confused_classes(CONFUSION, 3, 2) == [2, 1]
    assert confused_classes(CONFUSION, 0, 3) == [1, 2, 3]  # ties: lower index first
    with pytest.raises(TailsynthError, match="genie.top_k"):
        confused_classes(CONFUSION, 3, 4)


def plan(**kw):
    args = dict(
        r=0.7,
        per_class=6,
        buckets=["few"],
        top_k=2,
        prompt_template="a photo of a {name}",
        steps=50,
        cfg=7.5,
        scheduler="dpm_solver",
        seed=0,
    )
    args.update(kw)
    return plan_genie_long_tail("genie", CLASSES, MANIFEST, CONFUSION, **args)


def test_genie_rows_take_sources_from_the_most_confused_classes():
    rows = plan()
    assert len(rows) == 6
    label_of = MANIFEST.set_index("image")["label"]
    for row in rows:
        assert row["label"] == row["target"] == 3 and row["source_label"] in (1, 2)
        assert label_of[row["source_image"]] == row["source_label"] != row["target"]
        assert row["prompt"] == "a photo of a three" and row["r"] == 0.7
    assert {r["source_label"] for r in plan(per_class=40)} == {1, 2}
    assert plan()[0]["seed"] == plan(per_class=10)[0]["seed"]


@pytest.mark.parametrize("r", [0, 1.01, -1, "high"])
def test_genie_r_outside_unit_interval_is_refused(r):
    with pytest.raises(TailsynthError, match=r"genie.r must be a number in \(0, 1\]"):
        plan(r=r)


def test_grid_errors_name_the_param():
    with pytest.raises(TailsynthError, match="genie.ada.grid is empty"):
        check_grid([], 50)
    with pytest.raises(TailsynthError, match="genie.ada.grid levels"):
        check_grid([0.5, 1.5], 50)
    assert check_grid([0.9, 0.5, 0.7], 50) == [0.5, 0.7, 0.9]


def test_ada_picks_the_level_after_the_largest_jump():
    d = torch.tensor([[0.0, 0.05, 0.1, 0.8, 0.85], [0.1, 0.9, 0.95, 0.97, 0.99], [0.0, 0.0, 0.0, 0.0, 0.5]])
    assert ada_choice(d).tolist() == [3, 1, 4]  # never 0: the first level can never be chosen
    zs = torch.tensor([[1.0, 0.0]])
    zt = torch.tensor([[0.0, 1.0]])
    levels = l2_normalize(torch.tensor([[[1.0, 0.1], [0.2, 1.0]]]))
    d = ada_projections(zs, zt, levels)
    assert d.shape == (1, 2) and d[0, 1] > d[0, 0] > 0


def test_prototypes_average_normalised_features():
    feats = torch.tensor([[3.0, 0.0], [0.0, 2.0], [5.0, 0.0]])
    protos = class_prototypes(feats, torch.tensor([0, 0, 1]), 3)
    assert torch.allclose(protos, torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.0, 0.0]]))


class FakeLevels:
    """Image value = r, so the embedding (value, 1 - value) moves toward class 1 as r grows."""

    def __init__(self):
        self.calls = []

    def generate(self, batch, sources, r):
        self.calls.append((len(batch), r))
        jump = torch.tensor([0.0 if r < s else 1.0 for s in batch["step_at"]]).view(-1, 1, 1, 1)
        return (0.1 * r + 0.8 * jump).expand(-1, 1, 4, 4).clone()

    @staticmethod
    def embed(images):
        v = images.mean(dim=(1, 2, 3))
        return torch.stack([1 - v, v], dim=1)


def test_genie_ada_generates_levels_in_shared_batches_and_records_every_d():
    fake = FakeLevels()
    protos = l2_normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    batch = pd.DataFrame({"target": [1, 1, 1], "step_at": [0.7, 0.9, 0.6]}, index=[10, 11, 12])
    sources = torch.zeros(3, 1, 4, 4)
    images, extras = GenieAda(fake.generate, fake.embed, protos, [0.5, 0.6, 0.7, 0.8, 0.9])(batch, sources)
    assert fake.calls == [(3, 0.5), (3, 0.6), (3, 0.7), (3, 0.8), (3, 0.9)]  # one call per level
    assert extras["chosen_r"].tolist() == [0.7, 0.9, 0.6]
    assert list(extras.columns) == ["chosen_r", "d_0.5", "d_0.6", "d_0.7", "d_0.8", "d_0.9"]
    assert list(extras.index) == [10, 11, 12]
    assert torch.allclose(images[0], fake.generate(batch.iloc[:1], None, 0.7)[0])


def test_runner_keeps_per_row_results_through_resume(tmp_path):
    fake = FakeLevels()
    protos = l2_normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    rows = [
        {
            "method": "genie_ada",
            "target": 1,
            "source_image": f"s{i}",
            "r": "ada",
            "seed": i,
            "mode": "img2img",
            "step_at": [0.6, 0.7, 0.8, 0.9][i % 4],
        }
        for i in range(6)
    ]
    table = finalize_rows(rows, "g", SOURCE_KEY)
    ada = GenieAda(fake.generate, fake.embed, protos, [0.5, 0.6, 0.7, 0.8, 0.9])
    run_plan(table, tmp_path, ada, lambda b: torch.zeros(len(b), 1, 4, 4), image_size=4, channels=1, batch_size=4)
    (tmp_path / table["image"][1]).unlink()
    run_plan(table, tmp_path, ada, lambda b: torch.zeros(len(b), 1, 4, 4), image_size=4, channels=1, batch_size=4)
    manifest = finish(table, tmp_path, 4)
    assert manifest["chosen_r"].tolist() == [0.6, 0.7, 0.8, 0.9, 0.6, 0.7]
    assert "d_0.9" in manifest.columns and manifest["d_0.9"].notna().all()
