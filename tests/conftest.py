import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
torch.set_num_threads(2)


@pytest.fixture
def rgb_image_file(tmp_path):
    from PIL import Image

    def make(path: Path, size=(40, 30), color=(200, 30, 30), mode="RGB") -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new(mode, size, color if mode == "RGB" else color[0]).save(path)
        return path

    return make


def tiny_ldm_config():
    """A small-LDM shape that trains and samples in well under a second (16 px, 4x4 latents)."""
    from tailsynth.models.generator import SmallLDMConfig

    return SmallLDMConfig(
        image_size=16,
        vae_channels=(8, 16),
        vae_norm_groups=4,
        unet_channels=(16, 32),
        unet_norm_groups=4,
        attention_head_dim=2,
        text_hidden=16,
        text_layers=1,
    )
