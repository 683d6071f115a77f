"""Feedback criteria (loss, entropy, hardness) and the guidance callback on a tiny stock pipeline."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_ldm_config
from device_check import run_on_meta
from sklearn.covariance import ledoit_wolf as sklearn_ledoit_wolf

from tailsynth.errors import TailsynthError
from tailsynth.models import generator as gen
from tailsynth.models.classifier import build_classifier
from tailsynth.synth.criteria import ClassGaussians, criterion_values, ledoit_wolf
from tailsynth.synth.guidance import FeedbackGuidance, GuidanceConfig, classify, to_classifier_input
from tailsynth.synth.sampler import LatentDiffusionSampler


@pytest.mark.parametrize(("n", "d"), [(4, 64), (3, 5), (50, 8), (300, 16)])
def test_ledoit_wolf_matches_scikit_learn(n, d):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(n)) * torch.linspace(0.5, 2, d)
    cov, shrink = ledoit_wolf(x)
    expected_cov, expected_shrink = sklearn_ledoit_wolf(x.double().numpy())
    assert shrink == pytest.approx(expected_shrink, abs=1e-12)
    np.testing.assert_allclose(cov.numpy(), expected_cov, atol=1e-12)


def test_class_gaussians_invert_a_four_image_class_and_pool_where_still_singular():
    g = torch.Generator().manual_seed(0)
    d = 64
    features = torch.cat([torch.randn(40, d, generator=g), torch.randn(4, d, generator=g) + 3, torch.randn(2, d)])
    labels = torch.tensor([0] * 40 + [1] * 4 + [2] * 2)
    gauss = ClassGaussians.fit(features, labels, 3)
    assert gauss.counts.tolist() == [40, 4, 2]
    assert torch.isfinite(gauss.precisions).all()
    assert (torch.linalg.eigvalsh(gauss.precisions) > 0).all()  # positive definite, the 4-image class too
    assert 0 < gauss.shrinkage[1] <= 1
    # Two images: Ledoit-Wolf gives weight 0 (a rank-1 covariance), so the class takes the pooled one.
    pooled, _ = ledoit_wolf(features.double() - gauss.means[labels])
    ridge = 1e-6 * float(torch.trace(pooled)) / d
    torch.testing.assert_close(
        gauss.precisions[2], torch.linalg.inv(pooled + ridge * torch.eye(d, dtype=torch.float64))
    )
    # Known answers: distance 0 at a class mean; with precision 2I, twice the squared distance.
    assert gauss.mahalanobis(gauss.means[[1]], torch.tensor([1]))[0] == pytest.approx(0, abs=1e-9)
    fixed = ClassGaussians(torch.zeros(2, 3), 2 * torch.eye(3).expand(2, 3, 3), torch.zeros(2), torch.ones(2))
    x = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    assert fixed.mahalanobis(x, torch.tensor([0, 1])).tolist() == [10.0, 18.0]


def test_class_gaussians_refuse_a_class_without_images():
    with pytest.raises(TailsynthError, match=r"none of class \[1\]"):
        ClassGaussians.fit(torch.randn(5, 3), torch.zeros(5, dtype=torch.int64), 2)


def test_criteria_known_answers():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [10.0, -10.0, -10.0, -10.0]])
    targets = torch.tensor([2, 0])
    loss = criterion_values("loss", logits, torch.zeros(2, 3), targets)
    assert loss[0] == pytest.approx(math.log(4)) and loss[1] == pytest.approx(F.cross_entropy(logits[1:], targets[1:]))
    entropy = criterion_values("entropy", logits, torch.zeros(2, 3), targets)
    assert entropy[0] == pytest.approx(math.log(4)) and entropy[1] < 1e-6
    with pytest.raises(TailsynthError, match="needs class Gaussians"):
        criterion_values("hardness", logits, torch.zeros(2, 3), targets)
    with pytest.raises(TailsynthError, match="unknown feedback criterion 'margin'"):
        criterion_values("margin", logits, torch.zeros(2, 3), targets)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (GuidanceConfig("margin", 0.1, 1), "feedback.criterion must be one of loss, entropy, hardness"),
        (GuidanceConfig("loss", -0.1, 1), "feedback.omega must be a number >= 0"),
        (GuidanceConfig("loss", 0.1, 0), "feedback.every must be an integer >= 1"),
    ],
)
def test_bad_guidance_params_name_the_param(config, message):
    with pytest.raises(TailsynthError, match=message):
        config.check()


@pytest.fixture(scope="module")
def tiny():
    """An untrained tiny text-to-image pipeline, its sampler and a small classifier on its images."""
    pipe = gen.assemble_pipeline(gen.build_small_ldm(["a photo of a zero", "a photo of a one"], tiny_ldm_config()))
    sampler = LatentDiffusionSampler(pipe, "ddim")
    classifier = build_classifier("small_cnn", 2, 1, 16, width=4, seed=0).eval()
    return sampler, classifier


def predicted_clean_criterion(pipe, guidance, latents, t):
    """F(D(ẑ₀(z_t))) per image, as the guidance step computes it (for checking the step's effect)."""
    cond = guidance._conditional_kwargs(latents.shape[0])
    with torch.no_grad():
        eps = pipe.unet(latents, t, **cond, return_dict=False)[0]
        alpha = pipe.scheduler.alphas_cumprod[int(t)]
        z0 = (latents - (1 - alpha).sqrt() * eps) / alpha.sqrt()
        return guidance.values(pipe.vae.decode(z0 / pipe.vae.config.scaling_factor, return_dict=False)[0])


@pytest.mark.parametrize("criterion", ["loss", "entropy", "hardness"])
def test_a_guidance_step_raises_the_criterion_by_a_step_of_omega_relative_to_the_latent(tiny, criterion):
    sampler, classifier = tiny
    pipe = sampler.txt2img
    targets = torch.tensor([0, 1, 1])
    gaussians = None
    if criterion == "hardness":
        real = torch.rand(12, 1, 16, 16, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            gaussians = ClassGaussians.fit(classifier.features(real), torch.tensor([0, 1] * 6), 2)
    guidance = FeedbackGuidance(classifier, targets, GuidanceConfig(criterion, 0.02, 1), gaussians)
    pipe.scheduler.set_timesteps(10)
    t = pipe.scheduler.timesteps[3]
    latents = torch.randn(3, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    with guidance.attached(pipe):
        with torch.no_grad():  # a pipeline call records the conditioning the step reuses
            prompts = pipe.encode_prompt(["a photo of a zero", "a photo of a one", "a photo of a one"], "cpu", 1, False)
            pipe.unet(latents, t, encoder_hidden_states=prompts[0])
        before = predicted_clean_criterion(pipe, guidance, latents, t)
        moved = guidance.step(pipe, latents, t)
        after = predicted_clean_criterion(pipe, guidance, moved, t)
    step_norm = (moved - latents).flatten(1).norm(dim=1)
    torch.testing.assert_close(step_norm, 0.02 * latents.flatten(1).norm(dim=1))
    assert (after > before).all(), (before, after)  # an ascent step, image by image


def test_guided_sampling_moves_only_the_scheduled_steps_and_each_image_alone(tiny):
    sampler, classifier = tiny
    pipe = sampler.txt2img
    prompts = ["a photo of a zero", "a photo of a one"]

    def sample(omega, n=2, every=2):
        guidance = FeedbackGuidance(classifier, torch.tensor([0, 1][:n]), GuidanceConfig("loss", omega, every))
        gens = [torch.Generator().manual_seed(s) for s in (5, 6)[:n]]
        with guidance.attached(pipe):
            out = pipe(
                prompt=prompts[:n],
                num_inference_steps=6,
                guidance_scale=3.0,
                generator=gens,
                height=16,
                width=16,
                output_type="pt",
                callback_on_step_end=guidance,
            ).images
        return out, guidance

    plain = pipe(
        prompt=prompts,
        num_inference_steps=6,
        guidance_scale=3.0,
        generator=[torch.Generator().manual_seed(s) for s in (5, 6)],
        height=16,
        width=16,
        output_type="pt",
    ).images
    unguided, g0 = sample(0.0)
    assert torch.equal(unguided, plain) and g0.guided_steps == []  # omega 0 is plain sampling, bit for bit
    guided, g1 = sample(0.5)
    timesteps = pipe.scheduler.timesteps.tolist()
    assert g1.guided_steps == [timesteps[2], timesteps[4]]  # after steps 2 and 4 of 6, never after the last
    assert (guided - plain).abs().amax(dim=(1, 2, 3)).min() > 1e-3
    alone, _ = sample(0.5, n=1)
    torch.testing.assert_close(alone[0], guided[0], atol=1e-4, rtol=0)  # batch mates do not steer an image


def test_legacy_callback_moves_latents_in_place(tiny):
    sampler, classifier = tiny
    pipe = sampler.txt2img
    guidance = FeedbackGuidance(classifier, torch.tensor([1]), GuidanceConfig("entropy", 0.1, 1))
    pipe.scheduler.set_timesteps(4)
    latents = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(3))
    before = latents.clone()
    with guidance.attached(pipe):
        with torch.no_grad():
            pipe.unet(
                latents,
                pipe.scheduler.timesteps[0],
                encoder_hidden_states=pipe.encode_prompt(["a photo of a one"], "cpu", 1, False)[0],
            )
            guidance.legacy_callback(pipe)(0, pipe.scheduler.timesteps[0], latents)
    assert not torch.equal(latents, before)
    with pytest.raises(TailsynthError, match="not attached"):
        guidance.step(pipe, latents, pipe.scheduler.timesteps[1])


def test_classifier_input_matches_the_classifiers_forward_and_shape(tiny):
    _, classifier = tiny
    decoded = torch.rand(2, 3, 32, 32) * 2 - 1
    x = to_classifier_input(decoded, classifier)
    assert x.shape == (2, 1, 16, 16)
    logits, features = classify(classifier, x)
    with torch.no_grad():
        torch.testing.assert_close(logits, classifier(x))
    assert features.shape == (2, classifier.feature_dim)


def test_hardness_without_gaussians_is_refused(tiny):
    _, classifier = tiny
    with pytest.raises(TailsynthError, match="needs class Gaussians"):
        FeedbackGuidance(classifier, torch.tensor([0]), GuidanceConfig("hardness", 0.1, 1))


def test_guidance_keeps_every_module_input_on_the_model_device(tiny):
    sampler, classifier = tiny
    pipe = gen.assemble_pipeline(gen.build_small_ldm(["a photo of a zero"], tiny_ldm_config()))
    pipe.scheduler = sampler.txt2img.scheduler
    meta_classifier = build_classifier("small_cnn", 2, 1, 16, width=4, seed=0).eval().to("meta")
    pipe.unet.to("meta")
    pipe.vae.to("meta")
    guidance = FeedbackGuidance(meta_classifier, torch.tensor([0]), GuidanceConfig("loss", 0.1, 1))
    pipe.scheduler.set_timesteps(4)
    finished = []

    def step() -> None:
        latents = torch.zeros(1, 4, 4, 4, device="meta")
        with guidance.attached(pipe):
            pipe.unet(latents, pipe.scheduler.timesteps[0], encoder_hidden_states=torch.zeros(1, 8, 16, device="meta"))
            guidance.step(pipe, latents, pipe.scheduler.timesteps[1])
        finished.append(True)

    checked = run_on_meta(step)
    # LayerNorm: the UNet's attention blocks; GroupNorm: the UNet and the VAE decoder; BatchNorm2d: the classifier.
    assert {"Conv2d", "LayerNorm", "GroupNorm", "BatchNorm2d", "Linear"} <= set(checked)
    assert finished, "the guidance step stopped early on meta: a tensor met the models on another device"
