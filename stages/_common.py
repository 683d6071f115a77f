"""Shared plumbing for the thin stage scripts: params, errors, device, progress."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

PARAMS_FILE = Path(os.environ.get("TAILSYNTH_PARAMS", "params.yaml"))
log = logging.getLogger("tailsynth")


def load_params() -> dict:
    """The whole params.yaml (stage scripts read it; the library never does); a clear error if it does not parse."""
    from tailsynth.errors import TailsynthError

    try:
        with open(PARAMS_FILE, encoding="utf-8") as fh:
            params = yaml.safe_load(fh)
    except OSError as exc:
        raise TailsynthError(
            f"{PARAMS_FILE}: cannot read it ({exc.strerror}); run the stage from the project root"
        ) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise TailsynthError(f"{PARAMS_FILE} is not valid YAML{where}: {problem}; fix that line") from exc
    if not isinstance(params, dict):
        raise TailsynthError(f"{PARAMS_FILE} must be a mapping of param sections, got {type(params).__name__}")
    return params


def stage(fn: Callable[..., None]) -> Callable[..., None]:
    """Run a stage's main: user errors become one line on stderr and exit status 2."""

    @functools.wraps(fn)
    def main(*args, **kwargs) -> None:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        from tailsynth.errors import TailsynthError

        try:
            fn(*args, **kwargs)
        except TailsynthError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)

    return main


def device(params: dict):
    """The torch device ``runtime.device`` names (``auto``: CUDA when present, else the CPU)."""
    from tailsynth.runtime import resolve_device

    return resolve_device(require(params.get("runtime") or {}, "device", "runtime"))


def inference_dtype(params: dict, dev):
    """The precision ``runtime.dtype`` names for sampling on ``dev`` (``auto``: fp16 on CUDA, else fp32)."""
    from tailsynth.runtime import resolve_dtype

    return resolve_dtype(require(params.get("runtime") or {}, "dtype", "runtime"), dev)


def data_loading(params: dict) -> tuple[int, int]:
    """``runtime.loader``: (DataLoader workers that decode streamed images, the most bytes of an image set
    held in memory instead of streamed), checked."""
    from tailsynth.errors import TailsynthError

    section = require(params.get("runtime") or {}, "loader", "runtime")
    values = [require(section, key, "runtime.loader") for key in ("workers", "in_memory_mib")]
    for key, value in zip(("workers", "in_memory_mib"), values, strict=True):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise TailsynthError(f"runtime.loader.{key} must be a whole number >= 0, got {value!r}")
    return values[0], values[1] * 2**20


def progress_bar(total: int, desc: str):
    """A tqdm bar on stderr, quiet when not attached to a terminal."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=None, mininterval=2.0)


def prepared_dir(params: dict) -> Path:
    return Path("data/prepared") / params["data"]["dataset"]


def require(section: dict, key: str, where: str):
    """``section[key]``, or a clear error naming ``where.key``."""
    from tailsynth.errors import TailsynthError

    if section.get(key) in (None, ""):
        raise TailsynthError(f"param {where}.{key} is required; set it in params.yaml")
    return section[key]
