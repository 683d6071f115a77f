"""Stage report: metrics/summary.{json,md}, dvc plot tables and a sample grid per generated method."""

from pathlib import Path

import pandas as pd
import torch

from tailsynth.data.manifest import image_shape, load_rows, read_classes
from tailsynth.errors import TailsynthError
from tailsynth.io import atomic_write_text, read_json, write_json
from tailsynth.report.grid import save_class_grid
from tailsynth.report.summary import bucket_table, per_class_table, summary_markdown, summary_rows
from tailsynth.synth.plan import MANIFEST, read_synthetic

from _common import load_params, log, prepared_dir, stage


@stage
def main() -> None:
    params = load_params()
    folder = prepared_dir(params)
    classes = read_classes(folder)
    channels, _ = image_shape(folder)
    results = {}
    for method in params["methods"]:
        path = Path("metrics/evaluate") / f"{method}.json"
        if not path.is_file():
            raise TailsynthError(f"{path} not found; run evaluate@{method} first")
        results[method] = read_json(path)
    rows = summary_rows(results)
    write_json("metrics/summary.json", {r["method"]: {k: v for k, v in r.items() if k != "method"} for r in rows})
    text = summary_markdown(rows)
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
    histogram = pd.Series(chosen, dtype=float).value_counts().sort_index()
    atomic_write_text(
        plots / "chosen_r.csv", pd.DataFrame({"r": histogram.index, "count": histogram.values}).to_csv(index=False)
    )
    log.info("\n%s", text)


if __name__ == "__main__":
    main()
