"""Bad input to a stage: one line naming the param or file, exit status 2, nothing left behind."""

import shutil
import sys
from pathlib import Path

import pytest
import yaml
from pipeline_utils import ROOT, deep_update, run


@pytest.fixture
def project(tmp_path):
    shutil.copytree(ROOT / "stages", tmp_path / "stages")
    shutil.copy2(ROOT / "params.yaml", tmp_path / "params.yaml")

    def stage(script: str, *args: str, params: dict | None = None):
        p = yaml.safe_load((ROOT / "params.yaml").read_text())
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(deep_update(p, params or {})))
        return run([sys.executable, f"stages/{script}", *args], tmp_path, check=False)

    stage.root = tmp_path
    return stage


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, proc.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0]


def test_missing_dataset_root(project, tmp_path):
    proc = project("prepare.py", params={"data": {"dataset": "imagefolder", "root": str(tmp_path / "nope")}})
    assert_one_line_error(proc, "data.root", "nope")
    assert not (project.root / "data").exists()


def test_empty_class_folder_and_unreadable_image(project, tmp_path, rgb_image_file):
    root = tmp_path / "ds"
    rgb_image_file(root / "cat" / "a.png")
    (root / "dog").mkdir()
    proc = project("prepare.py", params={"data": {"dataset": "imagefolder", "root": str(root), "channels": 3}})
    assert_one_line_error(proc, "dog", "no images")
    rgb_image_file(root / "dog" / "b.png")
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG garbage")
    proc = project("prepare.py", params={"data": {"dataset": "imagefolder", "root": str(root), "channels": 3}})
    assert_one_line_error(proc, "broken.png")
    assert not (project.root / "data").exists()  # not even an empty data/prepared/


def test_a_yaml_error_is_one_line_naming_the_file_and_line(project):
    (project.root / "params.yaml").write_text("data:\n  dataset: digits\n  size: [32\nretrain: {}\n")
    proc = run([sys.executable, "stages/retrain.py", "none"], project.root, check=False)
    assert_one_line_error(proc, "params.yaml is not valid YAML at line", "fix that line")
    assert "Traceback" not in proc.stderr


def test_unknown_dataset_kind(project):
    assert_one_line_error(project("prepare.py", params={"data": {"dataset": "parquet"}}), "data.dataset", "parquet")


def test_unknown_method_name(project):
    assert_one_line_error(project("retrain.py", "bogus"), "unknown method 'bogus'", "registry")
    assert not Path(project.root / "models").exists()


@pytest.mark.parametrize("r", [0, 1.2])
def test_r_outside_unit_interval(project, r):
    proc = project("synth.py", "img2img_high", params={"synth": {"img2img_high": {"r": r}}})
    assert_one_line_error(proc, "synth.img2img_high.r", "(0, 1]")
    assert not (project.root / "data").exists()


def test_generator_that_cannot_be_loaded(project, tmp_path):
    missing = str(tmp_path / "no-such-sd15")
    proc = project("generator.py", params={"generator": {"source": "pretrained", "model": missing}})
    assert_one_line_error(proc, "no-such-sd15", "generator.model")
    assert not (project.root / "models").exists()


def test_fewshot_episode_params_are_checked_and_nothing_is_written(project):
    run_prepare = project("prepare.py")
    assert run_prepare.returncode == 0, run_prepare.stderr[-2000:]
    out = project.root / "data" / "fewshot"
    assert_one_line_error(project("fewshot_episodes.py", params={"fewshot": {"episodes": 0}}), "fewshot.episodes")
    # The digits test split has 50 images per class: 5 support + 46 queries do not fit.
    proc = project("fewshot_episodes.py", params={"fewshot": {"queries": 46}})
    assert_one_line_error(proc, "fewshot.queries", "'five' has 50 images")
    proc = project("fewshot_episodes.py", params={"fewshot": {"shots": [1, 60]}})
    assert_one_line_error(proc, "fewshot.shots")
    assert not out.exists()
    assert project("fewshot_episodes.py", params={"fewshot": {"episodes": 2}}).returncode == 0
    assert (out / "episodes" / "episodes.csv").is_file()


