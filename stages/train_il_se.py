"""Stage train_il_se: Iterated Learning of the sparse feature space (student S, decoder D, classifier C)
on the encoded latents; models/fusion/, metrics/fusion/il.json and the per-generation curves
(metrics/plots/il_generations.csv)."""

import dataclasses

import pandas as pd

from tailsynth.data.manifest import read_classes
from tailsynth.data.targets import rows_targets
from tailsynth.errors import TailsynthError
from tailsynth.io import atomic_dir, atomic_write_text, write_json
from tailsynth.methods.fusion.embedding import (
    EmbeddingConfig,
    ILConfig,
    save_models,
    tanh_capped_sparsity,
    train_iterated,
)
from tailsynth.methods.fusion.latents import load_latents

from _common import device, load_params, log, prepared_dir, stage

LATENTS = "data/latents"
OUT = "models/fusion"


@stage
def main() -> None:
    params = load_params()
    p = params["fusion"]
    classes = read_classes(prepared_dir(params))
    il = ILConfig(**known_keys(p["il"], ILConfig, "fusion.il"))
    se = known_keys(p["se"], EmbeddingConfig, "fusion.se")
    config = EmbeddingConfig(latent_channels=1, num_classes=len(classes), **se)  # bad values fail here
    index, latents = load_latents(LATENTS)
    targets = rows_targets(index, len(classes))  # class indices, or multi-hot rows (C then trains with BCE)
    config = dataclasses.replace(config, latent_channels=int(latents.shape[1]), multilabel=targets.ndim == 2)
    # Sparsity references: uniform simplices, and the bound a Tanh on the logits would set at the
    # reference's temperature 1 and at this run's tau.
    uniform, capped = 1 / config.group, tanh_capped_sparsity(config.group)
    capped_at_tau = tanh_capped_sparsity(config.group, config.tau)
    curve = []

    def record(generation: int, metrics: dict) -> None:
        log.info("generation %d: %s", generation, {k: round(v, 4) for k, v in metrics.items()})
        curve.append({"generation": generation, **metrics, "uniform": uniform, "tanh_capped_tau1": capped})

    models = train_iterated(latents, targets, config, il, device=device(params), callback=record)
    final = {k: v for k, v in curve[-1].items() if k not in ("generation", "uniform", "tanh_capped_tau1")}
    with atomic_dir(OUT) as tmp:
        save_models(models, tmp, {"train_samples": len(latents)})
    summary = {"generations": il.generations, "train_samples": len(latents), **final}
    references = {
        "sparsity_uniform": uniform,
        "sparsity_tanh_capped_tau1": capped,
        "sparsity_tanh_capped_at_tau": capped_at_tau,
    }
    write_json("metrics/fusion/il.json", {**summary, **references})
    atomic_write_text("metrics/plots/il_generations.csv", pd.DataFrame(curve).to_csv(index=False))


def known_keys(section: dict, cls, param: str) -> dict:
    """``section`` if every key is a field of ``cls``; else a one-line error naming ``param``."""
    fields = {f.name for f in dataclasses.fields(cls)} - {"latent_channels", "num_classes", "multilabel"}
    unknown = sorted(set(section) - fields)
    if unknown:
        raise TailsynthError(f"{param} has unknown keys {unknown}; it takes {', '.join(sorted(fields))}")
    return section


if __name__ == "__main__":
    main()
