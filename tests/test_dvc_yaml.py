"""dvc.yaml declares, for every stage, exactly the code files its script runs: every one (so code changes re-run
it) and no other (so unrelated changes do not)."""

import ast
import re
from pathlib import Path

import pytest
import yaml
from pipeline_utils import PIPELINE_FILES, pipeline_stages

ROOT = Path(__file__).resolve().parents[1]
DVC = {**yaml.safe_load((ROOT / "dvc.yaml").read_text()), "stages": pipeline_stages()}


def module_file(name: str) -> Path | None:
    if name.startswith("_") and (ROOT / "stages" / f"{name}.py").is_file():
        return ROOT / "stages" / f"{name}.py"  # stage helpers, imported by stage scripts
    if not name.startswith("tailsynth"):
        return None
    base = ROOT / "src" / Path(*name.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None  # a package: its __init__ holds only a docstring


def imported_files(script: Path) -> set[Path]:
    """Every project file ``script`` imports, transitively, including imports inside functions."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        path = todo.pop()
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                f = module_file(name)
                if f is not None and f not in seen:
                    seen.add(f)
                    todo.append(f)
    return seen


def stages():
    for name, stage in DVC["stages"].items():
        body = stage.get("do", stage)
        yield name, body


@pytest.mark.parametrize(("name", "body"), list(stages()), ids=[n for n, _ in stages()])
def test_stage_declares_exactly_the_code_it_runs(name, body):
    # every script the command names: the stage's own, and stages/launch.py in front of a generation stage
    scripts = [ROOT / s for s in re.findall(r"(stages/\S+\.py)", body["cmd"])]
    assert scripts, f"stage {name} runs no stage script"
    declared = {d for d in body["deps"] if d.startswith(("stages/", "src/"))}
    assert all((ROOT / d).is_file() for d in declared), "list code files, not folders"
    runs = set()
    for script in scripts:
        runs |= {str(f.relative_to(ROOT)) for f in imported_files(script)} | {str(script.relative_to(ROOT))}
    assert sorted(runs - declared) == [], f"stage {name} runs code not listed in its deps"
    assert sorted(declared - runs) == [], f"stage {name} lists code it does not run"


def test_stage_params_exist_in_params_yaml():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, body in stages():
        for key in body.get("params", []):
            if "${" in key:
                continue
            node = params
            for part in key.split("."):
                assert part in node, f"stage {name} lists param {key} missing from params.yaml"
                node = node[part]


def test_dvc_parses_yaml_with_the_c_extension():
    """dvc reads params.yaml once per stage and dvc.lock twice in a no-op `dvc repro`: with ruamel.yaml's
    pure-Python parser that took 3.1 s instead of 2.1 s here (pyproject.toml requires ruamel.yaml.clib)."""
    from ruamel.yaml import YAML

    assert YAML(typ="safe").Parser.__name__ == "CParser"


def test_every_part_of_the_pipeline_runs_from_the_root_with_the_root_params():
    """pipelines/<part>/dvc.yaml holds stages of the one pipeline (each part has its own, smaller lock file):
    they run in the root (wdir), read its params.yaml (vars, for ${...}), and `dvc repro` at the root
    reaches them because the report depends on their outputs (tests/test_pipeline.py runs it)."""
    assert len(PIPELINE_FILES) > 1
    for name in PIPELINE_FILES[1:]:
        part = yaml.safe_load((ROOT / name).read_text())
        assert part["vars"] == ["../../params.yaml"], name
        for stage, body in part["stages"].items():
            assert body.get("do", body)["wdir"] == "../..", f"{name}: stage {stage} must run in the root"
        assert "plots" not in part, f"{name}: plots belong in the root dvc.yaml"
