"""Stage generator_unclip: the dual-conditioned (text + image) generator of the feedback ladder.

Embedded: built from models/generator (its VAE, text encoder, tokenizer and UNet) with a CLIP image
encoder trained on generator_unclip.train_split and a zero-initialised image-embedding input that the
UNet is fine-tuned with. Pretrained: a StableUnCLIPImg2ImgPipeline hub id or folder, saved as is.
"""

import torch
from _not_applicable import skip_if_not_applicable
from _processes import check_split, exit_unless_main, process_group, training_device

from tailsynth.data.class_names import prompt_for, uses_group
from tailsynth.data.groups import class_groups, image_prompts
from tailsynth.data.manifest import image_shape, load_rows, read_classes, read_manifest, select_rows
from tailsynth.errors import TailsynthError
from tailsynth.io import atomic_dir, write_json
from tailsynth.methods import registry

from _common import load_params, log, prepared_dir, require, stage

OUT = "models/generator_unclip"


@stage
def main() -> None:
    params = load_params()
    if skip_if_not_applicable(params, [OUT], family=registry.FEEDBACK):
        return
    p = params["generator_unclip"]
    if p["source"] not in ("train", "pretrained"):
        raise TailsynthError(f"unknown generator_unclip.source {p['source']!r}; use train or pretrained")
    prompt = params["generator"]["prompt"]
    if p["source"] == "pretrained":
        from tailsynth.models.unclip import load_unclip

        model = require(p, "model", "generator_unclip")
        pipe = load_unclip(model, param="generator_unclip.model")
        with atomic_dir(OUT) as tmp:
            pipe.save_pretrained(tmp, safe_serialization=True)
            write_json(tmp / "tailsynth.json", {"source": "pretrained", "model": model, "prompt": prompt})
        return
    folder = prepared_dir(params)
    classes, manifest = read_classes(folder), read_manifest(folder)
    rows = select_rows(manifest, p["train_split"], "generator_unclip.train_split")
    if len(rows) == 0:
        raise TailsynthError(f"generator_unclip.train_split {p['train_split']!r} selects no images in {folder}")
    images = load_rows(folder, rows, image_shape(folder)[0])
    labels = torch.tensor(rows["label"].to_numpy(), dtype=torch.int64)
    train_prompts = image_prompts(prompt, classes, rows)  # each image with its own context's prompt
    e, u = p["encoder"], p["unet"]
    # Imported after the params are read: diffusers and transformers take seconds to import.
    from tailsynth.models import generator as gen
    from tailsynth.models import unclip as uc

    # Under accelerate launch: data-parallel, each process its share of every batch; at runtime.train_precision.
    accelerator = process_group(params)
    dev = training_device(accelerator, params)
    for section in ("encoder", "unet"):
        check_split(accelerator, min(p[section]["batch_size"], len(images)), f"generator_unclip.{section}.batch_size")
    base = gen.load_pipeline("models/generator", device=dev)
    encoder, processor = uc.build_image_encoder(
        images.shape[-1],
        uc.ImageEncoderConfig(
            patch_size=e["patch_size"],
            hidden=e["hidden"],
            layers=e["layers"],
            heads=e["heads"],
            projection_dim=e["projection_dim"],
        ),
        seed=p["seed"],
    )

    def progress(what: str):
        return lambda step, loss: log.info("%s step %d loss %.5f", what, step + 1, loss)

    enc = uc.train_image_encoder(
        encoder,
        images.float() / 255,
        labels,
        class_text(base, prompt, classes, manifest),
        steps=e["steps"],
        batch_size=e["batch_size"],
        lr=e["lr"],
        seed=p["seed"],
        device=dev,
        callback=progress("image encoder"),
        accelerator=accelerator,
    )
    embeds = uc.processor_embeddings(encoder, processor, images)
    unet = uc.unclip_unet(base.unet, embeds.shape[1])
    pipe = uc.assemble_unclip(base, encoder, processor, uc.image_normalizer(embeds).to(dev), unet)
    mean, std = gen.encode_latents(base.vae, images.float() / 255)
    ft = uc.finetune_unclip(
        pipe,
        mean.cpu(),
        std.cpu(),
        train_prompts,
        embeds,
        steps=u["steps"],
        batch_size=u["batch_size"],
        lr=u["lr"],
        class_lr=u["class_lr"],
        drop_both=u["drop_both"],
        drop_image=u["drop_image"],
        drop_text=u["drop_text"],
        ema_decay=u["ema_decay"],
        min_timestep=u["min_timestep"],
        seed=p["seed"],
        device=dev,
        callback=progress("unet"),
        accelerator=accelerator,
    )
    exit_unless_main()
    info = {
        "source": "train",
        "prompt": prompt,
        "train_images": len(images),
        "image_encoder_final_loss": enc.loss,
        "unet_final_loss": ft.loss,
        "embedding_dim": int(embeds.shape[1]),
    }
    log.info("dual-conditioned generator built: %s", info)
    with atomic_dir(OUT) as tmp:
        pipe.to("cpu").save_pretrained(tmp, safe_serialization=True)
        write_json(tmp / "tailsynth.json", info)


def class_text(base, template: str, classes: list[dict], manifest) -> torch.Tensor:
    """(K, T) class targets of the image encoder: each class's pooled prompt embedding, or with {group}
    in the prompt the mean over the class's contexts."""
    from tailsynth.models import unclip as uc

    if not uses_group(template):
        return uc.pooled_text(base, [prompt_for(template, c) for c in classes])
    groups = class_groups(manifest)
    return torch.stack(
        [uc.pooled_text(base, [prompt_for(template, c, g) for g in groups[int(c["index"])]]).mean(0) for c in classes]
    )


if __name__ == "__main__":
    main()
