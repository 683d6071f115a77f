import pytest
import torch
from conftest import tiny_ldm_config
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline
from transformers import AutoTokenizer

from tailsynth.errors import TailsynthError
from tailsynth.models import generator as gen
from tailsynth.models.tokenizer import build_prompt_tokenizer

PROMPTS = ["a photo of a zero", "a photo of a one", "a photo of a golden retriever"]
TINY = tiny_ldm_config()


def test_tokenizer_round_trips_through_from_pretrained(tmp_path):
    tok = build_prompt_tokenizer(PROMPTS, max_length=8)
    ids = tok("a photo of a one", padding="max_length", max_length=8).input_ids
    assert ids[0] == tok.bos_token_id and ids[6] == tok.eos_token_id and ids[-1] == tok.pad_token_id
    long_ids = tok("a photo of a golden retriever").input_ids
    assert len(long_ids) == 8 and tok.unk_token_id not in long_ids
    assert len(tok) == 4 + len({"a", "photo", "of", "zero", "one", "golden", "retriever"})
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again("a photo of a one").input_ids == tok("a photo of a one").input_ids
    assert len(again) == len(tok)  # the transformers-5 trap: a 2-token vocabulary


def test_tokenizer_refuses_prompts_longer_than_max_length():
    with pytest.raises(ValueError, match="max_length"):
        build_prompt_tokenizer(["one two three four five six seven"], max_length=8)


@pytest.fixture(scope="module")
def trained_pipeline_dir(tmp_path_factory):
    torch.manual_seed(0)
    images = torch.rand(24, 1, 16, 16)
    labels = torch.arange(24) % 2
    comp = gen.build_small_ldm(PROMPTS[:2], TINY, seed=0)
    losses = []
    gen.train_vae(comp["vae"], images, steps=12, batch_size=8, lr=3e-3, callback=lambda s, v: losses.append(v))
    assert sum(losses[-3:]) < sum(losses[:3])  # reconstruction improves
    mean, std = gen.encode_latents(comp["vae"], images)
    scale = gen.set_latent_scaling(comp["vae"], mean)
    assert scale == pytest.approx(1 / mean.std().item(), rel=1e-4)
    gen.train_denoiser(comp, mean, std, [PROMPTS[y] for y in labels], steps=3, batch_size=8, warmup_steps=1)
    folder = tmp_path_factory.mktemp("gen")
    gen.assemble_pipeline(comp).save_pretrained(folder, safe_serialization=True)
    return folder


def test_saved_generator_loads_in_stock_pipelines(trained_pipeline_dir):
    assert list(trained_pipeline_dir.rglob("*.safetensors"))
    assert not list(trained_pipeline_dir.rglob("*.bin"))
    t2i = StableDiffusionPipeline.from_pretrained(trained_pipeline_dir)
    i2i = StableDiffusionImg2ImgPipeline.from_pretrained(trained_pipeline_dir)
    assert t2i.vae.config.scaling_factor != 0.18215  # our own, saved with the VAE
    assert len(t2i.tokenizer) > 4 and len(i2i.tokenizer) == len(t2i.tokenizer)
    out = t2i(PROMPTS[0], height=16, width=16, num_inference_steps=2, output_type="pt").images
    assert out.shape == (1, 1, 16, 16)
    assert gen.pipeline_resolution(t2i) == 16


def test_load_pipeline_error_names_the_model(tmp_path):
    with pytest.raises(TailsynthError, match="no/such/model"):
        gen.load_pipeline(str(tmp_path / "no/such/model"))


def test_folder_digest_sees_a_change_inside_the_weights(trained_pipeline_dir, tmp_path):
    import shutil

    from tailsynth.io import folder_digest

    copy = tmp_path / "copy"
    shutil.copytree(trained_pipeline_dir, copy)
    assert folder_digest(copy) == folder_digest(trained_pipeline_dir)
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte in the middle of a large file
    weights.write_bytes(bytes(data))
    assert folder_digest(copy) != folder_digest(trained_pipeline_dir)


def test_long_class_names_widen_the_text_encoder():
    prompts = ["a photo of a great crested grebe in the reeds", "a photo of a one"]
    comp = gen.build_small_ldm(prompts, TINY, seed=0)
    ids = comp["tokenizer"](prompts[0]).input_ids
    assert comp["tokenizer"].unk_token_id not in ids
    assert comp["text_encoder"].config.max_position_embeddings >= len(ids)


def test_image_size_must_fit_the_vae():
    with pytest.raises(TailsynthError, match="data.size must be a multiple of 2"):
        gen.build_small_ldm(PROMPTS, gen.SmallLDMConfig(image_size=15, vae_channels=(8, 16), vae_norm_groups=4), seed=0)
