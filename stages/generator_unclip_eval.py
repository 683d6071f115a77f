"""Stage generator_unclip_eval: does the dual-conditioned generator use its conditioning image?

The swapped-pair check of tailsynth.metrics.conditioning on the generator's own training images
(generator_unclip.train_split) and on held-out test images, in the oracle's feature space, and a
sample grid: one row per conditioning image (the image first, then one sample per seed). A sample's
prompt is its conditioning image's; with {group} in the prompt, pairs are drawn within a class's
context, so both images of a pair share their prompt and only the image differs.
"""

import torch
from _not_applicable import skip_if_not_applicable

from tailsynth.data.class_names import uses_group
from tailsynth.data.groups import image_prompts
from tailsynth.data.images import match_channels, resize_batch
from tailsynth.data.manifest import image_shape, load_rows, read_classes, read_manifest, select_rows
from tailsynth.errors import TailsynthError
from tailsynth.io import write_json
from tailsynth.methods import registry
from tailsynth.metrics.conditioning import conditioning_design, conditioning_distances
from tailsynth.models.classifier import load_classifier, predict
from tailsynth.report.grid import save_class_grid
from tailsynth.seeding import derive_seed

from _common import device, inference_dtype, load_params, log, prepared_dir, stage

GRID = "metrics/plots/generator_unclip_samples.png"


@stage
def main() -> None:
    params = load_params()
    if skip_if_not_applicable(params, ["metrics/generator_unclip.json", GRID], family=registry.FEEDBACK):
        return
    p = params["generator_unclip_eval"]
    for key in ("pairs", "seeds", "grid_rows"):
        if isinstance(p[key], bool) or not isinstance(p[key], int) or p[key] < 1:
            raise TailsynthError(f"generator_unclip_eval.{key} must be a whole number >= 1, got {p[key]!r}")
    folder = prepared_dir(params)
    classes = read_classes(folder)
    channels, size = image_shape(folder)
    template = params["generator"]["prompt"]
    from tailsynth.models.unclip import load_unclip
    from tailsynth.synth.unclip_sampler import UnCLIPSampler

    dev = device(params)
    dtype = inference_dtype(params, dev)
    sampler = UnCLIPSampler(
        load_unclip("models/generator_unclip", device=dev, dtype=dtype, param="generator_unclip"), p["scheduler"]
    )
    oracle = load_classifier("models/oracle", device=dev)

    def sample(images: torch.Tensor, conds: list[int], prompts: list[str], seeds: list[int]) -> torch.Tensor:
        """One sample per conditioning image ``images[conds[i]]``, with ``prompts[i]`` and ``seeds[i]``."""
        out = []
        for i in range(0, len(conds), p["batch_size"]):
            rows = slice(i, i + p["batch_size"])
            generated = sampler.generate(
                prompts[rows],
                seeds[rows],
                steps=p["steps"],
                cfg=p["cfg"],
                cond_images=images[conds[rows]],
                noise_level=p["noise_level"],
            )
            out.append(resize_batch(match_channels(generated, channels), size))
        return torch.cat(out)

    result = {}
    splits = {"train_split": params["generator_unclip"]["train_split"], "held_out": "test"}
    for name, split in splits.items():
        rows = select_rows(read_manifest(folder), split)
        images, labels = load_rows(folder, rows, channels), torch.tensor(rows["label"].to_numpy(), dtype=torch.int64)
        prompts = image_prompts(template, classes, rows)
        cells = labels
        if uses_group(template):  # pairs within a (class, context) cell: cell = class x groups + group
            names = sorted(set(rows["group"].astype(str)))
            codes = torch.tensor([names.index(g) for g in rows["group"].astype(str)], dtype=torch.int64)
            cells = labels * len(names) + codes
        design = conditioning_design(cells, pairs=p["pairs"], seeds=p["seeds"], seed=p["seed"], name=name)
        if not design.cond:
            raise TailsynthError(f"split {split!r} of {folder} has no class with two images to pair")
        samples = sample(images, design.cond, [prompts[i] for i in design.cond], design.seeds)
        logits, feats = predict(oracle, samples)
        _, real = predict(oracle, images.float() / 255)
        out = conditioning_distances(feats, real[design.cond], real[design.other])
        out["oracle_acc"] = float((logits.argmax(1) == labels[design.cond]).float().mean())
        result[name] = out
        log.info("conditioning check on %s (%s): %s", split, name, {k: round(v, 4) for k, v in out.items()})
        if name == "held_out":
            grid_images, grid_rows = grid(images, labels, prompts, sample, p)
    write_json("metrics/generator_unclip.json", result)
    save_class_grid(grid_images, grid_rows, GRID, per_row=1 + p["seeds"])


def grid(
    images: torch.Tensor, labels: torch.Tensor, prompts: list[str], sample, p: dict
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cells and row ids of the sample grid: for one held-out image of each of the first
    ``grid_rows`` classes, the image itself and then a sample for each of ``seeds`` seeds."""
    picks = [int(torch.nonzero(labels == k).flatten()[0]) for k in sorted(set(labels.tolist()))][: p["grid_rows"]]
    conds = [i for i in picks for _ in range(p["seeds"])]
    seeds = [derive_seed(p["seed"], "grid", s) for _ in picks for s in range(p["seeds"])]
    samples = sample(images, conds, [prompts[i] for i in conds], seeds)
    cells, rows = [], []
    for r, i in enumerate(picks):
        cells += [images[i].float() / 255, *samples[r * p["seeds"] : (r + 1) * p["seeds"]]]
        rows += [r] * (1 + p["seeds"])
    return torch.stack(cells), torch.tensor(rows)


if __name__ == "__main__":
    main()
