"""Stage synth@<method>: plan and generate a synthetic set into data/synthetic/<method>/.

Resumable: the output is persisted by DVC and finished rows are skipped on re-run. Run under
``accelerate launch`` to shard batches over several GPUs; the manifest is the same.
"""

import sys

from tailsynth.data.manifest import image_shape, read_classes, read_manifest
from tailsynth.errors import TailsynthError
from tailsynth.methods.generated import check_spec, plan_generated
from tailsynth.synth.plan import finalize_rows

from _common import load_params, prepared_dir, stage
from _synth import Synthesis, source_loader, train_source_hashes


@stage
def main(method: str) -> None:
    params = load_params()
    p = params["synth"]
    if not isinstance(p.get(method), dict):
        raise TailsynthError(f"unknown generated method {method!r}: params.yaml has no synth.{method} section")
    check_spec(method, p[method], p["steps"])
    folder = prepared_dir(params)
    classes, manifest = read_classes(folder), read_manifest(folder)
    channels, size = image_shape(folder)
    rows = plan_generated(
        method,
        p[method],
        classes,
        manifest,
        per_class=p["per_class"],
        buckets=p["buckets"],
        prompt_template=params["generator"]["prompt"],
        steps=p["steps"],
        cfg=p["cfg"],
        scheduler=p["scheduler"],
        seed=p["seed"],
        source_hashes=train_source_hashes(folder, manifest),
    )
    synthesis = Synthesis(p["scheduler"])
    plan = finalize_rows(rows, synthesis.generator_id)
    synthesis.run(
        method,
        plan,
        synthesis.generate,
        source_loader(folder, channels),
        size=size,
        channels=channels,
        batch_size=p["batch_size"],
    )


if __name__ == "__main__":
    main(sys.argv[1])
