"""Stage encode_latents: the generator's VAE encodes the fusion.train_split images into latent shards
(data/latents/), scaled by its scaling factor, batch by batch (never one tensor for the whole split)."""

import torch

from tailsynth.data.images import match_channels, resize_batch
from tailsynth.data.manifest import image_shape, load_rows, read_manifest, select_rows
from tailsynth.errors import TailsynthError
from tailsynth.io import folder_digest
from tailsynth.methods.fusion.latents import check_posterior, encode_images, image_seed, write_latents

from _common import device, load_params, prepared_dir, progress_bar, stage

VAE = "models/generator/vae"
OUT = "data/latents"


@stage
def main() -> None:
    params = load_params()
    p = params["fusion"]
    e = p["encode"]
    posterior = check_posterior(e["posterior"])
    batch_size = e["batch_size"]
    if not isinstance(batch_size, int) or batch_size < 1:
        raise TailsynthError(f"fusion.encode.batch_size must be a whole number >= 1, got {batch_size!r}")
    folder = prepared_dir(params)
    rows = select_rows(read_manifest(folder), p["train_split"], "fusion.train_split")
    channels, _ = image_shape(folder)
    from diffusers import AutoencoderKL  # after the param checks: diffusers takes seconds to import

    vae = AutoencoderKL.from_pretrained(VAE, use_safetensors=True).to(device()).eval()
    resolution = int(vae.config.sample_size)
    identity = f"{folder_digest(VAE)}-{posterior}-{e['seed']}-{resolution}"

    def encode(part):
        chunks = []
        for start in range(0, len(part), batch_size):
            batch = part.iloc[start : start + batch_size]
            images = load_rows(folder, batch, channels).float() / 255
            images = resize_batch(match_channels(images, int(vae.config.in_channels)), resolution)
            seeds = [image_seed(e["seed"], image) for image in batch["image"]]
            chunks.append(encode_images(vae, images, posterior=posterior, seeds=seeds))
        return torch.cat(chunks)

    columns = [c for c in ("image", "label", "labels", "group", "sha") if c in rows]
    with progress_bar(len(rows), "encode latents") as bar:
        write_latents(rows[columns], OUT, encode, identity=identity, shard_size=e["shard_size"], progress=bar.update)


if __name__ == "__main__":
    main()
