"""Not-applicable outputs: what a stage writes on data it does not apply to, and what says so."""

import json

import pytest
from PIL import Image

from tailsynth.methods import registry
from tailsynth.not_applicable import MARKER, reason, write_not_applicable


def test_every_output_kind_records_the_reason_and_a_stale_folder_is_replaced(tmp_path):
    folder = tmp_path / "data/synthetic/genie"
    folder.mkdir(parents=True)
    (folder / "00001.png").write_bytes(b"a single-label run's image")  # persisted from an earlier run
    outs = [folder, folder / "manifest.csv", tmp_path / "m.json", tmp_path / "m_seeds.csv", tmp_path / "grid.png"]
    write_not_applicable(outs, "needs one label per image")
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.csv", MARKER]
    assert [reason(p) for p in outs[:4]] == ["needs one label per image"] * 4
    assert json.loads((tmp_path / "m.json").read_text()) == {"not_applicable": "needs one label per image"}
    assert (tmp_path / "m_seeds.csv").read_text() == "not_applicable\nneeds one label per image\n"
    with Image.open(tmp_path / "grid.png") as im:
        assert im.format == "PNG" and im.mode == "L"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_real_outputs_have_no_reason(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "m.json").write_text(json.dumps({"acc": {"few": 0.5}, "not_applicable": "x"}))
    (tmp_path / "seeds.csv").write_text("seed,few\n0,0.5\n")
    (tmp_path / "one.csv").write_text("not_applicable\nwhy\nmore\n")
    for name in ("real", "m.json", "seeds.csv", "one.csv", "missing.json"):
        assert reason(tmp_path / name) is None, name


def test_an_output_kind_without_a_form_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="weights.safetensors"):
        write_not_applicable([tmp_path / "set", tmp_path / "weights.safetensors"], "why")
    assert list(tmp_path.iterdir()) == []


def test_only_genie_the_feedback_ladder_and_few_shot_mode_are_single_label():
    single = {m.name for m in registry.METHODS.values() if not m.multilabel}
    expected = registry.names(registry.LONG_TAIL, registry.GENIE) + registry.names(
        registry.LONG_TAIL, registry.FEEDBACK
    )
    assert single == set(expected)
    for m in registry.METHODS.values():
        assert registry.not_applicable(False, family=m.family) is None
        assert (registry.not_applicable(True, family=m.family) is None) == m.multilabel
    assert registry.not_applicable(True, mode=registry.FEWSHOT) == registry.SINGLE_LABEL_MODES[registry.FEWSHOT]
    assert registry.not_applicable(True, mode=registry.LONG_TAIL) is None
    assert registry.not_applicable(False, mode=registry.FEWSHOT) is None
