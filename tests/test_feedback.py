"""The feedback ladder: plans (counts, pairing across methods, bad input), the unCLIP sampler's
guarantees (text-only, dropout, batch independence) and the conditioning check's design."""

import pandas as pd
import pytest
import torch
from conftest import tiny_ldm_config

from tailsynth.errors import TailsynthError
from tailsynth.methods import registry
from tailsynth.methods.feedback import LadderSettings, fill_counts, plan_feedback
from tailsynth.metrics.conditioning import conditioning_design, conditioning_distances

CLASSES = [
    {"index": 0, "name": "zero", "prompt_name": "zero", "train_count": 6, "bucket": "many"},
    {"index": 1, "name": "one", "prompt_name": "one", "train_count": 3, "bucket": "few"},
    {"index": 2, "name": "two", "prompt_name": "two", "train_count": 2, "bucket": "few"},
]
MANIFEST = pd.DataFrame(
    {
        "image": [f"images/{k}/{i}.png" for k, n in ((0, 6), (1, 3), (2, 2)) for i in range(n)] + ["images/t.png"],
        "label": [0] * 6 + [1] * 3 + [2] * 2 + [1],
        "split": ["train"] * 11 + ["test"],
    }
)
HASHES = {p: f"h{i}" for i, p in enumerate(MANIFEST["image"])}
SETTINGS = LadderSettings(noise_level=100, dropout=0.3, omega=0.05, every=2)
LADDER = registry.methods(registry.LONG_TAIL, registry.FEEDBACK)


def plan(method, counts=None, settings=SETTINGS, manifest=MANIFEST, guide="clf", hashes=HASHES):
    counts = counts or fill_counts(CLASSES, fill="same", per_class=4, buckets=["few"])
    return pd.DataFrame(
        plan_feedback(
            method,
            CLASSES,
            manifest,
            counts,
            settings,
            prompt_template="a photo of a {name}",
            steps=10,
            cfg=5.0,
            scheduler="dpm_solver",
            seed=0,
            image_hashes=hashes,
            guide=guide,
        )
    )


def test_fill_same_gives_every_bucket_class_per_class_and_balance_tops_up_to_the_largest():
    assert fill_counts(CLASSES, fill="same", per_class=4, buckets=["few"]) == {1: 4, 2: 4}
    assert fill_counts(CLASSES, fill="balance", per_class=4, buckets=["few"]) == {1: 3, 2: 4}
    rows = plan(registry.METHODS["ldm_text_image"], fill_counts(CLASSES, fill="balance", per_class=1, buckets=[]))
    real = MANIFEST[MANIFEST["split"] == "train"]["label"].value_counts()
    total = real.add(rows["target"].value_counts(), fill_value=0)
    assert total.to_dict() == {0: 6, 1: 6, 2: 6}  # real + synthetic: every class as large as the largest


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(fill="topup", per_class=4, buckets=["few"]), "feedback.fill must be one of same, balance"),
        (dict(fill="same", per_class=0, buckets=["few"]), "feedback.per_class must be >= 1"),
        (dict(fill="same", per_class=2, buckets=["medium"]), "selects no class"),
    ],
)
def test_bad_fill_params_name_the_param(kwargs, message):
    with pytest.raises(TailsynthError, match=message):
        fill_counts(CLASSES, **kwargs)


def test_ladder_rows_pair_up_across_methods_and_differ_only_in_the_methods_change():
    plans = {m.name: plan(m) for m in LADDER}
    first = plans["ldm_text"]
    for name, rows in plans.items():
        assert rows["seed"].tolist() == first["seed"].tolist(), name
        assert rows["target"].tolist() == [1] * 4 + [2] * 4
    assert (first["cond_image"] == "").all() and (first["criterion"] == "").all()
    image = plans["ldm_text_image"]
    # Row j of a class conditions on its j-th image of a seeded order, cycling: 3 images for 4 rows.
    ones = image[image["target"] == 1]["cond_image"].tolist()
    assert sorted(set(ones)) == ["images/1/0.png", "images/1/1.png", "images/1/2.png"] and ones[3] == ones[0]
    assert image["cond_hash"].tolist() == [HASHES[p] for p in image["cond_image"]]
    assert (image["noise_level"] == 100).all() and (image["dropout"] == 0).all() and (image["omega"] == 0).all()
    for name in ("ldm_text_image_dropout", "feedback_loss", "feedback_hardness"):
        assert plans[name]["cond_image"].tolist() == image["cond_image"].tolist(), name
    assert (plans["ldm_text_image_dropout"]["dropout"] == 0.3).all()
    assert (plans["ldm_text_image_dropout"]["guide"] == "").all()
    loss = plans["feedback_loss"]
    assert (loss["criterion"] == "loss").all() and (loss["omega"] == 0.05).all() and (loss["every"] == 2).all()
    assert (loss["guide"] == "clf").all() and (plans["feedback_hardness"]["criterion"] == "hardness").all()


