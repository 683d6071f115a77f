"""Stage glue for the feedback ladder's sets (synth_feedback@<method>) and the ω sweep (feedback_sweep)."""

from pathlib import Path

import pandas as pd
import torch
from _guide import load_guide

from tailsynth.data.images import match_channels, resize_batch
from tailsynth.data.manifest import image_shape, read_classes, read_manifest
from tailsynth.io import folder_digest
from tailsynth.methods import registry
from tailsynth.methods.feedback import LadderSettings, fill_counts, plan_feedback
from tailsynth.methods.registry import Method
from tailsynth.synth.guidance import GuidanceConfig
from tailsynth.synth.plan import finalize_rows

from _common import data_loading, inference_dtype, prepared_dir
from _synth import GENERATOR_INFO, Engine, image_hashes, run_set, source_loader

GENERATOR = "models/generator_unclip"
CLASSIFIER = "models/classifier"


def ladder_settings(p: dict, method: Method, omega: float | None = None) -> LadderSettings:
    """The ``feedback`` params section's settings that ``method`` declares (the others keep their neutral
    defaults), checked; ``omega`` replaces ``feedback.guidance.omega`` (the sweep's points)."""
    guided = registry.GUIDANCE in method.params
    settings = LadderSettings(
        **({"noise_level": p["image"]["noise_level"]} if registry.IMAGE in method.params else {}),
        **({"dropout": p["dropout"]["p"]} if registry.DROPOUT in method.params else {}),
        **({"omega": p["guidance"]["omega"], "every": p["guidance"]["every"]} if guided else {}),
    )
    if guided and omega is not None:
        settings = LadderSettings(settings.noise_level, settings.dropout, omega, settings.every)
    settings.check()
    return settings


def generate_ladder_set(
    params: dict, method: Method, settings: LadderSettings, out: Path | None = None, where: str = "feedback.guidance"
) -> pd.DataFrame | None:
    """Generate (resuming) ``method``'s plan under ``settings`` into its synthetic folder or ``out``; returns
    the manifest on the main process. ``where`` names the guidance params in errors."""
    p = params["feedback"]
    config = None
    if method.criterion is not None:
        config = GuidanceConfig(method.criterion, settings.omega, settings.every)
        config.check(where)
    folder = prepared_dir(params)
    classes, manifest = read_classes(folder), read_manifest(folder)
    channels, size = image_shape(folder)
    counts = fill_counts(classes, fill=p["fill"], per_class=p["per_class"], buckets=p["buckets"])
    # Imported here: diffusers takes seconds to import, and bad params should fail before that.
    from tailsynth.models.classifier import load_classifier
    from tailsynth.models.unclip import load_unclip
    from tailsynth.synth.guidance import FeedbackGuidance
    from tailsynth.synth.unclip_sampler import UnCLIPSampler

    engine = Engine(params)
    dev = engine.device
    dtype = inference_dtype(params, dev)
    pipe = engine.prepare(load_unclip(GENERATOR, device=dev, dtype=dtype, param="generator_unclip"))
    sampler = UnCLIPSampler(pipe, p["scheduler"])
    settings.check(sampler.noise_levels)
    classifier, gaussians, guide = None, None, ""
    if config is not None:
        guide = folder_digest(CLASSIFIER)  # the guiding classifier's weights enter the row keys
        if config.criterion == "hardness":  # the Gaussians of the real train features, read as runtime.loader says
            workers, in_memory = data_loading(params)
            classifier, gaussians = load_guide(folder, channels, len(classes), dev, in_memory, workers)
        else:
            classifier = load_classifier(CLASSIFIER, dev)
    rows = plan_feedback(
        method,
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
    generator_id = f"{folder_digest(GENERATOR, exclude=(GENERATOR_INFO,))}-{dtype}{engine.key}-{channels}x{size}"
    plan = finalize_rows(rows, generator_id, method.key_fields)

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

    return run_set(
        engine,
        method,
        registry.LONG_TAIL,
        plan,
        generate,
        source_loader(folder, channels, column="cond_image"),
        size=size,
        channels=channels,
        batch_size=p["batch_size"],
        out=out,
    )
