"""The dual-conditioned generator built from a text-to-image one (tiny shapes, seconds)."""

import pytest
import torch
from conftest import tiny_ldm_config
from diffusers import StableUnCLIPImg2ImgPipeline

from tailsynth.models import generator as gen
from tailsynth.models import unclip as uc

PROMPTS = ["a photo of a zero", "a photo of a one"]


@pytest.fixture(scope="module")
def built():
    base = gen.assemble_pipeline(gen.build_small_ldm(PROMPTS, tiny_ldm_config()))
    g = torch.Generator().manual_seed(0)
    images = torch.rand(8, 1, 16, 16, generator=g)
    labels = torch.tensor([0, 1] * 4)
    encoder, processor = uc.build_image_encoder(16, uc.ImageEncoderConfig(hidden=16, heads=2, projection_dim=8))
    with torch.no_grad():
        class_text = base.text_encoder(gen._token_ids(base.tokenizer, PROMPTS)).pooler_output
    uc.train_image_encoder(encoder, images, labels, class_text, steps=3, batch_size=4)
    embeds = uc.embed_images(encoder, images)
    pipe = uc.assemble_unclip(
        base, encoder, processor, uc.image_normalizer(embeds), uc.unclip_unet(base.unet, embeds.shape[1])
    )
    return base, pipe, images, labels, embeds


def test_the_zero_initialised_unet_is_exactly_the_text_to_image_unet(built):
    base, pipe, _, _, embeds = built
    z = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    text = torch.randn(2, 8, 16, generator=torch.Generator().manual_seed(2))
    cond = pipe.noise_image_embeddings(embeds[:2], 100, generator=torch.Generator().manual_seed(3))
    assert cond.shape == (2, 2 * embeds.shape[1])  # noised embedding + noise-level embedding
    with torch.no_grad():
        a = base.unet(z, 10, encoder_hidden_states=text).sample
        b = pipe.unet(z, 10, encoder_hidden_states=text, class_labels=cond).sample
    assert torch.equal(a, b)


def test_normaliser_holds_the_embedding_statistics(built):
    _, pipe, _, _, embeds = built
    torch.testing.assert_close(pipe.image_normalizer.mean, embeds.mean(0, keepdim=True))
    torch.testing.assert_close(pipe.image_normalizer.std, embeds.std(0, keepdim=True))


def test_augmented_views_shift_and_scale_per_image():
    x = torch.full((2, 3, 6, 6), -1.0)
    x[:, :, 2:4, 2:4] = 1.0
    g = torch.Generator().manual_seed(0)
    a, b = uc._augment(x, g), uc._augment(x, g)
    assert a.shape == x.shape and a.min() >= -1 and a.max() <= 1
    assert not torch.equal(a, b)
    # The background stays black; the bright square keeps its 4 pixels per channel, moved and rescaled.
    assert ((a > -1).sum(dim=(1, 2, 3)) <= 12).all()


def test_finetune_moves_the_image_input_and_the_folder_round_trips(built, tmp_path):
    base, pipe, images, labels, embeds = built
    before = pipe.unet.class_embedding.linear_2.weight.clone()
    mean, std = gen.encode_latents(base.vae, images)
    result = uc.finetune_unclip(pipe, mean, std, [PROMPTS[int(y)] for y in labels], embeds, steps=3, batch_size=4)
    assert result.steps == 3 and result.loss == result.loss  # finite
    assert not torch.equal(pipe.unet.class_embedding.linear_2.weight, before)
    pipe.save_pretrained(tmp_path / "unclip", safe_serialization=True)
    loaded = StableUnCLIPImg2ImgPipeline.from_pretrained(tmp_path / "unclip", use_safetensors=True)
    loaded.set_progress_bar_config(disable=True)
    kw = dict(prompt=PROMPTS, image_embeds=embeds[:2], num_inference_steps=2, guidance_scale=3.0, output_type="pt")
    pipe.set_progress_bar_config(disable=True)
    out_a = pipe(generator=[torch.Generator().manual_seed(s) for s in (1, 2)], height=16, width=16, **kw).images
    out_b = loaded(generator=[torch.Generator().manual_seed(s) for s in (1, 2)], height=16, width=16, **kw).images
    assert out_a.shape == (2, 1, 16, 16)
    torch.testing.assert_close(out_a, out_b)
    # The image matters once fine-tuned: another embedding, same prompt and seeds, another sample.
    kw["image_embeds"] = embeds[[2, 3]]
    out_c = pipe(generator=[torch.Generator().manual_seed(s) for s in (1, 2)], height=16, width=16, **kw).images
    assert not torch.equal(out_a, out_c)


