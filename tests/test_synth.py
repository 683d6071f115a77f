import pandas as pd
import pytest
import torch
from conftest import tiny_ldm_config

from tailsynth.errors import TailsynthError
from tailsynth.methods.generated import plan_generated
from tailsynth.methods.registry import SOURCE_KEY, TEXT_KEY
from tailsynth.models import generator as gen
from tailsynth.synth.plan import finalize_rows, read_complete_synthetic, read_plan, read_synthetic, row_key
from tailsynth.synth.runner import finish, pending_rows, retry_seed, run_plan, write_manifest
from tailsynth.synth.sampler import LatentDiffusionSampler

CLASSES = [
    {"index": 0, "name": "zero", "prompt_name": "zero", "train_count": 30, "bucket": "many"},
    {"index": 1, "name": "one", "prompt_name": "one", "train_count": 3, "bucket": "few"},
    {"index": 2, "name": "two", "prompt_name": "two", "train_count": 2, "bucket": "few"},
]
MANIFEST = pd.DataFrame(
    {"image": [f"images/{i}.png" for i in range(6)], "label": [0, 1, 1, 1, 2, 2], "split": ["train"] * 6}
)


def plan(method="img2img_high", spec=None, per_class=4, **kw):
    spec = spec or {"mode": "img2img", "r": 0.7}
    args = dict(
        per_class=per_class,
        buckets=["few"],
        prompt_template="a photo of a {name}",
        steps=10,
        cfg=5.0,
        scheduler="dpm_solver",
        seed=0,
    )
    args.update(kw)
    return plan_generated(method, spec, CLASSES, MANIFEST, **args)


def test_plan_gives_equal_counts_from_same_class_sources():
    rows = plan()
    assert len(rows) == 8
    assert [r["target"] for r in rows].count(1) == 4
    for r in rows:
        src_label = MANIFEST.set_index("image").loc[r["source_image"], "label"]
        assert src_label == r["target"] == r["label"] and r["r"] == 0.7
    assert rows[0]["prompt"] == "a photo of a one"
    assert len({r["seed"] for r in rows}) == len(rows)
    # a row's seed depends on its identity, not on what else is planned
    assert plan(per_class=6)[0]["seed"] == rows[0]["seed"]


def test_txt2img_plan_has_no_source():
    rows = plan("txt2img", {"mode": "txt2img"})
    assert all(r["source_image"] == "" and r["r"] == 1.0 for r in rows)


@pytest.mark.parametrize("r", [0, -0.1, 1.5, "high"])
def test_r_outside_unit_interval_is_refused(r):
    with pytest.raises(TailsynthError, match=r"synth.img2img_high.r must be a number in \(0, 1\]"):
        plan(spec={"mode": "img2img", "r": r})


def test_r_too_small_for_the_step_count_is_refused():
    with pytest.raises(TailsynthError, match="no denoising step"):
        plan(spec={"mode": "img2img", "r": 0.05}, steps=10)


def test_buckets_selecting_no_class_are_refused():
    with pytest.raises(TailsynthError, match="selects no class"):
        plan(buckets=["medium"])


def test_source_content_enters_the_row_key():
    a = finalize_rows(plan(source_hashes={"images/1.png": "aaa"}), "g", SOURCE_KEY)
    b = finalize_rows(plan(source_hashes={"images/1.png": "bbb"}), "g", SOURCE_KEY)
    changed = a["source_image"] == "images/1.png"
    assert changed.any()
    assert (a.loc[changed, "key"] != b.loc[changed, "key"]).all()
    assert (a.loc[~changed, "key"] == b.loc[~changed, "key"]).all()


def test_unknown_bucket_or_template_field_is_refused():
    with pytest.raises(TailsynthError, match="synth.buckets"):
        plan(buckets=["rare"])
    with pytest.raises(TailsynthError, match="generator.prompt"):
        plan(prompt_template="a photo of a {label}")


