"""Stage generator_eval: does the generator follow its prompts? Oracle accuracy of Txt2Img samples."""

import torch

from tailsynth.data.class_names import prompt_for, uses_group
from tailsynth.data.groups import class_groups
from tailsynth.data.images import match_channels, resize_batch
from tailsynth.data.manifest import image_shape, read_classes, read_manifest
from tailsynth.io import write_json
from tailsynth.models.classifier import load_classifier, predict
from tailsynth.models.generator import load_pipeline
from tailsynth.report.grid import save_class_grid
from tailsynth.seeding import derive_seed
from tailsynth.synth.sampler import LatentDiffusionSampler

from _common import device, inference_dtype, load_params, log, prepared_dir, stage


@stage
def main() -> None:
    params = load_params()
    p = params["generator_eval"]
    folder = prepared_dir(params)
    classes = read_classes(folder)
    channels, size = image_shape(folder)
    dev = device(params)
    dtype = inference_dtype(params, dev)
    sampler = LatentDiffusionSampler(load_pipeline("models/generator", device=dev, dtype=dtype), p["scheduler"])
    oracle = load_classifier("models/oracle", device=dev)
    images, labels = [], []
    template = params["generator"]["prompt"]
    groups = class_groups(read_manifest(folder)) if uses_group(template) else {}
    for c in classes:
        # With {group} in the prompt, sample j names the class's (j mod G)-th context.
        contexts = groups.get(c["index"]) or [None]
        prompts = [prompt_for(template, c, contexts[j % len(contexts)]) for j in range(p["per_class"])]
        for start in range(0, p["per_class"], p["batch_size"]):
            n = min(p["batch_size"], p["per_class"] - start)
            seeds = [derive_seed(p["seed"], c["index"], start + i) for i in range(n)]
            out = sampler.generate(prompts[start : start + n], seeds, steps=p["steps"], cfg=p["cfg"])
            images.append(resize_batch(match_channels(out, channels), size))
            labels += [c["index"]] * n
    images, labels = torch.cat(images), torch.tensor(labels)
    pred = predict(oracle, images)[0].argmax(1)
    per_class = [float((pred[labels == c["index"]] == c["index"]).float().mean()) for c in classes]
    result = {
        "oracle_acc": float(sum(per_class) / len(per_class)),
        "oracle_acc_min": float(min(per_class)),
        "oracle_acc_per_class": {c["name"]: a for c, a in zip(classes, per_class, strict=True)},
        "n_samples": int(len(labels)),
        "min_acc": float(p["min_acc"]),
        "min_class_acc": float(p["min_class_acc"]),
    }
    log.info("generator oracle accuracy %.3f (worst class %.3f)", result["oracle_acc"], result["oracle_acc_min"])
    worst = min(result["oracle_acc_per_class"], key=result["oracle_acc_per_class"].get)
    if result["oracle_acc"] < p["min_acc"] or result["oracle_acc_min"] < p["min_class_acc"]:
        log.warning(
            "the generator misses its bar: oracle accuracy %.1f%% (generator_eval.min_acc %.0f%%), class %r %.1f%% "
            "(generator_eval.min_class_acc %.0f%%); the report marks every generated row unreliable. Train it "
            "longer (generator.vae / generator.unet steps) or use a pretrained generator.",
            100 * result["oracle_acc"],
            100 * p["min_acc"],
            worst,
            100 * result["oracle_acc_min"],
            100 * p["min_class_acc"],
        )
    write_json("metrics/generator.json", result)
    save_class_grid(images, labels, "metrics/plots/generator_samples.png", per_row=p.get("grid_per_row", 10))


if __name__ == "__main__":
    main()
