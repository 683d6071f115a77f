"""Run a generation stage under ``runtime.launch``, the launcher that ``dvc.yaml`` templates into its command.

    python stages/launch.py stages/synth.py txt2img -- accelerate launch --multi_gpu --num_processes 8

Everything after ``--`` is the launch command (``runtime.launch``, split by the shell). ``python``
runs the stage in this process (so warm starts still serve it); anything else replaces this
process with ``<launch> <stage> <args>``, so the launcher's processes are the stage's and DVC sees
their exit status. A launch command that cannot start is a one-line error naming the param, exit 2.
"""

import os
import runpy
import sys

USAGE = "usage: python stages/launch.py <stage script> [args...] -- <launch command>"


def split(argv: list[str]) -> tuple[list[str], list[str]]:
    """(stage script and its args, launch command) from this script's arguments."""
    if "--" not in argv:
        raise SystemExit(USAGE)
    cut = argv.index("--")
    stage, launch = argv[:cut], argv[cut + 1 :]
    if not stage or not launch:
        raise SystemExit(USAGE)
    return stage, launch


def main(argv: list[str]) -> None:
    stage, launch = split(argv)
    if launch == ["python"]:
        sys.argv = stage
        runpy.run_path(stage[0], run_name="__main__")
        return
    try:
        os.execvp(launch[0], [*launch, *stage])
    except OSError as exc:
        print(
            f"error: runtime.launch {' '.join(launch)!r} cannot start ({exc.strerror}: {launch[0]}); "
            "set runtime.launch to python or to a launcher on PATH (e.g. accelerate launch --num_processes 2)",
            file=sys.stderr,
        )
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv[1:])