@pytest.mark.parametrize(
    "args, params, fragment",
    [
        (["genie"], {"genie": {"r": 1.5}}, "genie.r"),
        (["genie_ada"], {"genie": {"ada": {"grid": []}}}, "genie.ada.grid"),
        (["img2img_high"], {"synth": {"img2img_high": {"r": 0}}}, "synth.img2img_high.r"),
        (["bogus"], {}, "unknown method 'bogus'"),
        (["weak"], {}, "'weak' is a training method, not generated or genie"),
    ],
)
def test_fewshot_synth_bad_params(project, args, params, fragment):
    assert_one_line_error(project("fewshot_synth.py", *args, params=params), fragment)
    assert not (project.root / "data").exists()


def test_fewshot_backbone_checkpoint_missing(project, tmp_path):
    assert project("prepare.py").returncode == 0
    params = {"fewshot_backbone": {"source": "checkpoint", "arch": "resnet18", "checkpoint": str(tmp_path / "u.pth")}}
    assert_one_line_error(project("fewshot_backbone.py", params=params), "fewshot_backbone.checkpoint", "u.pth")
    assert not (project.root / "models").exists()


def test_fewshot_backbone_from_a_torchvision_checkpoint(project, tmp_path):
    """Real mode: a ResNet state dict (e.g. UniSiam's) becomes the frozen few-shot feature extractor."""
    import torch
    import torchvision

    from tailsynth.models.classifier import load_classifier, predict

    assert project("prepare.py").returncode == 0
    net = torchvision.models.resnet18(num_classes=7)
    torch.save(net.state_dict(), tmp_path / "unisiam_r18.pth")
    params = {
        "fewshot_backbone": {
            "source": "checkpoint",
            "arch": "resnet18",
            "checkpoint": str(tmp_path / "unisiam_r18.pth"),
        }
    }
    proc = project("fewshot_backbone.py", params=params)
    assert proc.returncode == 0, proc.stderr[-2000:]
    model = load_classifier(project.root / "models" / "fewshot_backbone")
    assert model.config["checkpoint"].endswith("unisiam_r18.pth")
    x = torch.rand(2, 1, 32, 32)
    feats = predict(model, x)[1]
    # Grayscale input: the checkpoint's RGB stem is summed over colour channels, so the same image
    # repeated on three channels through the original network gives the same features.
    net.eval()
    rgb = (x.repeat(1, 3, 1, 1) - 0.5) / 0.5
    with torch.no_grad():
        body = torch.nn.Sequential(*list(net.children())[:-1])
        expected = body(rgb).flatten(1)
    assert torch.allclose(feats, expected, atol=1e-4)


@pytest.mark.parametrize("k", [0, 2.5, "five"])
def test_density_k_must_be_a_whole_number(project, k):
    proc = project("evaluate.py", "none", params={"eval": {"density_k": k}})
    assert_one_line_error(proc, "eval.density_k", "whole number")
    assert not (project.root / "metrics").exists()


@pytest.mark.parametrize(
    "method, params, fragment",
    [
        ("feedback_loss", {"guidance": {"omega": -0.1}}, "feedback.guidance.omega must be a number >= 0"),
        ("feedback_entropy", {"guidance": {"every": 0}}, "feedback.guidance.every must be an integer >= 1"),
        ("ldm_text_image_dropout", {"dropout": {"p": 1.0}}, "feedback.dropout.p must be a number in [0, 1)"),
        ("ldm_text_image", {"image": {"noise_level": -5}}, "feedback.image.noise_level"),
    ],
)
def test_feedback_ladder_bad_params(project, method, params, fragment):
    assert_one_line_error(project("synth_feedback.py", method, params={"feedback": params}), fragment)
    assert not (project.root / "data").exists()


def test_feedback_stage_refuses_a_method_outside_the_ladder(project):
    assert_one_line_error(project("synth_feedback.py", "genie"), "'genie' is a genie method, not feedback")


