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
    result = gen.train_vae(
        comp["vae"], images, steps=12, batch_size=8, lr=3e-3, log_every=3, callback=lambda s, v: losses.append(v)
    )
    assert len(losses) == 4 and losses[-1] < losses[0]  # one mean per window of 3 steps; reconstruction improves
    assert result.steps == 12 and result.loss == losses[-1]
    mean, std = gen.encode_latents(comp["vae"], images)
    scale = gen.set_latent_scaling(comp["vae"], mean)
    assert scale == pytest.approx(1 / mean.std().item(), rel=1e-4)
    seen = []
    result = gen.train_denoiser(
        comp,
        mean,
        std,
        [PROMPTS[y] for y in labels],
        steps=3,
        batch_size=8,
        warmup_steps=1,
        log_every=2,
        callback=lambda s, v: seen.append(s),
    )
    assert seen == [1, 2] and result.steps == 3 and result.loss > 0  # windows of 2 steps, the last one partial
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


def test_train_vae_stops_at_the_target_mse_or_the_step_cap():
    images = torch.rand(16, 1, 16, 16)
    comp = gen.build_small_ldm(PROMPTS[:2], TINY, seed=0)
    easy = gen.train_vae(comp["vae"], images, steps=40, batch_size=8, target_mse=10.0, log_every=3)
    assert easy.steps == 3  # the first window meets any MSE <= 10
    comp = gen.build_small_ldm(PROMPTS[:2], TINY, seed=0)
    never = gen.train_vae(comp["vae"], images, steps=5, batch_size=8, target_mse=0.0, log_every=2)
    assert never.steps == 5  # an unreachable target runs to the step cap


def test_denoiser_runs_the_text_encoder_once_per_distinct_prompt():
    comp = gen.build_small_ldm(PROMPTS[:2], TINY, seed=0)
    comp["vae"].register_to_config(scaling_factor=1.0)
    batches = []
    comp["text_encoder"].register_forward_pre_hook(lambda m, args: batches.append(len(args[0])))
    prompts = [PROMPTS[i % 2] for i in range(16)]
    gen.train_denoiser(comp, torch.randn(16, 4, 4, 4), torch.rand(16, 4, 4, 4), prompts, steps=2, batch_size=16)
    assert batches and all(n <= 3 for n in batches)  # two prompts and the empty one, not 16 rows


def test_picking_prompt_rows_has_a_backward_that_repeats_bit_for_bit_on_two_threads(two_torch_threads):
    """Fails with ``hidden[rows]``: its backward accumulates in a thread-dependent order on the CPU, and two
    cold runs of the pipeline trained different text encoders (every synthetic set and metric then drifted).
    Measured on 2 cores: 29 of 30 repeats of the indexing backward differed from the first; none of these."""
    assert torch.get_num_threads() == 2  # the race needs more than one thread
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 16, 128, generator=g)  # (distinct prompts, tokens, width)
    rows, upstream = torch.randint(0, 3, (64,), generator=g), torch.randn(64, 16, 128, generator=g)

    def grad() -> torch.Tensor:
        h = hidden.clone().requires_grad_(True)
        gen._pick_rows(h, rows).backward(upstream)
        return h.grad

    first = grad()
    assert all(torch.equal(first, grad()) for _ in range(30))


def test_denoiser_training_repeats_bit_for_bit_on_two_threads(two_torch_threads):
    """The whole training step (text encoder, UNet, optimiser, EMA) repeats exactly; the tiny shape keeps it cheap
    (the full embedded shape took 50 s for four runs)."""
    assert torch.get_num_threads() == 2

    def train() -> list[torch.Tensor]:
        comp = gen.build_small_ldm(PROMPTS, tiny_ldm_config(), seed=0)
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(64)]
        g = torch.Generator().manual_seed(0)
        mean, std = torch.randn(64, 4, 4, 4, generator=g), torch.rand(64, 4, 4, 4, generator=g)
        gen.train_denoiser(comp, mean, std, prompts, steps=3, batch_size=64, warmup_steps=1, ema_decay=0.0)
        return [p.detach().clone() for m in ("text_encoder", "unet") for p in comp[m].parameters()]

    first = train()
    assert all(torch.equal(a, b) for a, b in zip(first, train(), strict=True))


def test_pick_rows_is_indexing():
    hidden = torch.randn(3, 2, 5)
    rows = torch.tensor([2, 0, 0, 1, 2])
    assert torch.equal(gen._pick_rows(hidden, rows), hidden[rows])


def test_load_error_keeps_the_whole_reason_on_one_line(monkeypatch):
    reason = "Cannot reach the hub.\n" + "x" * 300 + " and the file unet/config.json is not in the local cache"

    def offline(*args, **kwargs):
        raise OSError(reason)

    monkeypatch.setattr(gen.StableDiffusionPipeline, "from_pretrained", offline)
    with pytest.raises(TailsynthError) as err:
        gen.load_pipeline("some/model-id")
    message = str(err.value)
    assert "unet/config.json is not in the local cache" in message and "\n" not in message
    assert "some/model-id" in message and "generator.model" in message


def test_pickled_weights_are_refused(trained_pipeline_dir, tmp_path):
    import shutil

    from safetensors.torch import load_file

    copy = tmp_path / "pickled"
    shutil.copytree(trained_pipeline_dir, copy)
    for weights in copy.rglob("*.safetensors"):  # the same weights, as pickle files
        name = "pytorch_model.bin" if weights.name == "model.safetensors" else "diffusion_pytorch_model.bin"
        torch.save(load_file(str(weights)), weights.with_name(name))
        weights.unlink()
    with pytest.raises(TailsynthError, match="could not be loaded"):
        gen.load_pipeline(str(copy))
    assert gen.load_pipeline(str(trained_pipeline_dir)) is not None