def test_row_key_changes_with_r_generator_and_output_format():
    row = plan()[0]
    assert row_key(row, "g1", SOURCE_KEY) != row_key({**row, "r": 0.6}, "g1", SOURCE_KEY)
    assert row_key(row, "g1", SOURCE_KEY) != row_key(row, "g2", SOURCE_KEY)
    assert row_key(row, "w-float32-1x32", SOURCE_KEY) != row_key(row, "w-float32-3x32", SOURCE_KEY)  # channels
    # only the method's key fields count: a text-to-image row ignores its (empty) source columns
    assert row_key(row, "g", TEXT_KEY) == row_key({**row, "source_hash": "other"}, "g", TEXT_KEY)


@pytest.fixture(scope="module")
def sampler():
    comp = gen.build_small_ldm(["a photo of a one", "a photo of a two"], tiny_ldm_config(), seed=0)
    return LatentDiffusionSampler(gen.assemble_pipeline(comp), "dpm_solver")


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    return (images.clamp(0, 1) * 255).round().to(torch.int16)  # as the PNGs store them


def test_same_batch_size_gives_identical_images_whatever_the_batch_mates(sampler):
    # The guarantee: a row's image depends on its own prompt, seed and source, and on the batch size,
    # but not on which rows share its batch (every row has its own generator; kernels see the same shapes).
    a = sampler.generate(["a photo of a one", "a photo of a two", "a photo of a one"], [11, 22, 33], steps=4, cfg=3.0)
    b = sampler.generate(["a photo of a one", "a photo of a one", "a photo of a two"], [11, 44, 55], steps=4, cfg=3.0)
    assert torch.equal(a[0], b[0])
    assert not torch.equal(a[1], b[1])
    src = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    other = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    other[0] = src[0]
    a = sampler.generate(["a photo of a one"] * 3, [11, 22, 33], steps=4, cfg=3.0, sources=src, r=0.5)
    b = sampler.generate(["a photo of a one"] * 3, [11, 66, 77], steps=4, cfg=3.0, sources=other, r=0.5)
    assert torch.equal(a[0], b[0])


def test_another_batch_size_changes_no_pixel_by_more_than_one_level(sampler):
    # Across batch sizes float kernels may round differently: at most 1/255 per pixel once quantised.
    prompts = ["a photo of a one", "a photo of a two", "a photo of a one"]
    seeds = [11, 22, 33]
    together = to_uint8(sampler.generate(prompts, seeds, steps=4, cfg=3.0))
    alone = to_uint8(
        torch.cat([sampler.generate([p], [s], steps=4, cfg=3.0) for p, s in zip(prompts, seeds, strict=True)])
    )
    assert together.shape == (3, 1, 16, 16)
    assert int((together - alone).abs().max()) <= 1
    src = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    together = to_uint8(sampler.generate(prompts, seeds, steps=4, cfg=3.0, sources=src, r=0.5))
    alone = to_uint8(
        torch.cat(
            [
                sampler.generate([p], [s], steps=4, cfg=3.0, sources=src[i : i + 1], r=0.5)
                for i, (p, s) in enumerate(zip(prompts, seeds, strict=True))
            ]
        )
    )
    assert int((together - alone).abs().max()) <= 1
    assert not torch.equal(together[0], together[2])  # different seeds differ


def test_runner_resumes_and_replaces_only_missing_or_broken_rows(tmp_path):
    table = finalize_rows(plan("txt2img", {"mode": "txt2img"}), "gen", TEXT_KEY)
    calls = []

    def fake_generate(batch, sources):
        calls.append(len(batch))
        return torch.stack([torch.full((1, 8, 8), (s % 255) / 255) for s in batch["seed"]])

    run_plan(table, tmp_path, fake_generate, lambda b: None, image_size=8, channels=1, batch_size=3)
    assert sum(calls) == 8 and max(calls) <= 3
    assert len(read_plan(tmp_path)) == 8
    (tmp_path / table["image"][0]).unlink()
    (tmp_path / table["image"][5]).write_bytes(b"truncated")
    assert len(pending_rows(table, tmp_path, 8)) == 2
    kept = {rel: (tmp_path / rel).stat().st_mtime_ns for rel in table["image"][[1, 2, 3, 4, 6, 7]]}
    calls.clear()
    run_plan(table, tmp_path, fake_generate, lambda b: None, image_size=8, channels=1, batch_size=3)
    # Batches are fixed on the plan (rows 0-2, 3-5, 6-7): a batch with a missing row is generated whole,
    # so the row sees the same batch as in an uninterrupted run, and only missing images are written.
    assert calls == [3, 3]
    assert all((tmp_path / rel).stat().st_mtime_ns == t for rel, t in kept.items())
    stale = tmp_path / "images" / "0001" / "999999-oldkey.png"
    stale.write_bytes(b"x")
    manifest = finish(table, tmp_path, 8)
    assert not stale.exists() and not (tmp_path / "manifest.csv").exists()
    write_manifest(manifest, tmp_path)
    assert len(manifest) == 8 and (tmp_path / "manifest.csv").is_file()
    assert manifest["sha"].str.len().eq(16).all() and manifest["sha"].nunique() > 1  # image digests
    assert not list(tmp_path.rglob("*.tmp"))


