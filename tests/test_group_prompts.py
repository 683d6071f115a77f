"""Prompts that name the context (``{group}``): which context each synthetic row gets, its prompt, and
the prompts the embedded generators learn real images with."""

import numpy as np
import pandas as pd
import pytest

from tailsynth.data.class_names import prompt_for, uses_group
from tailsynth.data.groups import class_groups, every_prompt, fill_groups, image_prompts, row_groups
from tailsynth.errors import TailsynthError
from tailsynth.methods import registry
from tailsynth.methods.episodic import plan_episodic
from tailsynth.methods.feedback import LadderSettings, plan_feedback
from tailsynth.methods.generated import plan_generated
from tailsynth.methods.genie import plan_genie_long_tail

GROUPED = "a photo of a {name}, {group}"
PLAIN = "a photo of a {name}"
CLASSES = [
    {"index": 0, "name": "zero", "prompt_name": "zero", "train_count": 5, "bucket": "many"},
    {"index": 1, "name": "one", "prompt_name": "one", "train_count": 3, "bucket": "few"},
]
# Class 1: plain 2, inverted 1 in train; "thick" only in test (a context with no train image).
MANIFEST = pd.DataFrame(
    {
        "image": [f"images/{i}.png" for i in range(10)],
        "label": [0, 0, 0, 0, 0, 1, 1, 1, 1, 0],
        "split": ["train"] * 8 + ["test", "test"],
        "group": ["plain", "plain", "plain", "inverted", "inverted", "plain", "plain", "inverted", "thick", "thick"],
    }
)


def test_prompt_template_fills_the_group_and_refuses_it_without_one():
    assert uses_group(GROUPED) and not uses_group(PLAIN)
    assert prompt_for(GROUPED, CLASSES[1], "inverted") == "a photo of a one, inverted"
    assert prompt_for(PLAIN, CLASSES[1], "inverted") == "a photo of a one"
    with pytest.raises(TailsynthError, match=r"uses \{group\} but class 'one' has no group"):
        prompt_for(GROUPED, CLASSES[1])
    with pytest.raises(TailsynthError, match="unknown field 'kind'"):
        prompt_for("a {kind}", CLASSES[1], "plain")


def test_rows_fill_the_rarest_contexts_first():
    assert fill_groups({"a": 3, "b": 0, "c": 1}, 4) == ["b", "b", "c", "b"]
    assert fill_groups({"x": 2}, 2) == ["x", "x"]
    assert class_groups(MANIFEST) == {0: ["inverted", "plain", "thick"], 1: ["inverted", "plain", "thick"]}
    # Class 1 has plain 2, inverted 1, thick 0 (test only); ties go to the first name in sorted order.
    assert row_groups(MANIFEST, 1, 6) == ["thick", "inverted", "thick", "inverted", "plain", "thick"]
    with pytest.raises(TailsynthError, match="no group column"):
        class_groups(MANIFEST.drop(columns="group"))


def test_generated_and_genie_rows_name_their_context_and_plain_prompts_have_none():
    common = dict(buckets=["few"], steps=10, cfg=5.0, scheduler="dpm_solver", seed=0)
    rows = plan_generated(
        "txt2img", {"mode": "txt2img"}, CLASSES, MANIFEST, per_class=3, prompt_template=GROUPED, **common
    )
    assert [r["group"] for r in rows] == ["thick", "inverted", "thick"]
    assert [r["prompt"] for r in rows] == [f"a photo of a one, {g}" for g in ("thick", "inverted", "thick")]
    plain = plan_generated(
        "txt2img", {"mode": "txt2img"}, CLASSES, MANIFEST, per_class=3, prompt_template=PLAIN, **common
    )
    assert all("group" not in r and r["prompt"] == "a photo of a one" for r in plain)
    assert [r["seed"] for r in plain] == [r["seed"] for r in rows]  # the context changes the prompt only
    confusion = np.array([[0.0, 1.0], [1.0, 0.0]])
    genie = plan_genie_long_tail(
        "genie", CLASSES, MANIFEST, confusion, r=0.7, top_k=1, per_class=3, prompt_template=GROUPED, **common
    )
    assert [r["group"] for r in genie] == ["thick", "inverted", "thick"] and genie[0]["prompt"].endswith(", thick")


