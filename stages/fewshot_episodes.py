"""Stage fewshot_episodes: N-way K-shot episodes over the novel classes -> data/fewshot/episodes/.

Writes ``episodes.csv`` (see ``tailsynth.data.episodes``) and ``classes.json`` (novel and base
class indices). Support and query sets of an episode never share an image.
"""

from _not_applicable import skip_if_not_applicable

from tailsynth.data.episodes import novel_classes, sample_episodes
from tailsynth.data.manifest import read_classes, read_manifest, select_rows
from tailsynth.errors import TailsynthError
from tailsynth.io import atomic_dir, write_json
from tailsynth.methods import registry

from _common import load_params, log, prepared_dir, stage

OUT = "data/fewshot/episodes"


@stage
def main() -> None:
    params = load_params()
    if skip_if_not_applicable(params, [OUT], mode=registry.FEWSHOT):
        return
    p = params["fewshot"]
    folder = prepared_dir(params)
    classes, manifest = read_classes(folder), read_manifest(folder)
    base_split = params["fewshot_backbone"]["train_split"]
    novel = novel_classes(manifest, base_split, p["episode_split"], p["novel_classes"])
    unknown = [c for c in novel if not 0 <= c < len(classes)]
    if unknown:
        raise TailsynthError(f"fewshot.novel_classes has indices {unknown} outside 0..{len(classes) - 1}")
    if not novel:
        raise TailsynthError(
            f"no novel class: set fewshot.novel_classes, or give {p['episode_split']!r} classes absent from "
            f"{base_split!r} (fewshot.episode_split, fewshot_backbone.train_split)"
        )
    candidates = select_rows(manifest, p["episode_split"], "fewshot.episode_split")
    candidates = candidates[candidates["label"].isin(novel)]
    episodes = sample_episodes(
        candidates,
        novel,
        ways=p["ways"],
        shots=p["shots"],
        queries=p["queries"],
        episodes=p["episodes"],
        seed=p["seed"],
        class_names={c["index"]: c["name"] for c in classes},
    )
    with atomic_dir(OUT) as tmp:
        episodes.to_csv(tmp / "episodes.csv", index=False)
        write_json(
            tmp / "classes.json", {"novel": novel, "base": [c["index"] for c in classes if c["index"] not in novel]}
        )
    log.info(
        "%d episodes, %d-way, shots %s, %d queries, novel classes %s",
        p["episodes"],
        p["ways"],
        p["shots"],
        p["queries"],
        novel,
    )


if __name__ == "__main__":
    main()
