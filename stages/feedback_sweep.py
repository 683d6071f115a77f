"""Stage feedback_sweep: the feedback guidance step ω swept (criterion value and accuracy against ω).

At each ω of ``feedback_sweep.omega`` the guided plan of feedback_<criterion> (the same rows, seeds and
conditioning images as the ladder) is generated into data/synthetic/feedback_sweep/omega_<ω>/,
retrained as retrain@<method> (eval.seeds seeds) and evaluated on the test split. ω = 0 and
ω = feedback.guidance.omega are the ladder's own sets (ldm_text_image_dropout and
feedback_<criterion>: the same plan at those steps); where listed, they are read from their
evaluate metrics, not generated again. Writes metrics/feedback_sweep.json and the plot table
metrics/plots/feedback_omega.csv (omega, acc_few, acc_overall and criterion_value, the set's mean
criterion for the guiding classifier).
"""

import json
import shutil
from pathlib import Path

import pandas as pd
import torch
from _feedback import generate_ladder_set, ladder_settings
from _guide import load_guide
from _not_applicable import skip_if_not_applicable
from _retrain import retrain_data, retrain_models

from tailsynth.data.manifest import image_shape, read_classes
from tailsynth.data.stream import open_images
from tailsynth.data.targets import open_targets
from tailsynth.errors import TailsynthError
from tailsynth.io import atomic_write_text, write_json
from tailsynth.methods import registry
from tailsynth.metrics.accuracy import evaluate_runs
from tailsynth.models.classifier import predict
from tailsynth.synth.criteria import CRITERIA
from tailsynth.synth.guidance import mean_criteria
from tailsynth.synth.plan import read_synthetic

from _common import data_loading, device, load_params, log, prepared_dir, require, stage

OUT = Path("data/synthetic/feedback_sweep")
UNGUIDED = "ldm_text_image_dropout"  # the row above the guided ones: the same plan at ω = 0


def sweep_key(omega: float) -> str:
    """A folder and metrics key for a step size without a dot (dvc flattens keys with dots): 0.03 -> omega0_03."""
    return f"omega{omega:g}".replace(".", "_").replace("-", "m")


def check_sweep(section: dict) -> tuple[str, list[float]]:
    criterion = require(section, "criterion", "feedback_sweep")
    if criterion not in CRITERIA:
        raise TailsynthError(f"feedback_sweep.criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    omegas = require(section, "omega", "feedback_sweep")
    if not isinstance(omegas, list) or not omegas or not all(valid_omega(w) for w in omegas):
        raise TailsynthError(f"feedback_sweep.omega must be a non-empty list of numbers >= 0, got {omegas!r}")
    return criterion, sorted({float(w) for w in omegas})


def valid_omega(w: object) -> bool:
    return not isinstance(w, bool) and isinstance(w, int | float) and w >= 0


@stage
def main() -> None:
    params = load_params()
    outs = [OUT, "metrics/feedback_sweep.json", "metrics/plots/feedback_omega.csv"]
    if skip_if_not_applicable(params, outs, family=registry.FEEDBACK):
        return
    criterion, omegas = check_sweep(params["feedback_sweep"])
    guided = registry.get(f"feedback_{criterion}", registry.LONG_TAIL, registry.FEEDBACK)
    ladder_omega = float(ladder_settings(params["feedback"], guided).omega)
    ladder = {0.0: UNGUIDED, ladder_omega: guided.name}
    points = {w: ladder_point(ladder[w], criterion) for w in omegas if w in ladder}
    generated = [w for w in omegas if w not in ladder]
    for stale in set(OUT.glob("omega*")) - {OUT / sweep_key(w) for w in generated}:
        shutil.rmtree(stale)  # a step size no longer swept: its set would only bloat the cache
    for omega in generated:  # generation first: nothing is retrained before every set exists
        settings = ladder_settings(params["feedback"], guided, omega=omega)
        generate_ladder_set(params, guided, settings, out=OUT / sweep_key(omega), where="feedback_sweep.omega")
    folder = prepared_dir(params)
    classes = read_classes(folder)
    channels, _ = image_shape(folder)
    workers, in_memory = data_loading(params)
    test_x, test_y = open_targets(folder, "test", channels, len(classes), in_memory)
    if generated:  # once for every generated set: the guide and its class Gaussians do not depend on omega
        guide, gaussians = load_guide(folder, channels, len(classes), device(params), in_memory, workers)
    for omega in generated:
        synthetic = OUT / sweep_key(omega)
        data = retrain_data(params, folder, f"{guided.name} at omega {omega:g}", synthetic)
        models = retrain_models(params, data)
        predictions = [predict(model, test_x, workers=workers)[0].argmax(1).numpy() for _, model in models]
        result, _ = evaluate_runs(predictions, test_y.numpy(), classes)
        rows = read_synthetic(synthetic)
        images = open_images(synthetic, rows, channels, in_memory)
        labels = torch.tensor(rows["label"].tolist(), dtype=torch.int64)
        value = mean_criteria(guide, images, labels, gaussians, workers)[f"criterion_{criterion}"]
        points[omega] = {"acc": result["acc"], "acc_std": result["acc_std"], "criterion": value, "set": str(synthetic)}
    table = []
    for omega in sorted(points):
        point = points[omega]
        table.append(
            {
                "omega": omega,
                "acc_few": point["acc"]["few"],
                "acc_overall": point["acc"]["overall"],
                "criterion_value": point["criterion"],
            }
        )
        log.info(
            "feedback sweep: omega %g -> few %.4f, criterion_%s %.4f",
            omega,
            table[-1]["acc_few"],
            criterion,
            point["criterion"],
        )
    write_json(
        "metrics/feedback_sweep.json",
        {"criterion": criterion, **{sweep_key(w): {"omega": w, **points[w]} for w in sorted(points)}},
    )
    atomic_write_text("metrics/plots/feedback_omega.csv", pd.DataFrame(table).to_csv(index=False))


def ladder_point(method: str, criterion: str) -> dict:
    """A ladder method's sweep point from its evaluate metrics (accuracy and the criterion's mean)."""
    path = Path("metrics/evaluate") / f"{method}.json"
    if not path.is_file():
        raise TailsynthError(f"{path} not found; run evaluate@{method} first")
    metrics = json.loads(path.read_text(encoding="utf-8"))
    return {
        "acc": metrics["acc"],
        "acc_std": metrics["acc_std"],
        "criterion": metrics[f"criterion_{criterion}"],
        "set": f"data/synthetic/{method}",
    }


if __name__ == "__main__":
    main()
