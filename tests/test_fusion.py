import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_ldm_config
from sklearn.neighbors import NearestNeighbors

from tailsynth.errors import TailsynthError
from tailsynth.methods.fusion import cams, fuse, latents, refine
from tailsynth.methods.fusion.embedding import (
    Decoder,
    EmbeddingClassifier,
    EmbeddingConfig,
    FusionModels,
    ILConfig,
    Student,
    class_weights,
    imitate,
    load_models,
    save_models,
    simplicial,
    sparsity,
    tanh_capped_sparsity,
    train_iterated,
)
from tailsynth.models import generator as gen

PROMPTS = ["a photo of a one", "a photo of a two"]
CLASSES = [
    {"index": 0, "name": "zero", "bucket": "many"},
    {"index": 1, "name": "one", "bucket": "many"},
    {"index": 2, "name": "two", "bucket": "medium"},
    {"index": 3, "name": "three", "bucket": "few"},
]
SMALL = EmbeddingConfig(latent_channels=4, num_classes=2, channels=16, group=4, hidden=16, tau=0.5)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: one intra-op thread is faster than two and does not stall on a busy core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def constant_maps(values, side=2) -> torch.Tensor:
    """One constant side x side map per value: the euclidean distance of two maps is side * |difference|."""
    return torch.tensor(values, dtype=torch.float32)[:, None, None].expand(-1, side, side).contiguous()


# ---------------------------------------------------------------- head_neighbours

# head samples at non-contiguous global positions; every other position is a tail sample
HEAD = np.array([3, 5, 7, 8])
# map values: head 3 -> 0, 5 -> 10, 7 -> 20, 8 -> 30; tail 0, 1, 2, 4 sit next to head 3, 5, 7, 8
KNN_VALUES = [1.0, 11.0, 19.0, 0.0, 29.0, 10.0, 14.0, 20.0, 30.0, 6.0]
QUERIES = np.array([0, 1, 2, 4])
NEAREST = np.array([[3], [5], [7], [8]])


def test_head_neighbours_returns_global_positions_of_head_samples():
    """The nearest head sample of each query is given by its global position, and only head samples are returned."""
    maps = constant_maps(KNN_VALUES)
    got = fuse.head_neighbours(maps, HEAD, QUERIES, 1)
    np.testing.assert_array_equal(got, NEAREST)
    assert set(got.ravel()) <= set(HEAD)
    # k = 2: nearest first (tail 1 at 11: head 5 at 10 then head 7 at 20; tail 4 at 29: head 8 then head 7)
    np.testing.assert_array_equal(fuse.head_neighbours(maps, HEAD, QUERIES, 2), [[3, 5], [5, 7], [7, 5], [8, 7]])


def test_head_neighbours_subset_positions_used_as_global_ones_would_fail():
    """The reference's answer (K-NN positions inside the head subset used as global positions) is wrong here:
    it names tail samples, so an implementation returning local indices fails the test above."""
    flat = constant_maps(KNN_VALUES).reshape(10, -1).numpy()
    _, local = NearestNeighbors(n_neighbors=1, algorithm="brute").fit(flat[HEAD]).kneighbors(flat[QUERIES])
    np.testing.assert_array_equal(local, [[0], [1], [2], [3]])
    assert not np.array_equal(local, NEAREST)
    tail = set(range(10)) - set(HEAD)
    assert [int(i) in tail for i in local.ravel()] == [True, True, True, False]  # 0, 1, 2 are tail samples
    got = fuse.head_neighbours(constant_maps(KNN_VALUES), HEAD, QUERIES, 1)
    assert not np.array_equal(got, local)
    np.testing.assert_array_equal(got, HEAD[local])


# eight head samples at the same distance from the query (sample 0), listed in a shuffled head order
TIED_MAPS = torch.cat([torch.ones(1, 2, 2), torch.zeros(8, 2, 2)])
TIED_HEAD = np.array([8, 3, 5, 1, 6, 2, 7, 4])


def test_head_neighbours_ties_select_the_first_head_samples():
    """Among equidistant head samples the first ones in head order are the neighbours."""
    assert fuse.head_neighbours(TIED_MAPS, TIED_HEAD, np.array([0]), 1).tolist() == [[8]]
    for k in (2, 3, 5):
        got = fuse.head_neighbours(TIED_MAPS, TIED_HEAD, np.array([0]), k)
        assert set(got[0]) == set(TIED_HEAD[:k])


def test_head_neighbours_ties_are_ordered_by_head_order():
    """Equidistant neighbours come in head order, as the docstring says."""
    got = fuse.head_neighbours(TIED_MAPS, TIED_HEAD, np.array([0]), 3)
    assert got.tolist() == [TIED_HEAD[:3].tolist()]


@pytest.mark.parametrize("k", [5, 0, -1, 1.0, True])
def test_head_neighbours_bad_k_is_refused(k):
    """k larger than the head set, k < 1 or a k that is not a whole number raise naming fusion.knn.k."""
    with pytest.raises(TailsynthError, match="fusion.knn.k"):
        fuse.head_neighbours(constant_maps(KNN_VALUES), HEAD, QUERIES, k)


# ---------------------------------------------------------------- plan_pairs

# tail class 2 at 0, 4, 9; tail class 3 at 2; heads (classes 0, 1) at 1, 3, 5, 6, 7, 8
PLAN_LABELS = [2, 0, 3, 1, 2, 0, 1, 0, 1, 2]
PLAN_VALUES = [0.75, 0.0, 0.97, 0.2, 0.05, 0.4, 0.6, 0.8, 1.0, 0.43]
PLAN_NEAREST = {0: 7, 4: 1, 9: 5, 2: 8}
PLAN_SECOND = {0: 6, 4: 3, 9: 6, 2: 7}
PLAN_INDEX = pd.DataFrame({"image": [f"images/{i}.png" for i in range(10)], "label": PLAN_LABELS})


def plan(**kw) -> pd.DataFrame:
    args = dict(per_class=6, k=1, seed=0, threshold_mode="fixed", high=0.4, low=0.3)
    args.update(kw)
    return fuse.plan_pairs(PLAN_INDEX, constant_maps(PLAN_VALUES), [2, 3], **args)


