"""Stage retrain@<method>: train on real (+ synthetic) data for each of eval.seeds seeds."""

import sys
from pathlib import Path

from _not_applicable import skip_if_not_applicable
from _retrain import retrain_data, retrain_models

from tailsynth.io import atomic_dir
from tailsynth.methods import registry
from tailsynth.models.classifier import save_classifier

from _common import load_params, prepared_dir, stage


@stage
def main(method: str) -> None:
    m = registry.get(method, registry.LONG_TAIL)
    params = load_params()
    if skip_if_not_applicable(params, [Path("models/retrain") / method], family=m.family):
        return
    synthetic = m.synthetic_dir(registry.LONG_TAIL) if m.generated else None
    data = retrain_data(params, prepared_dir(params), method, synthetic)
    with atomic_dir(Path("models/retrain") / method) as tmp:
        for seed, model in retrain_models(params, data):
            extra = {"method": method, "seed": seed, "n_real": data.n_real, "n_synthetic": data.n_synthetic}
            save_classifier(model, tmp / f"seed{seed}", extra=extra)


if __name__ == "__main__":
    main(sys.argv[1])
