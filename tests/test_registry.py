"""The method registry is the one declaration of every method: dvc.yaml and params.yaml must agree with it.

A method declared in the registry and missing from a stage (or listed in a stage and missing from the
registry) fails here, as does a stage item that depends on the wrong output or params.
"""

from pathlib import Path

import pytest
import torch
import yaml
from pipeline_utils import pipeline_stages

from tailsynth.errors import TailsynthError
from tailsynth.methods import registry
from tailsynth.methods.augment import training_augmentation
from tailsynth.methods.episodic import augmented_support
from tailsynth.synth.criteria import CRITERIA

ROOT = Path(__file__).resolve().parents[1]
DVC = {**yaml.safe_load((ROOT / "dvc.yaml").read_text()), "stages": pipeline_stages()}
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
LT, FS = registry.LONG_TAIL, registry.FEWSHOT


def foreach(stage: str):
    return DVC["stages"][stage]["foreach"]


def has_param(key: str) -> bool:
    node = PARAMS
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def test_every_stage_lists_exactly_the_registrys_methods():
    generated = [m.name for m in registry.methods(LT) if m.family == registry.GENERATED]
    feedback = [m.name for m in registry.methods(LT) if m.family == registry.FEEDBACK]
    assert list(foreach("synth_feedback")) == feedback
    genie = [m.name for m in registry.methods(LT) if m.family == registry.GENIE]
    assert list(foreach("retrain")) == registry.names(LT)
    assert list(foreach("evaluate")) == registry.names(LT)
    assert list(foreach("fewshot_eval")) == registry.names(FS)
    assert list(foreach("synth")) == generated
    assert list(foreach("synth_genie")) == genie
    assert list(foreach("synth_fusion")) == registry.names(LT, registry.FUSION)
    assert list(foreach("fewshot_synth")) == [m.name for m in registry.methods(FS) if m.generated]
    checked = 0
    for plot in DVC["plots"]:
        for spec in plot.values() if isinstance(plot, dict) else []:
            for path in ("metrics/plots/per_class.csv", "metrics/plots/by_bucket.csv"):
                if path in spec.get("y", {}):
                    assert spec["y"][path] == registry.names(LT), path
                    checked += 1
    assert checked == 2


def test_stage_items_depend_on_the_methods_output_and_params():
    for m in registry.methods(LT):
        item = foreach("retrain")[m.name]
        if m.generated:
            assert item["input"] == f"{m.synthetic_dir(LT)}/manifest.csv"
            assert item["params"] == "augment.${retrain.augment_generated}"
        else:
            assert item["params"] == m.params[0] and len(m.params) == 1
        assert foreach("evaluate")[m.name] == item
    for m in registry.methods(FS):
        item = foreach("fewshot_eval")[m.name]
        if m.generated:
            assert item["input"] == f"{m.synthetic_dir(FS)}/manifest.csv"
            assert m.params[0] in foreach("fewshot_synth")[m.name]["params"]
        else:
            assert item["params"] == m.params[0]
    genie_items = foreach("synth_genie")
    for m in registry.methods(LT, registry.GENIE):
        assert genie_items[m.name]["params"] == m.params[0]
    synth = DVC["stages"]["synth"]["do"]
    assert "synth.${item}" in synth["params"]
    assert [f"synth.{name}" for name in foreach("synth")] == [m.params[0] for m in registry.methods(LT, "generated")]
    report = DVC["stages"]["report"]["deps"]
    assert all(f"{m.synthetic_dir(LT)}/manifest.csv" in report for m in registry.methods(LT) if m.generated)


def test_every_declared_param_exists_and_every_method_has_its_module():
    for m in registry.METHODS.values():
        assert all(has_param(key) for key in m.params), m.name
        if m.generated:
            assert m.generation in ("txt2img", "img2img", "unclip", "fusion")
            assert "seed" in m.key_fields and "method" in m.key_fields
            assert ("source_hash" in m.key_fields) == (m.generation in ("img2img", "fusion"))
            assert ("head_hash" in m.key_fields and "latent_hash" in m.key_fields) == (m.generation == "fusion")
            assert ("cond_hash" in m.key_fields and "guide" in m.key_fields) == (m.generation == "unclip")
        else:
            training_augmentation(m.name, 3, PARAMS["augment"][m.name])  # long-tail module knows it
            x = torch.rand(2, 1, 8, 8)
            added, _ = augmented_support(x, torch.tensor([0, 1]), ["a", "b"], m.name, copies=2, seed=0)
            assert len(added) == (0 if m.name == "none" else 4)  # few-shot module knows it
    assert [m for m in registry.METHODS.values() if m.ada] == [registry.METHODS["genie_ada"]]


def test_the_feedback_ladder_adds_one_change_per_row():
    ladder = registry.methods(LT, registry.FEEDBACK)
    assert [m.name for m in ladder] == [
        "ldm_text",
        "ldm_text_image",
        "ldm_text_image_dropout",
        "feedback_loss",
        "feedback_entropy",
        "feedback_hardness",
    ]
    assert all(m.generation == "unclip" and m.modes == (LT,) for m in ladder)
    steps = [(m.image, m.dropout, m.criterion is not None) for m in ladder]
    assert steps == [(False, False, False), (True, False, False), (True, True, False)] + [(True, True, True)] * 3
    # Each row's params are the row above's plus the section of its one change.
    assert [m.params for m in ladder[:4]] == [
        (),
        (registry.IMAGE,),
        (registry.IMAGE, registry.DROPOUT),
        (registry.IMAGE, registry.DROPOUT, registry.GUIDANCE),
    ]
    assert tuple(m.criterion for m in ladder[3:]) == CRITERIA
    items = foreach("synth_feedback")
    assert list(items) == [m.name for m in ladder]
    for m in ladder:
        declared = {v for v in items[m.name].values() if v != "feedback.seed"}
        assert declared == set(m.params), m.name
    assert "feedback.seed" in DVC["stages"]["synth_feedback"]["do"]["params"]


def test_fusion_methods_differ_only_in_refinement():
    """fusion_0step decodes the fused latents, fusion_5step refines them first: the prompt and the refine
    section are its params beyond the fused latents both read (data/fusion/fused, a dependency of both);
    decode-only names neither (its items repeat fusion.batch_size, which both declare)."""
    fusion = registry.methods(LT, registry.FUSION)
    assert [(m.name, m.refine, m.params) for m in fusion] == [
        ("fusion_0step", False, ()),
        ("fusion_5step", True, ("generator.prompt", "fusion.refine")),
    ]
    items = foreach("synth_fusion")
    for m in fusion:
        declared = {v for v in items[m.name].values() if v != "fusion.batch_size"}
        assert declared == set(m.params), m.name
    assert DVC["stages"]["synth_fusion"]["do"]["params"][0] == "fusion.batch_size"
    assert "data/fusion/fused" in DVC["stages"]["synth_fusion"]["do"]["deps"]


def test_lookups_give_clear_errors():
    assert registry.get("genie", LT, registry.GENIE).ada is False
    with pytest.raises(TailsynthError, match="unknown method 'bogus'.*declares none, weak"):
        registry.get("bogus")
    with pytest.raises(TailsynthError, match="'weak' is a training method, not generated"):
        registry.get("weak", LT, registry.GENERATED)
    with pytest.raises(TailsynthError, match="no synthetic set"):
        registry.METHODS["weak"].synthetic_dir(LT)
    assert registry.METHODS["genie"].synthetic_dir(FS) == Path("data/fewshot/synthetic/genie")
