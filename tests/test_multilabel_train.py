"""Multi-label training, evaluation and generation plans: multi-hot targets, BCE fitting, label-aware
balanced sampling, MixUp/CutMix on multi-hot rows, mAP overall / per bucket / head / tail over seeds,
prompts naming every label, and txt2img / img2img rows with their label sets."""

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import average_precision_score

from tailsynth.data.groups import every_prompt, image_prompts
from tailsynth.data.prepare import Record, write_prepared
from tailsynth.data.targets import load_targets, multi_hot
from tailsynth.errors import TailsynthError
from tailsynth.methods.augment import cutmix, mixup
from tailsynth.methods.generated import plan_generated
from tailsynth.metrics.multilabel import bucket_map, evaluate_multilabel_runs
from tailsynth.models.classifier import build_classifier, predict
from tailsynth.train.fit import FitConfig, class_balanced_weights, draw_indices, fit_classifier


def test_multi_hot_known_answer_and_out_of_range_label():
    assert multi_hot(["0|2", "", "1"], 3).tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 0]]
    with pytest.raises(ValueError, match="label 3 outside the 3 classes"):
        multi_hot(["3"], 3)


def test_load_targets_reads_both_kinds_of_folder(tmp_path):
    img = torch.zeros(1, 8, 8)
    multi = [Record("a", img, 0, "train", True, labels=(0, 2)), Record("b", img, 0, "train", labels=())]
    multi.append(Record("c", img, 0, "test", labels=(1,)))
    kw = {"names": ["x", "y", "z"], "prompt_names": ["x", "y", "z"], "size": 8, "channels": 1}
    write_prepared(tmp_path / "m", multi, many_above=5, few_below=1, **kw)
    x, t = load_targets(tmp_path / "m", "train", 1, 3)
    assert x.shape == (2, 1, 8, 8) and x.dtype == torch.uint8
    assert t.dtype == torch.float32 and t.tolist() == [[1, 0, 1], [0, 0, 0]]
    single = [Record("a", img, 2, "train", True), Record("b", img, 1, "train")]
    write_prepared(tmp_path / "s", single, many_above=5, few_below=1, **kw)
    _, t = load_targets(tmp_path / "s", "train", 1, 3)
    assert t.dtype == torch.int64 and t.tolist() == [2, 1]


def test_multilabel_balanced_weights_known_answer():
    """Counts per label: 0 -> 3, 1 -> 1; one empty row. Weight = sum of 1/count over the row's labels
    (pick a label uniformly, then one of its rows): each label, and the empty rows, weigh 1 in all."""
    t = torch.tensor([[1, 0], [1, 0], [1, 1], [0, 0]], dtype=torch.float32)
    w = class_balanced_weights(t, 2)
    assert w.tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3 + 1, 1.0])
    assert float(w.sum()) == pytest.approx(3.0)  # two labels and the empty rows, one each


def test_multilabel_balanced_draws_raise_the_rare_label():
    t = torch.zeros(100, 2)
    t[:, 0] = 1
    t[:5, 1] = 1  # label 1 on 5 of 100 rows (always with label 0)
    draws = draw_indices(t, 2, FitConfig(steps=200, batch_size=50), torch.Generator().manual_seed(0))
    rare_share = float(t[draws, 1].mean())
    # weights 1/100 (95 rows) and 1/100 + 1/5 (5 rows): 5 x 0.21 / (0.95 + 1.05) = 0.525
    assert rare_share == pytest.approx(0.525, abs=0.01)
    uniform = draw_indices(t, 2, FitConfig(steps=200, batch_size=50, balanced=False), torch.Generator().manual_seed(0))
    assert float(t[uniform, 1].mean()) == pytest.approx(0.05, abs=0.01)


def multilabel_toy(n=160, seed=0):
    """Label 0: bright left half; label 1: bright right half; label 2: bright top-left corner. Independent."""
    g = torch.Generator().manual_seed(seed)
    t = (torch.rand(n, 3, generator=g) < 0.5).float()
    x = torch.rand(n, 1, 12, 12, generator=g) * 0.2
    x[t[:, 0] > 0, :, 6:, :6] += 0.6
    x[t[:, 1] > 0, :, :, 6:] += 0.6
    x[t[:, 2] > 0, :, :6, :6] += 0.6
    return x.clamp(0, 1), t


def test_fit_multilabel_learns_co_occurring_labels_deterministically():
    x, t = multilabel_toy()
    cfg = FitConfig(steps=80, batch_size=32, lr=3e-3, warmup_steps=5)
    models = [fit_classifier(build_classifier("small_cnn", 3, 1, 12, width=8), x, t, cfg, seed=1) for _ in range(2)]
    xt, tt = multilabel_toy(80, seed=1)
    scores = predict(models[0], xt)[0].sigmoid()
    assert torch.equal(predict(models[1], xt)[0].sigmoid(), scores)
    aps = [average_precision_score(tt[:, k], scores[:, k]) for k in range(3)]
    assert min(aps) > 0.95  # each label found on its own, whatever else the image shows
    # images showing two labels get both: a softmax model could not put both above 0.5
    both = (tt[:, 0] > 0) & (tt[:, 1] > 0)
    assert both.any() and (scores[both][:, :2] > 0.5).float().mean() > 0.9


def test_fit_refuses_multilabel_with_group_balancing_or_wrong_width():
    x, t = multilabel_toy(8)
    with pytest.raises(ValueError, match="no group balancing"):
        fit_classifier(build_classifier("small_cnn", 3, 1, 12, width=4), x, t, FitConfig(steps=1, balanced="group"))
    with pytest.raises(ValueError, match="need a 4-class model"):
        fit_classifier(build_classifier("small_cnn", 4, 1, 12, width=4), x, t, FitConfig(steps=1))


