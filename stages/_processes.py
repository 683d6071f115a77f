"""Stage glue for the processes of a multi-process ``runtime.launch``: their accelerate state, each one's
device, and who writes."""

import sys

from _common import device, log


def process_group(params: dict):
    """An ``accelerate.Accelerator`` for this process, in fp32: the launch's process layout only (the
    generators' training, which does its own gradient averaging)."""
    from accelerate import Accelerator

    return Accelerator(cpu=device(params).type == "cpu", device_placement=False)


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
