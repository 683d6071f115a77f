"""Test speed-up: stage processes forked from an interpreter that has already imported the heavy libraries.

Every DVC stage is a `python stages/<name>.py ...` process that pays ~1.5 s to import torch and ~5 s
with diffusers before any work; the end-to-end tests run about 130 of them. During those tests a
``python`` shim first on PATH (:func:`install`) hands such a command to this server, which forks a
child that runs the script as ``__main__`` with the caller's cwd, argv, environment and stdin/out/err
(passed as file descriptors) and reports its exit status. Anything else the shim execs the real
interpreter for. The stage code itself, and everything it writes, is the same as in a fresh process:
only third-party modules are preloaded (never ``tailsynth`` or the stage helpers), and nothing runs a
torch operation before the fork (OpenMP's thread pool does not survive a fork).
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import signal
import socket
import stat
import struct
import subprocess
import sys
import traceback
from pathlib import Path

PRELOAD = (
    "torch",
    "torch._dynamo",  # the first optimizer (or diffusers) import pulls it in: ~1 s
    "torch.utils.data",
    "torchvision",
    "numpy",
    "pandas",
    "scipy.linalg",
    "sklearn.linear_model",
    "yaml",
    "PIL.Image",
    "matplotlib.pyplot",
    "transformers",
    "diffusers",
    "accelerate",
)
# Names that `from diffusers import X` / `from transformers import X` resolve lazily: touch them too.
LAZY_ATTRS = {
    "diffusers": (
        "StableDiffusionPipeline",
        "StableDiffusionImg2ImgPipeline",
        "AutoencoderKL",
        "UNet2DConditionModel",
        "DDIMScheduler",
        "DPMSolverMultistepScheduler",
        "DDPMScheduler",
        "StableUnCLIPImg2ImgPipeline",
    ),
    "transformers": (
        "CLIPTextModel",
        "CLIPTextConfig",
        "CLIPTokenizer",
        "CLIPVisionModelWithProjection",
        "CLIPVisionConfig",
        "CLIPImageProcessor",
    ),
}


def _preload() -> None:
    import importlib

    os.environ.setdefault("MPLBACKEND", "Agg")
    for name in PRELOAD:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        for attr in LAZY_ATTRS.get(name, ()):
            getattr(module, attr, None)


def _recv_request(conn: socket.socket) -> tuple[dict, list[int]]:
    head, fds, _, _ = socket.recv_fds(conn, 4, 3)
    (size,) = struct.unpack("!I", head)
    body = b""
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise ConnectionError("client went away")
        body += chunk
    return json.loads(body), list(fds)


def _run_child(request: dict, fds: list[int]) -> int:
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    script, *args = request["argv"]
    sys.argv = [script, *args]  # as given, like `python stages/x.py`; __file__ absolute, like it
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    code = 0
    try:
        runpy.run_path(os.path.abspath(script), run_name="__main__")
    except SystemExit as exc:
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    try:
        atexit._run_exitfuncs()
    except BaseException:
        traceback.print_exc()
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def serve(path: str) -> None:
    log = Path(path).with_name("served.log")
    _preload()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(16)
    print("ready", flush=True)
    while True:
        conn, _ = server.accept()
        try:
            request, fds = _recv_request(conn)
        except (ConnectionError, struct.error, ValueError):
            conn.close()
            continue
        with open(log, "a") as f:  # one line per stage served: cwd and argv
            f.write(f"{request['cwd']} {' '.join(request['argv'])}\n")
        if os.fork() == 0:
            server.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            code = 1
            try:
                code = _run_child(request, fds)
            finally:
                try:
                    conn.sendall(struct.pack("!i", code))
                finally:
                    os._exit(code)
        for fd in fds:
            os.close(fd)
        conn.close()


CLIENT = """\
import json, os, socket, struct, sys
real, path, args = {real!r}, {path!r}, sys.argv[1:]
if not (args and args[0].startswith("stages/") and args[0].endswith(".py") and os.path.exists(path)):
    os.execv(real, [real, *args])
try:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
except OSError:
    os.execv(real, [real, *args])
body = json.dumps({{"cwd": os.getcwd(), "argv": args, "env": dict(os.environ)}}).encode()
socket.send_fds(s, [struct.pack("!I", len(body))], [0, 1, 2])
s.sendall(body)
reply = b""
while len(reply) < 4:
    chunk = s.recv(4 - len(reply))
    if not chunk:
        sys.exit(1)  # the child died without reporting (killed)
    reply += chunk
sys.exit(struct.unpack("!i", reply)[0])
"""


def install(folder: Path) -> subprocess.Popen:
    """Start the server and write the ``python`` shim into ``folder`` (put it first on PATH)."""
    folder.mkdir(parents=True, exist_ok=True)
    sock = str(folder / "stage.sock")
    server = subprocess.Popen([sys.executable, __file__, sock], stdout=subprocess.PIPE, text=True)
    if server.stdout.readline().strip() != "ready":
        raise RuntimeError("stage server did not start")
    client = folder / "stage_client.py"
    client.write_text(CLIENT.format(real=sys.executable, path=sock))
    shim = folder / "python"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -I -S "{client}" "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return server


if __name__ == "__main__":
    serve(sys.argv[1])
