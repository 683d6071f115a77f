"""Few-shot protocol: episodes, equal-count plans, GeNIe-Ada per shot count, augmented supports, the probe."""

import numpy as np
import pandas as pd
import pytest
import torch

from tailsynth.data.episodes import novel_classes, queries, sample_episodes, support
from tailsynth.errors import TailsynthError
from tailsynth.methods.episodic import ada_choices, augmented_support, plan_episodic, select_rows
from tailsynth.train.fewshot import evaluate_episodes, mean_ci95, probe_accuracy

CLASSES = [{"index": i, "name": f"c{i}", "prompt_name": f"c{i}"} for i in range(8)]


def pool(per_class: int = 30, classes=range(8)) -> pd.DataFrame:
    return pd.DataFrame(
        [{"image": f"images/{c:04d}/{c}_{j:03d}.png", "label": c} for c in classes for j in range(per_class)]
    )


def episodes(n: int = 4, shots=(1, 5), ways: int = 5, q: int = 6, seed: int = 0) -> pd.DataFrame:
    return sample_episodes(pool(), list(range(8)), ways=ways, shots=list(shots), queries=q, episodes=n, seed=seed)


def test_support_and_query_never_overlap_and_have_the_right_sizes():
    ep = episodes(n=20)
    for e, g in ep.groupby("episode"):
        sup, qry = set(g.loc[g["role"] == "support", "image"]), set(g.loc[g["role"] == "query", "image"])
        assert not sup & qry, f"episode {e} shares images between support and query"
        assert len(sup) == 5 * 5 and len(qry) == 5 * 6
        assert g["label"].nunique() == 5
        assert (g.groupby("label")["image"].nunique() == 11).all()
        for _, row in g.iterrows():  # every image belongs to its class
            assert row["image"].startswith(f"images/{row['label']:04d}/")


def test_one_shot_support_is_nested_in_five_shot_and_queries_are_shared():
    ep = episodes()
    for e in range(4):
        one, five = support(ep, e, 1), support(ep, e, 5)
        assert len(one) == 5 and len(five) == 25
        assert set(one["image"]) <= set(five["image"])
        assert len(queries(ep, e)) == 30


def test_episodes_are_seeded_and_do_not_depend_on_how_many_are_drawn():
    a, b = episodes(n=3), episodes(n=6)
    pd.testing.assert_frame_equal(a, b[b["episode"] < 3].reset_index(drop=True))
    assert not episodes(n=3, seed=1).equals(a)
    assert a.groupby("episode")["label"].apply(frozenset).nunique() > 1  # 5 of 8 classes vary per episode


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"episodes": 0}, "fewshot.episodes"),
        ({"shots": [1, 25]}, "fewshot.shots"),
        ({"queries": 26}, "fewshot.queries"),
        ({"ways": 9}, "fewshot.ways"),
        ({"shots": []}, "fewshot.shots"),
        ({"queries": 0}, "fewshot.queries"),
    ],
)
def test_bad_episode_params_name_the_param(kwargs, fragment):
    args = {"ways": 5, "shots": [1, 5], "queries": 6, "episodes": 2, "seed": 0, **kwargs}
    with pytest.raises(TailsynthError, match=fragment):
        sample_episodes(pool(), list(range(8)), **args)


def test_too_small_class_is_named():
    p = pool()
    p = p[~((p["label"] == 3) & (p.index % 30 >= 8))]  # class 3 keeps 8 images, needs 5 + 6
    with pytest.raises(TailsynthError, match="'c3' has 8 images"):
        sample_episodes(p, list(range(8)), ways=5, shots=[1, 5], queries=6, episodes=1, seed=0, class_names=CLASSES_N)


CLASSES_N = {c["index"]: c["name"] for c in CLASSES}


def test_novel_classes_from_param_or_from_disjoint_splits():
    m = pd.DataFrame({"label": [0, 1, 2, 3, 2], "split": ["train", "train", "test", "test", "train"]})
    assert novel_classes(m, "train", "test", None) == [3]
    assert novel_classes(m, "train", "test", [2, 3]) == [2, 3]


