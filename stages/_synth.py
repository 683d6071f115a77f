"""Stage glue shared by the generation stages: the sampler on the right device, source images, and the sharded,
resumable execution of a plan into data/synthetic/<method>/, by the processes of ``runtime.launch`` or, with
``runtime.engine: ray``, by Ray Data actors."""

import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

from tailsynth.data.manifest import load_rows
from tailsynth.errors import TailsynthError
from tailsynth.io import folder_digest
from tailsynth.methods.registry import Method
from tailsynth.synth.runner import finish, run_plan, write_manifest

from _common import device, inference_dtype, log, progress_bar, require

GENERATOR = "models/generator"
GENERATOR_INFO = "tailsynth.json"
ENGINES = ("launch", "ray")
STAGES = Path(__file__).resolve().parent


def compile_unet(pipe, on: bool):
    """``pipe`` with ``torch.compile`` on its UNet when ``on`` (CUDA only; the first batches then take longer)."""
    if on:
        pipe.unet = torch.compile(pipe.unet)
    return pipe


class Engine:
    """``runtime.engine``: ``launch`` (the processes of ``runtime.launch`` share the plan) or ``ray`` (Ray Data
    actors, ``runtime.ray``, against ``RAY_ADDRESS`` or a local Ray), and the device its pipelines run on."""

    def __init__(self, params: dict):
        runtime = params.get("runtime") or {}
        self.name = require(runtime, "engine", "runtime")
        if self.name not in ENGINES:
            raise TailsynthError(f"runtime.engine {self.name!r} is not one of {', '.join(ENGINES)}")
        self.state = process_state(params)
        self.ray = None
        if self.name == "ray":
            from tailsynth.synth.ray_engine import RayConfig, check_address

            check_address()  # before anything is written

            if self.state.num_processes > 1:
                raise TailsynthError(
                    "runtime.engine ray runs the stage in one process and spreads it over Ray actors; "
                    "set runtime.launch to python"
                )
            section = runtime.get("ray") or {}
            unknown = sorted(set(section) - set(RayConfig.__dataclass_fields__))
            if unknown:
                raise TailsynthError(
                    f"runtime.ray has unknown keys {unknown}; use actors, gpus_per_actor, cpus_per_actor"
                )
            self.ray = RayConfig(**section)
            if not (isinstance(self.ray.actors, int) and self.ray.actors >= 1) or self.ray.gpus_per_actor < 0:
                raise TailsynthError("runtime.ray.actors must be an integer >= 1 and gpus_per_actor >= 0")
        # Ray actors run on their own GPU (gpus_per_actor > 0) or on the CPU; launched processes on theirs.
        if self.ray is not None:
            self.device = torch.device("cuda" if self.ray.gpus_per_actor else "cpu")
        else:
            self.device = process_device(self.state, params)
        self.compile = require(runtime, "compile", "runtime")
        if not isinstance(self.compile, bool):
            raise TailsynthError(f"runtime.compile must be true or false, got {self.compile!r}")
        if self.compile and self.device.type != "cuda":
            raise TailsynthError(
                f"runtime.compile is true but the generation runs on {self.device.type}; torch.compile of the UNet "
                "is for CUDA: set runtime.compile to false here"
            )

    def prepare(self, pipe):
        """``pipe`` with its UNet compiled when ``runtime.compile`` says so."""
        return compile_unet(pipe, self.compile)

    @property
    def key(self) -> str:
        """What the engine adds to every row key: compiled kernels may round differently."""
        return "-compiled" if self.compile else ""

    def run_plan(self, plan, out, generate, load_sources, *, size, channels, batch_size, progress) -> None:
        """Generate the plan's pending rows: this process's shard of the batches, or all of them on Ray actors."""
        if self.ray is None:
            run_plan(
                plan,
                out,
                generate,
                load_sources,
                image_size=size,
                channels=channels,
                batch_size=batch_size,
                progress=progress,
                process_index=self.state.process_index,
                num_processes=self.state.num_processes,
            )
            return
        from tailsynth.synth.ray_engine import run_plan_ray

        where = os.environ.get("RAY_ADDRESS") or "local"
        log.info("synth: the pending batches of %s on Ray (%s), %d actors", out, where, self.ray.actors)

        # The actors unpickle functions of the stage modules (_synth, _common...): they import them from here.
        path = os.pathsep.join(p for p in (str(STAGES), os.environ.get("PYTHONPATH", "")) if p)
        run_plan_ray(
            plan,
            out,
            generate,
            load_sources,
            image_size=size,
            channels=channels,
            batch_size=batch_size,
            config=self.ray,
            runtime_env={"env_vars": {"PYTHONPATH": path}},
        )


class Synthesis:
    """The generator, loaded once per process (or per Ray actor) on first use, on ``runtime.device`` in
    ``runtime.dtype``, in the layout of ``runtime.engine``."""

    def __init__(self, scheduler: str, params: dict):
        self.engine = Engine(params)
        self.state, self.device = self.engine.state, self.engine.device
        self.dtype = inference_dtype(params, self.device)
        self.scheduler = scheduler
        self.folder = Path(GENERATOR).resolve()
        self.compile = self.engine.compile
        self._sampler = None
        # The weights and configs (not tailsynth.json, a description of the run), the precision, compilation.
        self.weights_id = f"{folder_digest(GENERATOR, exclude=(GENERATOR_INFO,))}-{self.dtype}{self.engine.key}"

    @property
    def sampler(self):
        if self._sampler is None:
            # Imported here, not at the top: diffusers takes about 4 s to import, and bad params should
            # fail before that.
            from tailsynth.models.generator import load_pipeline
            from tailsynth.synth.sampler import LatentDiffusionSampler

            pipe = compile_unet(load_pipeline(self.folder, device=self.device, dtype=self.dtype), self.compile)
            self._sampler = LatentDiffusionSampler(pipe, self.scheduler)
        return self._sampler

    def __getstate__(self) -> dict:
        # Shipped to Ray actors without the process layout, and without the pipeline unless it is
        # already loaded here (then it travels with the object).
        return {k: v for k, v in self.__dict__.items() if k not in ("engine", "state")}

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
        return run_set(self.engine, method, mode, plan, generate, load_sources, **kwargs)


def run_set(
    engine: Engine,
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
    """Generate the plan's pending rows (this process's shard, or all of them on Ray actors, as ``engine`` says)
    into the method's synthetic folder (or ``out``: the feedback sweep's sets are the guided methods' plans
    at other step sizes).

    The main process then checks the set, calls ``before_manifest(manifest, folder)`` (method
    extras such as Ada's choices) and writes the manifest last, which marks the set complete.
    Returns the manifest on the main process, None on the others.
    """
    out = method.synthetic_dir(mode) if out is None else Path(out)
    state = engine.state
    if state.num_processes > len(plan):
        raise TailsynthError(
            f"runtime.launch starts {state.num_processes} processes but the plan of {method.name} has "
            f"{len(plan)} rows; launch at most {len(plan)} processes"
        )
    with progress_bar(len(plan), f"synth {method.name}") as bar:
        engine.run_plan(
            plan, out, generate, load_sources, size=size, channels=channels, batch_size=batch_size, progress=bar.update
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

    folder = Path(folder).resolve()  # Ray actors may run elsewhere than the stage's folder

    def load(batch: pd.DataFrame) -> torch.Tensor | None:
        if (batch[column] == "").all():
            return None
        return load_rows(folder, batch.rename(columns={"image": "target_image", column: "image"}), channels)

    return load
