"""Stage synth@<method>: plan and generate a synthetic set into data/synthetic/<method>/.

Resumable: the output is persisted by DVC and finished rows are skipped on re-run. Under a
multi-process ``runtime.launch`` each process takes every N-th batch; the set is the same.
"""

import sys

from tailsynth.data.manifest import image_shape, read_classes, read_manifest
from tailsynth.methods import registry
from tailsynth.methods.generated import check_spec, plan_generated
from tailsynth.synth.plan import finalize_rows

from _common import load_params, prepared_dir, stage
from _synth import Synthesis, image_hashes, source_loader


@stage
def main(method: str) -> None:
    params = load_params()
    p = params["synth"]
    m = registry.get(method, registry.LONG_TAIL, registry.GENERATED)
    spec = {"mode": m.generation, **(p.get(method) or {})}
    check_spec(method, spec, p["steps"])
    folder = prepared_dir(params)
    classes, manifest = read_classes(folder), read_manifest(folder, multilabel=True)
    channels, size = image_shape(folder)
    rows = plan_generated(
        method,
        spec,
        classes,
        manifest,
        per_class=p["per_class"],
        buckets=p["buckets"],
        prompt_template=params["generator"]["prompt"],
        steps=p["steps"],
        cfg=p["cfg"],
        scheduler=p["scheduler"],
        seed=p["seed"],
        source_hashes=image_hashes(manifest),
    )
    synthesis = Synthesis(p["scheduler"], params)
    plan = finalize_rows(rows, synthesis.generator_id(channels, size), m.key_fields)
    synthesis.run(
        m,
        registry.LONG_TAIL,
        plan,
        synthesis.generate,
        source_loader(folder, channels),
        size=size,
        channels=channels,
        batch_size=p["batch_size"],
    )


if __name__ == "__main__":
    main(sys.argv[1])
