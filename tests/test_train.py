from pathlib import Path

import pytest
import torch

from tailsynth.errors import TailsynthError
from tailsynth.io import read_json, write_json
from tailsynth.methods.augment import (
    AUGMENT_METHODS,
    augment_batch,
    cutmix,
    mixup,
    strong_transform,
    training_augmentation,
    weak_transform,
)
from tailsynth.models.classifier import build_classifier, load_classifier, predict, save_classifier
from tailsynth.train.fit import FitConfig, class_balanced_weights, draw_generators, fit_classifier


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


def gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.mark.parametrize("hflip", [False, True])
@pytest.mark.parametrize("make", [weak_transform, strong_transform])
def test_batched_augmentation_equals_per_image_whatever_the_batch(make, hflip):
    # Exact equality: each image's parameters come from its own generator, and the warp, the
    # jitter and the erasing compute every image independently of the others in the batch.
    aug = make(hflip)
    x = torch.rand(24, 3, 20, 20, generator=torch.Generator().manual_seed(0))
    seeds = range(100, 124)
    batched = aug.batch(x, gens(seeds))
    one_by_one = torch.stack([aug(x[i], g) for i, g in enumerate(gens(seeds))])
    assert torch.equal(batched, one_by_one)
    halves = torch.cat([aug.batch(x[:7], gens(seeds[:7])), aug.batch(x[7:], gens(seeds[7:]))])
    assert torch.equal(batched, halves)
    assert not torch.equal(batched[0], batched[1]) and 0 <= batched.min() and batched.max() <= 1
    # A plain per-image callable goes through the same helper, image by image.
    assert torch.equal(augment_batch(lambda im, g: aug(im, g), x, gens(seeds)), batched)
    if make is strong_transform:  # the batch covers both branches of the random erasing
        erased = [aug.draw(g, (20, 20))[3][2] > 0 for g in gens(seeds)]
        assert any(erased) and not all(erased)


def test_per_image_transforms_consume_the_generator_as_scalar_draws():
    # Augmented few-shot supports depend on this stream: 5 uniforms per affine warp (6 with hflip),
    # drawn in one call; the generator must end where five scalar draws would leave it.
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    weak_transform(hflip=False)(torch.rand(1, 8, 8), g1)
    for _ in range(5):
        torch.rand((), generator=g2)
    assert torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))


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


@pytest.mark.parametrize("method", ["weak", "strong", "cutmix"])
def test_fit_is_independent_of_how_the_augmentation_is_batched(method):
    x, y = toy_data(48)
    x = (x * 255).round().to(torch.uint8)
    transform, batch_transform = training_augmentation(method, 3, {"alpha": 1.0})
    cfg = FitConfig(steps=6, batch_size=16, warmup_steps=2)
    states = []
    for t in (transform, lambda im, g: transform(im, g)):  # the batched path, then image by image
        m = build_classifier("small_cnn", 3, 1, 12, width=4, seed=1)
        fit_classifier(m, x, y, cfg, seed=2, transform=t, batch_transform=batch_transform)
        states.append(m.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_draw_generators_are_keyed_by_seed_and_draw_number():
    a, b = draw_generators(3, 10, 12), draw_generators(3, 11, 13)
    assert torch.equal(torch.rand(4, generator=a[1]), torch.rand(4, generator=b[0]))
    assert not torch.equal(torch.rand(4, generator=draw_generators(4, 10, 11)[0]), torch.rand(4, generator=a[0]))


def test_small_cnn_accepts_other_sizes_and_channels():
    for channels, size in ((3, 24), (1, 8), (3, 64)):
        m = build_classifier("small_cnn", 5, channels, size, width=8)
        logits, feats = predict(m, torch.rand(2, channels, size, size))
        assert logits.shape == (2, 5) and feats.shape == (2, 32)


def test_small_cnn_folders_without_stem_stride_load_as_the_stride_1_variant(tmp_path):
    # Same weight names and shapes in both variants: an older folder must not load into the stride-2 stem.
    model = build_classifier("small_cnn", 3, 1, 12, width=4)
    assert model.config["stem_stride"] == 2 and model.net.features[0][0].stride == (2, 2)
    save_classifier(model, tmp_path / "clf")
    cfg = read_json(tmp_path / "clf" / "config.json")
    del cfg["stem_stride"]
    write_json(tmp_path / "clf" / "config.json", cfg)
    assert load_classifier(tmp_path / "clf").net.features[0][0].stride == (1, 1)


def test_stem_stride_reaches_the_model_from_a_params_section(tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stages"))
    from _fit import fit_from_params

    section = {"arch": "small_cnn", "width": 4, "steps": 1, "batch_size": 4, "lr": 0.01, "stem_stride": 1}
    CPU = {"runtime": {"device": "cpu", "train_precision": "fp32", "loader": {"workers": 0, "in_memory_mib": 1}}}
    x, y = torch.rand(8, 1, 12, 12), torch.arange(8) % 2
    model = fit_from_params(section, x, y, 2, seed=0, params=CPU)
    assert model.config["stem_stride"] == 1 and model.net.features[0][0].stride == (1, 1)
    save_classifier(model, tmp_path / "clf")
    assert load_classifier(tmp_path / "clf").net.features[0][0].stride == (1, 1)
    assert fit_from_params({**section, "stem_stride": 2}, x, y, 2, seed=0, params=CPU).net.features[0][0].stride == (
        2,
        2,
    )
    with pytest.raises(TailsynthError, match="stem_stride must be 1 or 2"):
        build_classifier("small_cnn", 2, 1, 12, stem_stride=3)


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


def test_fit_reports_window_means_without_changing_training():
    x, y = torch.rand(12, 1, 8, 8), torch.arange(12) % 3
    config = FitConfig(steps=7, batch_size=4, lr=0.01)
    every, windows = [], []
    a = fit_classifier(
        build_classifier("small_cnn", 3, 1, 8, width=4), x, y, config, callback=lambda s, v: every.append(v)
    )
    b = fit_classifier(
        build_classifier("small_cnn", 3, 1, 8, width=4),
        x,
        y,
        config,
        callback=lambda s, v: windows.append((s, v)),
        log_every=3,
    )
    assert [s for s, _ in windows] == [2, 5, 6]  # two full windows and the last, shorter one
    expected = [sum(every[0:3]) / 3, sum(every[3:6]) / 3, every[6]]
    assert [v for _, v in windows] == pytest.approx(expected, rel=1e-5)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