def test_mixup_and_cutmix_mix_multi_hot_rows():
    x, t = multilabel_toy(6)
    xb, mixed = mixup(3, alpha=1.0)(x, t, torch.Generator().manual_seed(1))
    # the same draws on one-hot rows of class indices give the same mixing: lam * t + (1 - lam) * t[perm]
    gen = torch.Generator().manual_seed(1)
    from tailsynth.methods.augment import _beta

    lam = _beta(gen, 1.0)
    perm = torch.randperm(6, generator=gen)
    assert torch.allclose(mixed, lam * t + (1 - lam) * t[perm])
    assert torch.allclose(xb, lam * x + (1 - lam) * x[perm])
    _, boxed = cutmix(3, alpha=1.0)(x, t, torch.Generator().manual_seed(1))
    assert boxed.shape == (6, 3) and ((boxed >= 0) & (boxed <= 1)).all()


CLASSES = [
    {"index": 0, "name": "a", "bucket": "many"},
    {"index": 1, "name": "b", "bucket": "medium"},
    {"index": 2, "name": "c", "bucket": "few"},
    {"index": 3, "name": "d", "bucket": "few"},
]


def test_bucket_map_known_answer():
    targets = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0]])
    scores = np.array([[0.9, 0.1, 0.2, 0.5], [0.2, 0.8, 0.9, 0.5], [0.8, 0.3, 0.1, 0.5], [0.1, 0.4, 0.3, 0.5]])
    # AP: a = 1 (both positives ranked first); b: positives at 0.8 (rank 1) and 0.3 (rank 3) -> (1 + 2/3) / 2;
    # c: positives at 0.2 (rank 3) and 0.3 (rank 2) -> (1/2 + 2/3) / 2; d has no positive: left out
    ap_b, ap_c = (1 + 2 / 3) / 2, (1 / 2 + 2 / 3) / 2
    got = bucket_map(targets, scores, CLASSES)
    assert got == pytest.approx(
        {
            "overall": (1 + ap_b + ap_c) / 3,
            "many": 1.0,
            "medium": ap_b,
            "few": ap_c,
            "head": (1 + ap_b) / 2,
            "tail": ap_c,
        }
    )


def test_evaluate_multilabel_runs_means_stds_and_per_run_values():
    targets = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 0, 1], [0, 0, 1, 0]])
    rng = np.random.default_rng(0)
    scores = [rng.random(targets.shape) for _ in range(3)]
    result, runs = evaluate_multilabel_runs(scores, targets, CLASSES)
    assert runs == [bucket_map(targets, s, CLASSES) for s in scores]
    overall = [r["overall"] for r in runs]
    assert result["map"]["overall"] == pytest.approx(np.mean(overall))
    assert result["map_std"]["overall"] == pytest.approx(np.std(overall, ddof=1))
    assert result["per_class_ap"]["d"] == pytest.approx(
        np.mean([average_precision_score(targets[:, 3], s[:, 3]) for s in scores])
    )
    assert result["n_seeds"] == 3 and set(result["per_class_ap"]) == {"a", "b", "c", "d"}
    with pytest.raises(ValueError, match="no runs"):
        evaluate_multilabel_runs([], targets, CLASSES)


# ---------------------------------------------------------------- generation on multi-label data

DIGITS = [
    {"index": i, "name": n, "prompt_name": n, "bucket": "few" if i > 1 else "many"}
    for i, n in enumerate(("zero", "one", "two"))
]


def test_multilabel_images_are_learnt_with_every_label_named():
    rows = pd.DataFrame({"image": ["a", "b", "c"], "labels": ["0|2", "1", np.nan], "split": ["train"] * 3})
    assert image_prompts("a photo of a {name}", DIGITS, rows) == ["a photo of a zero and two", "a photo of a one", ""]
    # every prompt: each class alone (what txt2img asks for), then each label set present, once
    assert every_prompt("a photo of a {name}", DIGITS, rows) == [
        "a photo of a zero",
        "a photo of a one",
        "a photo of a two",
        "a photo of a zero and two",
    ]
    with pytest.raises(TailsynthError, match="uses {group}"):
        image_prompts("a {name}, {group}", DIGITS, rows)


def test_generated_plans_on_multilabel_data_carry_label_sets():
    manifest = pd.DataFrame(
        {
            "image": ["a.png", "b.png", "c.png", "d.png"],
            "labels": ["0|2", "2", "1", "2"],
            "split": ["train", "train", "train", "test"],
        }
    )
    kw = {"per_class": 4, "buckets": ["few"], "prompt_template": "a {name}", "steps": 10, "cfg": 2.0}
    kw |= {"scheduler": "ddim", "seed": 0}
    txt = plan_generated("txt2img", {"mode": "txt2img"}, DIGITS, manifest, **kw)
    assert [(r["target"], r["label"], r["labels"], r["prompt"]) for r in txt] == [(2, 2, "2", "a two")] * 4
    img = plan_generated("img2img_low", {"mode": "img2img", "r": 0.5}, DIGITS, manifest, **kw)
    # sources: the train images showing label 2 (a.png with 0 and 2, b.png with 2 alone; never the test one)
    assert sorted({r["source_image"] for r in img}) == ["a.png", "b.png"]
    assert all(r["labels"] == {"a.png": "0|2", "b.png": "2"}[r["source_image"]] for r in img)
    # on single-label data the plan is as before: no labels column
    single = manifest.drop(columns="labels").assign(label=[0, 2, 1, 2])
    assert all("labels" not in r for r in plan_generated("txt2img", {"mode": "txt2img"}, DIGITS, single, **kw))