def test_feedback_rows_condition_on_an_image_of_their_own_context_when_it_has_one():
    rows = plan_feedback(
        registry.METHODS["ldm_text_image"],
        CLASSES,
        MANIFEST,
        {1: 4},
        LadderSettings(noise_level=0, dropout=0.0, omega=0.0, every=1),
        prompt_template=GROUPED,
        steps=10,
        cfg=5.0,
        scheduler="dpm_solver",
        seed=0,
        image_hashes={},
    )
    assert [r["group"] for r in rows] == ["thick", "inverted", "thick", "inverted"]
    train_one = set(MANIFEST[(MANIFEST["split"] == "train") & (MANIFEST["label"] == 1)]["image"])
    assert rows[1]["cond_image"] == rows[3]["cond_image"] == "images/7.png"  # class 1's only inverted train image
    # thick has no train image: those rows fall back to the class's train images.
    assert all(r["cond_image"] in train_one for r in rows)


def test_fewshot_rows_share_a_context_when_they_share_a_seed():
    episodes = pd.DataFrame(
        {
            "episode": [0, 0, 0, 0],
            "role": ["support", "support", "query", "query"],
            "way": [0, 1, 0, 1],
            "rank": [0, 0, 0, 0],
            "label": [0, 1, 0, 1],
            "image": ["images/0.png", "images/5.png", "images/1.png", "images/6.png"],
        }
    )
    groups = class_groups(MANIFEST)
    kw = dict(prompt_template=GROUPED, steps=10, cfg=5.0, scheduler="dpm_solver", seed=0, class_groups=groups)
    ada = plan_episodic("genie_ada", "genie", episodes, CLASSES, levels=[0.5, 0.7, 0.9], **kw)
    by_seed = {}
    for r in ada:
        assert r["prompt"] == prompt_for(GROUPED, CLASSES[r["target"]], r["group"])
        by_seed.setdefault(r["seed"], set()).add(r["group"])
    assert len(ada) == 6 and all(len(g) == 1 for g in by_seed.values())  # a pair's levels: one context
    fixed = plan_episodic("genie", "genie", episodes, CLASSES, levels=[0.7], **kw)
    same = {(r["seed"], r["group"], r["prompt"]) for r in fixed}
    assert same <= {(r["seed"], r["group"], r["prompt"]) for r in ada}  # fixed-r GeNIe rows are Ada's level rows
    with pytest.raises(TailsynthError, match=r"uses \{group\}"):
        plan_episodic("txt2img", "txt2img", episodes, CLASSES, levels=[1.0], **{**kw, "class_groups": None})


def test_generators_learn_each_image_with_its_own_context():
    train = MANIFEST[MANIFEST["split"] == "train"]
    assert image_prompts(GROUPED, CLASSES, train)[3:6] == [
        "a photo of a zero, inverted",
        "a photo of a zero, inverted",
        "a photo of a one, plain",
    ]
    assert image_prompts(PLAIN, CLASSES, train) == ["a photo of a zero"] * 5 + ["a photo of a one"] * 3
    # The tokenizer's prompts cover every (class, context), "thick" included though no train image has it.
    assert every_prompt(GROUPED, CLASSES, MANIFEST) == [
        f"a photo of a {n}, {g}" for n in ("zero", "one") for g in ("inverted", "plain", "thick")
    ]
    assert every_prompt(PLAIN, CLASSES, MANIFEST) == ["a photo of a zero", "a photo of a one"]
    with pytest.raises(TailsynthError, match="no group column"):
        every_prompt(GROUPED, CLASSES, MANIFEST.drop(columns="group"))
