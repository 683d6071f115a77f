"""Train a small classifier on digits with fit_classifier, in however many processes it was launched in.

    python fit_worker.py OUT [--accelerate]      (or under ``accelerate launch --multi_gpu --num_processes 2``)

Writes ``OUT/weights.pt`` (main process) and ``OUT/draws<rank>.json``: the draw numbers each process
augmented at every step, read from the per-draw generators' seeds.
"""

import json
import os
import sys
from pathlib import Path

import torch
from sklearn.datasets import load_digits

from tailsynth.methods.augment import weak_transform
from tailsynth.models.classifier import build_classifier
from tailsynth.train.fit import FitConfig, fit_classifier

SEED, BATCH = 3, 32
STEPS = int(os.environ.get("FIT_WORKER_STEPS", "15"))

out = Path(sys.argv[1])
digits = load_digits()
images = torch.tensor(digits.images * 255 / 16, dtype=torch.uint8)[:, None]
images = images.repeat_interleave(2, -1).repeat_interleave(2, -2)  # 16 x 16
labels = torch.tensor(digits.target)
accelerator = None
if "--accelerate" in sys.argv:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True, device_placement=False)
rank = 0 if accelerator is None else accelerator.process_index
weak = weak_transform()
seen: list[int] = []


def transform(image: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    seen.append(gen.initial_seed() - SEED * 1_000_003)  # the draw number (fit.draw_generators)
    return weak.batch(image[None], [gen])[0]


model = build_classifier("small_cnn", 10, 1, 16, width=16, seed=0)  # batch norm and dropout
config = FitConfig(steps=STEPS, batch_size=BATCH, warmup_steps=5)
model = fit_classifier(model, images, labels, config, seed=SEED, transform=transform, accelerator=accelerator)
out.mkdir(parents=True, exist_ok=True)
(out / f"draws{rank}.json").write_text(json.dumps(seen))
if rank == 0:
    assert type(model.net.features[0][1]) is torch.nn.BatchNorm2d  # an ordinary model again
    torch.save(model.state_dict(), out / "weights.pt")
