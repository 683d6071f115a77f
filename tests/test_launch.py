"""Generation sharded across processes from inside DVC: ``runtime.launch`` templated into the stage command.

A smoke project generates synth@txt2img once in one process (the reference); then ``dvc repro``
runs the same stage under ``accelerate launch --multi_gpu --num_processes 2`` (two gloo processes
on CPU), from scratch and after one of the two processes is killed mid-run. Each time the manifest
and every image must be byte-identical to the reference.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from pipeline_utils import command_env, make_project, run, smoke_overrides

DVC = str(Path(sys.executable).parent / "dvc")
STAGE = "pipelines/synth/dvc.yaml:synth@txt2img"
OUT = Path("data/synthetic/txt2img")
ACCELERATE = f"{Path(sys.executable).parent / 'accelerate'} launch"
# Port 0: accelerate picks a free one (two pytest-xdist workers may launch at once).
TWO = (
    f"{ACCELERATE} --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no"
    " --main_process_port 0"
)


def set_launch(root: Path, launch: str) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["runtime"]["launch"] = launch
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def files(root: Path) -> dict[str, bytes]:
    out = root / OUT
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    overrides = smoke_overrides()
    # enough batches (1 row each, 30 steps) that a process can be killed while both are working
    overrides["synth"] |= {"per_class": 4, "batch_size": 1, "steps": 30}
    root = make_project(tmp_path_factory.mktemp("launch"), overrides)
    run([DVC, "repro", STAGE], root)
    return root, files(root)


def test_two_processes_write_the_same_set_as_one(project):
    root, reference = project
    plan = pd.read_csv(root / OUT / "manifest.csv")
    assert len(plan) >= 8 and len(reference) == len(plan) + 2  # images, plan.csv, manifest.csv
    set_launch(root, TWO)
    subprocess.run(["rm", "-rf", str(root / OUT)], check=True)
    proc = run([DVC, "repro", STAGE], root)
    log = proc.stdout + proc.stderr
    assert "accelerate launch --multi_gpu --num_processes 2" in log  # DVC ran the templated command
    assert "process 0 of 2 has generated" in log and "process 1 of 2 has generated" in log
    assert files(root) == reference


def _rank_pids(rank: int) -> list[int]:
    """The processes started by accelerate (torchrun) with RANK=rank."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ and b"synth.py" in cmdline and b"accelerate" not in cmdline:
            pids.append(int(entry.name))
    return pids


def test_a_killed_process_then_a_rerun_completes_without_duplicate_or_missing_rows(project):
    root, reference = project
    set_launch(root, TWO)
    subprocess.run(["rm", "-rf", str(root / OUT)], check=True)
    cmd, env = command_env([DVC, "repro", STAGE])
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    killed = False
    while time.monotonic() < deadline and proc.poll() is None:
        images = list((root / OUT / "images").rglob("*.png")) if (root / OUT / "images").exists() else []
        victims = _rank_pids(1)
        if images and victims:
            for pid in victims:
                os.kill(pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.05)
    proc.communicate(timeout=300)
    assert killed, "no image appeared while both processes ran"
    assert proc.returncode != 0
    assert not (root / OUT / "manifest.csv").exists()  # the interrupted set is not marked complete
    assert len(list((root / OUT / "images").rglob("*.png"))) < len(reference) - 2
    run([DVC, "repro", STAGE], root)
    manifest = pd.read_csv(root / OUT / "manifest.csv")
    assert manifest["image"].is_unique
    assert files(root) == reference


