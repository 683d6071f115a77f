"""mini-ImageNet / ImageNet-LT adapters and class-name files, on small fixtures in the real formats."""

import json
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from pipeline_utils import ROOT, deep_update, run

from tailsynth.data.class_names import describe_classes, names_for, prompt_for, prompt_name, read_class_names
from tailsynth.data.imagenet_lt import scan_imagenet_lt
from tailsynth.data.manifest import load_split, read_classes, read_manifest
from tailsynth.data.mini_imagenet import scan_split_csvs
from tailsynth.data.prepare import write_prepared
from tailsynth.errors import TailsynthError

FIXTURES = Path(__file__).resolve().parent / "fixtures"
MINI = FIXTURES / "mini_imagenet"
LT = FIXTURES / "imagenet_lt"
WORDS = FIXTURES / "class_names" / "words.txt"
SUPERS = FIXTURES / "class_names" / "superclasses.csv"
MINI_IDS = ["n01532829", "n01558993", "n01855672", "n01930112"]
LT_IDS = ["n01440764", "n01443537", "n01484850"]


def prepare(scan, out: Path, size: int = 8):
    return write_prepared(
        out,
        scan.records,
        names=scan.names,
        prompt_names=scan.prompt_names,
        superclasses=scan.superclasses,
        ids=scan.ids,
        size=size,
        channels=3,
        many_above=2,
        few_below=2,
    )


@pytest.fixture
def mini(tmp_path):
    return Path(shutil.copytree(MINI, tmp_path / "mini"))


@pytest.fixture
def lt(tmp_path):
    return Path(shutil.copytree(LT, tmp_path / "lt"))


# --- class-name files ---


def test_class_name_formats_agree(tmp_path):
    words = read_class_names(WORDS)
    assert words["n01532829"] == {"name": "house finch, linnet, Carpodacus mexicanus", "superclass": None}
    supers = read_class_names(SUPERS)
    assert supers["n01532829"] == {"name": "house finch, linnet, Carpodacus mexicanus", "superclass": "bird"}
    assert supers["n01930112"]["superclass"] == "invertebrate"
    # LOC_synset_mapping.txt style: one space instead of a tab
    (tmp_path / "LOC_synset_mapping.txt").write_text("n01440764 tench, Tinca tinca\n\nn01443537 goldfish\n")
    assert read_class_names(tmp_path / "LOC_synset_mapping.txt")["n01440764"]["name"] == "tench, Tinca tinca"
    (tmp_path / "plain.json").write_text(json.dumps({"n01855672": "goose"}))
    assert read_class_names(tmp_path / "plain.json") == {"n01855672": {"name": "goose", "superclass": None}}
    (tmp_path / "rich.json").write_text(json.dumps({"n01855672": {"name": "goose", "superclass": "bird"}}))
    assert read_class_names(tmp_path / "rich.json")["n01855672"]["superclass"] == "bird"
    # a CSV with an "id" column, in a file without the .csv suffix, and no superclass column
    (tmp_path / "names.txt").write_text("id,name\nn01855672,goose\n")
    assert read_class_names(tmp_path / "names.txt") == {"n01855672": {"name": "goose", "superclass": None}}


def test_prompt_name_is_the_first_synonym():
    assert prompt_name("house finch, linnet, Carpodacus mexicanus") == "house finch"
    assert prompt_name("goose") == "goose"
    assert prompt_name("golden_retriever") == "golden retriever"


def test_names_for_keeps_order_and_names_the_missing_class():
    mapping = read_class_names(WORDS)
    assert [e["name"] for e in names_for(["n01855672", "n01440764"], mapping, WORDS)] == ["goose", "tench, Tinca tinca"]
    with pytest.raises(TailsynthError) as exc:
        names_for(["n01855672", "n09999999", "n08888888"], mapping, WORDS)
    msg = str(exc.value)
    assert "data.class_names" in msg and str(WORDS) in msg and "'n09999999'" in msg and "add a line" in msg
    assert "n08888888" not in msg