def test_plan_pairs_reads_every_sample_at_its_global_position():
    """Each row's tail sample is a sample of its target, named at its global position, and its head neighbour
    is that sample's nearest head sample by map (k=1)."""
    rows = plan()
    assert rows["target"].value_counts().to_dict() == {2: 6, 3: 6}
    for r in rows.itertuples():
        assert PLAN_LABELS[r.tail_index] == r.source_label == r.target
        assert r.source_image == PLAN_INDEX["image"][r.tail_index]
        assert r.head_index == PLAN_NEAREST[r.tail_index]
        assert r.head_image == PLAN_INDEX["image"][r.head_index] and r.head_label == PLAN_LABELS[r.head_index]
        assert (r.tau_h, r.tau_l) == (0.4, 0.3)
    # class 2's three samples are cycled: each used twice in six rows
    assert rows[rows.target == 2]["tail_index"].value_counts().to_dict() == {0: 2, 4: 2, 9: 2}
    assert set(rows[rows.target == 3]["tail_index"]) == {2}


def test_plan_pairs_head_neighbours_are_never_tail_classes():
    """With k=2 the neighbour is drawn from the two nearest head samples; no head neighbour is a tail class."""
    rows = plan(per_class=40, k=2)
    assert len(rows) == 80
    assert not rows["head_label"].isin([2, 3]).any()
    for r in rows.itertuples():
        assert r.head_index in (PLAN_NEAREST[r.tail_index], PLAN_SECOND[r.tail_index])
    assert set(rows["head_index"]) == set(PLAN_NEAREST.values()) | set(PLAN_SECOND.values())


def test_plan_pairs_is_deterministic_per_row():
    """Same inputs give the same plan; a row does not depend on how many rows are planned; another seed
    draws differently."""
    a = plan(k=2)
    pd.testing.assert_frame_equal(a, plan(k=2))
    shorter = plan(k=2, per_class=3)
    pd.testing.assert_frame_equal(shorter, a.groupby("target").head(3).reset_index(drop=True))
    other = plan(k=2, seed=1)
    assert (a["seed"] != other["seed"]).all()
    assert not np.allclose(a["p_head"], other["p_head"])
    assert a["p_head"].between(0, 1).all() and a["seed"].nunique() == len(a)


def test_plan_pairs_refuses_bad_per_class_and_empty_tail_class():
    """per_class < 1 raises naming fusion.per_class; a tail class with no sample raises."""
    with pytest.raises(TailsynthError, match="fusion.per_class"):
        plan(per_class=0)
    with pytest.raises(TailsynthError, match="tail class 4 has no encoded"):
        fuse.plan_pairs(
            PLAN_INDEX,
            constant_maps(PLAN_VALUES),
            [4],
            per_class=1,
            k=1,
            seed=0,
            threshold_mode="fixed",
            high=0.4,
            low=0.4,
        )


def test_plan_pairs_random_thresholds_are_per_class():
    """random_per_class: every row of a class carries that class's thresholds."""
    rows = plan(threshold_mode="random_per_class")
    for c in (2, 3):
        part = rows[rows.target == c]
        assert set(zip(part.tau_h, part.tau_l, strict=True)) == {fuse.class_thresholds("random_per_class", 0, 0, 0, c)}


# ---------------------------------------------------------------- fusion_mask

TAIL_MAP = torch.tensor([[0.9, 0.9, 0.1], [0.1, 0.9, 0.1]])
HEAD_MAP = torch.tensor([[0.9, 0.1, 0.1], [0.9, 0.1, 0.9]])
# (0, 0): only tail > tau_h; (0, 2): only head < tau_l; the rest are ambiguous (both or neither)


@pytest.mark.parametrize(
    ("p_head", "expected"),
    [
        (0.0, [[True, True, False], [True, True, True]]),
        (1.0, [[True, False, False], [False, False, False]]),
    ],
)
def test_fusion_mask_known_answers(p_head, expected):
    """Only tail salient -> tail (True); only head background -> head (False); ambiguous positions are
    tail with p_head=0 and head with p_head=1."""
    for seed in range(5):
        mask = fuse.fusion_mask(TAIL_MAP, HEAD_MAP, 0.5, 0.5, p_head, seed)
        assert mask.dtype == torch.bool
        assert mask.tolist() == expected


def test_fusion_mask_ambiguous_positions_take_the_head_with_probability_p_head():
    """Ambiguous positions follow the seeded draw rand >= p_head (tail), so p_head is the head's share."""
    tail, head = torch.full((100, 100), 0.9), torch.full((100, 100), 0.1)  # both hold everywhere
    mask = fuse.fusion_mask(tail, head, 0.5, 0.5, 0.3, 7)
    expected = torch.rand((100, 100), generator=torch.Generator().manual_seed(7)) >= 0.3
    assert torch.equal(mask, expected)
    assert abs(float(mask.float().mean()) - 0.7) < 0.03
    assert torch.equal(mask, fuse.fusion_mask(tail, head, 0.5, 0.5, 0.3, 7))
    assert not torch.equal(mask, fuse.fusion_mask(tail, head, 0.5, 0.5, 0.3, 8))


def test_fusion_mask_thresholds_are_strict():
    """A map equal to its threshold is neither salient nor background: the position is ambiguous."""
    tail, head = torch.tensor([[0.5, 0.6]]), torch.tensor([[0.5, 0.5]])
    # (0, 0): neither holds -> coin; (0, 1): only tail holds -> tail
    assert fuse.fusion_mask(tail, head, 0.5, 0.5, 1.0, 0).tolist() == [[False, True]]


# ---------------------------------------------------------------- class_thresholds, tail_classes, label policy


def test_fixed_thresholds_are_the_given_values():
    """fixed returns (high, low) as floats."""
    assert fuse.class_thresholds("fixed", 0.4, 0.3, 0, 2) == (0.4, 0.3)
    assert fuse.class_thresholds("fixed", 1, 0, 5, 3) == (1.0, 0.0)


@pytest.mark.parametrize(
    ("high", "low", "param"),
    [(1.5, 0.4, "high"), (-0.1, 0.4, "high"), (True, 0.4, "high"), ("0.4", 0.4, "high"), (0.4, 2, "low")],
)
def test_fixed_thresholds_outside_unit_interval_are_refused(high, low, param):
    """A fixed threshold that is not a number in [0, 1] raises naming its param."""
    with pytest.raises(TailsynthError, match=f"fusion.thresholds.{param}"):
        fuse.class_thresholds("fixed", high, low, 0, 2)


