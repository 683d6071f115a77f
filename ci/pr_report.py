"""Write the pull-request report of the workspace against a base revision.

    python ci/pr_report.py --base origin/main [--out pr_report]

Writes ``<out>/report.md``: the params that changed, ``dvc metrics diff`` (rounded; few-class and
worst-group metrics first, the rest folded), every plot of ``dvc.yaml`` whose data changed,
rendered as PNG (base dashed, head solid), and the sample grids that changed (base and head
side by side). Plot data and grids are read from git (they are committed), so no DVC remote is
needed. Problems (a base ref that does not exist, a metrics file on one side only) are one line
each in the report; the exit status is non-zero only when nothing could be compared.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

from tailsynth.report import pr


def git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], capture_output=True)


def dvc_json(*args: str) -> tuple[dict, str | None]:
    """(parsed JSON, None) of a dvc command, or ({}, its error in one line)."""
    proc = subprocess.run([str(Path(sys.executable).parent / "dvc"), *args, "--json"], capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        return {}, f"`dvc {' '.join(args)}` failed: {lines[-1] if lines else f'exit {proc.returncode}'}"
    return (json.loads(proc.stdout) if proc.stdout.strip() else {}), None


def at_base(base: str, path: str) -> bytes | None:
    proc = git("show", f"{base}:{path}")
    return proc.stdout if proc.returncode == 0 else None


def in_head(path: str) -> bytes | None:
    p = Path(path)
    return p.read_bytes() if p.is_file() else None


def image_files(base: str, declared: str) -> list[str]:
    """PNG files of a declared image plot (a file or a folder), on either side."""
    if declared.endswith(".png"):
        return [declared]
    head = {str(p) for p in Path(declared).glob("*.png")}
    listed = git("ls-tree", "--name-only", f"{base}:{declared}")
    names = listed.stdout.decode().split() if listed.returncode == 0 else []
    return sorted(head | {f"{declared}/{n}" for n in names if n.endswith(".png")})


def build_report(base: str, out: Path) -> tuple[str, int]:
    """(Markdown, number of things compared)."""
    notes: list[str] = []
    compared = 0
    parts = [f"# Report: workspace vs `{base}`\n"]
    if git("rev-parse", "--verify", "--quiet", f"{base}^{{commit}}").returncode != 0:
        notes.append(f"base ref `{base}` does not exist here (fetch it, e.g. `git fetch origin main`)")
        return "\n".join(parts + ["> " + n for n in notes]) + "\n", 0
    head = git("rev-parse", "--short", "HEAD").stdout.decode().strip() or "workspace"
    head_label = f"{head} + workspace"
    short = git("rev-parse", "--short", base).stdout.decode().strip()
    base_label = f"{base} ({short})"

    old_params, new_params = at_base(base, "params.yaml"), in_head("params.yaml")
    if old_params is None or new_params is None:
        notes.append(f"params.yaml is missing {'in ' + base if old_params is None else 'here'}: params not compared")
    else:
        compared += 1
        diff = pr.params_diff(yaml.safe_load(old_params), yaml.safe_load(new_params))
        parts += ["## Params\n", pr.params_markdown({"params.yaml": diff}, base_label, head_label)]

    metrics, err = dvc_json("metrics", "diff", base, "--all")
    if err:
        notes.append(err)
    else:
        compared += 1
        one_sided = {}
        for path, values in metrics.items():
            olds = [v.get("old") for v in values.values()]
            news = [v.get("new") for v in values.values()]
            if values and all(o is None for o in olds):
                one_sided[path] = f"`{path}` is missing in `{base}` (new here): its values are listed, not compared"
            elif values and all(n is None for n in news):
                one_sided[path] = f"`{path}` is missing in the workspace (deleted, or not reproduced yet)"
        notes += list(one_sided.values())
        changed = {
            path: {k: v for k, v in vals.items() if v.get("old") != v.get("new")} for path, vals in metrics.items()
        }
        parts += ["## Metrics\n", pr.metrics_markdown({p: v for p, v in changed.items() if v}, base_label, head_label)]

    dvc_yaml = yaml.safe_load(Path("dvc.yaml").read_text()) if Path("dvc.yaml").is_file() else {}
    tables, images = pr.plot_definitions(dvc_yaml)
    out.mkdir(parents=True, exist_ok=True)
    plot_lines = []
    for plot in tables:
        for csv, columns in plot["files"].items():
            old, new = at_base(base, csv), in_head(csv)
            if old is None and new is None:
                notes.append(f"plot data `{csv}` is on neither side")
                continue
            compared += 1
            if old == new:
                continue
            png = f"plot__{pr.slug(csv)}__{len(plot_lines)}.png"
            frame_old, frame_new = pr.read_csv_bytes(old), pr.read_csv_bytes(new)
            shown = pr.changed_columns(columns, frame_old, frame_new)
            (out / png).write_bytes(pr.render_plot(plot["title"], plot["x"], shown, frame_old, frame_new))
            plot_lines.append(f"**{plot['title']}** (`{csv}`)\n\n![{plot['title']}]({png})\n")
    parts += ["## Plots that changed\n", "\n".join(plot_lines) if plot_lines else "No plot data changed.\n"]

    grid_lines = []
    for declared in images:
        for path in image_files(base, declared):
            old, new = at_base(base, path), in_head(path)
            compared += 1
            if old == new:
                continue
            cells = []
            for tag, data in (("base", old), ("head", new)):
                if data is None:
                    cells.append(f"({tag}: absent)")
                    continue
                name = f"{tag}__{pr.slug(path)}"
                (out / name).write_bytes(data)
                cells.append(f"![{tag}]({name})")
            grid_lines.append(f"| `{path}` | {cells[0]} | {cells[1]} |\n")
    header = "| grid | base | head |\n|---|---|---|\n"
    grids = header + "".join(grid_lines) if grid_lines else "No sample grid changed.\n"
    parts += ["## Sample grids that changed\n", grids]

    if notes:
        parts.insert(1, "".join(f"> {n}\n" for n in notes))
    return "\n".join(parts), compared


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="git ref to compare against (e.g. origin/main)")
    ap.add_argument("--out", type=Path, default=Path("pr_report"), help="folder for report.md and its PNGs")
    args = ap.parse_args()
    text, compared = build_report(args.base, args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = args.out / "report.md.tmp"
    tmp.write_text(text)
    tmp.replace(args.out / "report.md")
    print(f"wrote {args.out / 'report.md'} ({compared} things compared)")
    if compared == 0:
        print(f"pr_report: nothing could be compared against {args.base!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
