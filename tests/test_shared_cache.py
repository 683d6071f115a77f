"""End to end on a copy of the smoke run (tests/test_pipeline.py's): experiments and the shared cache. The
experiment queue, two workers at a time; an experiment that re-runs one method; a fresh clone that pulls
everything from a remote; the GPU workflow's experiment, push and report (ci/steps.sh as the workflows run
it). The tests run in this order: the queue expects the committed workspace, the last two a remote."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from pipeline_utils import command_env, ran_stages, run, smoke_project, start_smoke

pytestmark = pytest.mark.slow
DVC = str(Path(sys.executable).parent / "dvc")


def start_early(fixtures: set[str]) -> dict:
    """For conftest: the smoke run (shared with tests/test_pipeline.py), started before the first test."""
    return {"smoke": start_smoke} if "project" in fixtures else {}


@pytest.fixture(scope="module")
def project(tmp_path_factory, torch_home):
    return smoke_project(tmp_path_factory)


# `dvc exp show --md` with the columns a reviewer reads: the params that were swept and the few-class metrics.
KEEP = r"Experiment|genie\.r|metrics/(evaluate|fewshot)/genie\.json:(acc\.few|.shot\.mean)"  # as in the README
EXP_SHOW = [DVC, "exp", "show", "--md", "--drop", ".*", "--keep", KEEP]


@pytest.fixture(scope="module")
def queued(project):
    """The queue, two at a time: a GeNIe sweep; returns ``dvc exp show --json``."""
    run(["git", "reset", "-q", "--hard"], project)
    run([DVC, "checkout", "--force"], project)
    # Two values: 0.7 (the committed params, answered from the shared cache) and 0.6 (new rows).
    run([DVC, "exp", "run", "--queue", "-S", "genie.r=0.6,0.7"], project)
    # Not `run`: `dvc queue start` can outlive the queue (a worker that finished its last task after the
    # queue monitor shut down stays alive, and so does the command), so it must not be waited for.
    cmd, env = command_env([DVC, "queue", "start", "-j", "2"])
    with open(project / "queue_start.log", "w") as log:
        starter = subprocess.Popen(cmd, cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        status = run([DVC, "queue", "status"], project).stdout
        if not re.search(r"\b(Queued|Running)\b", status):
            break
        time.sleep(3)
    stop_workers(project, starter)
    assert "Failed" not in status, status
    assert not re.search(r"\b(Queued|Running)\b", status), status
    return json.loads(run([DVC, "exp", "show", "--json"], project).stdout)


def stop_workers(project: Path, starter: subprocess.Popen, grace: float = 20) -> None:
    """End the queue's workers (their pids are in .dvc/tmp/exps/celery/*.json) and ``starter``, once
    the queue is empty: gracefully within ``grace`` seconds, else with SIGTERM."""
    pids = [json.loads(f.read_text()).get("pid") for f in (project / ".dvc/tmp/exps/celery").glob("*.json")]
    deadline = time.monotonic() + grace
    for pid in filter(None, pids):
        while time.monotonic() < deadline and alive(pid):
            time.sleep(0.5)
        if alive(pid):
            os.kill(pid, signal.SIGTERM)
    try:
        starter.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        starter.terminate()
        starter.wait(timeout=30)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child still answers signal 0; ask the kernel for its state.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.is_file() and stat.read_text().rsplit(")", 1)[-1].split()[0] == "Z")


def experiments(rows: list[dict]):
    for commit in rows:
        for exp in commit.get("experiments") or []:
            yield exp["name"], exp["revs"][0]


def test_queued_sweep_runs_two_at_a_time_on_the_shared_cache(project, queued):
    files = ("metrics/evaluate/genie.json", "metrics/fewshot/genie.json")
    base = yaml.safe_load(run(["git", "show", "HEAD:params.yaml"], project).stdout)
    by_r: dict[float, set[str]] = {}
    for _, rev in experiments(queued):
        params = rev["data"]["params"]["params.yaml"]["data"]
        r = params["genie"]["r"]
        assert {**params, "genie": {**params["genie"], "r": base["genie"]["r"]}} == base  # only r was swept
        result = json.dumps([rev["data"]["metrics"][f]["data"] for f in files], sort_keys=True)
        by_r.setdefault(r, set()).add(result)
    committed = json.dumps(
        [json.loads(run(["git", "show", f"HEAD:{f}"], project).stdout) for f in files], sort_keys=True
    )
    assert set(by_r) == {0.6, 0.7}
    assert all(len(results) == 1 for results in by_r.values())  # same params, same result
    assert by_r[0.7] == {committed}  # the committed params: the committed result, from the shared cache
    assert len(set.union(*by_r.values())) == len(by_r)  # each noise ratio gives its own GeNIe metrics
    table = run(EXP_SHOW, project).stdout
    header = table.splitlines()[0]
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "Experiment",
        "metrics/evaluate/genie.json:acc.few",
        "metrics/fewshot/genie.json:1shot.mean",
        "metrics/fewshot/genie.json:5shot.mean",
        "genie.r",
    ]


def test_exp_run_reruns_only_the_changed_methods_stages(project):
    proc = run([DVC, "exp", "run", "-S", "synth.img2img_high.r=0.6"], project)
    assert ran_stages(proc.stdout) == {
        "synth@img2img_high",
        "retrain@img2img_high",
        "evaluate@img2img_high",
        "fewshot_synth@img2img_high",
        "fewshot_eval@img2img_high",
        "report",
    }
    df = pd.read_csv(project / "data/synthetic/img2img_high/manifest.csv")
    assert (df["r"] == 0.6).all()
    assert len(list((project / "data/synthetic/img2img_high/images").rglob("*.png"))) == len(df)
    diff = run([DVC, "metrics", "diff", "--json"], project).stdout
    assert "metrics/evaluate/img2img_high.json" in diff


def steps(args: list[str], cwd: Path, check: bool = True, **env: str):
    """ci/steps.sh as the workflows run it, with this interpreter's dvc and python."""
    return run(["env", f"TAILSYNTH_BIN={Path(sys.executable).parent}", *[f"{k}={v}" for k, v in env.items()],
                "bash", "ci/steps.sh", *args], cwd, check=check)  # fmt: skip


