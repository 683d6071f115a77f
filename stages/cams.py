"""Stage cams: an EigenCAM map (sign-fixed, scaled to [0, 1]) of every encoded sample on the embedding
classifier C, in the latent index's order (data/fusion/cams.safetensors)."""

import torch
from safetensors.torch import save

from tailsynth.data.manifest import split_labels
from tailsynth.errors import TailsynthError
from tailsynth.io import atomic_write_bytes
from tailsynth.methods.fusion.cams import cam_maps
from tailsynth.methods.fusion.embedding import load_models
from tailsynth.methods.fusion.latents import load_latents

from _common import device, load_params, stage

LATENTS = "data/latents"
MODELS = "models/fusion"
OUT = "data/fusion/cams.safetensors"


@stage
def main() -> None:
    params = load_params()
    c = params["fusion"]["cams"]
    batch = c["batch_size"]
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise TailsynthError(f"fusion.cams.batch_size must be a whole number >= 1, got {batch!r}")
    dev = device(params)
    models = load_models(MODELS, dev)
    index, latents = load_latents(LATENTS)
    # grad-cam wants a target per sample and EigenCAM ignores it: a multi-label sample's is its first label
    labels = index["label"].tolist() if "label" in index else [(split_labels(v) or [0])[0] for v in index["labels"]]
    maps = []
    for start in range(0, len(latents), batch):
        with torch.no_grad():
            embedding = models.student(latents[start : start + batch].to(dev))
        maps.append(cam_maps(models.classifier, embedding, c["layers"], labels[start : start + batch]))
    atomic_write_bytes(OUT, save({"maps": torch.cat(maps).contiguous()}))


if __name__ == "__main__":
    main()
