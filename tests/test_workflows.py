"""The GitHub workflows: valid against GitHub's schema (offline), and every shell step is a script the tests run."""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
CHECK = str(Path(sys.executable).parent / "check-jsonschema")
# ci/steps.sh steps and the tests that run them (tests/test_shared_cache.py, on the smoke project);
# `install` is `make install`, which `make test` itself runs first.
TESTED_STEPS = {"install", "remote", "reproduce", "report", "gpu-exp", "comment"}


def validate(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHECK, "--builtin-schema", "vendor.github-workflows", *map(str, paths)], capture_output=True, text=True
    )


def test_there_are_a_pr_and_a_gpu_workflow():
    assert [p.name for p in WORKFLOWS] == ["gpu.yml", "pr.yml"]


def test_workflows_match_githubs_schema():
    proc = validate(*WORKFLOWS)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_schema_check_catches_a_broken_workflow(tmp_path):
    broken = yaml.safe_load(WORKFLOWS[1].read_text())
    del broken["jobs"]["review"]["runs-on"]
    (tmp_path / "broken.yml").write_text(yaml.safe_dump(broken))
    assert validate(tmp_path / "broken.yml").returncode != 0


def run_steps() -> list[str]:
    out = []
    for path in WORKFLOWS:
        for job in yaml.safe_load(path.read_text())["jobs"].values():
            out += [step["run"] for step in job["steps"] if "run" in step]
    return out


def test_every_shell_step_is_make_test_or_a_tested_ci_step():
    defined = set(re.findall(r"^  ([a-z-]+)\)", (ROOT / "ci" / "steps.sh").read_text(), flags=re.M))
    used = set()
    for command in run_steps():
        if command == "make test":
            continue
        m = re.fullmatch(r"ci/steps\.sh ([a-z-]+)( .*)?", command)
        assert m, f"workflow step {command!r} is not a ci/steps.sh step"
        used.add(m.group(1))
    assert used <= defined
    assert used <= TESTED_STEPS


@pytest.mark.parametrize("token", ["", "secret"])
def test_comment_step_posts_only_with_a_token(tmp_path, token):
    # A stand-in `gh` records its arguments: the step must call it with the report, and not at all without a token.
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "gh").write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/gh_args\n')
    (fake / "gh").chmod(0o755)
    env = {"PATH": f"{fake}:/usr/bin:/bin", "GH_TOKEN": token}
    proc = subprocess.run(["bash", str(ROOT / "ci" / "steps.sh"), "comment", "17"], env=env, capture_output=True)
    assert proc.returncode == 0
    args = tmp_path / "gh_args"
    if token:
        assert args.read_text().split() == [
            "pr",
            "comment",
            "17",
            "--body-file",
            "pr_report/report.md",
            "--edit-last",
            "--create-if-none",
        ]
    else:
        assert not args.exists()


def test_unknown_step_exits_2():
    proc = subprocess.run(["bash", str(ROOT / "ci" / "steps.sh"), "deploy"], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown step 'deploy'" in proc.stderr


def load_reproduce():
    spec = importlib.util.spec_from_file_location("reproduce", ROOT / "ci" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reproduce_rules():
    compare = load_reproduce().compare
    old = json.dumps({"acc": {"few": 0.80, "overall": 0.9}}).encode()
    near = json.dumps({"acc": {"few": 0.82, "overall": 0.9}}).encode()
    far = json.dumps({"acc": {"few": 0.70, "overall": 0.9}}).encode()
    assert compare("m.json", old, old, recomputed=False, atol=0.05) == []
    # Not recomputed: any difference is a committed file that dvc.lock does not describe.
    assert compare("m.json", old, near, recomputed=False, atol=0.05) == [
        "m.json: differs from the committed file, yet its stage did not run (dvc.lock does not describe it)"
    ]
    # Recomputed: numbers within the tolerance pass, others are named.
    assert compare("m.json", old, near, recomputed=True, atol=0.05) == []
    assert compare("m.json", old, far, recomputed=True, atol=0.05) == [
        "m.json: acc.few committed 0.8000, reproduced 0.7000 (|diff| 0.1000 > 0.05)"
    ]
    assert compare("s.csv", b"seed,acc\n0,0.5\n", b"seed,acc\n0,0.6\n", recomputed=True, atol=0.05) == [
        "s.csv: row 0 acc committed 0.5000, reproduced 0.6000 (|diff| 0.1000 > 0.05)"
    ]
    assert compare("grid.png", b"a", b"b", recomputed=True, atol=0.05) == []  # images of a rerun: not compared
