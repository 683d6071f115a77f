"""The one place that declares every method of the comparison.

A method's entry says what it is (its family), where it runs (long-tail and/or few-shot mode),
which params decide its output, what identifies one of its generated images (the plan fields
hashed into the row key) and where its output lives. Stages, the report and the tests ask this
registry instead of comparing method names or checking which files exist.

Adding a method: an entry here, its module under ``tailsynth.methods``, its param section in
``params.yaml`` and its items in ``dvc.yaml`` (``tests/test_registry.py`` fails while one of
those disagrees with this file).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tailsynth.errors import TailsynthError

LONG_TAIL, FEWSHOT = "long_tail", "fewshot"
MODES = (LONG_TAIL, FEWSHOT)

# Families: how a method adds data.
TRAINING = "training"  # training-time augmentation of the real images (no generator)
GENERATED = "generated"  # the generator from a prompt (txt2img) or the target's own images (img2img)
GENIE = "genie"  # the generator from *another* class's image, labelled as the target (hard negatives)
FEEDBACK = "feedback"  # the dual-conditioned (text + image) generator, optionally steered by classifier feedback
FUSION = "fusion"  # a tail sample fused with a head neighbour in a sparse latent feature space, decoded (+ refined)
FAMILIES = (TRAINING, GENERATED, GENIE, FEEDBACK, FUSION)

# What does not run on multi-label data, and why (the report prints these). Their stages still run there and
# write "not applicable" outputs (tailsynth.not_applicable), so that one `dvc repro` covers every dataset.
SINGLE_LABEL_FAMILIES = {
    GENIE: "GeNIe labels an image made from another class's image as the target, which needs one label per image",
    FEEDBACK: "the feedback criteria (loss, entropy, hardness) are those of a softmax over one label per image",
}
SINGLE_LABEL_MODES = {FEWSHOT: "N-way K-shot episodes need one label per image"}

# Plan fields that determine a generated image; hashed (with the generator's identity) into its row key.
TEXT_KEY = ("method", "target", "prompt", "seed", "r", "steps", "cfg", "scheduler")
SOURCE_KEY = (*TEXT_KEY, "source_image", "source_hash")
# ... of a dual-conditioned image: its conditioning image, the embedding's noise level and dropout, and the
# guidance (criterion, step size, schedule and the guiding classifier's weights).
UNCLIP_KEY = (*TEXT_KEY, "cond_image", "cond_hash", "noise_level", "dropout", "criterion", "omega", "every", "guide")
# ... of a fused image: both sources, the masks' thresholds and coin, the label policy, the trained S/D/C
# (``fusion``: their digest) and the fused latent itself (``latent_hash``).
FUSION_KEY = (
    *SOURCE_KEY,
    "head_image",
    "head_hash",
    "tau_h",
    "tau_l",
    "p_head",
    "labels_policy",
    "fusion",
    "latent_hash",
)


@dataclass(frozen=True)
class Method:
    """One method of the comparison.

    ``generation`` is how a generated image is made: ``txt2img`` (from the prompt alone),
    ``img2img`` (a source image noised to ratio r and denoised with the target's prompt),
    ``unclip`` (the dual-conditioned generator from the prompt and, with ``image``, a real image
    of the class) or ``fusion`` (a fused latent, decoded); ``None`` for training-time methods.
    ``params`` are the param keys that decide the method's output beyond what every method of its
    family shares. ``ada``: GeNIe-Ada keeps, per (source, target) pair, one level of a noise grid
    chosen by an embedding network. The feedback ladder's rows differ in ``image`` (a conditioning
    image), ``dropout`` (dropout on its embedding) and ``criterion`` (classifier feedback during
    sampling, or None). ``refine``: a fusion method that runs ``fusion.refine.steps`` refinement
    steps before decoding (else it decodes the fused latent directly).
    """

    name: str
    family: str
    modes: tuple[str, ...]
    params: tuple[str, ...]
    generation: str | None = None
    ada: bool = False
    image: bool = False
    dropout: bool = False
    criterion: str | None = None
    refine: bool = False

    @property
    def generated(self) -> bool:
        """True when the method adds images made by the generator (it has a synthetic set)."""
        return self.family != TRAINING

    @property
    def multilabel(self) -> bool:
        """True when the method runs on multi-label data (in long-tail mode)."""
        return self.family not in SINGLE_LABEL_FAMILIES

    @property
    def key_fields(self) -> tuple[str, ...]:
        """Plan fields hashed into the key (and file name) of each generated image."""
        if not self.generated:
            return ()
        return {"txt2img": TEXT_KEY, "unclip": UNCLIP_KEY, "fusion": FUSION_KEY}.get(self.generation, SOURCE_KEY)

    def synthetic_dir(self, mode: str) -> Path:
        """Where the synthetic set of this method lives in ``mode`` (``data/synthetic/<name>`` in long-tail)."""
        if not self.generated:
            raise TailsynthError(f"method {self.name!r} is a training-time augmentation; it has no synthetic set")
        return Path("data/synthetic" if mode == LONG_TAIL else "data/fewshot/synthetic") / self.name


BOTH = (LONG_TAIL, FEWSHOT)
# The feedback ladder: each row one change from the row above, on the same dual-conditioned model.
IMAGE, DROPOUT, GUIDANCE = "feedback.image", "feedback.dropout", "feedback.guidance"

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("none", TRAINING, BOTH, ("augment.none",)),
        Method("weak", TRAINING, BOTH, ("augment.weak",)),
        Method("strong", TRAINING, BOTH, ("augment.strong",)),
        Method("cutmix", TRAINING, BOTH, ("augment.cutmix",)),
        Method("mixup", TRAINING, BOTH, ("augment.mixup",)),
        Method("txt2img", GENERATED, BOTH, ("synth.txt2img",), generation="txt2img"),
        Method("img2img_low", GENERATED, BOTH, ("synth.img2img_low",), generation="img2img"),
        Method("img2img_high", GENERATED, BOTH, ("synth.img2img_high",), generation="img2img"),
        Method("genie", GENIE, BOTH, ("genie.r",), generation="img2img"),
        Method("genie_ada", GENIE, BOTH, ("genie.ada",), generation="img2img", ada=True),
        Method("ldm_text", FEEDBACK, (LONG_TAIL,), (), generation="unclip"),
        Method("ldm_text_image", FEEDBACK, (LONG_TAIL,), (IMAGE,), generation="unclip", image=True),
        Method(
            "ldm_text_image_dropout",
            FEEDBACK,
            (LONG_TAIL,),
            (IMAGE, DROPOUT),
            generation="unclip",
            image=True,
            dropout=True,
        ),
        *(
            Method(
                f"feedback_{criterion}",
                FEEDBACK,
                (LONG_TAIL,),
                (IMAGE, DROPOUT, GUIDANCE),
                generation="unclip",
                image=True,
                dropout=True,
                criterion=criterion,
            )
            for criterion in ("loss", "entropy", "hardness")
        ),
        Method("fusion_0step", FUSION, (LONG_TAIL,), (), generation="fusion"),
        Method(
            "fusion_5step",
            FUSION,
            (LONG_TAIL,),
            ("generator.prompt", "fusion.refine"),
            generation="fusion",
            refine=True,
        ),
    )
}


def get(name: str, mode: str | None = None, family: str | tuple[str, ...] | None = None) -> Method:
    """The method called ``name``; a clear error if it is unknown, not run in ``mode`` or not of ``family``."""
    if name not in METHODS:
        raise TailsynthError(
            f"unknown method {name!r}; the registry (tailsynth.methods.registry) declares {', '.join(METHODS)}"
        )
    method = METHODS[name]
    if mode is not None and mode not in method.modes:
        raise TailsynthError(f"method {name!r} does not run in {mode} mode (only {', '.join(method.modes)})")
    families = (family,) if isinstance(family, str) else family
    if families and method.family not in families:
        raise TailsynthError(f"method {name!r} is a {method.family} method, not {' or '.join(families)}")
    return method


def methods(mode: str, family: str | None = None) -> list[Method]:
    """The methods run in ``mode`` (optionally of one family), in comparison order."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    return [m for m in METHODS.values() if mode in m.modes and (family is None or m.family == family)]


def names(mode: str, family: str | None = None) -> list[str]:
    return [m.name for m in methods(mode, family)]


def not_applicable(multilabel: bool, *, mode: str | None = None, family: str | None = None) -> str | None:
    """Why a stage of ``mode`` and/or ``family`` does not apply to the data (multi-label or not), or None."""
    if not multilabel:
        return None
    return SINGLE_LABEL_MODES.get(mode) or SINGLE_LABEL_FAMILIES.get(family)