def test_class_name_file_errors(tmp_path):
    with pytest.raises(TailsynthError, match="data.class_names.*nothere.txt.*not found"):
        read_class_names(tmp_path / "nothere.txt")
    (tmp_path / "bad.txt").write_text("n01440764\ttench\nn01443537\n")
    with pytest.raises(TailsynthError, match=r"bad.txt line 2 'n01443537' is not"):
        read_class_names(tmp_path / "bad.txt")
    (tmp_path / "dup.txt").write_text("n01440764 tench\nn01440764 carp\n")
    with pytest.raises(TailsynthError, match="dup.txt line 2 .*'n01440764'"):
        read_class_names(tmp_path / "dup.txt")
    (tmp_path / "cols.csv").write_text("label,title\nn01440764,tench\n")
    with pytest.raises(TailsynthError, match="cols.csv.*needs an id column"):
        read_class_names(tmp_path / "cols.csv")
    (tmp_path / "empty.csv").write_text("wnid,name\nn01440764,\n")
    with pytest.raises(TailsynthError, match="empty.csv row 2 needs a class id and a name"):
        read_class_names(tmp_path / "empty.csv")
    (tmp_path / "list.json").write_text('["tench"]')
    with pytest.raises(TailsynthError, match="list.json must be a non-empty JSON object"):
        read_class_names(tmp_path / "list.json")


def test_repeated_names_get_their_id_appended(tmp_path):
    # ImageNet has two synsets named "crane" (a bird and a machine); results are keyed by name
    (tmp_path / "words.txt").write_text("n02012849\tcrane\nn03126707\tcrane\nn01855672\tgoose\n")
    names, prompts, supers = describe_classes(["n02012849", "n03126707", "n01855672"], tmp_path / "words.txt")
    assert names == ["crane (n02012849)", "crane (n03126707)", "goose"]
    assert prompts == ["crane", "crane", "goose"] and supers == [None, None, None]


# --- mini-ImageNet ---


def test_mini_imagenet_classes_in_first_appearance_order_and_splits():
    scan = scan_split_csvs(MINI)
    assert scan.ids == MINI_IDS  # train (base) classes first, then val's, then test's (novel)
    assert scan.names == MINI_IDS and scan.superclasses == [None] * 4
    by_split = {s: sorted({r.label for r in scan.records if r.split == s}) for s in ("train", "val", "test")}
    assert by_split == {"train": [0, 1], "val": [2], "test": [3]}
    assert [r.split for r in scan.records].count("train") == 6
    assert all(r.in_pool == (r.split == "train") for r in scan.records)
    # the test class's images live in images/<wnid>/, the others directly in images/
    assert {r.image.parent.name for r in scan.records if r.split == "test"} == {"n01930112"}
    assert {r.image.parent.name for r in scan.records if r.split == "train"} == {"images"}
    assert len({r.key for r in scan.records}) == len(scan.records)


def test_mini_imagenet_prepared_with_names_and_superclasses(tmp_path):
    scan = scan_split_csvs(MINI, class_names=SUPERS)
    table = prepare(scan, tmp_path / "out")
    classes = read_classes(tmp_path / "out")
    assert classes == table
    assert [c["id"] for c in classes] == MINI_IDS
    assert [c["name"] for c in classes] == [
        "house finch, linnet, Carpodacus mexicanus",
        "robin, American robin, Turdus migratorius",
        "goose",
        "nematode, nematode worm, roundworm",
    ]
    assert [c["prompt_name"] for c in classes] == ["house finch", "robin", "goose", "nematode"]
    assert [c["superclass"] for c in classes] == ["bird", "bird", "bird", "invertebrate"]
    assert [c["train_count"] for c in classes] == [3, 3, 0, 0]
    df = read_manifest(tmp_path / "out")
    assert df.groupby("split")["label"].apply(lambda s: sorted(set(s))).to_dict() == {
        "test": [3],
        "train": [0, 1],
        "val": [2],
    }
    assert (df["in_pool"] == (df["split"] == "train")).all()
    x, _ = load_split(tmp_path / "out", "test", channels=3)
    assert x.shape == (2, 3, 8, 8)


def test_classes_json_without_superclasses_is_unchanged(tmp_path):
    table = prepare(scan_split_csvs(MINI, class_names=WORDS), tmp_path / "a")
    assert [c["superclass"] for c in table] == [None] * 4  # known to be unknown: null
    scan = scan_split_csvs(MINI)
    plain = write_prepared(
        tmp_path / "b",
        scan.records,
        names=scan.names,
        prompt_names=scan.names,
        size=8,
        channels=3,
        many_above=2,
        few_below=2,
    )
    assert set(plain[0]) == {"index", "name", "prompt_name", "train_count", "bucket"}


