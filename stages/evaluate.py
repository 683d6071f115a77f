"""Stage evaluate@<method>: test accuracy (mean ± std over seeds) and, for synthetic sets, their quality."""

import sys
from pathlib import Path

import numpy as np
import torch

from tailsynth.data.manifest import image_shape, load_rows, load_split, read_classes
from tailsynth.errors import TailsynthError
from tailsynth.io import write_json
from tailsynth.metrics.accuracy import bucket_accuracy, mean_std, per_class_accuracy
from tailsynth.metrics.frechet import frechet_distance, inception_features, inception_weights_path
from tailsynth.models.classifier import load_classifier, predict
from tailsynth.synth.plan import MANIFEST, read_synthetic

from _common import device, load_params, log, prepared_dir, stage


@stage
def main(method: str) -> None:
    params = load_params()
    folder = prepared_dir(params)
    classes = read_classes(folder)
    channels, _ = image_shape(folder)
    test_x, test_y = load_split(folder, "test", channels)
    test_x = test_x.float() / 255
    y = test_y.numpy()
    runs = sorted(Path("models/retrain", method).glob("seed*"))
    if not runs:
        raise TailsynthError(f"no retrained models in models/retrain/{method}; run retrain@{method} first")
    accs, per_class = [], []
    for run in runs:
        pred = predict(load_classifier(run, device()), test_x)[0].argmax(1).numpy()
        accs.append(bucket_accuracy(pred, y, classes))
        per_class.append(per_class_accuracy(pred, y, len(classes)))
    stats = mean_std(accs)
    result = {
        "acc": {k: v["mean"] for k, v in stats.items()},
        "acc_std": {k: v["std"] for k, v in stats.items()},
        # A class without test images has no accuracy: it is left out, not written as NaN.
        "per_class_acc": {
            c["name"]: float(a) for c, a in zip(classes, np.mean(per_class, axis=0), strict=True) if not np.isnan(a)
        },
        "n_seeds": len(runs),
        "n_synthetic": 0,
    }
    synthetic = Path("data/synthetic") / method
    if (synthetic / MANIFEST).is_file():
        result.update(synthetic_quality(synthetic, test_x, test_y, channels))
    log.info("evaluate %s: %s", method, {k: round(v, 4) for k, v in result["acc"].items()})
    write_json(Path("metrics/evaluate") / f"{method}.json", result)


def synthetic_quality(synthetic: Path, test_x: torch.Tensor, test_y: torch.Tensor, channels: int) -> dict:
    """oracle_acc (label consistency), fd_oracle and, with the Inception weights, Inception FID."""
    rows = read_synthetic(synthetic)
    if len(rows) == 0:
        return {"n_synthetic": 0}
    images = load_rows(synthetic, rows, channels).float() / 255
    labels = torch.tensor(rows["label"].tolist(), dtype=torch.int64)
    oracle = load_classifier("models/oracle", device())
    logits, feats = predict(oracle, images)
    out = {"n_synthetic": int(len(rows)), "oracle_acc": float((logits.argmax(1) == labels).float().mean())}
    # Compare with real test images of the same classes only: the synthetic set covers a few classes.
    same = torch.isin(test_y, labels.unique())
    real = test_x[same]
    if len(real) < 2 or len(images) < 2:
        log.info(
            "fd_oracle and fid skipped: %d synthetic and %d real test images (need 2 each)", len(images), len(real)
        )
        return out
    _, real_feats = predict(oracle, real)
    out["fd_oracle"] = frechet_distance(feats.numpy(), real_feats.numpy())
    path, reason = inception_weights_path()
    if path is None:
        log.info("%s", reason)
    else:
        dev = device()
        out["fid"] = frechet_distance(inception_features(images, device=dev), inception_features(real, device=dev))
    return out


if __name__ == "__main__":
    main(sys.argv[1])
