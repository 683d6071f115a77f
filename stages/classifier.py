"""Stage classifier: the baseline trained on the real long-tailed train split only.

Saves the model and, for single-label data, its confusion matrices on the train split (rows: true
class, columns: predicted class): counts, and the mean softmax per true class, which GeNIe's
long-tail mode reads to pick source classes. On multi-label data it is trained with BCE and scored
by mAP (metrics/classifier.json: ``map``).
"""

import numpy as np
import pandas as pd
from _processes import exit_unless_main

from tailsynth.data.manifest import image_shape, read_classes
from tailsynth.data.targets import open_targets
from tailsynth.io import atomic_dir, write_json
from tailsynth.methods.augment import training_augmentation
from tailsynth.metrics.accuracy import bucket_accuracy
from tailsynth.metrics.multilabel import bucket_map
from tailsynth.models.classifier import predict, save_classifier

from _common import data_loading, load_params, log, prepared_dir, stage
from _fit import fit_from_params

OUT = "models/classifier"


@stage
def main() -> None:
    params = load_params()
    p = params["classifier"]
    folder = prepared_dir(params)
    channels, _ = image_shape(folder)
    classes = read_classes(folder)
    k = len(classes)
    workers, in_memory = data_loading(params)
    images, labels = open_targets(folder, "train", channels, k, in_memory)
    transform, batch_transform = training_augmentation(p["augment"], k)
    model = fit_from_params(
        p,
        images,
        labels,
        k,
        seed=p["seed"],
        transform=transform,
        batch_transform=batch_transform,
        where="classifier",
        params=params,
    )
    exit_unless_main()
    test_x, test_y = open_targets(folder, "test", channels, k, in_memory)
    if labels.ndim == 2:  # multi-label: no confusion matrix (GeNIe's source choice takes single-label data)
        score = bucket_map(test_y.numpy(), predict(model, test_x, workers=workers)[0].sigmoid().numpy(), classes)
        log.info("baseline classifier test mAP %s", score)
        with atomic_dir(OUT) as tmp:
            save_classifier(model, tmp, extra={"role": "baseline"})
        write_json("metrics/classifier.json", {"map": score})
        return
    train_logits = predict(model, images, workers=workers)[0]
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (labels.numpy(), train_logits.argmax(1).numpy()), 1)
    # The train split is usually fitted almost perfectly, so the hard matrix is nearly diagonal;
    # the mean softmax per true class still ranks which classes the model finds alike.
    soft = np.zeros((k, k))
    np.add.at(soft, labels.numpy(), train_logits.softmax(1).numpy())
    soft /= np.maximum(np.bincount(labels.numpy(), minlength=k), 1)[:, None]
    acc = bucket_accuracy(predict(model, test_x, workers=workers)[0].argmax(1).numpy(), test_y.numpy(), classes)
    log.info("baseline classifier test accuracy %s", acc)
    names = [c["name"] for c in classes]
    with atomic_dir(OUT) as tmp:
        save_classifier(model, tmp, extra={"role": "baseline"})
        index = pd.Index(names, name="true")
        pd.DataFrame(confusion, index=index, columns=names).to_csv(tmp / "confusion_train.csv")
        pd.DataFrame(soft, index=index, columns=names).to_csv(tmp / "confusion_train_soft.csv")
    write_json("metrics/classifier.json", {"acc": acc})


if __name__ == "__main__":
    main()