def test_random_per_class_thresholds_are_deterministic_per_seed_and_class():
    """random_per_class: the same (seed, class) gives the same pair, other classes and seeds another, in [0, 1]."""
    a = fuse.class_thresholds("random_per_class", 0.4, 0.4, 0, 2)
    assert a == fuse.class_thresholds("random_per_class", 0.9, 0.1, 0, 2)  # high/low are not used
    assert a != fuse.class_thresholds("random_per_class", 0.4, 0.4, 0, 3)
    assert a != fuse.class_thresholds("random_per_class", 0.4, 0.4, 1, 2)
    draws = [fuse.class_thresholds("random_per_class", 0.4, 0.4, 0, c) for c in range(50)]
    assert len(set(draws)) == 50
    assert all(0 <= v <= 1 for pair in draws for v in pair)
    assert abs(np.mean(draws) - 0.5) < 0.05  # N(0.5, 0.1): 100 draws


def test_unknown_threshold_mode_is_refused():
    """An unknown mode raises naming fusion.thresholds.mode."""
    with pytest.raises(TailsynthError, match="fusion.thresholds.mode"):
        fuse.class_thresholds("adaptive", 0.4, 0.4, 0, 2)


def test_tail_classes_by_bucket_name_and_index():
    """Buckets select by shot bucket; names accept class names and indices (deduplicated, sorted)."""
    assert fuse.tail_classes(CLASSES, buckets=["few"], names=None) == [3]
    assert fuse.tail_classes(CLASSES, buckets=["medium", "few"], names=None) == [2, 3]
    assert fuse.tail_classes(CLASSES, buckets=["few"], names=["three", "one"]) == [1, 3]  # names win
    assert fuse.tail_classes(CLASSES, buckets=None, names=[2, 0]) == [0, 2]
    assert fuse.tail_classes(CLASSES, buckets=None, names=["three", 3]) == [3]


@pytest.mark.parametrize("names", [["seven"], [9], ["three", "eleven"]])
def test_unknown_tail_class_is_refused(names):
    """A name or index that is not a class raises naming fusion.tail_classes."""
    with pytest.raises(TailsynthError, match="fusion.tail_classes"):
        fuse.tail_classes(CLASSES, buckets=["few"], names=names)


@pytest.mark.parametrize("buckets", [None, [], ["rare"]])
def test_bad_buckets_are_refused(buckets):
    """No bucket or an unknown one raises naming fusion.buckets."""
    with pytest.raises(TailsynthError, match="fusion.buckets"):
        fuse.tail_classes(CLASSES, buckets=buckets, names=None)


def test_bucket_without_class_is_refused():
    """A bucket no class has selects nothing, which raises."""
    with pytest.raises(TailsynthError, match="selects no class"):
        fuse.tail_classes(CLASSES[:2], buckets=["few"], names=None)


def test_label_policy():
    """tail is always allowed; union and soft only on multi-label data; an unknown policy raises."""
    assert fuse.check_label_policy("tail", False) == "tail"
    assert fuse.check_label_policy("tail", True) == "tail"
    assert fuse.check_label_policy("union", True) == "union"
    assert fuse.check_label_policy("soft", True) == "soft"
    for policy in ("union", "soft"):
        with pytest.raises(TailsynthError, match="single-label"):
            fuse.check_label_policy(policy, False)
    with pytest.raises(TailsynthError, match="fusion.labels must be one of"):
        fuse.check_label_policy("mix", True)


# ---------------------------------------------------------------- fuse_latents


def small_models(seed=0) -> FusionModels:
    torch.manual_seed(seed)
    models = FusionModels(Student(SMALL), Decoder(SMALL), EmbeddingClassifier(SMALL), SMALL)
    for m in (models.student, models.decoder, models.classifier):
        m.eval()
    return models