def test_runner_shards_cover_every_row_once(tmp_path):
    table = finalize_rows(plan("txt2img", {"mode": "txt2img"}), "gen", TEXT_KEY)
    seen = {}

    def generator_for(rank):
        def fake_generate(batch, sources):
            seen.setdefault(rank, []).extend(batch["row"])
            return torch.full((len(batch), 1, 8, 8), 0.5)

        return fake_generate

    for rank in range(3):  # each process in its own folder: nothing is skipped because another did it
        run_plan(
            table,
            tmp_path / str(rank),
            generator_for(rank),
            lambda b: None,
            image_size=8,
            channels=1,
            batch_size=2,
            process_index=rank,
            num_processes=3,
        )
    assert all(seen.get(rank) for rank in range(3))
    assert sorted(r for rows in seen.values() for r in rows) == list(range(8))


def test_finish_refuses_incomplete_sets(tmp_path):
    table = finalize_rows(plan("txt2img", {"mode": "txt2img"}), "gen", TEXT_KEY)
    with pytest.raises(RuntimeError, match="missing"):
        finish(table, tmp_path, 8)
    assert not (tmp_path / "manifest.csv").exists()


def test_a_nan_or_black_sample_is_retried_once_with_a_derived_seed_then_reported(tmp_path):
    table = finalize_rows(plan("txt2img", {"mode": "txt2img"}), "gen", TEXT_KEY)
    seeds = table["seed"].tolist()
    nan_once, black_twice = seeds[1], seeds[4]
    calls = []

    def fake_generate(batch, sources):
        calls.append(batch["seed"].tolist())
        out = []
        for s in batch["seed"]:
            if s == nan_once:
                out.append(torch.full((1, 8, 8), float("nan")))
            elif s in (black_twice, retry_seed(black_twice)):
                out.append(torch.zeros(1, 8, 8))
            else:
                out.append(torch.full((1, 8, 8), 0.25 + (s % 100) / 400))
        return torch.stack(out)

    run_plan(table, tmp_path, fake_generate, lambda b: None, image_size=8, channels=1, batch_size=4)
    # Two batches of 4, then each bad row alone with its derived seed (row 1 in batch 1, row 4 in batch 2).
    assert calls == [seeds[:4], [retry_seed(nan_once)], seeds[4:], [retry_seed(black_twice)]]
    manifest = finish(table, tmp_path, 8)
    assert manifest["retry_seed"].tolist() == [0, retry_seed(nan_once), 0, 0, retry_seed(black_twice), 0, 0, 0]
    assert manifest["failed"].tolist() == [0, 0, 0, 0, 1, 0, 0, 0]
    write_manifest(manifest, tmp_path)
    assert len(read_synthetic(tmp_path)) == 7 and 4 not in read_synthetic(tmp_path)["row"].tolist()
    assert len(read_synthetic(tmp_path, usable=False)) == 8  # reported in the manifest, never silently kept
    with pytest.raises(TailsynthError, match="1 samples stayed NaN or black after their retry"):
        read_complete_synthetic(tmp_path, "fewshot_synth@txt2img")  # few-shot episodes need every image
    calls.clear()
    run_plan(table, tmp_path, fake_generate, lambda b: None, image_size=8, channels=1, batch_size=4)
    assert calls == []  # a resumed run keeps the retried rows and their record (it travels in the PNG)
    assert finish(table, tmp_path, 8)["retry_seed"].equals(manifest["retry_seed"])
