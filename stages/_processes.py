"""Stage glue for the processes of a multi-process ``runtime.launch``: their accelerate state, each one's
device, and who writes."""

import sys

from _common import device, log, require


def process_group(params: dict):
    """An ``accelerate.Accelerator`` for this process: the launch's process layout (gloo between CPU processes)
    and the mixed precision ``runtime.train_precision`` names, checked against ``runtime.device``."""
    from accelerate import Accelerator

    from tailsynth.train.distributed import resolve_precision

    dev = device(params)
    precision = resolve_precision(require(params["runtime"], "train_precision", "runtime"), dev)
    return Accelerator(cpu=dev.type == "cpu", mixed_precision=precision, device_placement=False)


def check_split(accelerator, batch_size: int, param: str) -> None:
    """A ``TailsynthError`` naming ``param`` unless a global batch of ``batch_size`` splits evenly over the
    launch's processes (unequal shares would weight their gradients unequally)."""
    from tailsynth.errors import TailsynthError

    if batch_size % accelerator.num_processes:
        raise TailsynthError(
            f"{param} {batch_size} does not split over the {accelerator.num_processes} processes "
            "of runtime.launch; use a multiple of the process count"
        )


def training_device(accelerator, params: dict):
    """accelerate's device (one GPU per process) under a multi-GPU launch, else ``runtime.device``."""
    multi_gpu = accelerator.num_processes > 1 and accelerator.device.type == "cuda"
    return accelerator.device if multi_gpu else device(params)


def exit_unless_main() -> None:
    """End every process but the main one, once training is done: the main process evaluates and writes alone."""
    from accelerate import PartialState

    state = PartialState()
    if not state.is_main_process:
        log.info("process %d of %d has trained its share", state.process_index, state.num_processes)
        sys.exit(0)
