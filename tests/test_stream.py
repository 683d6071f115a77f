"""Image sets streamed from disk give the same batches, weights and predictions as the images in memory."""

import pandas as pd
import pytest
import torch
from PIL import Image

from tailsynth.data.manifest import load_rows
from tailsynth.data.stream import ImageFiles, batches, in_order, keep_in_memory, open_images, select
from tailsynth.errors import TailsynthError
from tailsynth.methods.augment import strong_transform
from tailsynth.models.classifier import build_classifier, predict
from tailsynth.train.fit import FitConfig, fit_classifier


def write_images(folder, n, channels=1, size=12, seed=0):
    """``n`` random PNGs in ``folder/images``; returns their manifest rows and the uint8 images (N, C, H, W)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)
    (folder / "images").mkdir(parents=True)
    names = []
    for i, image in enumerate(images):
        arr = image[0].numpy() if channels == 1 else image.permute(1, 2, 0).numpy()
        names.append(f"images/{i:03d}.png")
        Image.fromarray(arr).save(folder / names[-1])
    return pd.DataFrame({"image": names, "label": (torch.arange(n) % 3).tolist()}), images


@pytest.mark.parametrize("channels", [1, 3])
def test_image_files_decode_the_values_load_rows_reads(tmp_path, channels):
    rows, images = write_images(tmp_path, 5, channels)
    files = open_images(tmp_path, rows, channels, in_memory_bytes=0)
    assert isinstance(files, ImageFiles) and files.shape == (5, channels, 12, 12)
    streamed = torch.stack([files[i] for i in range(len(files))])
    assert torch.equal(streamed, images) and torch.equal(streamed, load_rows(tmp_path, rows, channels))


def test_the_in_memory_limit_is_the_decoded_size_in_bytes(tmp_path):
    rows, images = write_images(tmp_path, 4)
    size = 4 * 1 * 12 * 12
    held = open_images(tmp_path, rows, 1, in_memory_bytes=size)
    assert isinstance(held, torch.Tensor) and held.dtype == torch.uint8 and torch.equal(held, images)
    assert isinstance(open_images(tmp_path, rows, 1, in_memory_bytes=size - 1), ImageFiles)


def test_batches_from_workers_come_in_order_and_equal_indexing(tmp_path):
    rows, images = write_images(tmp_path, 20)
    files = open_images(tmp_path, rows, 1, in_memory_bytes=0)
    index = [torch.tensor([3, 3, 19, 0]), torch.tensor([7]), torch.tensor([18, 2, 5, 11, 1])]
    for workers in (0, 2):
        got = list(batches(files, index, workers))
        assert [tuple(b.shape) for b in got] == [(4, 1, 12, 12), (1, 1, 12, 12), (5, 1, 12, 12)]
        assert all(torch.equal(b, images[i]) for b, i in zip(got, index, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(batches(images, index), (images[i] for i in index), strict=True))
    assert [len(i) for i in in_order(10, 4)] == [4, 4, 2] and torch.equal(torch.cat(in_order(10, 4)), torch.arange(10))


def test_select_keeps_the_kind_of_set(tmp_path):
    rows, images = write_images(tmp_path, 6)
    files = open_images(tmp_path, rows, 1, in_memory_bytes=0)
    mask = torch.tensor([True, False, False, True, True, False])
    picked = select(files, mask)
    assert isinstance(picked, ImageFiles) and len(picked) == 3
    assert torch.equal(torch.stack([picked[i] for i in range(3)]), images[mask])
    assert torch.equal(select(images, torch.tensor([5, 0])), images[[5, 0]])


def test_a_file_of_another_shape_is_an_error_naming_it(tmp_path):
    rows, _ = write_images(tmp_path, 3)
    Image.new("L", (8, 8)).save(tmp_path / "images/002.png")
    files = open_images(tmp_path, rows, 1, in_memory_bytes=0)
    with pytest.raises(TailsynthError, match=r"002\.png is \(1, 8, 8\), not \(1, 12, 12\)"):
        list(batches(files, [torch.tensor([0, 1, 2])]))


def test_training_from_disk_gives_the_weights_of_training_in_memory(tmp_path):
    rows, images = write_images(tmp_path, 30)
    labels = torch.tensor(rows["label"].tolist())
    files = open_images(tmp_path, rows, 1, in_memory_bytes=0)
    config = FitConfig(steps=6, batch_size=8, warmup_steps=2, lr=1e-2)

    def train(data, workers):
        model = build_classifier("small_cnn", 3, 1, 12, width=4, seed=3)
        fit_classifier(model, data, labels, config, seed=1, transform=strong_transform(), workers=workers)
        return model.state_dict()

    in_memory = train(images, 0)
    for workers in (0, 2):
        streamed = train(files, workers)
        assert all(torch.equal(in_memory[k], streamed[k]) for k in in_memory)
    untrained = build_classifier("small_cnn", 3, 1, 12, width=4, seed=3).state_dict()
    assert not torch.equal(in_memory["net.head.weight"], untrained["net.head.weight"])


def test_predict_on_streamed_uint8_equals_predict_on_floats(tmp_path):
    rows, images = write_images(tmp_path, 11, channels=3)
    model = build_classifier("small_cnn", 4, 3, 12, width=4, seed=0)
    logits, feats = predict(model, images.float() / 255, batch_size=4)
    for data in (images, keep_in_memory(ImageFiles([tmp_path / p for p in rows["image"]], 3), 0)):
        got_logits, got_feats = predict(model, data, batch_size=4, workers=2)
        assert torch.equal(got_logits, logits) and torch.equal(got_feats, feats)