def plan(kind, levels, ep=None, method=None):
    return pd.DataFrame(
        plan_episodic(
            method or kind,
            kind,
            ep if ep is not None else episodes(n=2),
            CLASSES,
            levels=levels,
            prompt_template="a photo of a {name}",
            steps=20,
            cfg=5.0,
            scheduler="dpm_solver",
            seed=0,
        )
    )


@pytest.mark.parametrize("kind, levels", [("genie", [0.7]), ("img2img", [0.3]), ("txt2img", [1.0])])
def test_every_method_adds_n_minus_1_times_k_per_class(kind, levels):
    rows = plan(kind, levels)
    for e in range(2):
        for k in (1, 5):
            chosen = select_rows(rows, e, k)
            counts = chosen.groupby("target").size()
            assert len(counts) == 5 and (counts == 4 * k).all(), (kind, e, k, counts.to_dict())


def test_genie_sources_are_every_other_class_support_image():
    ep = episodes(n=2)
    rows = plan("genie", [0.7], ep)
    for (e, t), g in rows.groupby(["episode", "target"]):
        sup = support(ep, e, 5)
        others = set(sup.loc[sup["label"] != t, "image"])
        assert set(g["source_image"]) == others and len(g) == len(others)
        assert (g["source_label"] != t).all() and (g["label"] == t).all()
        one = select_rows(g, e, 1)
        assert set(one["source_image"]) == set(support(ep, e, 1).query("label != @t")["image"])


def test_img2img_sources_are_the_targets_own_support():
    rows = plan("img2img", [0.3])
    assert (rows["source_label"] == rows["target"]).all()
    assert rows["seed"].nunique() == len(rows)


def test_ada_rows_cover_the_grid_with_the_pair_seed_of_fixed_r_genie():
    ep = episodes(n=2)
    ada = plan("genie", [0.5, 0.6, 0.7], ep, method="genie_ada")
    fixed = plan("genie", [0.6], ep, method="genie")
    assert all(sorted(g["r"]) == [0.5, 0.6, 0.7] for _, g in ada.groupby("pair"))
    assert (ada.groupby("pair")["seed"].nunique() == 1).all()
    level = ada[ada["r"] == 0.6].reset_index(drop=True)
    cols = ["episode", "target", "source_image", "seed", "r", "prompt"]
    pd.testing.assert_frame_equal(level[cols], fixed[cols])  # same image as GeNIe at r = 0.6


def test_plans_reject_bad_noise_ratios():
    with pytest.raises(TailsynthError, match="in \\(0, 1\\]"):
        plan("genie", [1.5])
    with pytest.raises(TailsynthError, match="no denoising step"):
        plan("genie", [0.01])


def test_ada_choice_depends_on_the_shot_counts_prototype():
    # One episode, 2 classes, 2-shot: source s (class 1) -> target class 0, grid of 3 levels.
    ep = pd.DataFrame(
        [
            (0, 0, 0, "support", 0, "t0"),
            (0, 0, 0, "support", 1, "t1"),
            (0, 1, 1, "support", 0, "s"),
            (0, 1, 1, "support", 1, "s1"),
        ],
        columns=["episode", "way", "label", "role", "rank", "image"],
    )
    e = torch.eye(4)
    feats = {"t0": e[0], "t1": e[1], "s": e[2], "s1": e[3]}
    rows = pd.DataFrame(
        {
            "pair": ["p"] * 3,
            "episode": 0,
            "target": 0,
            "source_image": "s",
            "r": [0.5, 0.6, 0.7],
            "min_shots": 1,
            "image": ["l5", "l6", "l7"],
        }
    )
    # Level images: mostly source, then a step toward t0 only, then all the way to t0.
    levels = torch.stack([e[2], e[2] + 0.2 * e[0], e[0]])
    out = ada_choices(rows, levels, feats, ep, [1, 2])
    one, two = out[out["shots"] == 1].iloc[0], out[out["shots"] == 2].iloc[0]
    assert one["chosen_r"] == 0.7 and one["image"] == "l7"  # the big jump is the last one
    d = [one[f"d_{r:g}"] for r in (0.5, 0.6, 0.7)]
    assert d[0] == pytest.approx(0.0) and d[0] < d[1] < d[2]
    assert {"d_0.5", "d_0.6", "d_0.7"} <= set(two.index) and two["d_0.7"] != pytest.approx(one["d_0.7"])


