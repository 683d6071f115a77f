"""Stage evaluate@<method>: test accuracy (mean ± std over seeds) and, for synthetic sets, their quality
(oracle-based) and how hard they are for the baseline classifier (the feedback criteria).

On multi-label data: test mAP (overall, per shot bucket, head, tail; mean ± std over seeds) and
per-class AP, from the sigmoid scores; a synthetic set's oracle metrics compare it with the test
images showing its classes (the feedback criteria, softmax-based, are left out)."""

import sys
from pathlib import Path

import pandas as pd
import torch
from _guide import guide_criteria
from _not_applicable import skip_if_not_applicable

from tailsynth.data.manifest import image_shape, read_classes, read_manifest, select_rows
from tailsynth.data.stream import open_images, select
from tailsynth.data.targets import open_targets
from tailsynth.errors import TailsynthError
from tailsynth.io import atomic_write_text, write_json
from tailsynth.methods import registry
from tailsynth.metrics.accuracy import evaluate_runs
from tailsynth.metrics.coverage import class_density_coverage
from tailsynth.metrics.frechet import frechet_distance, inception_features, inception_weights_path
from tailsynth.metrics.multilabel import evaluate_multilabel_runs
from tailsynth.models.classifier import load_classifier, predict
from tailsynth.synth.plan import read_synthetic

from _common import data_loading, device, load_params, log, prepared_dir, require, stage


@stage
def main(method: str) -> None:
    m = registry.get(method, registry.LONG_TAIL)
    params = load_params()
    outs = [f"metrics/evaluate/{method}.json", f"metrics/evaluate/{method}_seeds.csv"]
    if skip_if_not_applicable(params, outs, family=m.family):
        return
    density_k = require(params["eval"], "density_k", "eval")  # checked for every method: all declare it
    if not isinstance(density_k, int) or isinstance(density_k, bool) or density_k < 1:
        raise TailsynthError(f"eval.density_k must be a whole number >= 1, got {density_k!r}")
    folder = prepared_dir(params)
    classes = read_classes(folder)
    channels, _ = image_shape(folder)
    workers, in_memory = data_loading(params)
    test_x, test_y = open_targets(folder, "test", channels, len(classes), in_memory)
    runs = sorted(Path("models/retrain", method).glob("seed*"), key=lambda p: int(p.name[4:]))
    if not runs:
        raise TailsynthError(f"no retrained models in models/retrain/{method}; run retrain@{method} first")
    dev = device(params)
    logits = [predict(load_classifier(run, dev), test_x, workers=workers)[0] for run in runs]
    multilabel = test_y.ndim == 2
    if multilabel:
        result, per_seed = evaluate_multilabel_runs([x.sigmoid().numpy() for x in logits], test_y.numpy(), classes)
    else:
        manifest = read_manifest(folder)  # a dataset with groups (contexts) gets worst- and average-group accuracy
        groups = select_rows(manifest, "test")["group"].astype(str).to_numpy() if "group" in manifest else None
        result, per_seed = evaluate_runs([x.argmax(1).numpy() for x in logits], test_y.numpy(), classes, groups)
    result["n_synthetic"] = 0
    if m.generated:
        synthetic = m.synthetic_dir(registry.LONG_TAIL)
        rows = read_synthetic(synthetic)
        if len(rows):  # read once for both: the oracle's metrics and the guiding classifier's criteria
            images = open_images(synthetic, rows, channels, in_memory)
            labels = torch.tensor(rows["label"].tolist(), dtype=torch.int64)  # the class each image was made for
            if multilabel:  # each test image stands for every label it shows; the criteria take single labels
                shown = test_y.nonzero()
                result.update(
                    synthetic_quality(
                        images, labels, select(test_x, shown[:, 0]), shown[:, 1], density_k, dev, workers, True
                    )
                )
            else:
                result.update(synthetic_quality(images, labels, test_x, test_y, density_k, dev, workers))
                result.update(guide_criteria(images, labels, folder, channels, len(classes), dev, in_memory, workers))
    scores = result["map" if multilabel else "acc"]
    log.info(
        "evaluate %s: %s %s", method, "mAP" if multilabel else "accuracy", {k: round(v, 4) for k, v in scores.items()}
    )
    write_results(method, runs, per_seed, result)


def write_results(method: str, runs: list[Path], per_seed: list[dict], result: dict) -> None:
    """metrics/evaluate/<method>_seeds.csv (a row per seed: what paired comparisons use) and <method>.json."""
    out = Path("metrics/evaluate")
    seeds = pd.DataFrame([{"seed": int(run.name[4:]), **acc} for run, acc in zip(runs, per_seed, strict=True)])
    atomic_write_text(out / f"{method}_seeds.csv", seeds.to_csv(index=False))
    write_json(out / f"{method}.json", result)


def synthetic_quality(
    images: torch.Tensor,
    labels: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    k: int,
    dev,
    workers: int = 0,
    multilabel: bool = False,
) -> dict:
    """For synthetic ``images`` made for classes ``labels`` (N,): oracle_acc (label consistency), fd_oracle,
    density and coverage (k-NN balls, class by class) against real ``test_x`` of classes ``test_y`` and,
    with the Inception weights, Inception FID. The images are image sets of :mod:`tailsynth.data.stream`
    (uint8 in memory, or streamed by ``workers`` processes) or float tensors (N, C, H, W) in [0, 1].

    ``multilabel``: the oracle is a multi-label one, and oracle_acc is the share of images whose
    oracle score for the class they were made for is above 0.5 (it detects that label, whatever
    else it sees); else the share the oracle classifies as that class."""
    oracle = load_classifier("models/oracle", dev)
    logits, feats = predict(oracle, images, workers=workers)
    if multilabel:
        hit = logits.gather(1, labels[:, None])[:, 0] > 0  # sigmoid > 0.5
    else:
        hit = logits.argmax(1) == labels
    out = {"n_synthetic": int(len(labels)), "oracle_acc": float(hit.float().mean())}
    # Compare with real test images of the same classes only: the synthetic set covers a few classes.
    same = torch.isin(test_y, labels.unique())
    real = select(test_x, same)
    if len(real) < 2 or len(images) < 2:
        log.info(
            "fd_oracle and fid skipped: %d synthetic and %d real test images (need 2 each)", len(images), len(real)
        )
        return out
    _, real_feats = predict(oracle, real, workers=workers)
    out["fd_oracle"] = frechet_distance(feats.numpy(), real_feats.numpy())
    real_y = test_y[same]
    counts = {int(c): int((real_y == c).sum()) for c in labels.unique()}
    scored = torch.tensor([c for c, n in counts.items() if n > k], dtype=torch.int64)
    if len(scored) < len(counts):
        log.info("density/coverage leave out classes with <= eval.density_k (%d) test images: %s", k, counts)
    if len(scored):
        keep = torch.isin(labels, scored)
        out["density"], out["coverage"] = class_density_coverage(
            real_feats.numpy(), real_y.numpy(), feats[keep].numpy(), labels[keep].numpy(), k=k
        )
    path, reason = inception_weights_path()
    if path is None:
        log.info("%s", reason)
    else:
        fake_fid, real_fid = (inception_features(x, device=dev, workers=workers) for x in (images, real))
        out["fid"] = frechet_distance(fake_fid, real_fid)
    return out


if __name__ == "__main__":
    main(sys.argv[1])
