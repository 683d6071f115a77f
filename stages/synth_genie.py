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
from _not_applicable import skip_if_not_applicable, synthetic_outs

from tailsynth.data.images import match_channels, resize_batch
from tailsynth.data.manifest import image_shape, load_split, read_classes, read_manifest
from tailsynth.io import folder_digest
from tailsynth.methods import registry
from tailsynth.methods.genie import GenieAda, check_grid, class_prototypes, plan_genie_long_tail
from tailsynth.models.classifier import load_classifier, predict
from tailsynth.synth.plan import finalize_rows

from _common import load_params, log, prepared_dir, stage
from _synth import Synthesis, image_hashes, source_loader

CLASSIFIER = "models/classifier"


@stage
def main(method: str) -> None:
    m = registry.get(method, registry.LONG_TAIL, registry.GENIE)
    params = load_params()
    if skip_if_not_applicable(params, synthetic_outs(m, registry.LONG_TAIL), family=m.family):
        return
    p = params["genie"]
    grid = check_grid(p["ada"]["grid"], p["steps"]) if m.ada else None
    folder = prepared_dir(params)
    classes, manifest = read_classes(folder), read_manifest(folder)
    channels, size = image_shape(folder)
    confusion = pd.read_csv(Path(CLASSIFIER) / "confusion_train_soft.csv", index_col=0).to_numpy()
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
        source_hashes=image_hashes(manifest),
    )
    synthesis = Synthesis(p["scheduler"], params)
    generator_id = synthesis.generator_id(channels, size)
    if grid:  # the kept image also depends on the embedding network and the grid
        generator_id += f"-{folder_digest(CLASSIFIER)}-{grid}"
    plan = finalize_rows(rows, generator_id, m.key_fields)

    def generate_at(batch, sources, r):
        return resize_batch(match_channels(synthesis.generate(batch, sources, r), channels), size)

    if grid:
        embedder = load_classifier(CLASSIFIER, device=synthesis.device)
        images, labels = load_split(folder, "train", channels)
        prototypes = class_prototypes(predict(embedder, images.float() / 255)[1], labels, len(classes))

        def embed(x):
            return predict(embedder, x.float() / 255 if x.dtype == torch.uint8 else x)[1]

        generate = GenieAda(generate_at, embed, prototypes, grid)
    else:
        generate = synthesis.generate
    manifest_out = synthesis.run(
        m,
        registry.LONG_TAIL,
        plan,
        generate,
        source_loader(folder, channels),
        size=size,
        channels=channels,
        batch_size=p["batch_size"],
    )
    if manifest_out is not None and "chosen_r" in manifest_out:
        log.info("GeNIe-Ada chosen r: %s", manifest_out["chosen_r"].value_counts().sort_index().to_dict())


if __name__ == "__main__":
    main(sys.argv[1])
