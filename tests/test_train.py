import pytest
import torch

from tailsynth.errors import TailsynthError
from tailsynth.methods.augment import AUGMENT_METHODS, cutmix, mixup, strong_transform, training_augmentation
from tailsynth.models.classifier import build_classifier, load_classifier, predict, save_classifier
from tailsynth.train.fit import FitConfig, class_balanced_weights, fit_classifier


def toy_data(n=120, seed=0):
    """Class 0: bright left half; class 1: bright right half; class 2: bright top half."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 12, 12, generator=g) * 0.3
    y = torch.arange(n) % 3
    x[y == 0, :, :, :6] += 0.6
    x[y == 1, :, :, 6:] += 0.6
    x[y == 2, :, :6, :] += 0.6
    return x.clamp(0, 1), y


@pytest.mark.parametrize("method", AUGMENT_METHODS)
def test_augmentations_keep_shape_range_and_are_seeded(method):
    x, y = toy_data(8)
    transform, batch_transform = training_augmentation(method, 3, {"alpha": 1.0})
    if transform is not None:
        a = transform(x[0], torch.Generator().manual_seed(5))
        b = transform(x[0], torch.Generator().manual_seed(5))
        c = transform(x[0], torch.Generator().manual_seed(6))
        assert a.shape == x[0].shape and 0 <= a.min() and a.max() <= 1
        assert torch.equal(a, b) and not torch.equal(a, c)
    if batch_transform is not None:
        xb, target = batch_transform(x, y, torch.Generator().manual_seed(0))
        assert xb.shape == x.shape and target.shape == (8, 3)
        assert torch.allclose(target.sum(1), torch.ones(8))


def test_mixup_and_cutmix_mix_labels_in_proportion():
    x, y = toy_data(6)
    xb, t = mixup(3, alpha=1.0)(x, y, torch.Generator().manual_seed(1))
    assert (t.max(1).values < 1).any()  # some rows are genuinely mixed
    xb, t = cutmix(3, alpha=1.0)(x, y, torch.Generator().manual_seed(1))
    changed = (xb != x).float().mean().item()
    assert changed > 0 and torch.allclose(t.sum(1), torch.ones(6))


def test_strong_differs_from_input():
    x, _ = toy_data(1)
    assert not torch.allclose(strong_transform()(x[0], torch.Generator().manual_seed(0)), x[0])


def test_unknown_method_is_refused():
    with pytest.raises(TailsynthError, match="unknown training-time method 'bogus'"):
        training_augmentation("bogus", 3)


def test_balanced_weights_equalise_classes():
    labels = torch.tensor([0] * 8 + [1] * 2)
    w = class_balanced_weights(labels, 2)
    assert w[labels == 0].sum() == pytest.approx(w[labels == 1].sum())


def test_fit_learns_is_deterministic_and_round_trips(tmp_path):
    x, y = toy_data()
    cfg = FitConfig(steps=60, batch_size=32, lr=3e-3, warmup_steps=5)
    models = []
    for _ in range(2):
        m = build_classifier("small_cnn", 3, 1, 12, width=8)
        models.append(fit_classifier(m, x, y, cfg, seed=3))
    xt, yt = toy_data(60, seed=1)
    logits, feats = predict(models[0], xt)
    assert (logits.argmax(1) == yt).float().mean() > 0.9
    assert feats.shape == (60, models[0].feature_dim)
    assert torch.equal(predict(models[1], xt)[0], logits)
    save_classifier(models[0], tmp_path / "clf")
    again = load_classifier(tmp_path / "clf")
    assert torch.allclose(predict(again, xt)[0], logits)


def test_load_classifier_error_names_folder(tmp_path):
    with pytest.raises(TailsynthError, match="not a classifier folder"):
        load_classifier(tmp_path)


def test_rgb_backbone_weights_load_into_a_grayscale_resnet(tmp_path):
    from safetensors.torch import save_file

    from tailsynth.models.classifier import load_pretrained_backbone

    rgb = build_classifier("resnet18", 5, 3, 32)
    state = {k: v.contiguous() for k, v in rgb.net.backbone.state_dict().items()}
    save_file(state, str(tmp_path / "r18.safetensors"))
    gray = build_classifier("resnet18", 5, 1, 32)
    load_pretrained_backbone(gray, tmp_path / "r18.safetensors")
    assert torch.allclose(gray.net.backbone.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(gray.net.backbone.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])
    with pytest.raises(TailsynthError, match="does not match arch 'resnet34'"):
        load_pretrained_backbone(build_classifier("resnet34", 5, 3, 32), tmp_path / "r18.safetensors")