def test_fuse_latents_takes_tail_and_head_embeddings_where_the_mask_says():
    """A mask all tail decodes the tail's embedding, all head the head's; chunking does not change the result."""
    models = small_models()
    z = torch.randn(5, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    maps = torch.full((5, 4, 4), 0.9)  # tail > 0.5 and head < 0.95 everywhere: every position is ambiguous
    pairs = pd.DataFrame(
        {
            "tail_index": [0, 1, 2],
            "head_index": [3, 4, 3],
            "tau_h": 0.5,
            "tau_l": 0.95,
            "p_head": [0.0, 1.0, 0.0],
            "seed": [1, 2, 3],
        }
    )
    fused, shares = fuse.fuse_latents(models, z, maps, pairs, batch_size=2)
    with torch.no_grad():
        expected = models.decoder(models.student(z[[0, 4, 2]]))
    torch.testing.assert_close(fused, expected, atol=1e-5, rtol=1e-5)
    assert shares == [1.0, 0.0, 1.0]
    one_batch, _ = fuse.fuse_latents(models, z, maps, pairs, batch_size=3)
    torch.testing.assert_close(fused, one_batch, atol=1e-5, rtol=1e-5)


def test_fuse_latents_reads_maps_and_latents_at_global_positions():
    """Masks come from the maps of each row's own tail and head samples (global positions), not of the row's
    place in the plan: reading them by row would flip every row here."""
    models = small_models()
    z = torch.randn(6, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    maps = torch.tensor([0.1, 0.9, 0.1, 0.9, 0.9, 0.0])[:, None, None].repeat(1, 4, 4)
    maps[5, :, :2] = 0.9  # sample 5: salient on its left half only
    pairs = pd.DataFrame(
        {
            # tail 3 salient, head 4 not background -> tail; tail 2 not salient, head 0 background -> head;
            # tail 1 salient, head 3 not background -> tail; tail 5 salient on the left, ambiguous on the right
            "tail_index": [3, 2, 1, 5],
            "head_index": [4, 0, 3, 4],
            "tau_h": 0.5,
            "tau_l": 0.5,
            "p_head": [1.0, 0.0, 1.0, 1.0],  # ambiguous positions: head in rows 0, 2, 3, tail in row 1
            "seed": [1, 2, 3, 4],
        }
    )
    fused, shares = fuse.fuse_latents(models, z, maps, pairs, batch_size=4)
    left = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    left[..., :2] = True
    with torch.no_grad():
        mixed = torch.where(left, models.student(z[5:6]), models.student(z[4:5]))
        expected = torch.cat([models.decoder(models.student(z[[3, 0, 1]])), models.decoder(mixed)])
    torch.testing.assert_close(fused, expected, atol=1e-5, rtol=1e-5)
    assert shares == [1.0, 0.0, 1.0, 0.5]


# ---------------------------------------------------------------- cams


def test_signed_projection_does_not_depend_on_the_sign_of_the_component():
    """An SVD returning the flipped component (u, vt negated) gives the same maps."""

    def flipped(a, full_matrices=False):
        u, s, vt = np.linalg.svd(a, full_matrices=full_matrices)
        return -u, s, -vt

    acts = np.random.default_rng(0).normal(size=(3, 6, 5, 5))
    plain = cams.signed_projection(acts)
    np.testing.assert_allclose(plain, cams.signed_projection(acts, svd=flipped), atol=1e-6)
    assert plain.shape == (3, 5, 5) and plain.dtype == np.float32
    # zero correlation with the channel mean: the largest-magnitude entry is made positive either way
    m = np.zeros((4, 4))
    m[1, 2] = 3.0
    m[0, 0] = 1.0
    balanced = np.stack([m, -m])[None]  # channel mean 0 everywhere
    for svd in (np.linalg.svd, flipped):
        out = cams.signed_projection(balanced, svd=svd)[0]
        assert out[1, 2] == out.max() > 0


def test_signed_projection_is_positive_where_the_channel_mean_is_high():
    """Activations high over a region (every channel) project positively there and negatively elsewhere."""
    region = np.zeros((6, 6))
    region[:3, 1:4] = 1.0
    acts = np.array([1.0, 2.0, 0.5, 3.0])[:, None, None] * region
    acts = acts + 0.01 * np.random.default_rng(1).normal(size=acts.shape)
    for sign in (1, -1):

        def svd(a, full_matrices=False, sign=sign):
            u, s, vt = np.linalg.svd(a, full_matrices=full_matrices)
            return sign * u, s, sign * vt

        proj = cams.signed_projection(acts[None], svd=svd)[0]
        assert (proj[region == 1] > 0).all() and (proj[region == 0] < 0).all()


def test_cam_maps_are_per_sample_maps_in_unit_interval():
    """cam_maps gives (N, H, W) float maps scaled to [0, 1] (min 0, max 1 per map)."""
    models = small_models()
    emb = simplicial(torch.randn(3, 16, 6, 6, generator=torch.Generator().manual_seed(0)), 4, 0.5)
    maps = cams.cam_maps(models.classifier, emb, ["features.2", "features.8"], [0, 1, 0])
    assert maps.shape == (3, 6, 6) and maps.dtype == torch.float32
    flat = maps.flatten(1)
    torch.testing.assert_close(flat.min(1).values, torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(flat.max(1).values, torch.ones(3), atol=1e-5, rtol=0)
    # EigenCAM ignores the targets
    torch.testing.assert_close(maps, cams.cam_maps(models.classifier, emb, ["features.2", "features.8"], [1, 1, 1]))
    # per sample: a map does not depend on the batch
    alone = cams.cam_maps(models.classifier, emb[1:2], ["features.2", "features.8"], [1])
    torch.testing.assert_close(alone, maps[1:2], atol=1e-5, rtol=0)


def test_resolve_layers():
    """Known layer names resolve to the submodules; an unknown one or none raises naming fusion.cams.layers."""
    classifier = small_models().classifier
    assert cams.resolve_layers(classifier, ["features.5"]) == [classifier.features[5]]
    with pytest.raises(TailsynthError, match="fusion.cams.layers names unknown layers"):
        cams.resolve_layers(classifier, ["features.5", "features.99"])
    with pytest.raises(TailsynthError, match="fusion.cams.layers"):
        cams.resolve_layers(classifier, [])


# ---------------------------------------------------------------- embedding


def test_simplicial_softmax_per_group_known_answer():
    """Each group of channels is a probability vector: softmax(logits / tau) within the group."""
    tau = 0.5
    logits = torch.zeros(1, 8, 1, 1)
    logits[0, 1] = tau * math.log(3)  # first group: weights 1, 3, 1, 1
    s = simplicial(logits, 4, tau)[0, :, 0, 0]
    torch.testing.assert_close(s, torch.tensor([1 / 6, 1 / 2, 1 / 6, 1 / 6, 0.25, 0.25, 0.25, 0.25]))
    r = simplicial(torch.randn(2, 12, 3, 3), 4, 0.7)
    torch.testing.assert_close(r.view(2, 3, 4, 3, 3).sum(2), torch.ones(2, 3, 3, 3))
    assert sparsity(simplicial(logits, 4, tau), 4) == pytest.approx((0.5 + 0.25) / 2)


def test_sparsity_of_one_hot_and_uniform():
    """One-hot simplices have sparsity 1, uniform ones 1 / group."""
    one_hot = torch.zeros(2, 16, 3, 3)
    one_hot[:, ::4] = 1.0
    assert sparsity(one_hot, 4) == pytest.approx(1.0)
    assert sparsity(torch.full((2, 16, 3, 3), 1 / 8), 8) == pytest.approx(1 / 8)


def test_tanh_capped_sparsity():
    """With logits in [-1, 1] a 64-way simplex peaks at e / (e + 63 / e) ≈ 0.105 (the reference's cap)."""
    assert tanh_capped_sparsity(64) == pytest.approx(math.e / (math.e + 63 / math.e))
    assert tanh_capped_sparsity(64) == pytest.approx(0.10497, abs=1e-5)
    best = torch.softmax(torch.tensor([1.0] + [-1.0] * 63, dtype=torch.float64), 0)[0]
    assert tanh_capped_sparsity(64) == pytest.approx(float(best))
    # at temperature tau the bounded logits are ±1/tau: the softmax of the extreme logits
    for group, tau in ((8, 1.0), (8, 0.2), (64, 0.5)):
        extreme = torch.tensor([1.0] + [-1.0] * (group - 1), dtype=torch.float64) / tau
        assert tanh_capped_sparsity(group, tau) == pytest.approx(float(torch.softmax(extreme, 0)[0]))
    assert tanh_capped_sparsity(8, 0.2) == pytest.approx(0.99968, abs=1e-5)


@pytest.mark.parametrize(
    ("kw", "param"),
    [
        ({"channels": 10, "group": 4}, "fusion.se.group"),
        ({"group": 1}, "fusion.se.group"),
        ({"tau": 0}, "fusion.se.tau"),
    ],
)
def test_embedding_config_is_checked(kw, param):
    """A group that does not divide the channels (or < 2) or a tau <= 0 raises naming the param."""
    with pytest.raises(TailsynthError, match=param):
        EmbeddingConfig(latent_channels=4, num_classes=2, **kw)


@pytest.mark.parametrize(
    ("kw", "param"),
    [
        ({"channels": "64"}, "fusion.se.channels"),
        ({"group": 8.0}, "fusion.se.group"),
        ({"hidden": None}, "fusion.se.hidden"),
        ({"tau": "0.2"}, "fusion.se.tau"),
        ({"tau": True}, "fusion.se.tau"),
    ],
)
def test_embedding_config_refuses_values_of_the_wrong_type(kw, param):
    """A string, float or bool where a whole number or a number belongs is a TailsynthError naming the param
    (not a TypeError from the modulo or the comparison)."""
    with pytest.raises(TailsynthError, match=param):
        EmbeddingConfig(latent_channels=4, num_classes=2, **kw)


@pytest.mark.parametrize(
    ("kw", "param"),
    [
        ({"generations": 2.5}, "fusion.il.generations"),
        ({"imitation_steps": "100"}, "fusion.il.imitation_steps"),
        ({"seed": 0.5}, "fusion.il.seed"),
        ({"lr": "1e-3"}, "fusion.il.lr"),
        ({"lr_cls": 0}, "fusion.il.lr_cls"),
        ({"weight_decay": -0.1}, "fusion.il.weight_decay"),
        ({"cls_weight": None}, "fusion.il.cls_weight"),
    ],
)
def test_il_config_refuses_values_of_the_wrong_type_or_sign(kw, param):
    with pytest.raises(TailsynthError, match=param):
        ILConfig(**kw)


def test_reinitialised_student_is_drawn_on_the_cpu_and_leaves_the_global_rng_alone():
    """_init gives the values a CPU reset under the seed gives, whatever the module's current values,
    and does not advance the global random state (a CUDA module draws the same values)."""
    from tailsynth.methods.fusion.embedding import Student, _init

    config = EmbeddingConfig(latent_channels=4, num_classes=2)
    reference = Student(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        for m in reference.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    student = Student(config)
    state = torch.get_rng_state()
    _init(student, 123)
    assert torch.equal(torch.get_rng_state(), state)
    for (name, a), b in zip(student.state_dict().items(), reference.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("name", ["generations", "interaction_steps", "batch_size"])
def test_il_config_is_checked(name):
    """Counts below 1 raise naming their param; imitation_steps may be 0 but not negative."""
    with pytest.raises(TailsynthError, match=f"fusion.il.{name}"):
        ILConfig(**{name: 0})
    ILConfig(imitation_steps=0)
    with pytest.raises(TailsynthError, match="fusion.il.imitation_steps"):
        ILConfig(imitation_steps=-1)


def test_class_weights_known_answers():
    """N / (n_c K), single-label from class indices and multi-label from 0/1 rows; an absent class counts 1."""
    torch.testing.assert_close(class_weights(torch.tensor([0, 0, 0, 1]), 2, False), torch.tensor([4 / 6, 2.0]))
    multi = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 0, 0]])
    torch.testing.assert_close(class_weights(multi, 3, True), torch.tensor([4 / 9, 4 / 3, 4 / 3]))


def separable_problem(n=40):
    """Latents (n, 4, 4, 4) whose class is the sign of their mean."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 2
    z = torch.randn(n, 4, 4, 4, generator=g) * 0.5 + (y.float() * 2 - 1)[:, None, None, None]
    return z, y


def test_train_iterated_is_deterministic_and_reports_each_generation():
    """The same seed gives identical S, D and C; another seed, or no imitation phase, differs; the callback runs
    once per generation."""
    z, y = separable_problem()
    il = ILConfig(generations=2, interaction_steps=4, imitation_steps=3, batch_size=16, seed=0)
    calls = []
    a = train_iterated(z, y, SMALL, il, callback=lambda g, m: calls.append((g, m)))
    assert [g for g, _ in calls] == [0, 1]
    assert all(set(m) == {"recon_l1", "sparsity", "acc"} for _, m in calls)
    assert all(0.25 <= m["sparsity"] <= 1 for _, m in calls)  # 4-way simplices
    b = train_iterated(z, y, SMALL, il)
    c = train_iterated(z, y, SMALL, dataclasses.replace(il, seed=1))
    no_imitation = train_iterated(z, y, SMALL, dataclasses.replace(il, imitation_steps=0))
    for name in ("student", "decoder", "classifier"):
        sa, sb, sc, sd = (getattr(m, name).state_dict() for m in (a, b, c, no_imitation))
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
        assert not all(torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())
        # the imitation phase (a fresh student between generations) changes what generation 2 trains
        assert not all(torch.equal(sa[k], sd[k]) for k in sa if sa[k].is_floating_point())
    assert not a.student.training and not a.decoder.training and not a.classifier.training


def test_train_iterated_imitates_with_a_fresh_student_between_generations(monkeypatch):
    """Between generations (not after the last) a freshly initialised student imitates the frozen previous one."""
    from tailsynth.methods.fusion import embedding
    from tailsynth.seeding import derive_seed

    seen = []

    def spy(student, teacher, latents, il, seed):
        seen.append(({k: v.clone() for k, v in student.state_dict().items()}, teacher, seed))
        return imitate(student, teacher, latents, il, seed)  # the real one

    monkeypatch.setattr(embedding, "imitate", spy)
    z, y = separable_problem()
    train_iterated(z, y, SMALL, ILConfig(generations=3, interaction_steps=2, imitation_steps=2, batch_size=16, seed=4))
    assert [seed for _, _, seed in seen] == [derive_seed(4, "imitation", g) for g in (0, 1)]
    for g, (fresh, teacher, _) in enumerate(seen):
        torch.manual_seed(123)  # _init must not depend on the global generator
        expected = embedding._init(Student(SMALL), derive_seed(4, "student", g + 1)).state_dict()
        assert all(torch.equal(fresh[k], expected[k]) for k in expected)
        assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
        assert not all(torch.equal(fresh[k], v) for k, v in teacher.state_dict().items() if v.is_floating_point())


def test_train_iterated_learns_a_separable_problem():
    """A few dozen steps per generation classify the mean-sign problem and reconstruct better than zeros,
    also after the imitation phase has replaced the student."""
    z, y = separable_problem()
    metrics = []
    il = ILConfig(generations=2, interaction_steps=30, imitation_steps=30, batch_size=20, lr=1e-2, lr_cls=1e-2)
    train_iterated(z, y, SMALL, il, callback=lambda g, m: metrics.append(m))
    assert [m["acc"] for m in metrics] == [1.0, 1.0]
    assert all(m["recon_l1"] < 0.6 * float(z.abs().mean()) for m in metrics)  # measured: ~0.37 of ~1.05


def test_train_iterated_multilabel_reports_map():
    """Multi-label targets (N, K) train with BCE and report mAP."""
    z, y = separable_problem(20)
    targets = torch.stack([y, 1 - y, torch.ones_like(y)], 1)
    config = EmbeddingConfig(latent_channels=4, num_classes=3, channels=16, group=4, hidden=16, multilabel=True)
    seen = []
    train_iterated(
        z,
        targets,
        config,
        ILConfig(generations=1, interaction_steps=2, batch_size=8),
        callback=lambda g, m: seen.append(m),
    )
    assert len(seen) == 1 and set(seen[0]) == {"recon_l1", "sparsity", "map"}


def simplex_argmax(student, z):
    n = len(z)
    with torch.no_grad():
        return student(z).view(n, SMALL.channels // SMALL.group, SMALL.group, *z.shape[2:]).argmax(2)


def test_imitation_makes_the_student_imitate_the_teacher():
    """After imitation a fresh student's most likely code agrees with the teacher's on most simplices
    (chance: 1 / group = 0.25)."""
    torch.manual_seed(0)
    z = torch.randn(40, 4, 4, 4)
    teacher = Student(SMALL).eval().requires_grad_(False)
    with torch.no_grad():  # a confident teacher: sharper simplices
        teacher.net[-1].weight.mul_(4)
        teacher.net[-1].bias.mul_(4)
    student = Student(SMALL)
    before = float((simplex_argmax(student.eval(), z) == simplex_argmax(teacher, z)).float().mean())
    imitate(student.train(), teacher, z, ILConfig(imitation_steps=150, batch_size=20, lr=1e-2), seed=0)
    after = float((simplex_argmax(student.eval(), z) == simplex_argmax(teacher, z)).float().mean())
    assert before < 0.45
    assert after > 0.7 and after > before + 0.3  # measured: 0.84-0.87 over eight seeds


def test_save_and_load_models_round_trip(tmp_path):
    """Loaded S, D and C give the saved ones' outputs; the config and extra keys are kept."""
    models = small_models(seed=3)
    save_models(models, tmp_path / "se", extra={"layers": ["features.8"]})
    loaded = load_models(tmp_path / "se")
    assert loaded.config == SMALL
    assert json.loads((tmp_path / "se" / "config.json").read_text())["layers"] == ["features.8"]
    z = torch.randn(2, 4, 4, 4)
    with torch.no_grad():
        s = models.student(z)
        assert torch.equal(loaded.student(z), s)
        assert torch.equal(loaded.decoder(s), models.decoder(s))
        assert torch.equal(loaded.classifier(s), models.classifier(s))
    assert not loaded.student.training
    with pytest.raises(TailsynthError, match="train_il_se"):
        load_models(tmp_path / "missing")


# ---------------------------------------------------------------- latents


@pytest.fixture(scope="module")
def components():
    return gen.build_small_ldm(PROMPTS, tiny_ldm_config(), seed=0)


def images(n=4, seed=0):
    return torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_encode_images_mode_is_the_scaled_posterior_mode(components):
    """posterior mode: vae.encode(2x - 1).latent_dist.mode() * scaling_factor, float32 on the CPU."""
    vae = components["vae"].eval()
    x = images()
    got = latents.encode_images(vae, x, posterior="mode")
    with torch.no_grad():
        expected = vae.encode(x * 2 - 1).latent_dist.mode() * vae.config.scaling_factor
    assert got.dtype == torch.float32 and got.shape == (4, 4, 8, 8)
    torch.testing.assert_close(got, expected)


def test_encode_images_sample_does_not_depend_on_the_batch(components):
    """posterior sample: a latent is the same encoded in a batch of four or alone with its seed."""
    vae = components["vae"].eval()
    x, seeds = images(), [latents.image_seed(0, f"images/{i}.png") for i in range(4)]
    together = latents.encode_images(vae, x, posterior="sample", seeds=seeds)
    alone = torch.cat(
        [latents.encode_images(vae, x[i : i + 1], posterior="sample", seeds=[seeds[i]]) for i in range(4)]
    )
    torch.testing.assert_close(together, alone, atol=1e-6, rtol=0)
    mode = latents.encode_images(vae, x, posterior="mode")
    assert not torch.allclose(together, mode)
    reordered = latents.encode_images(vae, x[[2, 0]], posterior="sample", seeds=[seeds[2], seeds[0]])
    torch.testing.assert_close(reordered, together[[2, 0]], atol=1e-6, rtol=0)
    other = latents.encode_images(vae, x, posterior="sample", seeds=[s + 1 for s in seeds])
    assert not torch.allclose(together, other)


def test_encode_images_refuses_bad_posterior_and_missing_seeds(components):
    """An unknown posterior raises naming fusion.encode.posterior; sample needs one seed per image."""
    vae = components["vae"].eval()
    with pytest.raises(TailsynthError, match="fusion.encode.posterior"):
        latents.encode_images(vae, images(), posterior="mean")
    with pytest.raises(ValueError, match="one seed per image"):
        latents.encode_images(vae, images(), posterior="sample", seeds=[1, 2])


def test_write_latents_shards_resumes_and_removes_stale_shards(tmp_path):
    """Shards of shard_size rows; index.csv lists shard and offset; a re-run skips existing shards; a changed
    image re-encodes only its shard and the stale one is removed; load_latents gives index order."""
    rows = pd.DataFrame({"image": [f"images/{i}.png" for i in range(5)], "sha": [f"s{i}" for i in range(5)]})
    calls = []

    def encode(part):
        calls.append(list(part["image"]))
        ids = torch.tensor([float(p.split("/")[1].split(".")[0]) for p in part["image"]])
        return ids[:, None, None, None] + torch.zeros(len(part), 4, 2, 2)

    folder = tmp_path / "latents"
    seen = []
    index = latents.write_latents(rows, folder, encode, identity="vae-1", shard_size=2, progress=seen.append)
    assert calls == [["images/0.png", "images/1.png"], ["images/2.png", "images/3.png"], ["images/4.png"]]
    assert seen == [2, 2, 1]
    shards = sorted(p.name for p in folder.glob("shard-*.safetensors"))
    assert len(shards) == 3 and [s[:11] for s in shards] == ["shard-00000", "shard-00001", "shard-00002"]
    assert (folder / "index.csv").is_file()
    table = latents.read_index(folder)
    assert list(table["offset"]) == [0, 1, 0, 1, 0]
    assert list(table["shard"]) == [shards[0], shards[0], shards[1], shards[1], shards[2]]
    assert list(table["image"]) == list(rows["image"]) and list(index["shard"]) == list(table["shard"])
    loaded_rows, z = latents.load_latents(folder)
    assert list(loaded_rows["image"]) == list(rows["image"])
    assert z.shape == (5, 4, 2, 2) and z[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 4]

    calls.clear()
    latents.write_latents(rows, folder, encode, identity="vae-1", shard_size=2)
    assert calls == []
    # a given index, in any order: the rows returned say which latent is which
    picked, zp = latents.load_latents(folder, table.iloc[[4, 1, 3]])
    assert zp[:, 0, 0, 0].tolist() == [float(p.split("/")[1].split(".")[0]) for p in picked["image"]]

    changed = rows.assign(sha=["s0", "s1", "s2", "changed", "s4"])
    latents.write_latents(changed, folder, encode, identity="vae-1", shard_size=2)
    assert calls == [["images/2.png", "images/3.png"]]
    now = sorted(p.name for p in folder.glob("shard-*.safetensors"))
    assert len(now) == 3 and shards[1] not in now and now[0] == shards[0] and now[2] == shards[2]

    calls.clear()
    latents.write_latents(changed, folder, encode, identity="vae-2", shard_size=2)
    assert len(calls) == 3  # another VAE / posterior / seed: nothing is reused
    assert len(list(folder.glob("shard-*.safetensors"))) == 3


def test_write_latents_removes_a_shard_left_half_written(tmp_path):
    """A .shard-*.tmp an interrupted run left behind is removed by the next run; the finished set has none."""
    folder = tmp_path / "latents"
    folder.mkdir()
    (folder / ".shard-00000-deadbeef0000.safetensors.tmp").write_bytes(b"half")
    rows = pd.DataFrame({"image": ["a.png", "b.png"], "sha": ["x", "y"]})
    latents.write_latents(rows, folder, lambda p: torch.zeros(len(p), 4, 2, 2), identity="v", shard_size=1)
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []
    assert len(list(folder.glob("shard-*.safetensors"))) == 2


def test_encoding_identity_holds_the_seed_only_for_posterior_samples():
    """The mode does not depend on the seed (the shards are kept when it changes); samples do."""
    mode = [latents.encoding_identity("vae", "mode", seed, 32) for seed in (0, 1)]
    assert mode[0] == mode[1]
    sample = [latents.encoding_identity("vae", "sample", seed, 32) for seed in (0, 1)]
    assert sample[0] != sample[1] and mode[0] not in sample
    assert latents.encoding_identity("vae", "mode", 0, 32) != latents.encoding_identity("vae", "mode", 0, 64)
    with pytest.raises(TailsynthError, match="fusion.encode.posterior"):
        latents.encoding_identity("vae", "median", 0, 32)


def test_saved_pipeline_resolution_is_the_unets_not_the_vaes(tmp_path):
    """The encode resolution is unet.sample_size x 2^(len(vae.block_out_channels) - 1); a VAE whose own
    sample_size differs (as in SD 1.5's, 768 against the pipeline's 512) does not change it."""
    (tmp_path / "unet").mkdir()
    (tmp_path / "vae").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"sample_size": 8}))
    (tmp_path / "vae" / "config.json").write_text(json.dumps({"sample_size": 96, "block_out_channels": [8, 16, 32]}))
    assert gen.saved_pipeline_resolution(tmp_path) == 32
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"sample_size": 64}))
    (tmp_path / "vae" / "config.json").write_text(
        json.dumps({"sample_size": 768, "block_out_channels": [128, 256, 512, 512]})
    )
    assert gen.saved_pipeline_resolution(tmp_path) == 512
    with pytest.raises(TailsynthError, match="unet/config.json"):
        gen.saved_pipeline_resolution(tmp_path / "missing")


