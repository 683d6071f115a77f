"""Stage synth_fusion@<method>: decode the fused latents (data/fusion/fused/) into a synthetic set,
after the last fusion.refine.steps steps of a DDIM schedule (fusion_5step) or without refinement
(fusion_0step). Resumable like every synthetic set: finished rows are kept and skipped."""

import sys

import pandas as pd
import torch
from safetensors.torch import load_file

from tailsynth.checks import real_number, whole_number
from tailsynth.data.class_names import prompt_for, uses_group
from tailsynth.data.manifest import image_shape, read_classes, read_manifest
from tailsynth.errors import TailsynthError
from tailsynth.methods import registry
from tailsynth.synth.plan import finalize_rows

from _common import load_params, prepared_dir, stage
from _synth import Synthesis, image_hashes

FUSED = "data/fusion/fused"


@stage
def main(method: str) -> None:
    m = registry.get(method, registry.LONG_TAIL, registry.FUSION)
    params = load_params()
    p = params["fusion"]
    batch_size = whole_number(p["batch_size"], "fusion.batch_size", 1)
    if m.refine:
        refine = p["refine"]
        schedule = whole_number(refine["schedule"], "fusion.refine.schedule", 1)
        steps = whole_number(refine["steps"], "fusion.refine.steps")
        if steps > schedule:
            raise TailsynthError(f"fusion.refine.steps ({steps}) must be at most fusion.refine.schedule ({schedule})")
        cfg = real_number(refine["cfg"], "fusion.refine.cfg", minimum=0) if steps else 0.0
        template = params["generator"]["prompt"] if steps else None
    else:  # decode only: no prompt, no schedule, no guidance
        schedule, steps, cfg, template = 1, 0, 0.0, None
    folder = prepared_dir(params)
    classes, manifest = read_classes(folder), read_manifest(folder, multilabel=True)
    channels, size = image_shape(folder)
    pairs = pd.read_csv(f"{FUSED}/rows.csv", keep_default_na=False)
    fused = load_file(f"{FUSED}/latents.safetensors")["latents"]
    group = dict(zip(manifest["image"], manifest["group"].astype(str), strict=True)) if "group" in manifest else {}
    hashes = image_hashes(manifest)
    rows = []
    for pair in pairs.to_dict("records"):
        target = classes[int(pair["target"])]
        group_name = group.get(pair["source_image"]) if template and uses_group(template) else None
        prompt = prompt_for(template, target, group_name) if template else ""
        rows.append(
            {
                **pair,
                "method": method,
                "mode": "fusion",
                "label": int(pair["target"]),
                "prompt": prompt,
                # r: the share of the schedule run (no noise is added); decode-only rows have none
                "r": steps / schedule,
                "steps": steps,
                "cfg": cfg,
                "scheduler": f"ddim_last_of_{schedule}" if steps else "",
                "source_hash": hashes.get(pair["source_image"], ""),
                "head_hash": hashes.get(pair["head_image"], ""),
            }
        )
    synthesis = Synthesis("ddim", params)
    plan = finalize_rows(rows, synthesis.generator_id(channels, size), m.key_fields)
    from tailsynth.methods.fusion.refine import FusionRefiner

    refiner = FusionRefiner(synthesis.sampler.txt2img, schedule=schedule)

    def generate(batch: pd.DataFrame, sources: torch.Tensor | None) -> torch.Tensor:
        latents = fused[torch.as_tensor(batch["fused_row"].to_numpy(copy=True))]
        return refiner.images(latents, batch["prompt"].tolist(), steps=steps, cfg=cfg)

    synthesis.run(
        m,
        registry.LONG_TAIL,
        plan,
        generate,
        lambda batch: None,
        size=size,
        channels=channels,
        batch_size=batch_size,
    )


if __name__ == "__main__":
    main(sys.argv[1])
