"""Stage synth@<method>: plan and generate a synthetic set into data/synthetic/<method>/.

Resumable: the output is persisted by DVC and finished rows are skipped on re-run. Run under
``accelerate launch`` to shard batches over several GPUs; the manifest is the same.
"""

import sys
from pathlib import Path

import torch

from tailsynth.data.manifest import image_shape, load_rows, read_classes, read_manifest, resolve_inside
from tailsynth.errors import TailsynthError
from tailsynth.io import file_digest, folder_digest
from tailsynth.methods.generated import check_spec, plan_generated
from tailsynth.models.generator import load_pipeline
from tailsynth.synth.plan import finalize_rows
from tailsynth.synth.runner import finish, run_plan
from tailsynth.synth.sampler import LatentDiffusionSampler

from _common import device, load_params, log, prepared_dir, progress_bar, stage

GENERATOR = "models/generator"


@stage
def main(method: str) -> None:
    from accelerate import PartialState

    params = load_params()
    p = params["synth"]
    if not isinstance(p.get(method), dict):
        raise TailsynthError(f"unknown generated method {method!r}: params.yaml has no synth.{method} section")
    check_spec(method, p[method], p["steps"])
    folder = prepared_dir(params)
    classes, manifest = read_classes(folder), read_manifest(folder)
    channels, size = image_shape(folder)
    train = manifest.loc[manifest["split"] == "train", "image"]
    source_hashes = {rel: file_digest(resolve_inside(folder, rel), 12) for rel in train}
    rows = plan_generated(
        method,
        p[method],
        classes,
        manifest,
        per_class=p["per_class"],
        buckets=p["buckets"],
        prompt_template=params["generator"]["prompt"],
        steps=p["steps"],
        cfg=p["cfg"],
        scheduler=p["scheduler"],
        seed=p["seed"],
        source_hashes=source_hashes,
    )
    state = PartialState()
    dev = device() if state.device.type == "cpu" else state.device
    dtype = torch.float16 if str(dev).startswith("cuda") else torch.float32
    plan = finalize_rows(rows, f"{folder_digest(GENERATOR)}-{dtype}")
    out = Path("data/synthetic") / method
    sampler = LatentDiffusionSampler(load_pipeline(GENERATOR, device=dev, dtype=dtype), p["scheduler"])

    def load_sources(batch):
        if (batch["mode"] == "txt2img").all():
            return None
        return load_rows(folder, batch.rename(columns={"image": "target_image", "source_image": "image"}), channels)

    def generate(batch, sources):
        first = batch.iloc[0]
        return sampler.generate(
            batch["prompt"].tolist(),
            batch["seed"].tolist(),
            steps=int(first["steps"]),
            cfg=float(first["cfg"]),
            sources=None if sources is None else sources.float() / 255,
            r=float(first["r"]),
        )

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
        finish(plan, out, size)
        log.info("synth %s: %d images in %s", method, len(plan), out)


if __name__ == "__main__":
    main(sys.argv[1])
