"""Stage glue shared by the few-shot stages: where things live and how images become features."""

from pathlib import Path

import numpy as np
import pandas as pd

from tailsynth.data.manifest import load_rows
from tailsynth.errors import TailsynthError
from tailsynth.models.classifier import predict

EPISODES = Path("data/fewshot/episodes")
BACKBONE = "models/fewshot_backbone"
ADA_CHOICES = "ada_choices.csv"


def read_episodes() -> pd.DataFrame:
    path = EPISODES / "episodes.csv"
    if not path.is_file():
        raise TailsynthError(f"{path} not found; run the fewshot_episodes stage first")
    return pd.read_csv(path, dtype={"image": str, "role": str})


def embed_files(model, folder: Path, images: list[str], channels: int, chunk: int = 512) -> np.ndarray:
    """(N, D) penultimate features of image files (relative to ``folder``), loaded in chunks."""
    out = []
    for start in range(0, len(images), chunk):
        rows = pd.DataFrame({"image": images[start : start + chunk]})
        out.append(predict(model, load_rows(folder, rows, channels).float() / 255)[1].numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def features_by_image(model, folder: Path, images: list[str], channels: int) -> dict[str, np.ndarray]:
    """{image: (D,) backbone feature} for image files relative to ``folder``."""
    return dict(zip(images, embed_files(model, folder, images, channels), strict=True))


def episode_features(model, folder: Path, episodes: pd.DataFrame, channels: int) -> dict[str, np.ndarray]:
    """Features of every support and query image of the episodes (prepared images in ``folder``)."""
    return features_by_image(model, folder, sorted(set(episodes["image"])), channels)


def oracle_accuracy(oracle, folder: Path, rows: pd.DataFrame, channels: int) -> float:
    """Share of the generated ``rows`` that the independent oracle classifies as their label."""
    logits = predict(oracle, load_rows(folder, rows, channels).float() / 255)[0]
    return float((logits.argmax(1).numpy() == rows["label"].to_numpy()).mean())
