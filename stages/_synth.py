"""Stage glue shared by synth@<method> and synth_genie@<method>: the sampler on the right device,
source images, and the sharded, resumable execution of a plan into data/synthetic/<method>/."""

from pathlib import Path

import pandas as pd
import torch

from tailsynth.data.manifest import load_rows, resolve_inside
from tailsynth.io import file_digest, folder_digest
from tailsynth.models.generator import load_pipeline
from tailsynth.synth.runner import finish, run_plan
from tailsynth.synth.sampler import LatentDiffusionSampler

from _common import device, log, progress_bar

GENERATOR = "models/generator"


class Synthesis:
    """The generator loaded once per process (fp16 on CUDA), with accelerate's process layout."""

    def __init__(self, scheduler: str):
        from accelerate import PartialState

        self.state = PartialState()
        self.device = device() if self.state.device.type == "cpu" else self.state.device
        dtype = torch.float16 if str(self.device).startswith("cuda") else torch.float32
        self.sampler = LatentDiffusionSampler(load_pipeline(GENERATOR, device=self.device, dtype=dtype), scheduler)
        # Part of every row key: other weights or another precision never reuse an image.
        self.generator_id = f"{folder_digest(GENERATOR)}-{dtype}"

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
        self,
        method: str,
        plan: pd.DataFrame,
        generate,
        load_sources,
        *,
        size: int,
        channels: int,
        batch_size: int,
        out: Path | None = None,
    ) -> pd.DataFrame | None:
        """Generate the plan's pending rows (this process's shard); the main process writes the manifest.

        ``out`` defaults to data/synthetic/<method>.
        """
        out = out or Path("data/synthetic") / method
        with progress_bar(len(plan), f"synth {method}") as bar:
            run_plan(
                plan,
                out,
                generate,
                load_sources,
                image_size=size,
                channels=channels,
                batch_size=batch_size,
                progress=bar.update,
                process_index=self.state.process_index,
                num_processes=self.state.num_processes,
            )
        self.state.wait_for_everyone()
        if not self.state.is_main_process:
            return None
        manifest = finish(plan, out, size)
        log.info("synth %s: %d images in %s", method, len(plan), out)
        return manifest


def train_source_hashes(folder: Path, manifest: pd.DataFrame) -> dict[str, str]:
    """Content digests of the train images, the possible sources (they enter the row keys)."""
    return source_hashes(folder, manifest.loc[manifest["split"] == "train", "image"])


def source_hashes(folder: Path, images) -> dict[str, str]:
    """Content digests of the given prepared images (relative paths)."""
    return {rel: file_digest(resolve_inside(folder, rel), 12) for rel in images}


def source_loader(folder: Path, channels: int):
    """A function from plan rows to their source images (uint8), or None for text-to-image rows."""

    def load(batch: pd.DataFrame) -> torch.Tensor | None:
        if (batch["source_image"] == "").all():
            return None
        return load_rows(folder, batch.rename(columns={"image": "target_image", "source_image": "image"}), channels)

    return load