def test_row_keys_change_with_the_guiding_classifier_and_the_conditioning_image():
    from tailsynth.synth.plan import finalize_rows

    m = registry.METHODS["feedback_entropy"]
    keys = finalize_rows(plan(m).to_dict("records"), "gen", m.key_fields)["key"]
    other_guide = finalize_rows(plan(m, guide="other").to_dict("records"), "gen", m.key_fields)["key"]
    assert not set(keys) & set(other_guide)
    edited = finalize_rows(
        plan(m, hashes=dict(HASHES, **{"images/1/0.png": "new"})).to_dict("records"), "gen", m.key_fields
    )
    moved = edited["cond_image"] == "images/1/0.png"
    assert moved.any() and (edited["key"] != keys).tolist() == moved.tolist()


def test_a_class_without_a_train_image_is_an_error_for_image_methods_only():
    no_twos = MANIFEST[MANIFEST["label"] != 2]
    with pytest.raises(TailsynthError, match="class 'two' has no train image to condition ldm_text_image"):
        plan(registry.METHODS["ldm_text_image"], manifest=no_twos)
    assert len(plan(registry.METHODS["ldm_text"], manifest=no_twos)) == 8


@pytest.mark.parametrize(
    "settings, limit, message",
    [
        (LadderSettings(dropout=1.0), None, r"feedback.dropout.p must be a number in \[0, 1\)"),
        (LadderSettings(dropout=-0.1), None, r"feedback.dropout.p"),
        (LadderSettings(noise_level=-1), None, "feedback.image.noise_level must be a whole number >= 0"),
        (LadderSettings(noise_level=1000), 1000, "feedback.image.noise_level must be below 1000"),
    ],
)
def test_bad_ladder_settings_name_the_param(settings, limit, message):
    with pytest.raises(TailsynthError, match=message):
        settings.check(limit)


# --- the sampler, on a tiny dual-conditioned model -------------------------------------------------


