"""Stage fuse: pair every planned tail sample with a K-nearest head neighbour (CAM maps), fuse their
embeddings by the CAM masks and decode the result to a latent with D (data/fusion/fused/)."""

from safetensors.torch import load_file, save_file

from tailsynth.data.manifest import read_classes, read_manifest
from tailsynth.errors import TailsynthError
from tailsynth.io import atomic_dir, folder_digest, sha
from tailsynth.methods.fusion.embedding import load_models
from tailsynth.methods.fusion.fuse import (
    check_label_policy,
    class_thresholds,
    fuse_latents,
    fused_labels,
    plan_pairs,
    tail_classes,
)
from tailsynth.methods.fusion.latents import load_latents

from _common import device, load_params, log, prepared_dir, stage

LATENTS = "data/latents"
MODELS = "models/fusion"
CAMS = "data/fusion/cams.safetensors"
OUT = "data/fusion/fused"


@stage
def main() -> None:
    params = load_params()
    p = params["fusion"]
    folder = prepared_dir(params)
    classes = read_classes(folder)
    policy = check_label_policy(p["labels"], multilabel="labels" in read_manifest(folder, multilabel=True))
    if not isinstance(p["batch_size"], int) or p["batch_size"] < 1:
        raise TailsynthError(f"fusion.batch_size must be a whole number >= 1, got {p['batch_size']!r}")
    targets = tail_classes(classes, buckets=p["buckets"], names=p["tail_classes"])
    t = p["thresholds"]
    class_thresholds(t["mode"], t["high"], t["low"], p["seed"], targets[0])  # bad values fail before any work
    index, latents = load_latents(LATENTS)
    maps = load_file(CAMS)["maps"]
    if len(maps) != len(index):
        raise TailsynthError(f"{CAMS} has {len(maps)} maps for {len(index)} latents; re-run the cams stage")
    pairs = plan_pairs(
        index,
        maps,
        targets,
        per_class=p["per_class"],
        k=p["knn"]["k"],
        seed=p["seed"],
        threshold_mode=t["mode"],
        high=t["high"],
        low=t["low"],
    )
    models = load_models(MODELS, device(params))
    fused, shares = fuse_latents(models, latents, maps, pairs, p["batch_size"])
    pairs["tail_share"] = shares
    pairs["labels_policy"] = policy
    if "labels" in index:  # multi-label: the fused image's labels by the policy (and soft weights)
        pairs = fused_labels(pairs, policy)
    pairs["fusion"] = folder_digest(MODELS)
    pairs["latent_hash"] = [sha(z.numpy().tobytes(), 12) for z in fused]
    pairs["fused_row"] = range(len(pairs))
    share = sum(shares) / len(shares)
    log.info("fuse: %d fused latents for tail classes %s, mean tail share %.2f", len(pairs), targets, share)
    with atomic_dir(OUT) as tmp:
        save_file({"latents": fused.contiguous()}, str(tmp / "latents.safetensors"))
        (tmp / "rows.csv").write_text(pairs.to_csv(index=False))


if __name__ == "__main__":
    main()