def test_prompt_for_with_superclass():
    bird = {"name": "house finch, linnet", "prompt_name": "house finch", "superclass": "bird"}
    template = "a photo of a {name}, a type of {superclass}"
    assert prompt_for(template, bird) == "a photo of a house finch, a type of bird"
    assert prompt_for("a photo of a {name}", {"name": "goose", "prompt_name": "goose"}) == "a photo of a goose"
    for unknown in (
        {"name": "goose", "prompt_name": "goose"},
        {"name": "goose", "prompt_name": "goose", "superclass": None},
    ):
        with pytest.raises(
            TailsynthError, match=r"generator.prompt.*\{superclass\}.*'goose' has none.*data.class_names"
        ):
            prompt_for(template, unknown)
    with pytest.raises(TailsynthError, match="unknown field 'kind'"):
        prompt_for("a {kind}", bird)
    with pytest.raises(TailsynthError, match="not a valid template"):
        prompt_for("a {name", bird)


def test_mini_imagenet_without_val(mini):
    (mini / "val.csv").unlink()
    scan = scan_split_csvs(mini)
    assert {r.split for r in scan.records} == {"train", "test"}
    assert scan.ids == ["n01532829", "n01558993", "n01930112"]


def test_mini_imagenet_shared_classes_keep_train_order(mini):
    # not mini-ImageNet's disjoint splits: test reuses a train class and adds a new one
    (mini / "test.csv").write_text(
        "filename,label\nn0155899300000003.jpg,n01558993\nn01930112/n0193011200000001.jpg,x\n"
    )
    (mini / "train.csv").write_text("filename,label\n" + "".join(f"n01532829{k:08d}.jpg,n01532829\n" for k in (1, 2)))
    scan = scan_split_csvs(mini)
    assert scan.ids == ["n01532829", "n01855672", "n01558993", "x"]
    assert [(r.split, r.label) for r in scan.records if r.split == "test"] == [("test", 2), ("test", 3)]


def test_mini_imagenet_errors(mini, tmp_path):
    with pytest.raises(TailsynthError, match="data.root.*nope.*not found"):
        scan_split_csvs(tmp_path / "nope")
    with pytest.raises(TailsynthError, match="images folder .*pictures not found"):
        scan_split_csvs(mini, images_dir="pictures")
    with pytest.raises(TailsynthError, match="outside"):
        scan_split_csvs(mini, images_dir="../..")
    train = (mini / "train.csv").read_text()

    def with_train(text: str) -> None:
        (mini / "train.csv").write_text(text)

    with_train("")
    with pytest.raises(TailsynthError, match=r"train.csv is empty"):
        scan_split_csvs(mini)
    with_train("filename,label\n")
    with pytest.raises(TailsynthError, match=r"train.csv has no rows"):
        scan_split_csvs(mini)
    with_train("image,label\na.jpg,n01532829\n")
    with pytest.raises(TailsynthError, match=r"train.csv lacks columns \['filename'\]"):
        scan_split_csvs(mini)
    with_train(train + ",n01532829\n")
    with pytest.raises(TailsynthError, match=r"train.csv row 8 has an empty 'filename'"):
        scan_split_csvs(mini)
    with_train(train + "../../secret.jpg,n01532829\n")
    with pytest.raises(TailsynthError, match=r"row 8 of .*train.csv names '../../secret.jpg'.*outside"):
        scan_split_csvs(mini)
    with_train(train + "n0153282900000099.jpg,n01532829\n")
    with pytest.raises(TailsynthError, match=r"image 'n0153282900000099.jpg' \(row 8 of .*train.csv\) not found"):
        scan_split_csvs(mini)
    with_train(train + "n0153282900000001.jpg,n01532829\n")
    with pytest.raises(TailsynthError, match=r"listed twice \(also in row 2 of .*train.csv\)"):
        scan_split_csvs(mini)
    with_train(train)
    (mini / "test.csv").unlink()
    with pytest.raises(TailsynthError, match=r"test.csv not found; the dataset needs train and test.csv"):
        scan_split_csvs(mini)