def test_a_launch_command_that_cannot_start_is_one_line_naming_the_param(project):
    root, _ = project
    proc = run(
        [sys.executable, "stages/launch.py", "stages/synth.py", "txt2img", "--", "acelerate", "launch"],
        root,
        check=False,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "runtime.launch" in lines[0] and "acelerate" in lines[0]


def test_more_processes_than_plan_rows_is_an_error_naming_the_param(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stages"))
    from tailsynth.errors import TailsynthError
    from tailsynth.methods import registry

    from _synth import run_set

    class EightProcesses:  # accelerate's PartialState, as 8 launched processes would see it
        num_processes, process_index, is_main_process = 8, 0, True

    class Launched:  # the engine of a stage under that launch
        state = EightProcesses()

    plan = pd.DataFrame({"image": ["images/a.png", "images/b.png"], "seed": [1, 2]})
    method = registry.get("txt2img", registry.LONG_TAIL, registry.GENERATED)
    with pytest.raises(TailsynthError, match=r"runtime.launch starts 8 processes .* 2 rows"):
        run_set(
            Launched(),
            method,
            registry.LONG_TAIL,
            plan,
            None,
            None,
            size=8,
            channels=1,
            batch_size=1,
            out=tmp_path / "set",
        )
    assert not (tmp_path / "set").exists()


TRAINED = ("models/retrain/none/seed0", "models/retrain/none/seed1")


def _weights(root: Path) -> dict[str, dict]:
    from safetensors.torch import load_file

    return {m: load_file(root / m / "model.safetensors") for m in TRAINED}


def _relative(a: dict, b: dict) -> float:
    """||a - b|| / ||a|| over all floating-point tensors of two state dicts."""
    keys = [k for k in a if a[k].is_floating_point()]
    diff = sum(float((a[k].double() - b[k].double()).square().sum()) for k in keys)
    return (diff / sum(float(a[k].double().square().sum()) for k in keys)) ** 0.5


def test_two_processes_train_retrain_as_one(project):
    """retrain@none (one fit per eval seed, then the writes) under the 2-process launch: the main process
    alone writes what one process writes, weights within 1e-3 relative L2 (measured: 1.8e-4 and 1.2e-5
    for the two seeds, 4.4e-5 for the classifier stage; test_distributed_fit pins the training itself
    to float level). The classifier, oracle and fewshot_backbone stages share the same glue."""
    root, _ = project
    stages = ["pipelines/retrain/dvc.yaml:retrain@none"]
    set_launch(root, "python")
    run([DVC, "repro", *stages], root)
    one = _weights(root)
    listing = sorted(str(p.relative_to(root)) for p in (root / "models").rglob("*"))
    set_launch(root, TWO)
    proc = run([DVC, "repro", *stages], root)
    log = proc.stdout + proc.stderr
    assert "launch.py stages/retrain.py none -- " in log and "accelerate launch --multi_gpu --num_processes 2" in log
    assert log.count("process 1 of 2 has trained its share") == 1  # once, after the last seed
    two = _weights(root)
    for name in TRAINED:
        assert one[name].keys() == two[name].keys()
        assert _relative(one[name], two[name]) < 1e-3, name
    # the same files as one process, and no temporary folder left by either process
    assert sorted(str(p.relative_to(root)) for p in (root / "models").rglob("*")) == listing


def test_a_batch_that_does_not_split_over_the_processes_is_an_error_naming_the_param(monkeypatch):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stages"))
    import torch

    from tailsynth.errors import TailsynthError

    import _fit

    class TwoProcesses:  # an Accelerator as each of 2 launched processes sees it
        num_processes, process_index, is_main_process = 2, 0, True

    monkeypatch.setattr(_fit, "process_group", lambda params: TwoProcesses())
    section = {"arch": "small_cnn", "width": 4, "steps": 1, "batch_size": 33, "lr": 0.01}
    x, y = torch.rand(8, 1, 12, 12), torch.arange(8) % 2
    with pytest.raises(TailsynthError, match=r"classifier.batch_size 33 does not split over the 2 processes"):
        _fit.fit_from_params(section, x, y, 2, seed=0, where="classifier", params={})


def set_engine(root: Path, engine: str, actors: int = 2) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["runtime"] |= {"engine": engine, "ray": {"actors": actors, "gpus_per_actor": 0, "cpus_per_actor": 1}}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_the_ray_engine_completes_a_set_to_the_same_bytes_as_one_process(project):
    """runtime.engine ray on a local Ray (2 actors, CPU), through dvc repro: with every other image of the
    reference set removed, map_batches over the pending batches makes exactly those again, byte for byte,
    and the manifest is the plain runner's."""
    root, reference = project
    set_launch(root, "python")
    set_engine(root, "ray")
    try:
        images = sorted((root / OUT / "images").rglob("*.png"))
        for path in images[::2]:
            path.unlink()
        (root / OUT / "manifest.csv").unlink()
        proc = run([DVC, "repro", STAGE], root)
        assert files(root) == reference
        assert "on Ray (local), 2 actors" in proc.stdout + proc.stderr
    finally:
        set_engine(root, "launch")


def test_an_unreachable_ray_address_is_one_line_naming_it(project):
    root, reference = project
    set_engine(root, "ray")
    try:
        cmd, env = command_env([sys.executable, "stages/synth.py", "txt2img"])
        env["RAY_ADDRESS"] = "127.0.0.1:9"  # the discard port: nothing listens there
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=120)
    finally:
        set_engine(root, "launch")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "RAY_ADDRESS=127.0.0.1:9 cannot be reached" in lines[0], proc.stderr
    assert files(root) == reference  # nothing written, nothing removed
