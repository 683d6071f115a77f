"""Stage glue shared by synth@<method>, synth_genie@<method> and synth_feedback@<method>: the sampler on the
right device, source images, and the sharded, resumable execution of a plan into data/synthetic/<method>/."""

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

from tailsynth.data.manifest import load_rows
from tailsynth.errors import TailsynthError
from tailsynth.io import folder_digest
from tailsynth.methods.registry import Method
from tailsynth.synth.runner import finish, run_plan, write_manifest

from _common import device, inference_dtype, log, progress_bar

GENERATOR = "models/generator"
GENERATOR_INFO = "tailsynth.json"


class Synthesis:
    """The generator loaded once per process, on ``runtime.device`` in ``runtime.dtype``, in accelerate's
    process layout."""

    def __init__(self, scheduler: str, params: dict):
        # Imported here, not at the top: diffusers takes about 4 s to import, and bad params should
        # fail before that.
        from tailsynth.models.generator import load_pipeline
        from tailsynth.synth.sampler import LatentDiffusionSampler

        self.state = process_state(params)
        self.device = process_device(self.state, params)
        dtype = inference_dtype(params, self.device)
        self.sampler = LatentDiffusionSampler(load_pipeline(GENERATOR, device=self.device, dtype=dtype), scheduler)
        # The weights and configs (not tailsynth.json, a description of the run) and the precision.
        self.weights_id = f"{folder_digest(GENERATOR, exclude=(GENERATOR_INFO,))}-{dtype}"

    def generator_id(self, channels: int, size: int) -> str:
        """Part of every row key: other weights, another precision or another output format never reuse an image."""
        return f"{self.weights_id}-{channels}x{size}"

    def generate(self, batch: pd.DataFrame, sources: torch.Tensor | None, r: float | None = None) -> torch.Tensor:
        """Images for a batch of plan rows; ``sources`` are uint8 source images or None (txt2img)."""
        first = batch.iloc[0]
        return self.sampler.generate(
            batch["prompt"].tolist(),
            batch["seed"].tolist(),
            steps=int(first["steps"]),
            cfg=float(first["cfg"]),
            sources=None if sources is None else sources.float() / 255,
            r=float(first["r"] if r is None else r),
        )

    def run(
        self, method: Method, mode: str, plan: pd.DataFrame, generate, load_sources, **kwargs
    ) -> pd.DataFrame | None:
        """:func:`run_set` in this process's place of the process layout."""
        return run_set(self.state, method, mode, plan, generate, load_sources, **kwargs)


def run_set(
    state,
    method: Method,
    mode: str,
    plan: pd.DataFrame,
    generate,
    load_sources,
    *,
    size: int,
    channels: int,
    batch_size: int,
    before_manifest: Callable[[pd.DataFrame, Path], None] | None = None,
    out: Path | None = None,
) -> pd.DataFrame | None:
    """Generate the plan's pending rows (the shard of process ``state``) into the method's synthetic folder
    (or ``out``: the feedback sweep's sets are the guided methods' plans at other step sizes).

    The main process then checks the set, calls ``before_manifest(manifest, folder)`` (method
    extras such as Ada's choices) and writes the manifest last, which marks the set complete.
    Returns the manifest on the main process, None on the others.
    """
    out = method.synthetic_dir(mode) if out is None else Path(out)
    if state.num_processes > len(plan):
        raise TailsynthError(
            f"runtime.launch starts {state.num_processes} processes but the plan of {method.name} has "
            f"{len(plan)} rows; launch at most {len(plan)} processes"
        )
    with progress_bar(len(plan), f"synth {method.name}") as bar:
        run_plan(
            plan,
            out,
            generate,
            load_sources,
            image_size=size,
            channels=channels,
            batch_size=batch_size,
            progress=bar.update,
            process_index=state.process_index,
            num_processes=state.num_processes,
        )
    if state.num_processes > 1:
        log.info(
            "synth %s: process %d of %d has generated its batches",
            method.name,
            state.process_index,
            state.num_processes,
        )
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    manifest = finish(plan, out, size)
    if before_manifest is not None:
        before_manifest(manifest, out)
    write_manifest(manifest, out)
    log.info("synth %s: %d images in %s", method.name, len(plan), out)
    return manifest


def process_state(params: dict):
    """accelerate's process layout: one process, or this one's place under a multi-process launch
    (``runtime.launch``; gloo between CPU processes, where accelerate would otherwise run each alone)."""
    from accelerate import PartialState

    return PartialState(cpu=device(params).type == "cpu")


def process_device(state, params: dict) -> torch.device:
    """The device of this process: accelerate's (one GPU each) under a multi-GPU launch, else ``runtime.device``."""
    return state.device if state.num_processes > 1 and state.device.type == "cuda" else device(params)


def image_hashes(manifest: pd.DataFrame) -> dict[str, str]:
    """Content digests of the prepared images (the manifest's ``sha``); a source's digest enters its rows' keys."""
    return dict(zip(manifest["image"], manifest["sha"], strict=True))


def source_loader(folder: Path, channels: int, column: str = "source_image"):
    """A function from plan rows to the uint8 images their ``column`` names (img2img sources, unCLIP
    conditioning images), or None for rows without one (text-to-image)."""

    def load(batch: pd.DataFrame) -> torch.Tensor | None:
        if (batch[column] == "").all():
            return None
        return load_rows(folder, batch.rename(columns={"image": "target_image", column: "image"}), channels)

    return load
