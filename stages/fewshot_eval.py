"""Stage fewshot_eval@<method>: episodic accuracy of a linear probe on frozen features -> metrics/fewshot/<method>.json.

Every method's support is the real K-shot support plus (N−1)·K images per class: augmented
copies (weak, strong, cutmix, mixup), or rows of its generated set (fewshot_synth@<method>);
``none`` adds nothing. Result per shot count: mean ± 1.96·std/√E over the episodes.
"""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from _fewshot import ADA_CHOICES, BACKBONE, episode_features, features_by_image, oracle_accuracy, read_episodes
from _not_applicable import skip_if_not_applicable

from tailsynth.data.episodes import support
from tailsynth.data.manifest import image_shape, load_rows
from tailsynth.errors import TailsynthError
from tailsynth.io import atomic_write_text, write_json
from tailsynth.methods import registry
from tailsynth.methods.episodic import augmented_support, select_rows
from tailsynth.metrics.keys import level_key
from tailsynth.models.classifier import load_classifier, predict
from tailsynth.synth.plan import read_complete_synthetic
from tailsynth.train.fewshot import evaluate_episodes, mean_ci95

from _common import device, load_params, log, prepared_dir, stage


@stage
def main(method: str) -> None:
    m = registry.get(method, registry.FEWSHOT)
    params = load_params()
    outs = [f"metrics/fewshot/{method}.json", f"metrics/fewshot/{method}_episodes.csv"]
    if skip_if_not_applicable(params, outs, mode=registry.FEWSHOT):
        return
    p = params["fewshot_eval"]
    shots, ways = params["fewshot"]["shots"], params["fewshot"]["ways"]
    folder = prepared_dir(params)
    channels, _ = image_shape(folder)
    episodes = read_episodes()
    backbone = load_classifier(BACKBONE, device(params))
    features = episode_features(backbone, folder, episodes, channels)
    result: dict = {}
    if not m.generated:
        extras = augment_extras(
            method,
            params["augment"].get(method) or {},
            episodes,
            folder,
            channels,
            backbone,
            ways,
            seed=params["fewshot"]["seed"],
        )
    else:
        source = m.synthetic_dir(registry.FEWSHOT)
        rows = read_complete_synthetic(source, f"fewshot_synth@{method}")
        if m.ada:  # GeNIe-Ada: the chosen level of each pair, per shot count (written before the manifest)
            if not (source / ADA_CHOICES).is_file():
                raise TailsynthError(
                    f"{source / ADA_CHOICES} not found next to the manifest; re-run fewshot_synth@{method}"
                )
            choices = pd.read_csv(source / ADA_CHOICES)
            used = rows[rows["image"].isin(choices["image"])]
            result["chosen_r"] = {
                f"{k}shot": {level_key(r): int(n) for r, n in g["chosen_r"].value_counts().sort_index().items()}
                for k, g in choices.groupby("shots")
            }
            by_image = rows.set_index("image")

            def pick(e: int, k: int) -> pd.DataFrame:
                chosen = choices[(choices["episode"] == e) & (choices["shots"] == k)]
                return by_image.loc[chosen["image"]].reset_index()

        else:
            used = rows

            def pick(e: int, k: int) -> pd.DataFrame:
                return select_rows(rows, e, k)

        gen_features = features_by_image(backbone, source, used["image"].tolist(), channels)
        extras = generated_extras(pick, gen_features, ways)
        result["oracle_acc"] = oracle_accuracy(load_classifier("models/oracle", device(params)), source, used, channels)
        result["n_synthetic"] = int(len(used))
    accs = evaluate_episodes(episodes, shots, features, extras, c=p["c"], max_iter=p["max_iter"])
    for k, a in accs.items():
        result[f"{k}shot"] = mean_ci95(a)
        result[f"{k}shot"]["added_per_class"] = (ways - 1) * k if method != "none" else 0
    log.info("fewshot %s: %s", method, {f"{k}shot": round(float(np.mean(a)), 4) for k, a in accs.items()})
    out = Path("metrics/fewshot")
    per_episode = pd.DataFrame({"episode": sorted(set(episodes["episode"]))} | {f"{k}shot": a for k, a in accs.items()})
    atomic_write_text(out / f"{method}_episodes.csv", per_episode.to_csv(index=False))
    write_json(out / f"{method}.json", result)


def check_counts(labels: np.ndarray, expected: int, e: int, k: int) -> None:
    counts = set(np.bincount(labels)[np.unique(labels)].tolist())
    if counts != {expected}:
        raise RuntimeError(f"episode {e}, {k}-shot: added {sorted(counts)} images per class, expected {expected}")


def generated_extras(pick, gen_features: dict, ways: int):
    def extras(e: int, k: int):
        rows = pick(e, k)
        labels = rows["label"].to_numpy()
        check_counts(labels, (ways - 1) * k, e, k)
        return np.stack([gen_features[i] for i in rows["image"]]), labels

    return extras


def augment_extras(
    method: str, section: dict, episodes: pd.DataFrame, folder: Path, channels: int, backbone, ways: int, seed: int
):
    def extras(e: int, k: int):
        if method == "none":
            return np.zeros((0, 1)), np.zeros(0, dtype=np.int64)
        sup = support(episodes, e, k)
        x = load_rows(folder, sup, channels).float() / 255
        names = [f"{e}:{i}" for i in sup["image"]]
        ax, ay = augmented_support(
            x,
            torch.as_tensor(sup["label"].to_numpy()),
            names,
            method,
            copies=ways - 1,
            seed=seed,
            alpha=float(section.get("alpha", 1.0)),
            hflip=bool(section.get("hflip", False)),
        )
        check_counts(ay.numpy(), (ways - 1) * k, e, k)
        return predict(backbone, ax)[1].numpy(), ay.numpy()

    return extras


if __name__ == "__main__":
    main(sys.argv[1])
