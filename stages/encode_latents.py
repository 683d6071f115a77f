"""Stage encode_latents: the generator's VAE encodes the fusion.train_split images into latent shards
(data/latents/), scaled by its scaling factor, batch by batch (never one tensor for the whole split)."""

import torch

from tailsynth.checks import whole_number
from tailsynth.data.images import match_channels, resize_batch
from tailsynth.data.manifest import image_shape, load_rows, read_manifest, select_rows
from tailsynth.io import folder_digest
from tailsynth.methods.fusion.latents import (
    check_posterior,
    encode_images,
    encoding_identity,
    image_seed,
    write_latents,
)

from _common import device, load_params, prepared_dir, progress_bar, stage

GENERATOR = "models/generator"
OUT = "data/latents"


@stage
def main() -> None:
    params = load_params()
    p = params["fusion"]
    e = p["encode"]
    posterior = check_posterior(e["posterior"])
    batch_size = whole_number(e["batch_size"], "fusion.encode.batch_size", 1)
    shard_size = whole_number(e["shard_size"], "fusion.encode.shard_size", 1)
    folder = prepared_dir(params)
    rows = select_rows(read_manifest(folder, multilabel=True), p["train_split"], "fusion.train_split")
    channels, _ = image_shape(folder)
    seed = whole_number(e["seed"], "fusion.encode.seed")
    # after the param checks: diffusers takes seconds to import
    from diffusers import AutoencoderKL

    from tailsynth.models.generator import saved_pipeline_resolution

    vae = AutoencoderKL.from_pretrained(f"{GENERATOR}/vae", use_safetensors=True).to(device(params)).eval()
    # the side the generator's UNet runs at (its latents are what fuse and refine see), not the VAE's own
    # sample_size, which a pipeline need not share
    resolution = saved_pipeline_resolution(GENERATOR)
    identity = encoding_identity(folder_digest(f"{GENERATOR}/vae"), posterior, seed, resolution)

    def encode(part):
        chunks = []
        for start in range(0, len(part), batch_size):
            batch = part.iloc[start : start + batch_size]
            images = load_rows(folder, batch, channels).float() / 255
            images = resize_batch(match_channels(images, int(vae.config.in_channels)), resolution)
            seeds = [image_seed(seed, image) for image in batch["image"]]
            chunks.append(encode_images(vae, images, posterior=posterior, seeds=seeds))
        return torch.cat(chunks)

    columns = [c for c in ("image", "label", "labels", "group", "sha") if c in rows]
    with progress_bar(len(rows), "encode latents") as bar:
        write_latents(rows[columns], OUT, encode, identity=identity, shard_size=shard_size, progress=bar.update)


if __name__ == "__main__":
    main()