def test_dual_conditioned_generator_that_cannot_be_loaded(project, tmp_path):
    missing = str(tmp_path / "no-such-unclip")
    params = {"generator_unclip": {"source": "pretrained", "model": missing}}
    proc = project("generator_unclip.py", params=params)
    assert_one_line_error(proc, "generator_unclip.model", "no-such-unclip", "StableUnCLIPImg2ImgPipeline")
    assert not (project.root / "models").exists()
    proc = project("generator_unclip.py", params={"generator_unclip": {"source": "hub"}})
    assert_one_line_error(proc, "unknown generator_unclip.source 'hub'")


def test_conditioning_check_params_are_whole_numbers(project):
    proc = project("generator_unclip_eval.py", params={"generator_unclip_eval": {"pairs": 0}})
    assert_one_line_error(proc, "generator_unclip_eval.pairs must be a whole number >= 1")


@pytest.mark.parametrize(
    "sweep, fragment",
    [
        ({"criterion": "margin"}, "feedback_sweep.criterion must be one of loss, entropy, hardness"),
        ({"omega": [0.01, -0.1]}, "feedback_sweep.omega must be a non-empty list of numbers >= 0"),
        ({"omega": []}, "feedback_sweep.omega must be a non-empty list"),
        ({"omega": 0.1}, "feedback_sweep.omega must be a non-empty list"),
    ],
)
def test_feedback_sweep_bad_params(project, sweep, fragment):
    assert_one_line_error(project("feedback_sweep.py", params={"feedback_sweep": sweep}), fragment)
    assert not (project.root / "data").exists() and not (project.root / "metrics").exists()


def test_feedback_sweep_needs_the_ladders_metrics_before_generating(project):
    proc = project("feedback_sweep.py")
    assert_one_line_error(proc, "metrics/evaluate/ldm_text_image_dropout.json not found", "evaluate@")
    assert not (project.root / "data").exists()


def test_a_prompt_naming_the_group_on_a_dataset_without_groups(project):
    prepared = project.root / "data/prepared/digits"
    prepared.mkdir(parents=True)
    (prepared / "manifest.csv").write_text("image,label,split,in_pool,sha\nimages/a.png,0,train,1,0\n")
    (prepared / "classes.json").write_text('[{"index": 0, "name": "zero", "prompt_name": "zero"}]')
    proc = project("generator.py", params={"generator": {"prompt": "a photo of a {name}, {group}"}})
    assert_one_line_error(proc, "generator.prompt names {group}", "no group column")
    assert not (project.root / "models").exists()


def test_runtime_errors_name_the_param_before_any_output(project):
    assert project("prepare.py").returncode == 0
    proc = project("classifier.py", params={"runtime": {"device": "cuda:99"}})
    assert_one_line_error(proc, "runtime.device", "cuda:99")
    proc = project("classifier.py", params={"runtime": {"loader": {"workers": -1, "in_memory_mib": 256}}})
    assert_one_line_error(proc, "runtime.loader.workers must be a whole number >= 0", "-1")
    proc = project("evaluate.py", "none", params={"runtime": {"loader": {"workers": 2, "in_memory_mib": "1G"}}})
    assert_one_line_error(proc, "runtime.loader.in_memory_mib", "'1G'")
    proc = project("synth.py", "txt2img", params={"runtime": {"device": "cpu", "dtype": "fp16"}})
    assert_one_line_error(proc, "runtime.dtype fp16", "CPU")
    proc = project("synth.py", "txt2img", params={"runtime": {"device": "cpu", "compile": True}})
    assert_one_line_error(proc, "runtime.compile is true", "CUDA")
    proc = project("synth_feedback.py", "ldm_text", params={"runtime": {"device": "cpu", "compile": "yes"}})
    assert_one_line_error(proc, "runtime.compile must be true or false", "'yes'")
    assert not (project.root / "models").exists() and not (project.root / "data" / "synthetic").exists()
