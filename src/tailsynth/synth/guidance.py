"""Classifier-feedback guidance for the stock diffusers pipelines, through their step-end callbacks.

Every ``every`` denoising steps the latents z_t (after the scheduler's step, at the next timestep t)
take one ascent step on a criterion F (:mod:`tailsynth.synth.criteria`) of the guiding classifier:

    ε   = ε_θ(z_t, t, c)                           (one extra, conditional-only UNet pass)
    ẑ₀  = (z_t − √(1−ᾱ_t) ε) / √ᾱ_t                (the predicted clean latent; √ᾱ_t z_t − √(1−ᾱ_t) v
                                                    for v-prediction models)
    x   = D(ẑ₀ / s) / 2 + 1/2                      (differentiable VAE decode, to the classifier's [0, 1])
    g   = ∇_{z_t} F(f_φ(x), y)                     (through the classifier, the decoder and the UNet)
    z_t ← z_t + ω ‖z_t‖ g / ‖g‖                    (norms per image: the step is ω relative to the latent)

The pipeline's next step then predicts the noise (with classifier-free guidance) on the moved z_t.
Where this departs from the reference code (``fg_pipe.py``): the criterion is computed on the decoded
ẑ₀ itself, not on a blend √(1−ᾱ_t)·ẑ₀ + (1−√(1−ᾱ_t))·z_t; decoded pixels are shifted to [0, 1]
without the reference's min-max rescaling over the whole batch (which couples the images of a
batch) and without clamping (which would zero the gradient of saturated pixels); the moved latent's
noise is re-predicted by the next step instead of reusing the prediction made before the move; and
guided steps are those after steps every, 2·every, … (the callback runs after a step, so the
initial latent is never moved). Every image's update depends on its own latent only (the UNet, the
VAE and an eval-mode classifier act per image), so a row's result does not depend on its batch
mates beyond the floating-point effects batching has anyway.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tailsynth.data.images import match_channels
from tailsynth.errors import TailsynthError
from tailsynth.models.classifier import Classifier, predict
from tailsynth.synth.criteria import CRITERIA, ClassGaussians, criterion_values


@dataclass(frozen=True)
class GuidanceConfig:
    """``criterion`` (one of :data:`~tailsynth.synth.criteria.CRITERIA`), step size ``omega`` (≥ 0,
    relative to the latent's norm) and ``every`` (guide after every ``every``-th step, ≥ 1)."""

    criterion: str
    omega: float
    every: int

    def check(self, where: str = "feedback") -> None:
        if self.criterion not in CRITERIA:
            raise TailsynthError(f"{where}.criterion must be one of {', '.join(CRITERIA)}, got {self.criterion!r}")
        if not isinstance(self.omega, int | float) or isinstance(self.omega, bool) or self.omega < 0:
            raise TailsynthError(f"{where}.omega must be a number >= 0, got {self.omega!r}")
        if not isinstance(self.every, int) or isinstance(self.every, bool) or self.every < 1:
            raise TailsynthError(f"{where}.every must be an integer >= 1, got {self.every!r}")


def classify(classifier: Classifier, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (B, K) and penultimate features (B, D) of ``images`` (B, C, H, W) in [0, 1], in one pass
    (eval mode: the head applied to the features is exactly the classifier's forward)."""
    features = classifier.features(images)
    return classifier.net.head(features), features


def to_classifier_input(decoded: torch.Tensor, classifier: Classifier) -> torch.Tensor:
    """VAE output (B, C, H, W) in [-1, 1] -> the classifier's channels and size, in [0, 1] (unclamped)."""
    x = decoded.to(next(classifier.parameters()).dtype) / 2 + 0.5
    c, size = classifier.config["in_channels"], classifier.config["image_size"]
    x = match_channels(x, c)
    if x.shape[-1] != size or x.shape[-2] != size:  # not resize_batch: it clamps, which stops gradients
        # Antialiased, as the saved images are resized (a 512 px sample shrunk to 32 px would alias).
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x


def predicted_clean_latent(
    z: torch.Tensor, out: torch.Tensor, alpha: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """ẑ₀ from the UNet output ``out`` at z_t = ``z`` with ᾱ_t = ``alpha``, for the scheduler's
    ``prediction_type``: ``epsilon`` (the embedded model, SD 1.5), ``v_prediction`` (768-px SD 2.x
    models such as SD 2.1 unCLIP) or ``sample``."""
    if prediction_type == "epsilon":
        return (z - (1 - alpha).sqrt() * out) / alpha.sqrt()
    if prediction_type == "v_prediction":
        return alpha.sqrt() * z - (1 - alpha).sqrt() * out
    if prediction_type == "sample":
        return out
    raise TailsynthError(f"feedback guidance does not know the scheduler's prediction_type {prediction_type!r}")


class FeedbackGuidance:
    """A ``callback_on_step_end`` for ``StableDiffusionPipeline`` / ``StableDiffusionImg2ImgPipeline``
    (and, through :meth:`legacy_callback`, pipelines with the older ``callback``) that steers each
    image of the batch toward a higher criterion for its class ``targets`` (B,).

    Use as ``with guidance.attached(pipe): pipe(..., callback_on_step_end=guidance)``: attaching
    records the conditioning of the pipeline's UNet calls (text embeddings, and the image
    embedding of unCLIP pipelines), which the extra UNet pass reuses, conditional half only.
    ``classifier`` must sit on the pipeline's device (it is put in eval mode and its parameters are
    frozen); ``gaussians`` serve ``hardness``.
    """

    def __init__(
        self,
        classifier: Classifier,
        targets: torch.Tensor,
        config: GuidanceConfig,
        gaussians: ClassGaussians | None = None,
    ):
        config.check()
        if config.criterion == "hardness" and gaussians is None:
            raise TailsynthError("the hardness criterion needs class Gaussians fitted on real train features")
        self.classifier = classifier.eval().requires_grad_(False)
        device = next(classifier.parameters()).device
        self.targets = targets.to(device)
        self.config = config
        self.gaussians = gaussians.to(device) if gaussians is not None else None
        self.guided_steps: list[int] = []
        self._unet_kwargs: dict | None = None

    @contextlib.contextmanager
    def attached(self, pipe) -> Iterator[FeedbackGuidance]:
        def record(module, args, kwargs):
            self._unet_kwargs = {"args": args, **kwargs}

        handle = pipe.unet.register_forward_pre_hook(record, with_kwargs=True)
        try:
            yield self
        finally:
            handle.remove()
            self._unet_kwargs = None

    def values(self, decoded: torch.Tensor) -> torch.Tensor:
        """The criterion (B,) of VAE outputs ``decoded`` (B, C, H, W) in [-1, 1] for ``targets``."""
        logits, features = classify(self.classifier, to_classifier_input(decoded, self.classifier))
        return criterion_values(self.config.criterion, logits, features, self.targets, self.gaussians)

    def __call__(self, pipe, step_index: int, timestep, callback_kwargs: dict) -> dict:
        timesteps = pipe.scheduler.timesteps
        nxt = step_index + 1
        if self.config.omega == 0 or nxt % self.config.every or nxt >= len(timesteps):
            return {}
        latents = callback_kwargs["latents"]
        return {"latents": self.step(pipe, latents, timesteps[nxt])}

    def legacy_callback(self, pipe):
        """The older ``callback(step, timestep, latents)`` form: moves ``latents`` in place."""

        def callback(step_index: int, timestep, latents: torch.Tensor) -> None:
            out = self(pipe, step_index, timestep, {"latents": latents})
            if out:
                latents.copy_(out["latents"])

        return callback

    def step(self, pipe, latents: torch.Tensor, t) -> torch.Tensor:
        """``latents`` (B, c, h, w) at timestep ``t`` after one ascent step on the criterion."""
        if self._unet_kwargs is None:
            raise TailsynthError("feedback guidance is not attached to the pipeline (use guidance.attached(pipe))")
        b = latents.shape[0]
        cond = self._conditional_kwargs(b)
        alpha = pipe.scheduler.alphas_cumprod.to(latents.device)[int(t)].to(torch.float32)
        with torch.enable_grad():
            z = latents.detach().float().requires_grad_(True)
            z_in = pipe.scheduler.scale_model_input(z.to(latents.dtype), t)
            out = pipe.unet(z_in, t, **cond, return_dict=False)[0].float()
            z0 = predicted_clean_latent(z, out, alpha, pipe.scheduler.config.get("prediction_type", "epsilon"))
            decoded = pipe.vae.decode((z0 / pipe.vae.config.scaling_factor).to(pipe.vae.dtype), return_dict=False)[0]
            grad = torch.autograd.grad(self.values(decoded).sum(), z)[0]
        z_norm = z.detach().flatten(1).norm(dim=1)
        g_norm = grad.flatten(1).norm(dim=1).clamp_min(torch.finfo(grad.dtype).tiny)
        delta = self.config.omega * (z_norm / g_norm).view(-1, *([1] * (z.dim() - 1))) * grad
        self.guided_steps.append(int(t))
        return (z.detach() + delta).to(latents.dtype)

    def _conditional_kwargs(self, batch: int) -> dict:
        """The last pipeline UNet call's conditioning, conditional half (the pipelines put the
        unconditional half first under classifier-free guidance)."""
        recorded = dict(self._unet_kwargs)
        args = recorded.pop("args")
        if len(args) > 2 and "encoder_hidden_states" not in recorded:
            recorded["encoder_hidden_states"] = args[2]
        keep = {}
        for name in ("encoder_hidden_states", "class_labels", "timestep_cond", "added_cond_kwargs"):
            value = recorded.get(name)
            if isinstance(value, torch.Tensor):
                keep[name] = value[-batch:].detach()
            elif isinstance(value, dict):
                keep[name] = {k: v[-batch:].detach() for k, v in value.items()}
        if "encoder_hidden_states" not in keep:
            raise TailsynthError("feedback guidance found no text conditioning in the pipeline's UNet call")
        return keep


def class_gaussians(
    classifier: Classifier, images, labels: torch.Tensor, num_classes: int, workers: int = 0
) -> ClassGaussians:
    """The hardness criterion's class Gaussians: :meth:`ClassGaussians.fit` on the classifier's
    penultimate features of real ``images`` (N, C, H, W) in [0, 1], or an image set of
    :mod:`tailsynth.data.stream` (``workers`` decode a streamed one), with ``labels`` (N,)."""
    return ClassGaussians.fit(predict(classifier, images, workers=workers)[1], labels, num_classes)


@torch.no_grad()
def mean_criteria(
    classifier: Classifier, images, labels: torch.Tensor, gaussians: ClassGaussians, workers: int = 0
) -> dict[str, float]:
    """Mean of every criterion (``criterion_<name>``) of ``images`` (N, C, H, W) in [0, 1], or an image set
    of :mod:`tailsynth.data.stream`, labelled ``labels`` (N,), by ``classifier``: how hard, uncertain or
    atypical a synthetic set is for the guiding classifier."""
    logits, features = predict(classifier, images, workers=workers)
    g = gaussians.to("cpu")
    return {f"criterion_{name}": float(criterion_values(name, logits, features, labels, g).mean()) for name in CRITERIA}
