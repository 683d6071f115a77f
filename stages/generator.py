"""Stage generator: train the small latent diffusion model (embedded) or import a pretrained one."""

import time

from _processes import check_split, exit_unless_main, process_group, training_device

from tailsynth.data.groups import every_prompt, image_prompts
from tailsynth.data.manifest import image_shape, load_rows, read_classes, read_manifest, select_rows
from tailsynth.errors import TailsynthError
from tailsynth.io import atomic_dir, write_json
from tailsynth.models import generator as gen

from _common import load_params, log, prepared_dir, require, stage

OUT = "models/generator"


@stage
def main() -> None:
    params = load_params()
    p = params["generator"]
    if p["source"] == "pretrained":
        model = require(p, "model", "generator")
        pipe = gen.load_pipeline(model)
        with atomic_dir(OUT) as tmp:
            pipe.save_pretrained(tmp, safe_serialization=True)
            write_json(tmp / "tailsynth.json", {"source": "pretrained", "model": model, "prompt": p["prompt"]})
        return
    if p["source"] != "train":
        raise TailsynthError(f"unknown generator.source {p['source']!r}; use train or pretrained")
    folder = prepared_dir(params)
    classes = read_classes(folder)
    manifest = read_manifest(folder, multilabel=True)  # a multi-label image is learnt with all its labels named
    rows = select_rows(manifest, p["train_split"], "generator.train_split")
    if len(rows) == 0:
        raise TailsynthError(f"generator.train_split {p['train_split']!r} selects no images in {folder}")
    # With {group} in the prompt, each image is learnt with its own context's prompt.
    prompts, train_prompts = every_prompt(p["prompt"], classes, manifest), image_prompts(p["prompt"], classes, rows)
    images = load_rows(folder, rows, image_shape(folder)[0]).float() / 255
    # Under accelerate launch: data-parallel, each process its share of every batch; at runtime.train_precision.
    accelerator = process_group(params)
    dev = training_device(accelerator, params)
    for section in ("vae", "unet"):
        check_split(accelerator, min(p[section]["batch_size"], len(images)), f"generator.{section}.batch_size")
    config = gen.SmallLDMConfig(image_size=images.shape[-1], channels=images.shape[1])
    components = gen.build_small_ldm(prompts, config, seed=p["seed"])
    v, u = p["vae"], p["unet"]

    def progress(what: str):
        return lambda step, loss: log.info("%s step %d loss %.5f", what, step + 1, loss)

    t0 = time.perf_counter()
    vae = gen.train_vae(
        components["vae"],
        images,
        steps=v["steps"],
        batch_size=v["batch_size"],
        lr=v["lr"],
        kl_weight=v["kl_weight"],
        target_mse=v.get("target_mse"),  # null or absent: always `steps`
        seed=p["seed"],
        device=dev,
        callback=progress("vae"),
        accelerator=accelerator,
    )
    t_vae = time.perf_counter() - t0
    mean, std = gen.encode_latents(components["vae"], images)
    scale = gen.set_latent_scaling(components["vae"], mean)
    unet = gen.train_denoiser(
        components,
        mean,
        std,
        train_prompts,
        steps=u["steps"],
        batch_size=u["batch_size"],
        lr=u["lr"],
        warmup_steps=u["warmup_steps"],
        uncond_prob=u["uncond_prob"],
        ema_decay=u["ema_decay"],
        log_every=100,
        seed=p["seed"],
        device=dev,
        callback=progress("unet"),
        accelerator=accelerator,
    )
    exit_unless_main()
    # Only what params, data and code determine: this folder's digest keys every synthetic image,
    # so run timings go to the log, never into the folder.
    info = {
        "source": "train",
        "prompt": p["prompt"],
        "train_images": len(images),
        "vae_steps": vae.steps,
        "vae_recon_mse": vae.loss,
        "latent_scaling_factor": scale,
        "denoiser_final_loss": unet.loss,
        "unet_parameters": gen.count_parameters(components["unet"]),
    }
    log.info("generator trained: %s", info)
    log.info("generator timings: vae %.1f s, total %.1f s", t_vae, time.perf_counter() - t0)
    with atomic_dir(OUT) as tmp:
        gen.assemble_pipeline(components).to("cpu").save_pretrained(tmp, safe_serialization=True)
        write_json(tmp / "tailsynth.json", info)


if __name__ == "__main__":
    main()
