"""Fréchet distances between image sets: in a feature space the pipeline owns, and Inception FID.

``fd_oracle`` uses the oracle classifier's penultimate features: it is *not* FID and is named
so. Inception FID (pytorch-fid) needs the Inception weights file on disk; without it the
metric is absent and :func:`inception_weights_path` explains why.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from scipy import linalg

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"


def frechet_distance(a: np.ndarray, b: np.ndarray, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a`` (N, D) and ``b`` (M, D)."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError("need at least two samples on each side")
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    s1, s2 = np.atleast_2d(s1), np.atleast_2d(s2)
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(s1)) * eps
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def inception_weights_path() -> tuple[Path | None, str]:
    """(path, reason): the pytorch-fid Inception weights if present, else None and why."""
    # Where torch.hub (and so pytorch-fid) looks: $TORCH_HOME/hub, else $XDG_CACHE_HOME/torch/hub.
    path = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if path.is_file():
        return path, ""
    return None, f"Inception FID skipped: {path} not found (download pytorch-fid's {INCEPTION_FILE} there)"


def load_fid_inception(path: str | Path, device: str = "cpu"):
    """pytorch-fid's InceptionV3 (pool3 block) with its weights read from ``path`` by ``torch.load(weights_only=True)``.

    pytorch-fid itself fetches the weights through ``load_state_dict_from_url``, a full pickle load;
    its own architecture is kept and only that one loader is swapped, for this call only.
    """
    import pickle
    from unittest import mock

    import pytorch_fid.inception as fid

    def weights_only(url, *args, **kwargs):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise ValueError(
                f"{path} is not a plain tensor weights file (refused by weights_only loading): {exc}"
            ) from exc

    with mock.patch.object(fid, "load_state_dict_from_url", weights_only):
        return fid.InceptionV3([fid.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).to(device).eval()


@torch.no_grad()
def inception_features(images, batch_size: int = 50, device: str = "cpu", workers: int = 0) -> np.ndarray:
    """pytorch-fid pool3 features (N, 2048) of ``images``: (N, C, H, W) in [0, 1], or an image set of
    :mod:`tailsynth.data.stream` (uint8, in memory or streamed by ``workers``); needs the weights file."""
    from tailsynth.data.stream import batches, in_order

    path, reason = inception_weights_path()
    if path is None:
        raise FileNotFoundError(reason)
    model = load_fid_inception(path, device)
    feats = []
    for x in batches(images, in_order(len(images), batch_size), workers):
        x = x.to(device)
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        feats.append(model(x)[0].squeeze(-1).squeeze(-1).cpu().numpy())
    return np.concatenate(feats)
