"""Stage glue for the stages that do not apply to the prepared data (GeNIe, the feedback ladder and the
few-shot protocol on multi-label data): they write their outputs as not-applicable records and stop."""

from pathlib import Path

from tailsynth.data.manifest import MANIFEST, is_multilabel
from tailsynth.methods import registry
from tailsynth.not_applicable import write_not_applicable

from _common import log, prepared_dir


def skip_if_not_applicable(
    params: dict, outs: list[str | Path], *, mode: str | None = None, family: str | None = None
) -> bool:
    """True when a stage of ``mode`` / ``family`` does not apply to the prepared data: its outputs ``outs``
    (those dvc.yaml declares, and a synthetic set's manifest.csv) are then written as records of why."""
    folder = prepared_dir(params)
    if not (folder / MANIFEST).is_file():
        return False  # the stage's own checks come first, then its "run prepare first" error
    why = registry.not_applicable(is_multilabel(folder), mode=mode, family=family)
    if why is None:
        return False
    write_not_applicable(outs, why)
    log.info("not applicable to data/prepared/%s: %s", params["data"]["dataset"], why)
    return True


def synthetic_outs(method: registry.Method, mode: str) -> list[Path]:
    """A synthetic set's outputs: its folder and the manifest.csv its consumers depend on."""
    folder = method.synthetic_dir(mode)
    return [folder, folder / "manifest.csv"]
