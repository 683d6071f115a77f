"""Classifier training and prediction keep every module input on the model's device (checked on ``meta``).

See ``device_check.py``: the model lives on ``meta`` and a hook asserts that each module's inputs
sit on its weights' device, which is what crashes on CUDA when a tensor is left on the CPU. Without
a callback (which reads the loss) a fit runs to the end on ``meta``, so the fit tests also assert
that it finished: an operation mixing a CPU tensor with ``meta`` ones outside a module (e.g. the
loss against labels left on the CPU) raises, and would otherwise end the check silently.
"""

import pytest
import torch
from device_check import run_on_meta

from tailsynth.methods.augment import training_augmentation
from tailsynth.models.classifier import build_classifier, predict
from tailsynth.train.fit import FitConfig, fit_classifier


@pytest.mark.parametrize("method", ["none", "weak", "strong", "cutmix", "mixup"])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_fit_feeds_the_model_on_its_device(method, dtype):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (24, 1, 16, 16), generator=g, dtype=torch.uint8)
    images = images if dtype == torch.uint8 else images.float() / 255
    labels = torch.arange(24) % 3
    model = build_classifier("small_cnn", 3, 1, 16, width=4).to("meta")
    transform, batch_transform = training_augmentation(method, 3, {"alpha": 1.0})
    config = FitConfig(steps=2, batch_size=8, warmup_steps=1)
    finished = []

    def fit() -> None:
        fit_classifier(
            model, images, labels, config, seed=0, transform=transform, batch_transform=batch_transform, device="meta"
        )
        finished.append(True)

    checked = run_on_meta(fit)
    assert "Classifier" in checked and "Conv2d" in checked and "Linear" in checked
    assert finished, "the fit stopped early on meta: a tensor met the model's outputs on another device"


@pytest.mark.parametrize("streamed", [False, True])
def test_predict_feeds_the_model_on_its_device(streamed, tmp_path):
    from PIL import Image

    from tailsynth.data.stream import ImageFiles

    model = build_classifier("small_cnn", 3, 1, 16, width=4).to("meta")
    images = torch.rand(10, 1, 16, 16)
    for i in range(len(images)):
        Image.new("L", (16, 16), 100).save(tmp_path / f"{i}.png")
    data = ImageFiles([tmp_path / f"{i}.png" for i in range(len(images))], 1) if streamed else images
    checked = run_on_meta(lambda: predict(model, data, batch_size=4))
    # predict normalises outside a module and stops at the first copy back to the CPU (meta has no data),
    # so the hook sees the feature extractor: its first conv gets the moved input.
    assert "Conv2d" in checked
