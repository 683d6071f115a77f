"""Data-parallel classifier training (tailsynth.train.distributed): two gloo processes on CPU train as one.

``fit_worker.py`` trains the same small batch-norm + dropout classifier in one process and under
``accelerate launch --multi_gpu --num_processes 2``, both at one thread per process. The two
processes must augment exactly the draws one process does, each its half of every global batch, and
end within 1e-4 of the one-process weights (measured: 1.8e-6 after 15 steps). For scale: one process
at two threads instead of one already differs by 7e-4 after 5 steps, so the tolerance is the
floating-point summation order, not a different training run.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from tailsynth.errors import TailsynthError
from tailsynth.train.distributed import (
    GlobalBatchNorm2d,
    GlobalDropout,
    global_batch,
    local_batch,
    resolve_precision,
    shard,
)

WORKER = Path(__file__).with_name("fit_worker.py")
ACCELERATE = [str(Path(sys.executable).parent / "accelerate"), "launch"]
TWO = [
    "--multi_gpu",
    "--num_processes",
    "2",
    "--num_machines",
    "1",
    "--mixed_precision",
    "no",
    "--dynamo_backend",
    "no",
    "--main_process_port",  # 0: accelerate picks a free one (two pytest-xdist workers may launch at once)
    "0",
]
BATCH, LOCAL = 32, 16


def _run(cmd: list[str]) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    _run([sys.executable, str(WORKER), str(root / "one")])
    _run([*ACCELERATE, *TWO, str(WORKER), str(root / "two"), "--accelerate"])
    return root / "one", root / "two"


def test_two_processes_augment_the_draws_of_one_each_its_half_of_every_batch(runs):
    one, two = runs
    draws = json.loads((one / "draws0.json").read_text())
    first, second = (json.loads((two / f"draws{r}.json").read_text()) for r in (0, 1))
    assert draws == list(range(len(draws))) and len(first) == len(second) == len(draws) // 2
    steps = len(draws) // BATCH
    merged = [d for s in range(steps) for d in first[s * LOCAL : (s + 1) * LOCAL] + second[s * LOCAL : (s + 1) * LOCAL]]
    assert merged == draws
    assert first[:LOCAL] == list(range(LOCAL)) and second[:LOCAL] == list(range(LOCAL, BATCH))


def test_two_processes_end_at_the_weights_of_one(runs):
    one, two = runs
    assert sorted(p.name for p in two.iterdir()) == ["draws0.json", "draws1.json", "weights.pt"]
    a = torch.load(one / "weights.pt", weights_only=True)
    b = torch.load(two / "weights.pt", weights_only=True)
    assert a.keys() == b.keys()
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    assert worst < 1e-4, worst
    # ... and the runs did train: the weights moved far more than that from their start
    from tailsynth.models.classifier import build_classifier

    start = build_classifier("small_cnn", 10, 1, 16, width=16, seed=0).state_dict()
    assert max(float((a[k].double() - start[k].double()).abs().max()) for k in a) > 0.05


def test_one_process_under_accelerate_trains_bit_for_bit_as_without_it():
    """The stages always pass an Accelerator: in one process at fp32 it must change nothing."""
    from accelerate import Accelerator

    from tailsynth.methods.augment import training_augmentation
    from tailsynth.models.classifier import build_classifier
    from tailsynth.train.fit import FitConfig, fit_classifier

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 1, 12, 12), generator=g, dtype=torch.uint8)
    labels = torch.arange(40) % 4
    transform, batch_transform = training_augmentation("cutmix", 4)
    config = FitConfig(steps=6, batch_size=8, warmup_steps=2)
    weights = []
    for accelerator in (None, Accelerator(cpu=True, mixed_precision="no", device_placement=False)):
        model = build_classifier("small_cnn", 4, 1, 12, width=4, seed=1)
        fit = fit_classifier(
            model,
            images,
            labels,
            config,
            seed=2,
            transform=transform,
            batch_transform=batch_transform,
            accelerator=accelerator,
        )
        weights.append(fit.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert type(fit) is type(model) and not any(type(m) in (GlobalBatchNorm2d, GlobalDropout) for m in fit.modules())


def test_shards_are_equal_contiguous_and_cover_the_batch():
    assert [shard(32, r, 2) for r in range(2)] == [slice(0, 16), slice(16, 32)]
    assert [shard(12, r, 3) for r in range(3)] == [slice(0, 4), slice(4, 8), slice(8, 12)]
    assert shard(64, 0, 1) == slice(0, 64)
    with pytest.raises(ValueError, match="does not split evenly over 3"):
        shard(32, 0, 3)


def test_global_layers_are_the_plain_ones_in_one_process_and_convert_back():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Dropout(0.3))
    x = torch.randn(8, 1, 6, 6)
    torch.manual_seed(1)
    want = model(x)
    global_batch(model)
    assert [type(m) for m in model][1::3] == [GlobalBatchNorm2d, GlobalDropout]
    model[1].reset_running_stats()
    torch.manual_seed(1)
    assert torch.equal(model(x), want)  # no process group: exactly BatchNorm2d and Dropout
    local_batch(model)
    assert type(model[1]) is nn.BatchNorm2d and type(model[4]) is nn.Dropout


def test_training_precision_is_checked_against_the_device():
    assert resolve_precision("fp32", "cpu") == "no"
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(TailsynthError, match="runtime.train_precision fp16 needs a CUDA device"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(TailsynthError, match=r"runtime.train_precision 'half' is not one of fp32, bf16, fp16"):
        resolve_precision("half", "cpu")


GENERATOR_WORKER = Path(__file__).with_name("generator_worker.py")


def test_two_processes_train_the_generators_as_one(tmp_path):
    """The small LDM's VAE and denoiser (tailsynth.models.generator) and the dual-conditioned model's image
    encoder and UNet (tailsynth.models.unclip), data-parallel over 2 gloo processes: the same global draws,
    each process its half of every batch (the image encoder's contrastive loss over the gathered global
    batch), gradients averaged. The weights end within 1e-4 of one process's (measured: VAE 4.6e-5, image
    encoder 8.7e-5, the rest <= 1.3e-5) and the logged losses (the global batch's) within 1e-5 relative
    (measured 8e-8). A gather whose backward does not sum the processes' gradients left the image encoder's
    loss 2.7e-4 off and the unCLIP UNet 1.6e-3 off."""
    _run([sys.executable, str(GENERATOR_WORKER), str(tmp_path / "one")])
    _run([*ACCELERATE, *TWO, str(GENERATOR_WORKER), str(tmp_path / "two"), "--accelerate"])
    a, b = (torch.load(tmp_path / run / "weights.pt", weights_only=True) for run in ("one", "two"))
    assert a["weights"].keys() == b["weights"].keys()
    assert {k.split(".")[0] for k in a["weights"]} == {"vae", "unet", "text_encoder", "image_encoder", "unclip_unet"}
    worst = max(float((a["weights"][k].double() - b["weights"][k].double()).abs().max()) for k in a["weights"])
    assert worst < 1e-4, worst
    assert len(a["losses"]) == 4 and a["losses"] == pytest.approx(b["losses"], rel=1e-5, abs=0)
    # ... and the runs did train: the weights moved far more than that from their start
    from conftest import tiny_ldm_config

    from tailsynth.models import generator as gen
    from tailsynth.models import unclip as uc

    prompts = [f"a photo of a {n}" for n in ("zero", "one", "two", "three")]  # generator_worker.PROMPTS
    comp = gen.build_small_ldm(prompts, tiny_ldm_config(), seed=0)
    encoder, _ = uc.build_image_encoder(16, uc.ImageEncoderConfig(hidden=16, heads=2, projection_dim=8), seed=3)
    start = {f"{n}.{k}": v for n in ("vae", "unet") for k, v in comp[n].state_dict().items()}
    start |= {f"image_encoder.{k}": v for k, v in encoder.state_dict().items()}
    for name in ("vae", "unet", "image_encoder"):
        moved = max(
            float((a["weights"][k].double() - v.double()).abs().max()) for k, v in start.items() if k.startswith(name)
        )
        assert moved > 1e-3, (name, moved)


@pytest.fixture
def accelerator_at():
    """``accelerator_at(precision)``: a one-process CPU ``Accelerator`` at accelerate's ``mixed_precision``
    (its state is process-wide and fixed once made, so it is reset around the test)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield lambda precision: Accelerator(cpu=True, mixed_precision=precision, device_placement=False)
    AcceleratorState._reset_state(True)


def _train_tiny_generators(accelerator) -> tuple[dict, set]:
    """The four generator trainings of generator_worker.py, shorter, with ``accelerator``: their final weights,
    and the dtypes of every convolution's and linear layer's outputs while training."""
    from conftest import tiny_ldm_config

    from tailsynth.models import generator as gen
    from tailsynth.models import unclip as uc

    prompts = ["a photo of a zero", "a photo of a one"]
    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(8, 1, 16, 16, generator=g), torch.arange(8) % 2
    comp = gen.build_small_ldm(prompts, tiny_ldm_config(), seed=0)
    encoder, processor = uc.build_image_encoder(16, uc.ImageEncoderConfig(hidden=16, heads=2, projection_dim=8))
    dtypes = set()
    hooks = [
        m.register_forward_hook(lambda m, i, o: dtypes.add(o.dtype) if m.training else None)
        for model in (comp["vae"], comp["unet"], encoder)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    losses = [gen.train_vae(comp["vae"], images, steps=3, batch_size=4, seed=1, accelerator=accelerator).loss]
    mean, std = gen.encode_latents(comp["vae"], images)
    gen.set_latent_scaling(comp["vae"], mean)
    text = [prompts[i] for i in labels.tolist()]
    kw = dict(steps=3, batch_size=4, accelerator=accelerator)
    losses.append(gen.train_denoiser(comp, mean, std, text, warmup_steps=1, seed=2, **kw).loss)
    base = gen.assemble_pipeline(comp)
    with torch.no_grad():
        class_text = uc.pooled_text(base, prompts)
    losses.append(uc.train_image_encoder(encoder, images, labels, class_text, seed=3, **kw).loss)
    embeds = uc.embed_images(encoder, images)
    pipe = uc.assemble_unclip(base, encoder, processor, uc.image_normalizer(embeds), uc.unclip_unet(base.unet, 8))
    pipe.unet.register_forward_hook(lambda m, i, o: dtypes.add(o.sample.dtype))
    losses.append(uc.finetune_unclip(pipe, mean, std, text, embeds, seed=4, **kw).loss)
    for h in hooks:
        h.remove()
    models = {"vae": comp["vae"], "text_encoder": comp["text_encoder"], "image_encoder": encoder, "unet": pipe.unet}
    weights = {f"{n}.{k}": v.clone() for n, m in models.items() for k, v in m.state_dict().items()}
    return weights | {"losses": torch.tensor(losses)}, dtypes


def test_the_generators_train_at_the_accelerators_precision(accelerator_at):
    """runtime.train_precision reaches the generators' training: an fp32 Accelerator (what the stages always
    pass) trains bit for bit as none; bf16 runs every convolution and linear layer in bf16 (autocast) and
    keeps fp32 weights, which end near the fp32 ones but not on them."""
    fp32, fp32_types = _train_tiny_generators(None)
    assert fp32_types == {torch.float32}
    same, _ = _train_tiny_generators(accelerator_at("no"))
    assert all(torch.equal(fp32[k], same[k]) for k in fp32)
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    bf16, bf16_types = _train_tiny_generators(accelerator_at("bf16"))
    assert bf16_types == {torch.bfloat16}
    assert all(v.dtype == fp32[k].dtype for k, v in bf16.items())
    assert torch.isfinite(bf16["losses"]).all()
    weights = [k for k in fp32 if k != "losses" and fp32[k].is_floating_point()]
    worst = max(float((fp32[k] - bf16[k]).abs().max()) for k in weights)
    assert 0 < worst < 0.05, worst


def test_the_classifier_trains_at_the_accelerators_precision(accelerator_at):
    """fit_classifier under a bf16 Accelerator: convolutions in bf16 (autocast), fp32 weights, finite loss."""
    from tailsynth.models.classifier import build_classifier
    from tailsynth.train.fit import FitConfig, fit_classifier

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 1, 12, 12), generator=g, dtype=torch.uint8)
    model = build_classifier("small_cnn", 4, 1, 12, width=4, seed=1)
    dtypes, losses = set(), []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(lambda m, i, o: dtypes.add(o.dtype))
    config = FitConfig(steps=3, batch_size=8, warmup_steps=1)
    fit = fit_classifier(
        model,
        images,
        torch.arange(16) % 4,
        config,
        seed=2,
        accelerator=accelerator_at("bf16"),
        callback=lambda step, loss: losses.append(loss),
        log_every=1,
    )
    assert dtypes == {torch.bfloat16}
    assert {p.dtype for p in fit.parameters()} == {torch.float32}
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