def test_mini_imagenet_class_missing_from_the_class_name_file(mini, tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("".join(line + "\n" for line in WORDS.read_text().splitlines() if "n01855672" not in line))
    with pytest.raises(TailsynthError, match=rf"data.class_names: {words} has no entry for class 'n01855672'"):
        scan_split_csvs(mini, class_names=words)


# --- ImageNet-LT ---


def test_imagenet_lt_fixture(tmp_path):
    scan = scan_imagenet_lt(LT, class_names=WORDS)
    assert scan.ids == LT_IDS
    assert scan.prompt_names == ["tench", "goldfish", "great white shark"]
    counts = pd.DataFrame([(r.split, r.label) for r in scan.records], columns=["split", "label"]).value_counts()
    assert counts["train"].sort_index().tolist() == [3, 2, 1]
    assert counts["val"].tolist() == [1, 1, 1] and counts["test"].tolist() == [1, 1, 1]
    assert all(r.in_pool == (r.split == "train") for r in scan.records)
    assert all(r.image.parent.name == scan.ids[r.label] for r in scan.records)
    table = prepare(scan, tmp_path / "out")
    assert [(c["id"], c["train_count"], c["bucket"]) for c in table] == [
        ("n01440764", 3, "many"),
        ("n01443537", 2, "medium"),
        ("n01484850", 1, "few"),
    ]


def test_imagenet_lt_split_files_and_label_numbers(lt):
    # test images in one flat folder (no wnid parent): ids still come from train's wnid folders
    (lt / "flat").mkdir()
    lines = (lt / "ImageNet_LT_test.txt").read_text().splitlines()
    flat = []
    for line in lines:
        rel, label = line.split()
        shutil.copy(lt / rel, lt / "flat" / Path(rel).name)
        flat.append(f"flat/{Path(rel).name} {label}")
    (lt / "test_flat.txt").write_text("\n".join(flat) + "\n")
    scan = scan_imagenet_lt(lt, split_files={"test": "test_flat.txt", "val": None})
    assert scan.ids == LT_IDS and {r.split for r in scan.records} == {"train", "test"}
    # with only flat paths the label numbers are the ids
    (lt / "train_flat.txt").write_text("flat/ILSVRC2012_val_00000293.JPEG 0\nflat/ILSVRC2012_val_00002293.JPEG 2\n")
    scan = scan_imagenet_lt(lt, split_files={"train": "train_flat.txt", "val": None, "test": "test_flat.txt"})
    assert scan.ids == ["0", "1", "2"] and scan.names == ["0", "1", "2"]
    # the default val file may be missing, a named one may not
    (lt / "ImageNet_LT_val.txt").unlink()
    assert {r.split for r in scan_imagenet_lt(lt).records} == {"train", "test"}
    with pytest.raises(TailsynthError, match=r"data.split_files: val file .*v.txt not found"):
        scan_imagenet_lt(lt, split_files={"val": "v.txt"})
    with pytest.raises(TailsynthError, match=r"unknown splits \['dev'\]"):
        scan_imagenet_lt(lt, split_files={"dev": "x.txt"})


def test_imagenet_lt_errors(lt, tmp_path):
    train_file = lt / "ImageNet_LT_train.txt"
    train = train_file.read_text()
    cases = [
        (
            "train/n01440764/n01440764_10026.JPEG\n",
            r"ImageNet_LT_train.txt line 7 .* is not '<image path> <integer label>'",
        ),
        ("train/n01440764/n01440764_10026.JPEG zero\n", r"ImageNet_LT_train.txt line 7 "),
        ("../outside.JPEG 0\n", r"ImageNet_LT_train.txt line 7 names '../outside.JPEG', which points outside"),
        ("/etc/hostname 0\n", r"line 7 names '/etc/hostname', which points outside"),
        (
            "train/n01440764/n01440764_99999.JPEG 0\n",
            r"image .*n01440764_99999.JPEG \(.*ImageNet_LT_train.txt line 7\) not found",
        ),
        (
            "train/n01443537/n01443537_10026.JPEG 0\n",
            r"label 0 is class n01443537 at .*line 7 but n01440764 at .*line 1",
        ),
        ("train/n01443537/n01443537_10026.JPEG 5\n", r"class n01443537 has labels 1 and 5"),
    ]
    for extra, pattern in cases:
        train_file.write_text(train + extra)
        with pytest.raises(TailsynthError, match=pattern):
            scan_imagenet_lt(lt)
    train_file.write_text("\n")
    with pytest.raises(TailsynthError, match="ImageNet_LT_train.txt has no lines"):
        scan_imagenet_lt(lt)
    train_file.unlink()
    with pytest.raises(TailsynthError, match="train file .*ImageNet_LT_train.txt not found"):
        scan_imagenet_lt(lt)
    with pytest.raises(TailsynthError, match="data.root.*nope"):
        scan_imagenet_lt(tmp_path / "nope")


def test_imagenet_lt_class_missing_from_the_class_name_file(tmp_path):
    (tmp_path / "names.json").write_text(json.dumps({"n01440764": "tench", "n01484850": "great white shark"}))
    with pytest.raises(TailsynthError, match=r"names.json has no entry for class 'n01443537'"):
        scan_imagenet_lt(LT, class_names=tmp_path / "names.json")


# --- the prepare stage ---


@pytest.fixture
def stage(tmp_path):
    project = tmp_path / "project"
    shutil.copytree(ROOT / "stages", project / "stages")

    def prepare_stage(data: dict):
        params = deep_update(yaml.safe_load((ROOT / "params.yaml").read_text()), {"data": data})
        (project / "params.yaml").write_text(yaml.safe_dump(params))
        return run([sys.executable, "stages/prepare.py"], project, check=False)

    prepare_stage.root = project
    return prepare_stage


def test_prepare_stage_on_mini_imagenet(stage):
    shutil.copy(SUPERS, stage.root / "classes.csv")  # a relative data.class_names is relative to the working dir
    proc = stage(
        {"dataset": "mini_imagenet", "root": str(MINI), "class_names": "classes.csv", "size": 8, "channels": 3}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = stage.root / "data" / "prepared" / "mini_imagenet"
    df = read_manifest(out)
    assert len(df) == 10 and df["split"].value_counts().to_dict() == {"train": 6, "val": 2, "test": 2}
    assert sorted(set(df.loc[df["split"] == "test", "label"])) == [3]
    assert all((out / rel).is_file() for rel in df["image"])
    classes = read_classes(out)
    assert [(c["id"], c["prompt_name"], c["superclass"], c["train_count"]) for c in classes] == [
        ("n01532829", "house finch", "bird", 3),
        ("n01558993", "robin", "bird", 3),
        ("n01855672", "goose", "bird", 0),
        ("n01930112", "nematode", "invertebrate", 0),
    ]
    x, _ = load_split(out, "train", channels=3)
    assert x.shape == (6, 3, 8, 8)


def test_prepare_stage_rejects_a_bad_class_name_file(stage, tmp_path):
    bad = tmp_path / "words.txt"
    bad.write_text("n01532829\thouse finch\nn01558993\n")
    proc = stage({"dataset": "mini_imagenet", "root": str(MINI), "class_names": str(bad), "channels": 3})
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "data.class_names" in errors[0] and "line 2" in errors[0] and str(bad) in errors[0]
    assert not list(stage.root.glob("data/prepared/*"))
    missing = tmp_path / "short.txt"
    missing.write_text("n01532829\thouse finch\n")
    proc = stage({"dataset": "imagenet_lt", "root": str(LT), "class_names": str(missing), "channels": 3})
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "has no entry for class 'n01440764'" in errors[0]
    assert not (stage.root / "data" / "prepared" / "imagenet_lt").exists()


def test_prepare_stage_names_the_new_dataset_kinds(stage):
    proc = stage({"dataset": "parquet"})
    assert proc.returncode == 2 and "mini_imagenet" in proc.stderr and "imagenet_lt" in proc.stderr
    proc = stage({"dataset": "imagenet_lt", "root": None})
    assert proc.returncode == 2 and "data.root is required" in proc.stderr


def test_classifier_on_kept_originals_writes_the_model_of_the_resized_copy(tmp_path):
    # data.keep_originals: no images are written, the manifest points into data.root, and the stages read
    # and resize the originals as they go: the classifier trained on them is the copy's, byte for byte.
    models = {}
    for keep in (False, True):
        project = tmp_path / str(keep)
        shutil.copytree(ROOT / "stages", project / "stages")
        override = {
            "data": {"dataset": "imagenet_lt", "root": str(LT), "size": 8, "channels": 3, "keep_originals": keep},
            "classifier": {"steps": 3, "batch_size": 4, "width": 4},
            "runtime": {"loader": {"in_memory_mib": 0 if keep else 256, "workers": 2 if keep else 0}},
        }
        params = deep_update(yaml.safe_load((ROOT / "params.yaml").read_text()), override)
        (project / "params.yaml").write_text(yaml.safe_dump(params))
        for script in ("prepare.py", "classifier.py"):
            proc = run([sys.executable, f"stages/{script}"], project, check=False)
            assert proc.returncode == 0, proc.stderr[-3000:]
        prepared = project / "data/prepared/imagenet_lt"
        assert (prepared / "images").exists() != keep and (prepared / "originals.json").exists() == keep
        models[keep] = (project / "models/classifier/model.safetensors").read_bytes()
    assert models[True] == models[False]
    params = yaml.safe_load((tmp_path / "True/params.yaml").read_text())
    params["data"] |= {"dataset": "digits", "root": None}
    (tmp_path / "True/params.yaml").write_text(yaml.safe_dump(params))
    proc = run([sys.executable, "stages/prepare.py"], tmp_path / "True", check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and len(errors) == 1 and "data.keep_originals needs" in errors[0]
    assert not (tmp_path / "True/data/prepared/digits").exists()