def test_augmented_support_counts_labels_and_per_image_seeds():
    x = torch.rand(6, 1, 12, 12)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    names = [f"img{i}" for i in range(6)]
    for kind in ("weak", "strong", "cutmix", "mixup"):
        ax, ay = augmented_support(x, y, names, kind, copies=4, seed=0)
        assert ax.shape == (24, 1, 12, 12) and ay.tolist() == [v for v in y.tolist() for _ in range(4)]
        assert 0 <= ax.min() and ax.max() <= 1
        assert not torch.allclose(ax[0], ax[1])  # copies differ
    a, _ = augmented_support(x, y, names, "weak", copies=2, seed=0)
    b, _ = augmented_support(x[:3], y[:3], names[:3], "weak", copies=2, seed=0)
    assert torch.equal(a[:6], b)  # an image's copies do not depend on the rest of the support
    ax, ay = augmented_support(x, y, names, "none", copies=4, seed=0)
    assert len(ax) == 0 and len(ay) == 0
    with pytest.raises(TailsynthError, match="unknown few-shot augmentation"):
        augmented_support(x, y, names, "rotate", copies=1, seed=0)


def test_mixed_copies_keep_the_larger_share_of_their_image():
    x = torch.zeros(2, 1, 8, 8)
    x[1] += 1.0
    ax, ay = augmented_support(x, torch.tensor([0, 1]), ["a", "b"], "mixup", copies=8, seed=3, alpha=1.0)
    means = ax.mean(dim=(1, 2, 3))
    assert (means[:8] <= 0.5 + 1e-6).all() and (means[8:] >= 0.5 - 0.2).all()
    assert ay.tolist() == [0] * 8 + [1] * 8


def test_probe_and_confidence_interval():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 16)) * 5
    sx = np.concatenate([centers + rng.normal(size=(3, 16)) * 0.1 for _ in range(2)])
    sy = np.array([0, 1, 2] * 2)
    qx = centers + rng.normal(size=(3, 16)) * 0.1
    assert probe_accuracy(sx, sy, qx, np.array([0, 1, 2])) == 1.0
    assert probe_accuracy(sx, sy, qx, np.array([1, 2, 0])) == 0.0
    r = mean_ci95([0.5, 0.7, 0.6, 0.8])
    assert r["mean"] == pytest.approx(0.65)
    assert r["ci95"] == pytest.approx(1.96 * np.std([0.5, 0.7, 0.6, 0.8], ddof=1) / 2)
    assert "ci95" not in mean_ci95([0.5]) and mean_ci95([0.5])["episodes"] == 1


def test_extra_support_features_change_the_episode_accuracy():
    # Queries sit between two single support points; extra points near the true class fix them.
    ep = pd.DataFrame(
        [(0, 0, 0, "support", 0, "a"), (0, 1, 1, "support", 0, "b"), (0, 0, 0, "query", 0, "qa")],
        columns=["episode", "way", "label", "role", "rank", "image"],
    )
    feats = {"a": np.array([1.0, 0.0]), "b": np.array([0.0, 1.0]), "qa": np.array([0.6, 1.0])}
    assert evaluate_episodes(ep, [1], feats)[1] == [0.0]
    extra = (np.array([[0.5, 1.0], [0.6, 0.9]]), np.array([0, 0]))
    assert evaluate_episodes(ep, [1], feats, lambda e, k: extra)[1] == [1.0]
