"""Stage synth_genie@<method>: GeNIe (fixed r) or GeNIe-Ada (r chosen per pair) in long-tail mode.

Sources come from the classes most confused with each target according to the baseline
classifier's soft train confusion matrix (read in both directions, see
``tailsynth.methods.genie.confused_classes``); Ada embeds with the baseline classifier's
penultimate features. Writes data/synthetic/<method>/, resumable like synth@<method>.
"""

import sys
from pathlib import Path

import pandas as pd
import torch

from tailsynth.data.images import match_channels, resize_batch
from tailsynth.data.manifest import image_shape, load_rows, load_split, read_classes, read_manifest, resolve_inside
from tailsynth.errors import TailsynthError
from tailsynth.io import file_digest, folder_digest
from tailsynth.methods.genie import GenieAda, check_grid, class_prototypes, plan_genie_long_tail
from tailsynth.models.classifier import load_classifier, predict
from tailsynth.models.generator import load_pipeline
from tailsynth.synth.plan import finalize_rows
from tailsynth.synth.runner import finish, run_plan
from tailsynth.synth.sampler import LatentDiffusionSampler

from _common import device, load_params, log, prepared_dir, progress_bar, stage

GENERATOR, CLASSIFIER = "models/generator", "models/classifier"
METHODS = ("genie", "genie_ada")


@stage
def main(method: str) -> None:
    from accelerate import PartialState

    if method not in METHODS:
        raise TailsynthError(f"unknown GeNIe method {method!r}; use one of {', '.join(METHODS)}")
    params = load_params()
    p = params["genie"]
    grid = check_grid(p["ada"]["grid"], p["steps"]) if method == "genie_ada" else None
    folder = prepared_dir(params)
    classes, manifest = read_classes(folder), read_manifest(folder)
    channels, size = image_shape(folder)
    confusion = pd.read_csv(Path(CLASSIFIER) / "confusion_train_soft.csv", index_col=0).to_numpy()
    train = manifest.loc[manifest["split"] == "train", "image"]
    rows = plan_genie_long_tail(
        method,
        classes,
        manifest,
        confusion,
        r="ada" if grid else p["r"],
        per_class=p["per_class"],
        buckets=p["buckets"],
        top_k=p["top_k"],
        prompt_template=params["generator"]["prompt"],
        steps=p["steps"],
        cfg=p["cfg"],
        scheduler=p["scheduler"],
        seed=p["seed"],
        source_hashes={rel: file_digest(resolve_inside(folder, rel), 12) for rel in train},
    )
    state = PartialState()
    dev = device() if state.device.type == "cpu" else state.device
    dtype = torch.float16 if str(dev).startswith("cuda") else torch.float32
    fingerprint = f"{folder_digest(GENERATOR)}-{dtype}"
    if grid:  # the chosen image also depends on the embedding network and the grid
        fingerprint += f"-{folder_digest(CLASSIFIER)}-{grid}"
    plan = finalize_rows(rows, fingerprint)
    sampler = LatentDiffusionSampler(load_pipeline(GENERATOR, device=dev, dtype=dtype), p["scheduler"])

    def load_sources(batch):
        return load_rows(folder, batch.rename(columns={"image": "target_image", "source_image": "image"}), channels)

    def generate_at(batch, sources, r):
        first = batch.iloc[0]
        out = sampler.generate(
            batch["prompt"].tolist(),
            batch["seed"].tolist(),
            steps=int(first["steps"]),
            cfg=float(first["cfg"]),
            sources=sources.float() / 255,
            r=float(r),
        )
        return resize_batch(match_channels(out, channels), size)

    if grid:
        embedder = load_classifier(CLASSIFIER, device=dev)
        images, labels = load_split(folder, "train", channels)
        prototypes = class_prototypes(predict(embedder, images.float() / 255)[1], labels, len(classes))

        def embed(x):
            return predict(embedder, x.float() / 255 if x.dtype == torch.uint8 else x)[1]

        generate = GenieAda(generate_at, embed, prototypes, grid)
    else:

        def generate(batch, sources):
            return generate_at(batch, sources, batch.iloc[0]["r"])

    out = Path("data/synthetic") / method
    with progress_bar(len(plan), f"synth {method}") as bar:
        run_plan(
            plan,
            out,
            generate,
            load_sources,
            image_size=size,
            channels=channels,
            batch_size=p["batch_size"],
            progress=bar.update,
            process_index=state.process_index,
            num_processes=state.num_processes,
        )
    state.wait_for_everyone()
    if state.is_main_process:
        manifest_out = finish(plan, out, size)
        if "chosen_r" in manifest_out:
            log.info("GeNIe-Ada chosen r: %s", manifest_out["chosen_r"].value_counts().sort_index().to_dict())
        log.info("synth %s: %d images in %s", method, len(plan), out)


if __name__ == "__main__":
    main(sys.argv[1])
