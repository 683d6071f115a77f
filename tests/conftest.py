import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
torch.set_num_threads(2)


@pytest.fixture(scope="session", autouse=True)
def early_pipelines(request, tmp_path_factory):
    """Starts, before the first test, the background ``dvc repro`` runs of every collected module that
    defines ``start_early(tmp_path_factory, fixtures) -> {fixture: (root, process)}`` (``fixtures``: the
    fixture names its collected tests use), into ``pipeline_utils.EARLY``. A whole-pipeline run takes
    about one core (one torch thread per stage, DVC's bookkeeping single-threaded), so it overlaps the
    unit tests instead of running after them."""
    from pipeline_utils import EARLY

    modules = {item.module for item in request.session.items if hasattr(item, "module")}
    for module in sorted(modules, key=lambda m: m.__name__):
        if hasattr(module, "start_early"):
            used = {f for item in request.session.items if item.module is module for f in item.fixturenames}
            EARLY[module.__name__] = module.start_early(tmp_path_factory, used)
    yield
    for started in EARLY.values():
        for _, proc in started.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


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
