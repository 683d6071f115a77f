"""Stage fewshot_synth@<method>: generated images for every episode -> data/fewshot/synthetic/<method>/.

Each class of an N-way K-shot episode gets (N−1)·K images (``tailsynth.methods.episodic``).
The plan covers the largest shot count; smaller ones use a subset. Resumable and sharded like
synth@<method>, so repeated evaluation never regenerates. GeNIe-Ada generates every grid level
(in shared batches across pairs: the sweep of fixed-r GeNIe sets) and then records its choice
per pair and shot count in ``ada_choices.csv``, embedding with the few-shot backbone.
"""

import sys

import torch
from _fewshot import ADA_CHOICES, BACKBONE, embed_files, read_episodes
from _not_applicable import skip_if_not_applicable, synthetic_outs

from tailsynth.data.class_names import uses_group
from tailsynth.data.groups import class_groups
from tailsynth.data.manifest import image_shape, read_classes, read_manifest
from tailsynth.io import atomic_write_text
from tailsynth.methods import registry
from tailsynth.methods.episodic import ada_choices, plan_episodic
from tailsynth.methods.generated import check_noise_ratio, check_spec
from tailsynth.methods.genie import check_grid
from tailsynth.methods.registry import Method
from tailsynth.models.classifier import load_classifier
from tailsynth.synth.plan import finalize_rows

from _common import load_params, log, prepared_dir, stage
from _synth import Synthesis, image_hashes, source_loader


def generation_spec(params: dict, method: Method, steps: int) -> tuple[str, list[float]]:
    """(kind, noise levels) of a generated few-shot method, checked against its params."""
    where = "fewshot_synth.steps"
    if method.family == registry.GENIE:
        if method.ada:
            return "genie", check_grid(params["genie"]["ada"]["grid"], steps, steps_param=where)
        return "genie", [check_noise_ratio(params["genie"]["r"], steps, param="genie.r", steps_param=where)]
    spec = {"mode": method.generation, **(params["synth"].get(method.name) or {})}
    check_spec(method.name, spec, steps, steps_param=where)
    return spec["mode"], [float(spec.get("r", 1.0))]


@stage
def main(method: str) -> None:
    m = registry.get(method, registry.FEWSHOT, (registry.GENERATED, registry.GENIE))
    params = load_params()
    if skip_if_not_applicable(params, synthetic_outs(m, registry.FEWSHOT), mode=registry.FEWSHOT):
        return
    p = params["fewshot_synth"]
    kind, levels = generation_spec(params, m, p["steps"])
    episodes = read_episodes()
    folder = prepared_dir(params)
    classes = read_classes(folder)
    channels, size = image_shape(folder)
    support_images = sorted(set(episodes.loc[episodes["role"] == "support", "image"]))
    manifest = read_manifest(folder)
    rows = plan_episodic(
        method,
        kind,
        episodes,
        classes,
        levels=levels,
        prompt_template=params["generator"]["prompt"],
        steps=p["steps"],
        cfg=p["cfg"],
        scheduler=p["scheduler"],
        seed=p["seed"],
        source_hashes=image_hashes(manifest),
        class_groups=class_groups(manifest) if uses_group(params["generator"]["prompt"]) else None,
    )
    synthesis = Synthesis(p["scheduler"], params)
    plan = finalize_rows(rows, synthesis.generator_id(channels, size), m.key_fields)

    def ada_choices_file(manifest, out) -> None:
        """GeNIe-Ada's level per pair and shot count, written before the manifest marks the set complete."""
        backbone = load_classifier(BACKBONE, synthesis.device)
        level_features = torch.from_numpy(embed_files(backbone, out, manifest["image"].tolist(), channels))
        sources = torch.from_numpy(embed_files(backbone, folder, support_images, channels))
        choices = ada_choices(
            manifest,
            level_features,
            dict(zip(support_images, sources, strict=True)),
            episodes,
            params["fewshot"]["shots"],
        )
        atomic_write_text(out / ADA_CHOICES, choices.to_csv(index=False))
        # The manifest records the choices too, so a stage that depends on it sees them change.
        chosen = choices.groupby("image")["shots"].apply(lambda k: "|".join(map(str, sorted(k))))
        manifest["chosen_shots"] = manifest["image"].map(chosen).fillna("")
        for k, group in choices.groupby("shots"):
            log.info("GeNIe-Ada %d-shot chosen r: %s", k, group["chosen_r"].value_counts().sort_index().to_dict())

    synthesis.run(
        m,
        registry.FEWSHOT,
        plan,
        synthesis.generate,
        source_loader(folder, channels),
        size=size,
        channels=channels,
        batch_size=p["batch_size"],
        before_manifest=ada_choices_file if m.ada else None,
    )


if __name__ == "__main__":
    main(sys.argv[1])
