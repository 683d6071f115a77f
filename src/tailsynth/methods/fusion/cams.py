"""EigenCAM maps of the embedding classifier, with a fixed sign.

EigenCAM projects a layer's activations on their first principal component. An SVD gives that
component only up to sign, so grad-cam's maps can come out inverted (the salient region dark).
Here the sign is fixed: the projection is oriented to correlate positively with the layer's mean
activation over channels (where the layer fires most is salient); when that correlation is zero,
its largest-magnitude entry is made positive. Flipping the component therefore never flips the
map (tested). Maps are per sample, not per class: EigenCAM ignores the target (grad-cam still
requires ``targets``), so fusion uses one map per sample, as the reference does.
"""

from __future__ import annotations

import numpy as np
import torch
from pytorch_grad_cam import EigenCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from tailsynth.errors import TailsynthError


def signed_projection(activations: np.ndarray, svd=np.linalg.svd) -> np.ndarray:
    """Projections (B, H, W) of ``activations`` (B, C, H, W) on their first principal component, each
    oriented by the sign convention of this module. ``svd`` is numpy's (replaceable to test the convention)."""
    activations = np.nan_to_num(np.asarray(activations, dtype=np.float64))
    out = []
    for act in activations:
        flat = act.reshape(act.shape[0], -1).T  # (H*W, C)
        centred = flat - flat.mean(axis=0)
        _, _, vt = svd(centred, full_matrices=False)
        proj = centred @ vt[0]
        energy = flat.mean(axis=1)
        corr = float(proj @ (energy - energy.mean()))
        sign = np.sign(corr) if corr != 0 else np.sign(proj[np.argmax(np.abs(proj))]) or 1.0
        out.append((sign * proj).reshape(act.shape[1:]))
    return np.float32(out)


class SignedEigenCAM(EigenCAM):
    """grad-cam's EigenCAM with :func:`signed_projection` as the per-layer map."""

    def get_cam_image(self, input_tensor, target_layer, target_category, activations, grads, eigen_smooth):
        return signed_projection(activations)


def resolve_layers(model: torch.nn.Module, names: list[str], param: str = "fusion.cams.layers") -> list:
    """The submodules of ``model`` called ``names`` (e.g. ``features.5``); a clear error for an unknown one."""
    if not names:
        raise TailsynthError(f"{param} must name at least one layer of the embedding classifier")
    known = dict(model.named_modules())
    unknown = [n for n in names if n not in known]
    if unknown:
        choices = ", ".join(n for n in known if n)
        raise TailsynthError(f"{param} names unknown layers {unknown}; the classifier has {choices}")
    return [known[n] for n in names]


def cam_maps(
    classifier: torch.nn.Module,
    embeddings: torch.Tensor,
    layers: list[str],
    targets: list[int],
) -> torch.Tensor:
    """Maps (N, H, W) in [0, 1] of ``embeddings`` (N, C, H, W) on ``classifier``, averaged over ``layers``.

    ``targets`` (one class per sample) are handed to grad-cam, which requires them; EigenCAM does not
    use them. grad-cam puts the classifier in eval mode (it is used frozen here anyway).
    """
    with SignedEigenCAM(classifier, resolve_layers(classifier, layers)) as cam:
        maps = cam(input_tensor=embeddings, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    return torch.from_numpy(np.ascontiguousarray(maps)).float()
