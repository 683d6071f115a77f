"""Build a throw-away git + DVC project from this checkout, with params overrides."""

from __future__ import annotations

import atexit
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tailsynth.warm import WarmServer

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("dvc.yaml", "pipelines", "params.yaml", "stages", "src", "ci", "pyproject.toml")
# The pipeline's files: the root dvc.yaml and the parts in pipelines/<part>/dvc.yaml (each with its own lock).
PIPELINE_FILES = ("dvc.yaml", *sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("pipelines/*/dvc.yaml")))


def pipeline_stages(root: Path = ROOT) -> dict[str, dict]:
    """Every stage of the pipeline's dvc.yaml files, by name (a foreach stage's ``do`` merged with its
    ``foreach``), whichever file declares it."""
    stages: dict[str, dict] = {}
    for name in PIPELINE_FILES:
        for stage, body in yaml.safe_load((root / name).read_text())["stages"].items():
            assert stage not in stages, f"stage {stage} is declared twice"
            stages[stage] = body
    return stages


_server: WarmServer | None = None


def stage_shim() -> Path:
    """The folder holding the ``python`` shim of a :class:`tailsynth.warm.WarmServer` (what ``make run``
    uses), started on first use: stage scripts then start in a forked, preloaded interpreter.

    ``TAILSYNTH_TEST_FRESH_PROCESSES=1`` turns it off: every stage then starts its own interpreter.
    """
    global _server
    if _server is None:
        server = WarmServer()
        reason = server.start(real=sys.executable)
        if reason is not None:
            raise RuntimeError(f"the stage server cannot run here: {reason}")
        atexit.register(server.stop)
        _server = server
    return _server.folder


def deep_update(base: dict, override: dict) -> dict:
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = value
    return base


def command_env(cmd: list[str], fresh: bool = False) -> tuple[list[str], dict]:
    """``cmd`` and its environment: this venv first on PATH; stage scripts go to the stage server
    unless ``fresh`` (or ``TAILSYNTH_TEST_FRESH_PROCESSES=1``)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if not fresh and os.environ.get("TAILSYNTH_TEST_FRESH_PROCESSES") != "1":
        shim = stage_shim()
        env["PATH"] = f"{shim}{os.pathsep}{env['PATH']}"
        cmd = [str(shim / "python") if c == sys.executable else c for c in cmd]
    env.setdefault("PYTHONUNBUFFERED", "1")
    # One torch thread per stage: the tests run two pipelines at a time (the queue's workers, the
    # background digits_groups run), and two 2-thread OpenMP pools on 2 cores spin against each other
    # (measured: a small training loop 3.2x slower than alone; at one thread each, no slower).
    env.setdefault("OMP_NUM_THREADS", "1")
    return cmd, env


def run(cmd: list[str], cwd: Path, check: bool = True, fresh: bool = False) -> subprocess.CompletedProcess:
    """Run ``cmd`` in ``cwd`` (see :func:`command_env`), capturing its output."""
    cmd, env = command_env(cmd, fresh)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        tail = f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{tail}")
    return proc


def make_project(dest: Path, overrides: dict) -> Path:
    """Copy the pipeline into ``dest``, apply ``overrides`` to params.yaml, git + dvc init, commit."""
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, dest / name)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    (dest / "params.yaml").write_text(yaml.safe_dump(deep_update(params, overrides), sort_keys=False))
    shutil.copy2(ROOT / ".gitignore", dest / ".gitignore")
    dvc = str(Path(sys.executable).parent / "dvc")
    run(["git", "init", "-q"], dest)
    run(["git", "config", "user.email", "tests@tailsynth.invalid"], dest)
    run(["git", "config", "user.name", "tailsynth tests"], dest)
    run([dvc, "init", "-q"], dest)
    shutil.copy2(ROOT / ".dvc" / "config", dest / ".dvc" / "config")  # the placeholder remote and all
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-q", "-m", "pipeline"], dest)
    return dest


def start_repro(root: Path, nice: int = 0, **extra_env: str) -> subprocess.Popen:
    """``dvc repro`` in ``root``, in the background (see :func:`command_env`; ``extra_env`` added), its output
    in ``root/repro.log``; ``nice`` more than this process (its stages too: the stage server honours it)."""
    cmd, env = command_env([str(Path(sys.executable).parent / "dvc"), "repro"])
    env |= extra_env
    with open(root / "repro.log", "w") as log:
        return subprocess.Popen(
            cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=lambda: os.nice(nice)
        )


# The tests' background runs are CPU-bound together with the tests (2 cores). The smoke run comes first:
# two modules wait for it and then run for minutes, while one test each waits for the others.
SIDE_RUN_NICE = 5


# What conftest's session fixture started before the first test, by run name ("smoke", "groups", ...): the
# project's root and its background run (``wait(timeout)`` -> exit status, as on a Popen).
EARLY: dict[str, tuple[Path, object]] = {}


def finished_run(name: str, start, tmp_path_factory) -> Path:
    """The root of the background run ``name`` once it has succeeded: conftest's early one, else started
    now by ``start(tmp_path_factory) -> (root, process)``."""
    if name not in EARLY:
        EARLY[name] = start(tmp_path_factory)
    root, proc = EARLY[name]
    assert proc.wait(timeout=1800) == 0, (root / "repro.log").read_text()[-4000:]
    return root


def start_smoke(tmp_path_factory) -> tuple[Path, subprocess.Popen]:
    """The smoke ``dvc repro``, in the background, with no Inception weights (FID must be absent, not made
    up)."""
    root = make_project(tmp_path_factory.mktemp("pipeline"), smoke_overrides())
    return root, start_repro(root, TORCH_HOME=str(tmp_path_factory.mktemp("torch_home")))


def smoke_project(tmp_path_factory) -> Path:
    """A copy of the finished smoke project, its outputs committed, for one test module to change: modules
    run at once on pytest-xdist workers, and the finished run itself is never changed."""
    dest = tmp_path_factory.mktemp("smoke")
    shutil.copytree(finished_run("smoke", start_smoke, tmp_path_factory), dest, symlinks=True, dirs_exist_ok=True)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-q", "-m", "repro"], dest)
    return dest


def ran_stages(output: str) -> set[str]:
    """Names of the stages a dvc run ran, without the ``pipelines/<part>/dvc.yaml:`` of the parts' stages."""
    return {name.rpartition(":")[2] for name in re.findall(r"Running stage '([^']+)'", output)}


def smoke_overrides() -> dict:
    return yaml.safe_load((ROOT / "tests" / "smoke_params.yaml").read_text())
