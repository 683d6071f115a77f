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
    """The whole params.yaml (stage scripts read it; the library never does)."""
    with open(PARAMS_FILE, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


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


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


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