def test_saved_pipeline_resolution_matches_the_loaded_pipeline(components, tmp_path):
    """On a saved pipeline (the embedded generator's shape) it equals pipeline_resolution of the loaded one."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.save_pretrained(tmp_path / "pipe")
    assert gen.saved_pipeline_resolution(tmp_path / "pipe") == gen.pipeline_resolution(pipe)


def test_write_latents_refuses_bad_shard_size_and_empty_rows(tmp_path):
    """shard_size < 1 raises naming fusion.encode.shard_size; no rows raises; a missing index names the stage."""
    rows = pd.DataFrame({"image": ["a.png"], "sha": ["x"]})
    with pytest.raises(TailsynthError, match="fusion.encode.shard_size"):
        latents.write_latents(rows, tmp_path, lambda p: torch.zeros(1, 4, 2, 2), identity="v", shard_size=0)
    with pytest.raises(TailsynthError, match="empty"):
        latents.write_latents(rows.iloc[:0], tmp_path, lambda p: torch.zeros(0, 4, 2, 2), identity="v", shard_size=1)
    with pytest.raises(TailsynthError, match="encode_latents"):
        latents.read_index(tmp_path / "nothing")


# ---------------------------------------------------------------- refine

SD_DDIM_CONFIG = {
    "_class_name": "DDIMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "clip_sample": True,
    "set_alpha_to_one": False,
}


@pytest.mark.parametrize("config", [SD_DDIM_CONFIG, {**SD_DDIM_CONFIG, "_class_name": "DDPMScheduler"}])
def test_last_steps_scheduler_runs_the_end_of_a_75_step_schedule(config):
    """SD 1.x, schedule 75, 5 steps: timesteps 53, 40, 27, 14, 1 with DDIM's step size of a 75-step schedule."""
    scheduler = refine.last_steps_scheduler(config, 75)
    assert isinstance(scheduler, refine.LastStepsDDIMScheduler)
    assert scheduler.config.clip_sample is False
    scheduler.set_timesteps(5)
    assert scheduler.timesteps.tolist() == [53, 40, 27, 14, 1]
    assert scheduler.num_inference_steps == 75
    scheduler.set_timesteps(75)
    assert len(scheduler.timesteps) == 75 and int(scheduler.timesteps[0]) == 963