def test_finetune_draws_timesteps_from_min_timestep_up(built):
    base, pipe, images, labels, embeds = built
    mean, std = gen.encode_latents(base.vae, images)
    prompts = [PROMPTS[int(y)] for y in labels]
    seen = []
    handle = pipe.unet.register_forward_pre_hook(lambda m, a, kw: seen.append(a[1].clone()), with_kwargs=True)
    try:
        uc.finetune_unclip(pipe, mean, std, prompts, embeds, steps=4, batch_size=8, min_timestep=990)
    finally:
        handle.remove()
    t = torch.cat(seen)
    assert len(t) == 32 and t.min() >= 990 and t.max() <= 999
    with pytest.raises(uc.TailsynthError, match=r"generator_unclip.unet.min_timestep must be in \[0, 1000\)"):
        uc.finetune_unclip(pipe, mean, std, prompts, embeds, steps=1, batch_size=8, min_timestep=1000)


def test_condition_drops_split_the_unit_interval():
    u = torch.tensor([0.05, 0.15, 0.25, 0.35, 0.95])
    no_text, no_image = uc.condition_drops(u, both=0.1, image=0.1, text=0.1)
    assert no_text.tolist() == [True, True, False, False, False]
    assert no_image.tolist() == [True, False, True, False, False]


def test_feedback_guidance_steers_the_unclip_pipeline_through_its_legacy_callback(built):
    # The unCLIP pipeline only has the older `callback`; the guidance's extra UNet pass must reuse the
    # image embedding (class_labels) the pipeline fed its UNet, conditional half only.
    from tailsynth.models.classifier import build_classifier
    from tailsynth.synth.guidance import FeedbackGuidance, GuidanceConfig

    _, pipe, _, _, embeds = built
    pipe.set_progress_bar_config(disable=True)
    classifier = build_classifier("small_cnn", 2, 1, 16, width=4, seed=0).eval()
    seen = []
    handle = pipe.unet.register_forward_pre_hook(lambda m, a, kw: seen.append(kw.get("class_labels")), with_kwargs=True)

    def sample(omega):
        guidance = FeedbackGuidance(classifier, torch.tensor([0, 1]), GuidanceConfig("loss", omega, 1))
        with guidance.attached(pipe):
            out = pipe(
                prompt=PROMPTS,
                image_embeds=embeds[:2],
                num_inference_steps=3,
                guidance_scale=3.0,
                generator=[torch.Generator().manual_seed(s) for s in (1, 2)],
                height=16,
                width=16,
                output_type="pt",
                callback=guidance.legacy_callback(pipe),
            ).images
        return out, guidance

    try:
        plain, g0 = sample(0.0)
        seen.clear()
        guided, g1 = sample(0.3)
    finally:
        handle.remove()
    assert g0.guided_steps == [] and len(g1.guided_steps) == 2  # after steps 1 and 2 of 3
    assert not torch.equal(plain, guided)
    # Pipeline calls carry (uncond, cond) embeddings: 4 rows; the guidance pass gets the 2 conditional ones.
    pipeline_calls = [c for c in seen if c.shape[0] == 4]
    guidance_calls = [c for c in seen if c.shape[0] == 2]
    assert len(pipeline_calls) == 3 and len(guidance_calls) == 2
    assert torch.equal(guidance_calls[0], pipeline_calls[0][2:]) and not pipeline_calls[0][:2].any()
