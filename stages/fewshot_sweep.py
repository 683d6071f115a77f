"""Stage fewshot_sweep: fixed-r GeNIe at every level of the Ada grid (the paper's Table 5 in miniature).

GeNIe-Ada's generation (fewshot_synth@genie_ada) holds every pair at every grid level, and a
level's images are exactly fixed-r GeNIe's (same pairs, same seeds). Per level: the oracle's
label accuracy on those images and the few-shot accuracy they give -> metrics/fewshot/r_sweep.json
and the plot table metrics/plots/r_sweep.csv.
"""

import numpy as np
import pandas as pd
from _fewshot import BACKBONE, episode_features, features_by_image, oracle_accuracy, read_episodes
from _not_applicable import skip_if_not_applicable

from tailsynth.data.manifest import image_shape
from tailsynth.io import atomic_write_text, write_json
from tailsynth.methods import registry
from tailsynth.methods.episodic import select_rows
from tailsynth.metrics.keys import level_key
from tailsynth.models.classifier import load_classifier
from tailsynth.synth.plan import read_complete_synthetic
from tailsynth.train.fewshot import evaluate_episodes, mean_ci95

from _common import device, load_params, log, prepared_dir, stage


@stage
def main() -> None:
    params = load_params()
    outs = ["metrics/fewshot/r_sweep.json", "metrics/plots/r_sweep.csv"]
    if skip_if_not_applicable(params, outs, mode=registry.FEWSHOT):
        return
    p, shots = params["fewshot_eval"], params["fewshot"]["shots"]
    folder = prepared_dir(params)
    channels, _ = image_shape(folder)
    episodes = read_episodes()
    backbone = load_classifier(BACKBONE, device(params))
    oracle = load_classifier("models/oracle", device(params))
    features = episode_features(backbone, folder, episodes, channels)
    source = next(m for m in registry.methods(registry.FEWSHOT) if m.ada).synthetic_dir(registry.FEWSHOT)
    rows = read_complete_synthetic(source, "fewshot_synth@genie_ada")
    gen_features = features_by_image(backbone, source, rows["image"].tolist(), channels)
    result, table = {}, []
    for r in sorted(set(rows["r"].astype(float))):
        level = rows[rows["r"].astype(float) == r]

        def extras(e: int, k: int, level=level):
            chosen = select_rows(level, e, k)
            return np.stack([gen_features[i] for i in chosen["image"]]), chosen["label"].to_numpy()

        accs = evaluate_episodes(episodes, shots, features, extras, c=p["c"], max_iter=p["max_iter"])
        entry = {"r": r, "oracle_acc": oracle_accuracy(oracle, source, level, channels)}
        entry.update({f"{k}shot": mean_ci95(a) for k, a in accs.items()})
        result[level_key(r)] = entry
        table.append(
            {"r": r, "oracle_acc": entry["oracle_acc"], **{f"acc_{k}shot": entry[f"{k}shot"]["mean"] for k in shots}}
        )
        log.info(
            "r %.2f: oracle %.3f, %s", r, entry["oracle_acc"], {k: round(float(np.mean(a)), 4) for k, a in accs.items()}
        )
    write_json("metrics/fewshot/r_sweep.json", result)
    atomic_write_text("metrics/plots/r_sweep.csv", pd.DataFrame(table).to_csv(index=False))


if __name__ == "__main__":
    main()
