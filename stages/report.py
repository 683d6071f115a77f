"""Stage report: metrics/summary.{json,md}, dvc plot tables and a sample grid per generated method."""

from pathlib import Path

import torch

from tailsynth.data.manifest import image_shape, load_rows, read_classes
from tailsynth.errors import TailsynthError
from tailsynth.io import atomic_write_text, read_json, write_json
from tailsynth.report.grid import save_class_grid
from tailsynth.report.summary import (
    bucket_table,
    chosen_r_table,
    fewshot_columns,
    fewshot_markdown,
    per_class_table,
    summary_markdown,
    summary_rows,
    sweep_markdown,
)
from tailsynth.synth.plan import MANIFEST, read_synthetic
from tailsynth.train.fewshot import level_from_key

from _common import load_params, log, prepared_dir, stage


def read_metrics(stage_name: str, methods, folder: str | None = None) -> dict[str, dict]:
    """{method: metrics/<folder>/<method>.json} for every method, or a clear error naming the missing stage."""
    out = {}
    for method in methods:
        path = Path("metrics") / (folder or stage_name) / f"{method}.json"
        if not path.is_file():
            raise TailsynthError(f"{path} not found; run {stage_name}@{method} first")
        out[method] = read_json(path)
    return out


@stage
def main() -> None:
    params = load_params()
    folder = prepared_dir(params)
    classes = read_classes(folder)
    channels, _ = image_shape(folder)
    results = read_metrics("evaluate", params["methods"])
    rows = summary_rows(results)
    shots = params["fewshot"]["shots"]
    fewshot = read_metrics("fewshot_eval", params["fewshot_methods"], folder="fewshot")
    # One table for every method: long-tail columns and few-shot columns side by side.
    summary = {r["method"]: {k: v for k, v in r.items() if k != "method"} for r in rows}
    for method, result in fewshot.items():
        summary.setdefault(method, {}).update(fewshot_columns(result, shots))
    write_json("metrics/summary.json", summary)
    text = summary_markdown(rows)
    f = params["fewshot"]
    text += "\n" + fewshot_markdown(
        fewshot,
        shots,
        f"Few-shot results ({f['ways']}-way, {f['episodes']} episodes, {f['queries']} queries per class; "
        "mean ± 95% CI)",
    )
    if Path("metrics/fewshot/r_sweep.json").is_file():
        text += "\n" + sweep_markdown(read_json("metrics/fewshot/r_sweep.json"), shots)
    for method, result in fewshot.items():
        for k, counts in result.get("chosen_r", {}).items():
            text += f"\n{method} {k} chosen r: " + ", ".join(f"{level_from_key(r):g}: {n}" for r, n in counts.items())
    text += "\n"
    if Path("metrics/generator.json").is_file():
        g = read_json("metrics/generator.json")
        text += (
            f"\nGenerator: oracle accuracy of its Txt2Img samples {100 * g['oracle_acc']:.1f}% "
            f"(worst class {100 * g['oracle_acc_min']:.1f}%).\n"
        )
    buckets = ", ".join(f"{c['name']}={c['train_count']} ({c['bucket']})" for c in classes)
    text += f"\nTrain images per class: {buckets}.\n"
    atomic_write_text("metrics/summary.md", text)
    plots = Path("metrics/plots")
    atomic_write_text(plots / "per_class.csv", per_class_table(results, classes).to_csv(index=False))
    atomic_write_text(plots / "by_bucket.csv", bucket_table(results).to_csv(index=False))
    samples = plots / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    for old in samples.glob("*.png"):
        old.unlink()  # grids of methods no longer compared
    chosen = []
    for method in results:
        synthetic = Path("data/synthetic") / method
        if (synthetic / MANIFEST).is_file():
            rows_s = read_synthetic(synthetic)
            if "chosen_r" in rows_s:
                chosen += rows_s["chosen_r"].tolist()
            if len(rows_s):
                picked = rows_s.groupby("label", sort=True).head(8)
                images = load_rows(synthetic, picked, channels).float() / 255
                labels = torch.tensor(picked["label"].tolist())
                save_class_grid(images, labels, samples / f"{method}.png")
    atomic_write_text(plots / "chosen_r.csv", chosen_r_table(chosen, fewshot).to_csv(index=False))
    log.info("\n%s", text)


if __name__ == "__main__":
    main()
