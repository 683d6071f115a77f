"""Pull the data folders that the stages about to run read through a manifest.

    python ci/fetch_inputs.py [--set genie.r=0.8 ...]

Stages depend on ``manifest.csv`` files (each row with its image's digest) rather than on image
folders, which keeps a no-op ``dvc repro`` at 2 s instead of 3.7 s. The price: ``dvc repro --pull``
fetches a stage's declared deps, i.e. the manifest, not the images it lists. So before
``dvc repro --pull --allow-missing`` (or ``dvc exp run`` with the same flags), this script reads
which stages would run from ``dvc status`` (and adds those downstream of them), finds every output folder
that holds one of their deps, and pulls those folders (``dvc pull --allow-missing``), except
folders that a stage about to run rewrites anyway. ``--set`` applies params overrides to
params.yaml first, as ``dvc exp run -S`` would.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

DVC = str(Path(sys.executable).parent / "dvc")


def set_params(overrides: list[str], path: str = "params.yaml") -> None:
    """Apply ``key.sub=value`` overrides (values read as YAML) to a params file the way ``dvc exp run -S``
    does (dvc's own round-trip writer, so the file comes out as an experiment would leave it)."""
    from dvc.utils.serialize import modify_yaml
    from ruamel.yaml import YAML

    with modify_yaml(path) as doc:
        for override in overrides:
            key, sep, raw = override.partition("=")
            if not sep:
                raise SystemExit(f"fetch_inputs: override {override!r} is not key=value")
            node = doc
            *parents, leaf = key.split(".")
            for part in parents:
                if part not in node:
                    raise SystemExit(f"fetch_inputs: param {key!r} not found in {path}")
                node = node[part]
            node[leaf] = YAML(typ="safe").load(raw)


def stages_to_run() -> set[str]:
    """Stages that `dvc repro --allow-missing` would run: a changed param, command or dep content.

    Read from ``dvc status --json`` (a dry run cannot tell: it fails on the missing deps of a
    changed stage). Missing data ("deleted" deps, outputs "not in cache") alone runs nothing.
    """
    proc = subprocess.run([DVC, "status", "--json"], capture_output=True, text=True)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        raise SystemExit(f"fetch_inputs: `dvc status` failed: {lines[-1] if lines else proc.returncode}")
    status = json.loads(proc.stdout or "{}")

    def changed(entry) -> bool:
        if isinstance(entry, str):  # "changed command", "always changed"
            return True
        if isinstance(entry, list):
            return any(changed(e) for e in entry)
        deps = entry.get("changed deps", {})
        return any(v != "deleted" for v in deps.values()) or any(
            k not in ("changed deps", "changed outs") for k in entry
        )

    return {name for name, entries in status.items() if changed(entries)}


def folders_to_pull(running: set[str]) -> list[str]:
    """Output folders (of stages not about to run) that hold a dep of a stage about to run or downstream of one."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo() as repo:
        stages = list(repo.index.stages)
        # A dry run lists the stages whose own deps changed; the ones downstream of them run too.
        # (dvc's graph has an edge from each stage to the stages it depends on.)
        graph = repo.index.graph
        for s in stages:
            if s.addressing in running:
                running = running | {a.addressing for a in nx.ancestors(graph, s)}
        outs = {str(o.def_path): s.addressing for s in stages for o in s.outs}
        needed = set()
        for s in stages:
            if s.addressing not in running:
                continue
            for dep in s.deps:
                path = str(dep.def_path)
                for out, owner in outs.items():
                    if path.startswith(out.rstrip("/") + "/") and owner not in running:
                        needed.add(out)
    return sorted(needed)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="params override key=value")
    args = ap.parse_args()
    if args.overrides:
        set_params(args.overrides)
    running = stages_to_run()
    folders = folders_to_pull(running)
    print(f"stages to run: {len(running)}; folders they read through manifests: {', '.join(folders) or 'none'}")
    if folders:
        proc = subprocess.run([DVC, "pull", "--allow-missing", *folders])
        return proc.returncode
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
