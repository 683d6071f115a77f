"""Stage synth_feedback@<method>: one row of the feedback ladder (Askari-Hemmat et al.) into
data/synthetic/<method>/, from the dual-conditioned generator (models/generator_unclip) and, for
feedback_*, the baseline classifier's feedback (models/classifier). Resumable and sharded like synth.
"""

import sys

import pandas as pd
import torch

from tailsynth.data.images import match_channels, resize_batch
from tailsynth.data.manifest import image_shape, load_split, read_classes, read_manifest
from tailsynth.io import folder_digest
from tailsynth.methods import registry
from tailsynth.methods.feedback import LadderSettings, fill_counts, plan_feedback
from tailsynth.synth.guidance import GuidanceConfig
from tailsynth.synth.plan import finalize_rows

from _common import load_params, prepared_dir, stage
from _synth import GENERATOR_INFO, image_hashes, process_device, run_set, source_loader

GENERATOR = "models/generator_unclip"
CLASSIFIER = "models/classifier"


@stage
def main(method: str) -> None:
    params = load_params()
    p = params["feedback"]
    m = registry.get(method, registry.LONG_TAIL, registry.FEEDBACK)
    # Only the sections the method declares (its dvc.yaml params): the others keep their neutral defaults.
    settings = LadderSettings(
        **({"noise_level": p["image"]["noise_level"]} if registry.IMAGE in m.params else {}),
        **({"dropout": p["dropout"]["p"]} if registry.DROPOUT in m.params else {}),
        **({"omega": p["guidance"]["omega"], "every": p["guidance"]["every"]} if registry.GUIDANCE in m.params else {}),
    )
    settings.check()
    config = None
    if m.criterion is not None:
        config = GuidanceConfig(m.criterion, settings.omega, settings.every)
        config.check("feedback.guidance")
    folder = prepared_dir(params)
    classes, manifest = read_classes(folder), read_manifest(folder)
    channels, size = image_shape(folder)
    counts = fill_counts(classes, fill=p["fill"], per_class=p["per_class"], buckets=p["buckets"])
    # Imported here: diffusers takes seconds to import, and bad params should fail before that.
    from accelerate import PartialState

    from tailsynth.models.classifier import load_classifier
    from tailsynth.models.unclip import load_unclip
    from tailsynth.synth.guidance import FeedbackGuidance, class_gaussians
    from tailsynth.synth.unclip_sampler import UnCLIPSampler

    state = PartialState()
    dev = process_device(state)
    dtype = torch.float16 if str(dev).startswith("cuda") else torch.float32
    sampler = UnCLIPSampler(load_unclip(GENERATOR, device=dev, dtype=dtype, param="generator_unclip"), p["scheduler"])
    settings.check(sampler.noise_levels)
    classifier, gaussians, guide = None, None, ""
    if config is not None:
        classifier = load_classifier(CLASSIFIER, dev)
        guide = folder_digest(CLASSIFIER)  # the guiding classifier's weights enter the row keys
        if config.criterion == "hardness":
            real, labels = load_split(folder, "train", channels)
            gaussians = class_gaussians(classifier, real.float() / 255, labels, len(classes))
    rows = plan_feedback(
        m,
        classes,
        manifest,
        counts,
        settings,
        prompt_template=params["generator"]["prompt"],
        steps=p["steps"],
        cfg=p["cfg"],
        scheduler=p["scheduler"],
        seed=p["seed"],
        image_hashes=image_hashes(manifest),
        guide=guide,
    )
    generator_id = f"{folder_digest(GENERATOR, exclude=(GENERATOR_INFO,))}-{dtype}-{channels}x{size}"
    plan = finalize_rows(rows, generator_id, m.key_fields)

    def generate(batch: pd.DataFrame, conds: torch.Tensor | None):
        first = batch.iloc[0]
        guidance = None
        if config is not None:
            targets = torch.tensor(batch["target"].tolist())
            guidance = FeedbackGuidance(classifier, targets, config, gaussians)
        images = sampler.generate(
            batch["prompt"].tolist(),
            batch["seed"].tolist(),
            steps=int(first["steps"]),
            cfg=float(first["cfg"]),
            cond_images=conds,
            noise_level=int(first["noise_level"]),
            dropout=float(first["dropout"]),
            guidance=guidance,
        )
        if guidance is None:
            return images
        # The criterion of the image as it is saved (resized, 8-bit), as the guiding classifier sees it.
        saved = (resize_batch(match_channels(images, channels), size) * 255).round() / 255
        with torch.no_grad():
            values = guidance.values(saved.to(dev) * 2 - 1)
        return images, pd.DataFrame({"criterion_value": values.float().cpu().numpy()})

    run_set(
        state,
        m,
        registry.LONG_TAIL,
        plan,
        generate,
        source_loader(folder, channels, column="cond_image"),
        size=size,
        channels=channels,
        batch_size=p["batch_size"],
    )


if __name__ == "__main__":
    main(sys.argv[1])