@pytest.fixture(scope="module")
def sampler():
    from tailsynth.models import generator as gen
    from tailsynth.models import unclip as uc
    from tailsynth.synth.unclip_sampler import UnCLIPSampler

    prompts = ["a photo of a zero", "a photo of a one"]
    base = gen.assemble_pipeline(gen.build_small_ldm(prompts, tiny_ldm_config()))
    encoder, processor = uc.build_image_encoder(16, uc.ImageEncoderConfig(hidden=16, heads=2, projection_dim=8))
    images = (torch.rand(6, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    embeds = uc.processor_embeddings(encoder, processor, images)
    unet = uc.unclip_unet(base.unet, embeds.shape[1])
    with torch.no_grad():  # a projection that is not zero, so the image changes the sample
        unet.class_embedding.linear_2.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    pipe = uc.assemble_unclip(base, encoder, processor, uc.image_normalizer(embeds), unet)
    return UnCLIPSampler(pipe, "dpm_solver"), images


def test_processor_embeddings_equal_the_encoders_own_input_path(sampler):
    from tailsynth.models import unclip as uc

    s, images = sampler
    torch.testing.assert_close(s.embed(images), uc.embed_images(s.pipe.image_encoder, images.float() / 255))


def quantised(x: torch.Tensor) -> torch.Tensor:
    return (x * 255).round().to(torch.uint8)


def test_a_row_is_byte_identical_whatever_its_batch_mates_with_and_without_guidance(sampler):
    from tailsynth.models.classifier import build_classifier
    from tailsynth.synth.guidance import FeedbackGuidance, GuidanceConfig

    s, images = sampler
    classifier = build_classifier("small_cnn", 2, 1, 16, width=4, seed=0).eval()
    prompts = ["a photo of a zero", "a photo of a one", "a photo of a zero"]

    def run(seeds, conds, guided):
        guidance = None
        if guided:
            guidance = FeedbackGuidance(classifier, torch.tensor([0, 1, 0]), GuidanceConfig("entropy", 0.1, 2))
        return s.generate(prompts, seeds, steps=4, cfg=3.0, cond_images=conds, dropout=0.3, guidance=guidance)

    outputs = {}
    for guided in (False, True):
        a = run([11, 12, 13], images[[0, 1, 2]], guided)
        b = run([11, 22, 23], images[[0, 4, 5]], guided)
        assert torch.equal(quantised(a[0]), quantised(b[0])), guided
        assert not torch.equal(quantised(a[1]), quantised(b[1]))
        outputs[guided] = a
    assert not torch.equal(outputs[False], outputs[True])  # the guidance reached the pipeline ...
    guidance = FeedbackGuidance(classifier, torch.tensor([0, 1, 0]), GuidanceConfig("entropy", 0.1, 2))
    s.generate(prompts, [1, 2, 3], steps=4, cfg=3.0, cond_images=images[:3], guidance=guidance)
    assert len(guidance.guided_steps) == 1  # ... after step 2 of 4 (never after the last)


def test_the_clean_latent_is_recovered_for_epsilon_and_v_prediction():
    from tailsynth.synth.guidance import predicted_clean_latent

    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    alpha = torch.tensor(0.3)
    z = alpha.sqrt() * x0 + (1 - alpha).sqrt() * eps
    v = alpha.sqrt() * eps - (1 - alpha).sqrt() * x0
    torch.testing.assert_close(predicted_clean_latent(z, eps, alpha, "epsilon"), x0)
    torch.testing.assert_close(predicted_clean_latent(z, v, alpha, "v_prediction"), x0)
    assert predicted_clean_latent(z, x0, alpha, "sample") is x0
    with pytest.raises(TailsynthError, match="prediction_type 'flow'"):
        predicted_clean_latent(z, eps, alpha, "flow")


def test_the_image_dropout_and_the_noise_level_change_the_sample_and_text_only_feeds_zero_images(sampler):
    s, images = sampler
    prompts, seeds = ["a photo of a zero"] * 2, [5, 6]

    def gen(**kw):
        return s.generate(prompts, seeds, steps=4, cfg=3.0, **kw)

    plain = gen(cond_images=images[:2])
    assert not torch.equal(plain, gen(cond_images=images[2:4]))  # the image is used
    assert not torch.equal(plain, gen(cond_images=images[:2], dropout=0.5))
    assert not torch.equal(plain, gen(cond_images=images[:2], noise_level=500))
    assert torch.equal(plain, gen(cond_images=images[:2], dropout=0.0))
    seen = []
    # What reaches the UNet's image-embedding input (after every pre-hook on the UNet).
    handle = s.pipe.unet.class_embedding.register_forward_pre_hook(lambda m, a: seen.append(a[0].clone()))
    try:
        text_only = gen()
    finally:
        handle.remove()
    assert seen and all(not c.any() for c in seen)  # every UNet call: the all-zero (dropped) image condition
    assert text_only.shape == plain.shape and not torch.equal(text_only, plain)


def test_dropout_masks_come_from_the_rows_seed_at_the_rate():
    from tailsynth.synth.unclip_sampler import embedding_dropout_mask

    m = embedding_dropout_mask(3, 10_000, 0.3)
    assert torch.equal(m, embedding_dropout_mask(3, 10_000, 0.3))
    assert not torch.equal(m, embedding_dropout_mask(4, 10_000, 0.3))
    assert set(m.unique().tolist()) == {0.0, 1.0} and abs(float(1 - m.mean()) - 0.3) < 0.02
    assert torch.equal(embedding_dropout_mask(3, 5, 0.0), torch.ones(5))


# --- the conditioning check --------------------------------------------------------------------------


def test_conditioning_design_swaps_every_pair_with_shared_seeds():
    labels = torch.tensor([0, 0, 0, 0, 0, 1, 1, 2])
    d = conditioning_design(labels, pairs=2, seeds=3, seed=0)
    # class 0: 2 pairs, class 1: 1 pair, class 2: one image, no pair; 3 seeds x 2 directions each.
    assert len(d.cond) == (2 + 1) * 3 * 2
    for i in range(0, len(d.cond), 2):
        assert (d.cond[i], d.other[i]) == (d.other[i + 1], d.cond[i + 1])
        assert d.seeds[i] == d.seeds[i + 1] and labels[d.cond[i]] == labels[d.other[i]] == d.labels[i]
    assert len(set(d.seeds)) == 9
    assert d == conditioning_design(labels, pairs=2, seeds=3, seed=0)


def test_conditioning_distances_known_answers():
    real = torch.tensor([[0.0, 0.0], [4.0, 0.0]])
    cond, other = real[[0, 1]], real[[1, 0]]
    copies = conditioning_distances(cond.clone(), cond, other)  # samples that copy their image
    assert copies == {"d_cond": 0.0, "d_other": 4.0, "gap": 4.0, "closer": 1.0, "n": 2}
    ignoring = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # the same sample whichever image conditions it
    out = conditioning_distances(ignoring, cond, other)
    assert out["gap"] == 0.0 and out["closer"] == 0.5
    middle = torch.tensor([[2.0, 0.0], [2.0, 0.0]])
    assert conditioning_distances(middle, cond, other)["closer"] == 0.5  # ties count half
