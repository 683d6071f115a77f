"""Stage oracle: an independent classifier, used only to judge label consistency of synthetic sets."""

from _processes import exit_unless_main

from tailsynth.data.manifest import image_shape, read_classes
from tailsynth.data.targets import open_targets
from tailsynth.errors import TailsynthError
from tailsynth.io import atomic_dir, write_json
from tailsynth.methods.augment import weak_transform
from tailsynth.metrics.average_precision import mean_average_precision
from tailsynth.models.classifier import load_classifier, predict, save_classifier

from _common import data_loading, load_params, log, prepared_dir, require, stage
from _fit import fit_from_params

OUT = "models/oracle"


@stage
def main() -> None:
    params = load_params()
    p = params["oracle"]
    folder = prepared_dir(params)
    channels, _ = image_shape(folder)
    classes = read_classes(folder)
    workers, in_memory = data_loading(params)
    if p["source"] == "train":
        images, labels = open_targets(folder, p["train_split"], channels, len(classes), in_memory, "oracle.train_split")
        model = fit_from_params(
            p,
            images,
            labels,
            len(classes),
            seed=p["seed"],
            transform=weak_transform(),
            where="oracle",
            params=params,
        )
        exit_unless_main()
    elif p["source"] == "path":
        model = load_classifier(require(p, "model", "oracle"))
        want = {"num_classes": len(classes), "in_channels": channels}
        got = {k: model.config[k] for k in want}
        if got != want:
            raise TailsynthError(f"oracle.model {p['model']} expects {got}, the prepared dataset has {want}")
    else:
        raise TailsynthError(f"unknown oracle.source {p['source']!r}; use train or path")
    test_x, test_y = open_targets(folder, "test", channels, len(classes), in_memory)
    logits = predict(model, test_x, workers=workers)[0]
    if test_y.ndim == 2:  # multi-label: macro mAP; chance is the mAP of random scores, the mean prevalence
        shown = test_y.sum(0) > 0
        score = mean_average_precision(test_y.numpy(), logits.sigmoid().numpy())
        result = {"test_map": score, "n_test": int(len(test_y)), "chance": float(test_y.mean(0)[shown].mean())}
    else:
        acc = float((logits.argmax(1) == test_y).float().mean())
        result = {"test_acc": acc, "n_test": int(len(test_y)), "chance": float(1 / len(classes))}
    log.info("oracle on test: %s", result)
    with atomic_dir(OUT) as tmp:
        save_classifier(model, tmp, extra={"role": "oracle"})
    write_json("metrics/oracle.json", result)


if __name__ == "__main__":
    main()
