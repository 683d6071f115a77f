"""Execute a plan with Ray Data: the pending batches as a dataset, ``map_batches`` over actors that each hold one
pipeline, writing into the same folder (shared storage on a cluster) as :func:`tailsynth.synth.runner.run_plan`.

The batches are :func:`~tailsynth.synth.runner.batches` of the whole plan and each is written by
:func:`~tailsynth.synth.runner.write_batch`, as in the plain runner, so the images are the same bytes
whichever actor, how many actors, or which engine made them; an interrupted run resumes the same way.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tailsynth.errors import TailsynthError
from tailsynth.synth.plan import write_plan
from tailsynth.synth.runner import GenerateFn, SourceFn, batches, image_ok, write_batch


@dataclass(frozen=True)
class RayConfig:
    """``runtime.ray``: pipelines (actors) at once and the resources each one takes."""

    actors: int = 2
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0


@dataclass
class _Job:
    """What every actor needs: shipped once per actor (the generate function loads its pipeline on first use)."""

    plan: pd.DataFrame
    folder: Path
    generate: GenerateFn
    load_sources: SourceFn
    image_size: int
    channels: int
    batch_size: int


class _BatchWriter:
    """A Ray Data actor: maps batch numbers of the plan to the count of images it wrote for them."""

    def __init__(self, job: _Job):
        self.job = job
        self.batches = list(batches(job.plan, job.batch_size))

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        j = self.job
        written = [
            write_batch(
                self.batches[int(i)], j.folder, j.generate, j.load_sources, image_size=j.image_size, channels=j.channels
            )
            for i in rows["batch"]
        ]
        return {"batch": rows["batch"], "written": np.asarray(written, dtype=np.int64)}


def reachable(address: str, timeout: float = 5.0) -> str | None:
    """None when a TCP connection to ``address`` (``host:port`` or ``ray://host:port``) opens, else why not.

    ``ray.init`` retries an unreachable address for minutes; this answers in at most ``timeout`` s.
    """
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return "not host:port"
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None


def check_address() -> str:
    """``RAY_ADDRESS`` ('' when unset), checked: an address that cannot be reached is a ``TailsynthError``
    naming it, raised within seconds. ``auto`` (the cluster this machine belongs to) is passed on as it is."""
    address = os.environ.get("RAY_ADDRESS", "")
    if address and address != "auto":
        why = reachable(address)
        if why is not None:
            raise TailsynthError(
                f"RAY_ADDRESS={address} cannot be reached ({why}); start the cluster there, "
                "or unset RAY_ADDRESS to run a local Ray"
            )
    return address


def connect(runtime_env: dict | None = None) -> bool:
    """Join the Ray cluster at ``RAY_ADDRESS`` when it is set, else start a local Ray; True when this call
    started Ray (the caller shuts it down).

    See :func:`check_address`.
    """
    import ray

    if ray.is_initialized():
        return False
    address = check_address()
    ray.init(address=address or None, runtime_env=runtime_env, log_to_driver=False, include_dashboard=False)
    return True


def run_plan_ray(
    plan: pd.DataFrame,
    folder: str | Path,
    generate: GenerateFn,
    load_sources: SourceFn,
    *,
    image_size: int,
    channels: int,
    batch_size: int,
    config: RayConfig,
    runtime_env: dict | None = None,
) -> pd.DataFrame:
    """Generate every pending row of ``plan`` into ``folder`` on Ray actors and return the plan.

    The plan is written first; the batches with a missing image become a Ray dataset of batch
    numbers, mapped by ``config.actors`` actors (each with ``config.gpus_per_actor`` GPUs and
    ``config.cpus_per_actor`` CPUs), one batch per call. ``generate`` and ``load_sources`` are
    pickled to every actor (cloudpickle): a generate function that loads its pipeline on first use
    loads it once per actor. ``runtime_env`` goes to ``ray.init`` (e.g. the stage folder on the
    workers' ``PYTHONPATH``). Call :func:`tailsynth.synth.runner.finish` afterwards.
    """
    import ray

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_plan(plan, folder)
    pending = [
        i
        for i, b in enumerate(batches(plan, batch_size))
        if not all(image_ok(folder / rel, image_size) for rel in b["image"])
    ]
    if not pending:
        return plan
    job = _Job(plan, folder.resolve(), generate, load_sources, image_size, channels, batch_size)
    started = connect(runtime_env)
    try:
        _map(job, pending, config)
    finally:
        if started:  # a local Ray started here ends here (a forked stage process may never run atexit)
            ray.shutdown()
    return plan


def _map(job: _Job, pending: list[int], config: RayConfig) -> None:
    """The pending batch numbers through ``map_batches``, one actor (one pipeline) per concurrent batch."""
    import ray

    done = (
        # One block per batch, made in this process: a repartition task would wait for a CPU that
        # the actors hold (measured: a deadlock with 2 actors of 1 CPU on 2 cores).
        ray.data.from_items([{"batch": i} for i in pending], override_num_blocks=len(pending))
        .map_batches(
            _BatchWriter,
            fn_constructor_args=(job,),
            batch_size=1,
            concurrency=config.actors,
            num_gpus=config.gpus_per_actor or None,
            num_cpus=config.cpus_per_actor,
        )
        .take_all()
    )
    if sorted(int(r["batch"]) for r in done) != pending:
        raise RuntimeError(f"Ray returned {len(done)} of {len(pending)} batches for {job.folder}; re-run to resume")
