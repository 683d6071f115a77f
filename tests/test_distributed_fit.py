"""Data-parallel classifier training (tailsynth.train.distributed): two gloo processes on CPU train as one.

``fit_worker.py`` trains the same small batch-norm + dropout classifier in one process and under
``accelerate launch --multi_gpu --num_processes 2``, both at one thread per process. The two
processes must augment exactly the draws one process does, each its half of every global batch, and
end within 1e-4 of the one-process weights (measured: 1.8e-6 after 15 steps). For scale: one process
at two threads instead of one already differs by 7e-4 after 5 steps, so the tolerance is the
floating-point summation order, not a different training run.
"""

import json
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


def test_two_processes_train_the_generator_as_one(tmp_path):
    """The small LDM's VAE and denoiser (tailsynth.models.generator), data-parallel over 2 gloo processes:
    the same global draws, each process its half of every batch, gradients averaged. The weights end
    within 1e-4 of one process's and the logged losses (the global batch's) within 1e-5."""
    _run([sys.executable, str(GENERATOR_WORKER), str(tmp_path / "one")])
    _run([*ACCELERATE, *TWO, str(GENERATOR_WORKER), str(tmp_path / "two"), "--accelerate"])
    a, b = (torch.load(tmp_path / run / "weights.pt", weights_only=True) for run in ("one", "two"))
    assert a["weights"].keys() == b["weights"].keys()
    worst = max(float((a["weights"][k].double() - b["weights"][k].double()).abs().max()) for k in a["weights"])
    assert worst < 1e-4, worst
    assert a["losses"] == pytest.approx(b["losses"], rel=1e-5, abs=0)
    # ... and the runs did train: the weights moved far more than that from their start
    from conftest import tiny_ldm_config

    from tailsynth.models import generator as gen

    prompts = [f"a photo of a {n}" for n in ("zero", "one", "two", "three")]  # generator_worker.PROMPTS
    comp = gen.build_small_ldm(prompts, tiny_ldm_config(), seed=0)
    start = {f"{n}.{k}": v for n in ("vae", "unet") for k, v in comp[n].state_dict().items()}
    assert max(float((a["weights"][k].double() - start[k].double()).abs().max()) for k in start) > 1e-3  # 6e-3
