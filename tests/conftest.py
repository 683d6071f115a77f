import fcntl
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
# `make test` runs two pytest-xdist workers on 2 cores: one torch thread each (two 2-thread OpenMP pools
# spin against each other); a single pytest process keeps both.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, 2 // WORKERS))


# The modules that wait for the smoke run and then run for minutes go first: on 2 workers each takes one
# as soon as the run is done (the rest, many short modules, fills in around them and packs the end).
# `make test` turns off pytest-xdist's reordering by test count (--no-loadscope-reorder) to keep this.
RUN_FIRST = ("test_pipeline.py", "test_shared_cache.py")


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.path.name not in RUN_FIRST)  # stable: otherwise collection order


class BackgroundRun:
    """A background run, possibly started by another xdist worker, seen through the file its exit status
    is written to when it ends (``poll``/``wait`` as on a ``subprocess.Popen``)."""

    def __init__(self, status_file: Path):
        self.status_file = Path(status_file)

    def poll(self) -> int | None:
        return int(self.status_file.read_text()) if self.status_file.exists() else None

    def wait(self, timeout: float) -> int:
        end = time.monotonic() + timeout
        while (code := self.poll()) is None:
            if time.monotonic() > end:
                raise subprocess.TimeoutExpired(str(self.status_file), timeout)
            time.sleep(0.5)
        return code


def _record_exit(proc: subprocess.Popen, status_file: Path) -> None:
    code = proc.wait()
    tmp = status_file.with_suffix(".tmp")
    tmp.write_text(str(code))
    tmp.rename(status_file)


@pytest.fixture(scope="session", autouse=True)
def early_pipelines(request, tmp_path_factory):
    """Starts, before the first test, the background ``dvc repro`` runs that the collected modules ask for
    with ``start_early(fixtures) -> {run name: start(tmp_path_factory) -> (root, process)}`` (``fixtures``:
    the fixture names their collected tests use), once per run name, into ``pipeline_utils.EARLY``. A
    whole-pipeline run takes about one core (one torch thread per stage, DVC's bookkeeping single-threaded),
    so it overlaps the unit tests instead of running after them.

    Under pytest-xdist the first worker to get here starts them for all (which worker runs a module is
    not known yet): the others read their roots from ``early.json`` in the session's shared temp folder
    and wait on their exit-status files. The starting worker keeps its stage server up until they end."""
    from pipeline_utils import EARLY

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    index, mine = shared / "early.json", []
    with open(shared / "early.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not index.exists():
            started: dict[str, list[str]] = {}
            modules = {item.module for item in request.session.items if hasattr(item, "module")}
            for module in sorted(modules, key=lambda m: m.__name__):
                if hasattr(module, "start_early"):
                    used = {f for item in request.session.items if item.module is module for f in item.fixturenames}
                    for name, start in module.start_early(used).items():
                        if name in started:
                            continue
                        root, proc = start(tmp_path_factory)
                        status = Path(root) / "repro.status"
                        threading.Thread(target=_record_exit, args=(proc, status), daemon=True).start()
                        mine.append((proc, status))
                        started[name] = [str(root), str(status)]
            index.with_suffix(".tmp").write_text(json.dumps(started))
            index.with_suffix(".tmp").rename(index)
    for name, (root, status) in json.loads(index.read_text()).items():
        EARLY[name] = Path(root), BackgroundRun(status)
    yield
    stopping = request.session.shouldstop or request.session.shouldfail
    for proc, status in mine:
        if proc.poll() is None and stopping:
            proc.kill()
        proc.wait()  # another worker may still need it
        BackgroundRun(status).wait(timeout=10)


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory, monkeypatch_module):
    """An empty ``TORCH_HOME`` for the module's tests: no Inception weights, so FID must be absent, not made
    up."""
    monkeypatch_module.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))


@pytest.fixture
def two_torch_threads():
    """Two torch threads for the test (races need more than one), whatever the worker count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def rgb_image_file(tmp_path):
    from PIL import Image

    def make(path: Path, size=(40, 30), color=(200, 30, 30), mode="RGB") -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new(mode, size, color if mode == "RGB" else color[0]).save(path)
        return path

    return make


def tiny_ldm_config():
    """A small-LDM shape that trains and samples in well under a second (16 px, 4x4 latents)."""
    from tailsynth.models.generator import SmallLDMConfig

    return SmallLDMConfig(
        image_size=16,
        vae_channels=(8, 16),
        vae_norm_groups=4,
        unet_channels=(16, 32),
        unet_norm_groups=4,
        attention_head_dim=2,
        text_hidden=16,
        text_layers=1,
    )
