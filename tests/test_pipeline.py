"""End to end: `dvc repro` of the whole pipeline on the smoke profile, in a temporary git repo; then what
re-runs after a change, and the group-imbalanced pipeline. (The experiment queue, a fresh clone and the GPU
workflow, on a copy of the same run: tests/test_shared_cache.py.)"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from pipeline_utils import (
    SIDE_RUN_NICE,
    finished_run,
    make_project,
    pipeline_stages,
    ran_stages,
    run,
    smoke_overrides,
    smoke_project,
    start_repro,
    start_smoke,
)

from tailsynth.methods import registry

pytestmark = pytest.mark.slow
DVC = str(Path(sys.executable).parent / "dvc")
METHODS = registry.names(registry.LONG_TAIL)
BASELINES = registry.names(registry.LONG_TAIL, registry.GENERATED)
GENIE = registry.names(registry.LONG_TAIL, registry.GENIE)
GENERATED = BASELINES + GENIE  # the generated methods of both modes
FEEDBACK = registry.names(registry.LONG_TAIL, registry.FEEDBACK)  # long-tail only
FUSION = registry.names(registry.LONG_TAIL, registry.FUSION)  # long-tail only


def start_early(fixtures: set[str]) -> dict:
    """For conftest: the smoke run (for ``project``) and the group-imbalanced one (for ``groups``), started
    before the first test."""
    runs = {}
    if "project" in fixtures:
        runs["smoke"] = start_smoke
    if "groups" in fixtures:
        runs["groups"] = start_groups
    return runs


@pytest.fixture(scope="module")
def project(tmp_path_factory, torch_home):
    return smoke_project(tmp_path_factory)


def test_every_stage_ran_and_declared_outputs_exist(project):
    stages = ran_stages((project / "repro.log").read_text())
    expected = {"prepare", "generator", "oracle", "generator_eval", "classifier", "report"}
    expected |= {"generator_unclip", "generator_unclip_eval", "feedback_sweep"}
    expected |= {f"synth_feedback@{m}" for m in FEEDBACK}
    expected |= {f"synth@{m}" for m in BASELINES} | {f"synth_genie@{m}" for m in GENIE}
    expected |= {"encode_latents", "train_il_se", "cams", "fuse"} | {f"synth_fusion@{m}" for m in FUSION}
    expected |= {f"{s}@{m}" for s in ("retrain", "evaluate") for m in METHODS}
    expected |= {f"fewshot_eval@{m}" for m in registry.names(registry.FEWSHOT)}
    expected |= {"fewshot_episodes", "fewshot_backbone", "fewshot_sweep"} | {f"fewshot_synth@{m}" for m in GENERATED}
    assert stages == expected
    assert (project / "data/prepared/digits/classes.json").is_file()
    assert (project / "models/generator/model_index.json").is_file()
    unclip_index = json.loads((project / "models/generator_unclip/model_index.json").read_text())
    assert unclip_index["_class_name"] == "StableUnCLIPImg2ImgPipeline"
    assert (project / "models/classifier/confusion_train.csv").is_file()
    for m in METHODS:
        runs = sorted((project / "models/retrain" / m).glob("seed*"))
        assert [r.name for r in runs] == ["seed0", "seed1"]
        config = json.loads((runs[0] / "config.json").read_text())
        assert config["n_real"] == 372  # the long-tailed train split
        counts = {**dict.fromkeys(BASELINES, 12), **dict.fromkeys(GENIE + FEEDBACK + FUSION, 8)}
        assert config["n_synthetic"] == counts.get(m, 0)
    for name in (
        "summary.json",
        "summary.md",
        "generator.json",
        "oracle.json",
        "plots/per_class.csv",
        "plots/by_bucket.csv",
        "plots/generator_samples.png",
        "generator_unclip.json",
        "plots/generator_unclip_samples.png",
    ):
        assert (project / "metrics" / name).is_file(), name
    grids = sorted(p.stem for p in (project / "metrics/plots/samples").glob("*.png"))
    assert grids == sorted(GENERATED + FEEDBACK + FUSION)


def test_synthetic_sets_follow_the_contract(project):
    classes = json.loads((project / "data/prepared/digits/classes.json").read_text())
    few = [c["index"] for c in classes if c["bucket"] == "few"]
    for m in GENERATED:
        df = pd.read_csv(project / "data/synthetic" / m / "manifest.csv", keep_default_na=False)
        for col in ("image", "label", "method", "target", "source_image", "source_label", "r", "steps", "seed"):
            assert col in df.columns
        assert sorted(df["label"].unique()) == few
        assert (df.groupby("label").size() == (2 if m in GENIE else 3)).all()
        assert all((project / "data/synthetic" / m / p).is_file() for p in df["image"])
        if m == "txt2img":
            assert (df["r"] == 1.0).all() and (df["source_image"] == "").all()
        elif m in GENIE:
            assert (df["source_label"] != df["label"]).all()  # another class's image, labelled as the target
        else:
            assert (df["source_label"] == df["label"]).all()
    ada = pd.read_csv(project / "data/synthetic/genie_ada/manifest.csv")
    grid = [0.5, 0.6, 0.7, 0.8, 0.9]
    assert ada["chosen_r"].isin(grid[1:]).all() and (ada["r"] == ada["chosen_r"]).all()
    assert all(f"d_{r:g}" in ada.columns for r in grid)
    hist = pd.read_csv(project / "metrics/plots/chosen_r.csv")
    assert hist["count"].sum() == len(ada)
    assert (pd.read_csv(project / "data/synthetic/genie/manifest.csv")["r"] == 0.7).all()


def test_retrain_streamed_from_disk_writes_the_models_retrain_in_memory_wrote(project, tmp_path):
    # runtime.loader.in_memory_mib 0 streams every image set: the real train split and GeNIe's set, decoded
    # by 2 DataLoader workers. The stage must write the bytes that the pipeline's in-memory run wrote.
    for folder in ("data/prepared", "data/synthetic/genie"):
        shutil.copytree(project / folder, tmp_path / folder)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["runtime"]["loader"] = {"in_memory_mib": 0, "workers": 2}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = run([sys.executable, str(project / "stages/retrain.py"), "genie"], tmp_path)
    assert "retrain genie: 372 real + 8 synthetic images (streamed from disk)" in proc.stderr
    for seed in ("seed0", "seed1"):
        streamed = tmp_path / "models/retrain/genie" / seed / "model.safetensors"
        assert streamed.read_bytes() == (project / "models/retrain/genie" / seed / "model.safetensors").read_bytes()


def test_feedback_sets_record_their_conditioning_image_criterion_and_final_value(project):
    prepared = pd.read_csv(project / "data/prepared/digits/manifest.csv")
    train = prepared[prepared["split"] == "train"].set_index("image")["label"]
    sets = {m: pd.read_csv(project / "data/synthetic" / m / "manifest.csv", keep_default_na=False) for m in FEEDBACK}
    few = sorted(sets["ldm_text"]["label"].unique())
    for m, df in sets.items():
        assert sorted(df["label"].unique()) == few and (df.groupby("label").size() == 2).all()
        assert df["seed"].tolist() == sets["ldm_text"]["seed"].tolist()  # rows pair up across the ladder
        assert all((project / "data/synthetic" / m / p).is_file() for p in df["image"])
        method = registry.METHODS[m]
        if method.image:  # a train image of the row's own class
            assert [train[c] for c in df["cond_image"]] == df["label"].tolist()
        else:
            assert (df["cond_image"] == "").all()
        assert (df["dropout"] == (0.3 if method.dropout else 0.0)).all()
        if method.criterion:
            assert (df["criterion"] == method.criterion).all() and (df["every"] == 3).all()
            assert df["criterion_value"].notna().all() and (df["criterion_value"] >= 0).all()
            assert df["guide"].str.len().min() > 0
        else:
            assert "criterion_value" not in df.columns and (df["criterion"] == "").all()
    assert sets["ldm_text_image"]["cond_image"].tolist() == sets["feedback_loss"]["cond_image"].tolist()
    # The recorded value is the criterion of the saved image: recomputed from the PNGs, it agrees.
    from tailsynth.data.manifest import load_rows
    from tailsynth.models.classifier import load_classifier, predict

    df = sets["feedback_loss"]
    images = load_rows(project / "data/synthetic/feedback_loss", df, 1).float() / 255
    logits, _ = predict(load_classifier(project / "models/classifier"), images)
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor(df["label"].tolist()), reduction="none")
    assert df["criterion_value"].to_numpy() == pytest.approx(loss.numpy(), rel=1e-4, abs=1e-5)
    check = json.loads((project / "metrics/generator_unclip.json").read_text())
    assert set(check) == {"train_split", "held_out"}
    for split in check.values():  # 10 classes x 1 pair x 2 seeds x 2 directions
        assert split["n"] == 40 and 0 <= split["closer"] <= 1
        assert split["gap"] == pytest.approx(split["d_other"] - split["d_cond"])


def test_fusion_pairs_each_tail_sample_with_one_of_its_nearest_head_samples(project):
    # The fused rows as the stages wrote them: every tail sample is its class's own image, its partner one of
    # its fusion.knn.k nearest head samples by CAM map (recomputed here from data/fusion/cams.safetensors),
    # both sets share the pairs, and only fusion_5step ran refinement steps.
    from safetensors.torch import load_file

    params = yaml.safe_load((project / "params.yaml").read_text())["fusion"]
    index = pd.read_csv(project / "data/latents/index.csv", keep_default_na=False)
    maps = load_file(str(project / "data/fusion/cams.safetensors"))["maps"].flatten(1)
    assert len(maps) == len(index) == 372 and float(maps.min()) >= 0 and float(maps.max()) <= 1
    classes = json.loads((project / "data/prepared/digits/classes.json").read_text())
    few = {c["index"] for c in classes if c["bucket"] == "few"}
    head = [i for i, y in enumerate(index["label"]) if y not in few]
    sets = {m: pd.read_csv(project / "data/synthetic" / m / "manifest.csv", keep_default_na=False) for m in FUSION}
    rows = sets["fusion_0step"]
    assert set(rows["label"]) == few and (rows["label"] == rows["source_label"]).all()
    assert not rows["head_label"].isin(few).any()
    for row in rows.itertuples():
        assert index["image"][row.tail_index] == row.source_image and index["image"][row.head_index] == row.head_image
        dist = torch.cdist(maps[[row.tail_index]], maps[head])[0]
        nearest = {head[i] for i in dist.argsort()[: params["knn"]["k"]].tolist()}
        assert row.head_index in nearest
    for col in ("source_image", "head_image", "seed", "tau_h", "tau_l", "p_head", "latent_hash"):
        assert (sets["fusion_5step"][col] == rows[col]).all(), col
    assert (rows["steps"] == 0).all() and (sets["fusion_5step"]["steps"] == params["refine"]["steps"]).all()
    assert not set(rows["key"]) & set(sets["fusion_5step"]["key"])
    il = json.loads((project / "metrics/fusion/il.json").read_text())
    curve = pd.read_csv(project / "metrics/plots/il_generations.csv")
    assert curve["generation"].tolist() == list(range(params["il"]["generations"]))
    assert il["sparsity_uniform"] == pytest.approx(1 / params["se"]["group"]) and il["acc"] == curve["acc"].iloc[-1]


def test_feedback_sweep_reuses_the_ladder_and_varies_only_omega(project):
    sweep = json.loads((project / "metrics/feedback_sweep.json").read_text())
    assert sweep["criterion"] == "loss"
    assert sorted(k for k in sweep if k != "criterion") == ["omega0", "omega0_01", "omega0_03", "omega0_1"]
    for key, method in (("omega0", "ldm_text_image_dropout"), ("omega0_03", "feedback_loss")):  # the ladder's sets
        metrics = json.loads((project / "metrics/evaluate" / f"{method}.json").read_text())
        assert sweep[key]["acc"] == metrics["acc"] and sweep[key]["criterion"] == metrics["criterion_loss"]
    ladder = pd.read_csv(project / "data/synthetic/feedback_loss/manifest.csv", keep_default_na=False)
    for key, omega in (("omega0_01", 0.01), ("omega0_1", 0.1)):  # the guided plan at another step size
        df = pd.read_csv(project / "data/synthetic/feedback_sweep" / key / "manifest.csv", keep_default_na=False)
        for column in ("seed", "cond_image", "label", "dropout", "every", "criterion", "guide"):
            assert df[column].tolist() == ladder[column].tolist(), column
        assert (df["omega"] == omega).all() and not set(df["key"]) & set(ladder["key"])
        assert sweep[key]["set"] == f"data/synthetic/feedback_sweep/{key}"
        assert set(sweep[key]["acc"]) == set(sweep["omega0"]["acc"])
    assert (
        "## Feedback guidance step sweep (feedback_loss's plan at each omega)"
        in (project / "metrics/summary.md").read_text()
    )
    table = pd.read_csv(project / "metrics/plots/feedback_omega.csv")
    assert table["omega"].tolist() == [0, 0.01, 0.03, 0.1]
    assert table["acc_few"].tolist() == [
        sweep[k]["acc"]["few"] for k in ("omega0", "omega0_01", "omega0_03", "omega0_1")
    ]
    assert table["criterion_value"].tolist() == [
        sweep[k]["criterion"] for k in ("omega0", "omega0_01", "omega0_03", "omega0_1")
    ]


def test_metrics_are_in_range(project):
    summary = json.loads((project / "metrics/summary.json").read_text())
    assert list(summary) == METHODS
    for m, row in summary.items():
        for key in ("acc_overall", "acc_many", "acc_medium", "acc_few"):
            assert 0 <= row[key] <= 1
        assert "fid" not in row  # no Inception weights in this environment
        if m in GENERATED + FEEDBACK + FUSION:
            assert row["n_synthetic"] == (8 if m in GENIE + FEEDBACK + FUSION else 12)
            assert 0 <= row["oracle_acc"] <= 1 and row["fd_oracle"] >= 0
            assert row["criterion_loss"] >= 0 and row["criterion_entropy"] >= 0 and row["criterion_hardness"] >= 0
            assert row["density"] >= 0 and 0 <= row["coverage"] <= 1  # 50 test images a class > eval.density_k
    for m in METHODS:
        ev = json.loads((project / "metrics/evaluate" / f"{m}.json").read_text())
        assert ev["n_seeds"] == 2 and len(ev["per_class_acc"]) == 10 and set(ev["acc_std"]) == set(ev["acc"])
        seeds = pd.read_csv(project / "metrics/evaluate" / f"{m}_seeds.csv")
        assert seeds["seed"].tolist() == [0, 1] and seeds["overall"].mean() == pytest.approx(ev["acc"]["overall"])
        if m != "none":
            d = summary[m]["paired_few_vs_none"]
            assert d == pytest.approx(seeds["few"].mean() - summary["none"]["acc_few"])
            assert summary[m]["paired_few_vs_none_ci95"] >= 0
            medium = summary[m]["paired_medium_vs_none"]  # the classes generation does not fill, paired too
            assert medium == pytest.approx(seeds["medium"].mean() - summary["none"]["acc_medium"])
            assert "paired_medium_vs_txt2img" not in summary[m]
    text = (project / "metrics/summary.md").read_text()
    assert "## Long-tail, the classes generation does not fill, paired against none" in text
    assert "## Long-tail, paired over 2 seeds" in text and "## Few-shot, paired over 2 episodes" in text
    assert "GeNIe > Txt2Img, 1-shot" in text and "GeNIe-Ada ≥ GeNIe, 5-shot" in text and "oracle test" in text
    assert "Dual-conditioned generator, swapped same-class pairs" in text and "| feedback_hardness † |" in text
    gen = json.loads((project / "metrics/generator.json").read_text())
    assert 0 <= gen["oracle_acc"] <= 1 and len(gen["oracle_acc_per_class"]) == 10
    # The smoke generator (3 training steps) misses its bar: every generated row is marked, with the reason.
    assert gen["oracle_acc"] < gen["min_acc"] or gen["oracle_acc_min"] < gen["min_class_acc"]
    assert "| img2img_high † |" in text and "| weak |" in text and "† unreliable: the generator's" in text
    oracle = json.loads((project / "metrics/oracle.json").read_text())
    assert f"oracle test {100 * oracle['test_acc']:.1f}%" in text
    assert ("too low to trust" in text) == (oracle["test_acc"] < 0.9)


def test_fewshot_outputs(project):
    episodes = pd.read_csv(project / "data/fewshot/episodes/episodes.csv")
    ways = yaml.safe_load((project / "params.yaml").read_text())["fewshot"]["ways"]  # 3 in the smoke profile
    assert set(episodes["label"]) <= {5, 6, 7, 8, 9} and episodes["episode"].nunique() == 2
    assert (episodes.groupby("episode")["label"].nunique() == ways).all()
    backbone = json.loads((project / "models/fewshot_backbone/config.json").read_text())
    assert backbone["base_classes"] == [0, 1, 2, 3, 4] and backbone["num_classes"] == 5
    for m in GENERATED:
        df = pd.read_csv(project / "data/fewshot/synthetic" / m / "manifest.csv", keep_default_na=False)
        levels = 5 if m == "genie_ada" else 1
        assert len(df) == 2 * ways * (ways - 1) * 5 * levels  # episodes x classes x (N-1)K x levels
        assert set(df["target"]) == set(episodes["label"])
        if m in GENIE:
            assert (df["source_label"] != df["target"]).all()
            assert set(df["source_image"]) <= set(episodes.loc[episodes["role"] == "support", "image"])
    for m in registry.names(registry.FEWSHOT):
        r = json.loads((project / "metrics/fewshot" / f"{m}.json").read_text())
        for k in (1, 5):
            assert 0 <= r[f"{k}shot"]["mean"] <= 1 and r[f"{k}shot"]["episodes"] == 2 and r[f"{k}shot"]["ci95"] >= 0
            assert r[f"{k}shot"]["added_per_class"] == (0 if m == "none" else (ways - 1) * k)
        assert ("oracle_acc" in r) == (m in GENERATED)
    choices = pd.read_csv(project / "data/fewshot/synthetic/genie_ada/ada_choices.csv")
    per_episode = ways * (ways - 1)  # generated images per episode at 1 shot
    assert choices.groupby("shots").size().to_dict() == {1: 2 * per_episode, 5: 2 * per_episode * 5}
    assert choices["chosen_r"].isin([0.6, 0.7, 0.8, 0.9]).all()
    hist = pd.read_csv(project / "metrics/plots/chosen_r.csv").set_index("r")
    for k in (1, 5):
        counts = choices.loc[choices["shots"] == k, "chosen_r"].value_counts()
        assert hist.loc[counts.index, f"genie_ada_{k}shot"].tolist() == counts.tolist()
    sweep = pd.read_csv(project / "metrics/plots/r_sweep.csv")
    assert sweep["r"].tolist() == [0.5, 0.6, 0.7, 0.8, 0.9]
    assert sweep[["oracle_acc", "acc_1shot", "acc_5shot"]].apply(lambda c: c.between(0, 1)).all().all()
    summary = json.loads((project / "metrics/summary.json").read_text())
    fewshot = registry.names(registry.FEWSHOT)
    assert all("fewshot_1shot" in summary[m] and "fewshot_5shot_ci95" in summary[m] for m in fewshot)
    assert not any("fewshot_1shot" in summary[m] for m in FEEDBACK)  # long-tail only
    text = (project / "metrics/summary.md").read_text()
    assert "## Few-shot results" in text and "## GeNIe noise sweep" in text


def test_fixed_r_genie_is_adas_level_at_the_same_r(project):

    fixed = pd.read_csv(project / "data/fewshot/synthetic/genie/manifest.csv", keep_default_na=False)
    ada = pd.read_csv(project / "data/fewshot/synthetic/genie_ada/manifest.csv", keep_default_na=False)
    level = ada[ada["r"] == 0.7]
    cols = ["episode", "target", "source_image", "seed"]
    pairs = fixed[cols + ["sha"]].merge(level[cols + ["sha"]], on=cols, suffixes=("_fixed", "_ada"))
    assert len(pairs) == len(fixed)
    # Same rows in the same batches (same size), so the files are byte-identical, not merely close.
    assert (pairs["sha_fixed"] == pairs["sha_ada"]).all()
    chosen = ada[ada["chosen_shots"] != ""]
    assert len(chosen) == len(
        pd.read_csv(project / "data/fewshot/synthetic/genie_ada/ada_choices.csv")["image"].unique()
    )


def test_an_ada_set_without_its_choices_is_an_error_not_a_fixed_r_set(project):
    # The registry says genie_ada keeps one level per pair; a missing choices file is not "no Ada".
    choices = project / "data/fewshot/synthetic/genie_ada/ada_choices.csv"
    saved = choices.read_bytes()
    choices.unlink()
    try:
        proc = run([sys.executable, "stages/fewshot_eval.py", "genie_ada"], project, check=False)
        assert proc.returncode == 2 and "ada_choices.csv not found" in proc.stderr
    finally:
        choices.write_bytes(saved)


def test_noop_repro_runs_nothing(project):
    proc = run([DVC, "repro"], project)
    assert ran_stages(proc.stdout) == set()


def test_rerunning_the_generator_changes_nothing_downstream(project):
    # Its folder (the identity that keys every synthetic row) must hold no run-dependent bytes such as
    # timings: a forced re-run gives the same hash in dvc.lock, so no synthetic set is regenerated.
    # In a fresh interpreter (the other stages here ran in the tests' stage server): also the check that
    # the server's forked stages write exactly what a fresh process writes.
    lock = (project / "dvc.lock").read_text()
    proc = run([DVC, "repro", "--force", "--single-item", "generator"], project, fresh=True)
    assert ran_stages(proc.stdout) == {"generator"}
    assert (project / "dvc.lock").read_text() == lock  # the folder's hash: every file byte-identical
    info = json.loads((project / "models/generator/tailsynth.json").read_text())
    assert not [k for k in info if "seconds" in k or "time" in k]  # timings are not in the folder ...
    assert "generator timings" in proc.stdout + proc.stderr  # ... but in the log
    assert ran_stages(run([DVC, "repro"], project).stdout) == set()


def test_changed_prepared_content_reaches_every_consumer(project):
    # Consumers depend on prepared/manifest.csv (with a digest per image), not on the 1,800-file folder.
    # (classes.json keeps its counts here, so a stage that reads only it, train_il_se, is not among them.)
    other = yaml.safe_load((project / "params.yaml").read_text())
    other["data"]["seed"] = 1
    (project / "other_params.yaml").write_text(yaml.safe_dump(other))
    env_run = run(["env", "TAILSYNTH_PARAMS=other_params.yaml", sys.executable, "stages/prepare.py"], project)
    assert env_run.returncode == 0
    status = json.loads(run([DVC, "status", "--json"], project).stdout)
    readers = {
        name
        for name, body in pipeline_stages(project).items()
        if any("data/prepared/" in d and d.endswith("manifest.csv") for d in body.get("do", body).get("deps", []))
    }
    changed = {name.rpartition(":")[2].split("@")[0] for name in status}  # without pipelines/<part>/dvc.yaml:
    assert readers <= changed, readers - changed
    run([DVC, "checkout", "--force", "data/prepared/digits"], project)
    (project / "other_params.yaml").unlink()
    assert json.loads(run([DVC, "status", "--json"], project).stdout) == {}


def test_exp_run_of_the_guidance_step_reruns_only_the_guided_methods(project):
    proc = run([DVC, "exp", "run", "-S", "feedback.guidance.omega=0.1"], project)
    guided = [m for m in FEEDBACK if registry.METHODS[m].criterion]
    assert ran_stages(proc.stdout) == {
        f"{s}@{m}" for s in ("synth_feedback", "retrain", "evaluate") for m in guided
    } | {"feedback_sweep", "report"}
    assert (pd.read_csv(project / "data/synthetic/feedback_entropy/manifest.csv")["omega"] == 0.1).all()
    # The sweep's 0.1 is now the ladder's own set, and its 0.03 a set of its own (0.1's was pruned).
    sweep = json.loads((project / "metrics/feedback_sweep.json").read_text())
    assert sweep["omega0_1"]["set"] == "data/synthetic/feedback_loss"
    assert sweep["omega0_03"]["set"] == "data/synthetic/feedback_sweep/omega0_03"
    assert sorted(p.name for p in (project / "data/synthetic/feedback_sweep").iterdir()) == ["omega0_01", "omega0_03"]


def test_interrupted_generation_resumes(project):
    folder = project / "data/synthetic/txt2img"
    images = sorted(folder.rglob("*.png"))
    kept = {p: p.stat().st_mtime_ns for p in images[2:]}
    for p in images[:2]:
        p.unlink()
    (folder / "manifest.csv").unlink()  # as if killed before the end
    proc = run([DVC, "repro", "pipelines/synth/dvc.yaml:synth@txt2img"], project)  # a part's stage, by address
    assert "synth@txt2img" in ran_stages(proc.stdout)
    assert all(p.is_file() for p in images)
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())  # finished rows were not redone
    assert len(pd.read_csv(folder / "manifest.csv")) == len(images)


def test_the_weak_augmentation_params_reach_the_generated_methods(project):
    # Generated sets are retrained with augment.<retrain.augment_generated> (weak): its params are theirs.
    # What is tested is which stages depend on the param, so `dvc status` (the stages whose own deps or
    # params changed) answers it without re-running the ~40 stages it makes stale (measured: 50 s).
    original = (project / "params.yaml").read_text()
    params = yaml.safe_load(original)
    params["augment"]["weak"]["hflip"] = True
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stale = {name.rpartition(":")[2] for name in json.loads(run([DVC, "status", "--json"], project).stdout)}
    (project / "params.yaml").write_text(original)
    assert {f"retrain@{m}" for m in ["weak", *GENERATED, *FEEDBACK]} <= stale
    assert not {f"retrain@{m}" for m in ["none", "strong", "cutmix", "mixup"]} & stale
    assert "fewshot_eval@weak" in stale and not any(s.startswith(("synth", "fewshot_synth")) for s in stale)
    assert "feedback_sweep" in stale  # it retrains the guided plan at each step size
    assert json.loads(run([DVC, "status", "--json"], project).stdout) == {}


def test_fusion_params_reach_only_their_stages(project):
    # Which stages a fusion param makes stale (dvc status lists the stages whose own deps or params changed;
    # their consumers follow from the outputs): refinement steps only fusion_5step, K only fuse.
    original = (project / "params.yaml").read_text()
    stale = {}
    for key, value in (("refine.steps", 1), ("knn.k", 2), ("se.tau", 0.25)):
        params = yaml.safe_load(original)
        section, name = key.split(".")
        params["fusion"][section][name] = value
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        status = json.loads(run([DVC, "status", "--json"], project).stdout)
        stale[key] = {name.rpartition(":")[2] for name in status}
    (project / "params.yaml").write_text(original)
    assert stale == {"refine.steps": {"synth_fusion@fusion_5step"}, "knn.k": {"fuse"}, "se.tau": {"train_il_se"}}
    assert json.loads(run([DVC, "status", "--json"], project).stdout) == {}


@pytest.mark.parametrize(
    ("script", "override", "named"),
    [
        ("fuse.py", {"tail_classes": ["seven", "eleven"]}, "fusion.tail_classes"),
        ("fuse.py", {"knn": {"k": 1000}}, "fusion.knn.k"),
        ("fuse.py", {"thresholds": {"high": 1.5}}, "fusion.thresholds.high"),
        ("train_il_se.py", {"se": {"group": 7}}, "fusion.se.group"),
        ("train_il_se.py", {"il": {"epochs": 3}}, "fusion.il has unknown keys ['epochs']"),
        ("synth_fusion.py", {"refine": {"steps": 11}}, "fusion.refine.steps"),
        # values of the wrong type: checked before they are compared or used
        ("synth_fusion.py", {"refine": {"schedule": "75"}}, "fusion.refine.schedule"),
        ("synth_fusion.py", {"refine": {"cfg": "high"}}, "fusion.refine.cfg"),
        ("train_il_se.py", {"se": {"tau": "0.2"}}, "fusion.se.tau"),
        ("train_il_se.py", {"il": {"lr": "fast"}}, "fusion.il.lr"),
        ("encode_latents.py", {"encode": {"shard_size": 1.5}}, "fusion.encode.shard_size"),
    ],
)
def test_bad_fusion_params_are_one_line_errors_that_change_nothing(project, script, override, named):
    params = yaml.safe_load((project / "params.yaml").read_text())
    for key, value in override.items():
        params["fusion"][key] = {**params["fusion"][key], **value} if isinstance(value, dict) else value
    (project / "bad_params.yaml").write_text(yaml.safe_dump(params))
    args = ["fusion_5step"] if script == "synth_fusion.py" else []
    proc = run(["env", "TAILSYNTH_PARAMS=bad_params.yaml", sys.executable, f"stages/{script}", *args], project, False)
    (project / "bad_params.yaml").unlink()
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and len(errors) == 1 and named in errors[0], proc.stderr[-2000:]
    assert json.loads(run([DVC, "status", "--json"], project).stdout) == {}  # nothing written, nothing stale


GROUP_PROMPT = "a photo of a {name}, {group}"  # quoted below: unquoted, -S would split it at the comma
GROUPS_OVERRIDES = ["data.dataset=digits_groups", "retrain.balanced=group", f'generator.prompt="{GROUP_PROMPT}"']


def start_groups(tmp_path_factory) -> tuple[Path, subprocess.Popen]:
    """The whole pipeline on the group-imbalanced digits, by params alone, in a project of its own: the
    ``-S`` values of the README's ``dvc exp run`` applied to params.yaml as DVC applies them, then a
    ``dvc repro`` started in the background, with no Inception weights. Returns (root, process)."""
    from dvc.utils.hydra import apply_overrides

    root = make_project(tmp_path_factory.mktemp("groups"), smoke_overrides())
    apply_overrides(root / "params.yaml", GROUPS_OVERRIDES)
    return root, start_repro(root, SIDE_RUN_NICE, TORCH_HOME=str(tmp_path_factory.mktemp("torch_home")))


@pytest.fixture(scope="module")
def groups(tmp_path_factory):
    """The finished group-imbalanced project (started by conftest before the first test, else here)."""
    return finished_run("groups", start_groups, tmp_path_factory)


def test_the_group_imbalanced_digits_run_reports_worst_group_accuracy(groups):
    # The whole pipeline on another dataset, by params alone; groups reach every method's metrics, the
    # paired comparisons and the table.
    ran = ran_stages((groups / "repro.log").read_text())
    assert {f"evaluate@{m}" for m in METHODS} | {"fewshot_synth@genie_ada", "report"} <= ran
    for m in METHODS:
        ev = json.loads((groups / f"metrics/evaluate/{m}.json").read_text())
        assert len(ev["group_acc"]) == 40  # 10 classes x 4 contexts, all in the balanced test split
        seeds = pd.read_csv(groups / f"metrics/evaluate/{m}_seeds.csv")
        assert ev["worst_group"] == pytest.approx(seeds["worst_group"].mean())
        assert min(ev["group_acc"].values()) >= ev["worst_group"] - 1e-9  # mean of minima <= minimum of means
    summary = json.loads((groups / "metrics/summary.json").read_text())
    assert all("paired_worst_group_vs_none" in summary[m] for m in METHODS if m != "none")
    text = (groups / "metrics/summary.md").read_text()
    assert "| avg group | worst group |" in text and "worst_group vs none" in text
    manifest = pd.read_csv(groups / "data/prepared/digits_groups/manifest.csv")
    assert set(manifest["group"]) == {"plain", "inverted", "rotated", "thick"}
    # The prompt names the context: every synthetic row has one of its class's contexts, in its prompt.
    contexts = manifest.groupby("label")["group"].agg(set).to_dict()
    names = {
        c["index"]: c["prompt_name"]
        for c in json.loads((groups / "data/prepared/digits_groups/classes.json").read_text())
    }
    for m in ["txt2img", "genie", "ldm_text_image"]:
        rows = pd.read_csv(groups / f"data/synthetic/{m}/manifest.csv", keep_default_na=False)
        assert all(g in contexts[t] for t, g in zip(rows["target"], rows["group"], strict=True)), m
        assert (
            rows["prompt"]
            == [GROUP_PROMPT.format(name=names[t], group=g) for t, g in zip(rows["target"], rows["group"], strict=True)]
        ).all(), m
    fewshot = pd.read_csv(groups / "data/fewshot/synthetic/genie_ada/manifest.csv", keep_default_na=False)
    assert fewshot.groupby("seed")["group"].nunique().max() == 1  # a pair's levels share their context