GENIE_STAGES = {"synth_genie@genie", "retrain@genie", "evaluate@genie", "fewshot_synth@genie", "fewshot_eval@genie"}


# These come last: the remote fixture points the project at a local-folder remote, and the experiments
# above must run with the committed .dvc/config (its placeholder S3 remote) as a fresh clone has it.
@pytest.fixture(scope="module")
def remote(project, tmp_path_factory):
    """A local-folder remote holding the committed run's outputs and run cache."""
    url = tmp_path_factory.mktemp("remote")
    run([DVC, "remote", "modify", "--local", "storage", "url", str(url)], project)
    run([DVC, "push", "--run-cache", "--all-commits"], project)
    return url


def fresh_clone(project: Path, dest: Path, remote: Path) -> Path:
    run(["git", "clone", "-q", str(project), str(dest)], dest.parent)
    out = steps(["remote"], dest, DVC_REMOTE_URL=str(remote)).stdout
    assert f"DVC remote storage -> {remote}" in out
    return dest


def test_a_fresh_clone_pulls_everything_and_runs_nothing(project, remote, tmp_path):
    clone = fresh_clone(project, tmp_path / "clone", remote)
    run([DVC, "pull"], clone)
    assert ran_stages(run([DVC, "repro"], clone).stdout) == set()
    assert json.loads(run([DVC, "status", "--json"], clone).stdout) == {}
    # The committed results come out of the committed code: every file from the remote, byte for byte.
    proc = steps(["reproduce"], clone)
    assert "stages run: 0" in proc.stdout and "committed results reproduce" in proc.stdout
    # A committed metric that its code does not produce turns the check red, naming the file.
    path = clone / "metrics/evaluate/none.json"
    forged = json.loads(path.read_text())
    forged["acc"]["few"] = 0.0
    path.write_text(json.dumps(forged))
    run(["git", "commit", "-q", "-am", "forge a metric"], clone)
    proc = steps(["reproduce"], clone, check=False)
    assert proc.returncode == 1
    assert "evaluate@none" in proc.stdout and "metrics/evaluate/none.json: acc.few committed 0.0000" in proc.stderr


def test_gpu_experiment_pulls_what_exists_reruns_only_genie_pushes_and_reports(project, remote, tmp_path):
    # What gpu.yml runs: `dvc exp run --pull --allow-missing -S ...` in a clone with no data, then
    # `dvc push --run-cache`, then the report against the base.
    clone = fresh_clone(project, tmp_path / "clone", remote)
    base_r = yaml.safe_load((clone / "params.yaml").read_text())["genie"]["r"]
    proc = steps(["gpu-exp", "genie.r=0.5"], clone)  # a value no test above ran
    assert ran_stages(proc.stdout) == GENIE_STAGES | {"report"}
    # (what `dvc exp run -S genie.r=...` re-runs: GeNIe's long-tail and few-shot stages and the report)
    assert (pd.read_csv(clone / "data/synthetic/genie/manifest.csv")["r"] == 0.5).all()
    assert (pd.read_csv(clone / "data/fewshot/synthetic/genie/manifest.csv")["r"] == 0.5).all()
    assert not (clone / "models/retrain/none").exists()  # no stage that ran needs it: not fetched
    cloud = json.loads(run([DVC, "status", "--cloud", "--json"], clone).stdout)
    assert "new" not in cloud.values()  # what it computed was pushed ("deleted": on the remote, not fetched here)

    steps(["report", "HEAD"], clone)
    text = (clone / "pr_report/report.md").read_text()
    assert f"| genie.r | {base_r} | 0.5 |" in text
    section = text.split("## Metrics")[1].split("## Plots")[0]
    rows = [line.split(" | ")[:2] for line in section.splitlines() if line.startswith("| metrics/")]
    assert rows  # every metric that moved is GeNIe's; untouched methods are not in the report
    assert all(
        f in ("| metrics/evaluate/genie.json", "| metrics/fewshot/genie.json") or m.startswith("genie.")
        for f, m in rows
    )
    pngs = {p.name for p in (clone / "pr_report").glob("*.png")}
    for csv in ("per_class.csv", "by_bucket.csv", "chosen_r.csv", "r_sweep.csv"):  # a plot iff its data changed
        base = run(["git", "show", f"HEAD:metrics/plots/{csv}"], clone).stdout
        changed = base != (clone / "metrics/plots" / csv).read_text()
        assert changed == any(n.startswith(f"plot__metrics__plots__{csv}") for n in pngs), csv
    assert {"base__metrics__plots__samples__genie.png", "head__metrics__plots__samples__genie.png"} <= pngs
    assert "base__metrics__plots__samples__none.png" not in pngs

    bad = steps(["report", "no-such-branch"], clone, check=False)
    assert bad.returncode == 2
    assert "base ref `no-such-branch` does not exist" in (clone / "pr_report/report.md").read_text()