@pytest.mark.parametrize("steps", [76, 0])
def test_last_steps_scheduler_refuses_steps_outside_the_schedule(steps):
    """More steps than the schedule has (or none) raise naming fusion.refine.steps."""
    scheduler = refine.last_steps_scheduler(SD_DDIM_CONFIG, 75)
    with pytest.raises(TailsynthError, match="fusion.refine.steps"):
        scheduler.set_timesteps(steps)


@pytest.mark.parametrize("schedule", [0, 7.5, True])
def test_last_steps_scheduler_refuses_a_bad_schedule(schedule):
    """A schedule that is not a whole number >= 1 raises naming fusion.refine.schedule."""
    with pytest.raises(TailsynthError, match="fusion.refine.schedule"):
        refine.last_steps_scheduler(SD_DDIM_CONFIG, schedule)


@pytest.fixture(scope="module")
def refiner(components):
    return refine.FusionRefiner(gen.assemble_pipeline(components), schedule=10)


def fused_latents(n=3):
    return torch.randn(n, 4, 8, 8, generator=torch.Generator().manual_seed(1))


def test_refiner_without_steps_decodes(refiner):
    """steps=0: the VAE decode of latents / scaling_factor mapped from [-1, 1] to [0, 1]."""
    z = fused_latents()
    vae = refiner.pipe.vae
    got = refiner.images(z, PROMPTS[:1] * 3, steps=0, cfg=1.0)
    with torch.no_grad():
        expected = (vae.decode(z / vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    assert got.shape == (3, 1, 16, 16)
    torch.testing.assert_close(got, expected)


def test_refiner_steps_are_deterministic_and_batch_independent(refiner):
    """steps=2: images (N, C, H, W) in [0, 1], the same on a second call and for a row alone or in a batch,
    and conditioned on the prompt."""
    z = fused_latents()
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[0]]
    for cfg in (1.0, 3.0):
        out = refiner.images(z, prompts, steps=2, cfg=cfg)
        assert out.shape == (3, 1, 16, 16) and out.dtype == torch.float32
        assert out.min() >= 0 and out.max() <= 1
        torch.testing.assert_close(out, refiner.images(z, prompts, steps=2, cfg=cfg), atol=0, rtol=0)
        alone = refiner.images(z[1:2], prompts[1:2], steps=2, cfg=cfg)
        torch.testing.assert_close(alone, out[1:2], atol=1e-5, rtol=0)
    # the prompt reaches the denoiser
    assert not torch.allclose(alone, refiner.images(z[1:2], [PROMPTS[0]], steps=2, cfg=3.0), atol=1e-5)
    # the steps do something: the refined image is not the plain decode
    assert not torch.allclose(out, refiner.images(z, prompts, steps=0, cfg=1.0), atol=1e-4)
    assert refiner.pipe.scheduler.num_inference_steps == 10 and refiner.pipe.scheduler.timesteps.tolist() == [101, 1]


@pytest.mark.parametrize("steps", [-1, 1.5, True])
def test_refiner_refuses_bad_steps(refiner, steps):
    """Refinement steps that are not a whole number >= 0 raise naming fusion.refine.steps."""
    with pytest.raises(TailsynthError, match="fusion.refine.steps"):
        refiner.images(fused_latents(1), PROMPTS[:1], steps=steps, cfg=1.0)


# ---------------------------------------------------------------- multi-label fusion

ML_SETS = ["0|2", "0", "3", "1", "2", "0|3", "1", "0|1", "1", "2"]  # PLAN_LABELS with extra labels on 0, 5 and 7
ML_INDEX = pd.DataFrame({"image": PLAN_INDEX["image"], "labels": ML_SETS})


def test_plan_pairs_multilabel_tail_samples_show_the_class_and_heads_show_no_tail_class():
    """Sample 5 now also shows tail class 3: it becomes one of 3's tail samples and leaves the head set
    ({1, 3, 6, 7, 8}), so tail sample 9's nearest head is 6, not 5; tail sample 5's nearest heads, 3 and 6,
    tie at 0.2 and the first in head order (3) wins."""
    rows = fuse.plan_pairs(
        ML_INDEX,
        constant_maps(PLAN_VALUES),
        [2, 3],
        per_class=6,
        k=1,
        seed=0,
        threshold_mode="fixed",
        high=0.4,
        low=0.3,
    )
    nearest = {0: 7, 4: 1, 9: 6, 2: 8, 5: 3}
    assert set(rows[rows.target == 3]["tail_index"]) == {2, 5}
    assert set(rows[rows.target == 2]["tail_index"]) == {0, 4, 9}
    for r in rows.itertuples():
        assert r.head_index == nearest[r.tail_index]
        assert r.source_labels == ML_SETS[r.tail_index] and r.head_labels == ML_SETS[r.head_index]
        assert r.source_label == r.target and r.head_label == -1
    # single-label rows carry no label-set columns
    assert "source_labels" not in plan().columns


def test_fused_labels_known_answers_per_policy():
    pairs = pd.DataFrame({"source_labels": ["0|2", "3"], "head_labels": ["0|1", ""], "tail_share": [0.25, 0.6]})
    assert fuse.fused_labels(pairs, "tail")["labels"].tolist() == ["0|2", "3"]
    union = fuse.fused_labels(pairs, "union")
    assert union["labels"].tolist() == ["0|1|2", "3"] and "soft_labels" not in union
    soft = fuse.fused_labels(pairs, "soft")
    # label 0 is in both (the larger share, 0.75), 1 only in the head (0.75), 2 only in the tail (0.25)
    assert soft["soft_labels"].tolist() == ["0=0.75|1=0.75|2=0.25", "3=0.6"]
    assert soft["labels"].tolist() == ["0|1|2", "3"]
    assert "labels" not in pairs  # the input is left alone


def test_soft_labels_become_weighted_targets():
    from tailsynth.data.targets import rows_targets

    rows = pd.DataFrame({"labels": ["0|1|2", "3"], "soft_labels": ["0=0.75|1=0.75|2=0.25", "3=0.6"]})
    want = torch.tensor([[0.75, 0.75, 0.25, 0.0], [0.0, 0.0, 0.0, 0.6]])
    assert torch.equal(rows_targets(rows, 4), want)
    assert rows_targets(rows.drop(columns="soft_labels"), 4).tolist() == [[1, 1, 1, 0], [0, 0, 0, 1]]
    with pytest.raises(ValueError, match="outside the 4 classes"):
        rows_targets(pd.DataFrame({"soft_labels": ["4=0.5"]}), 4)
