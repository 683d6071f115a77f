"""Warm stage starts: run the pipeline's ``python stages/<name>.py`` commands in processes forked
from an interpreter that has already imported torch, diffusers and the other heavy libraries.

``python -m tailsynth.warm dvc repro`` (what ``make run`` does) starts a server that imports those
libraries once, puts a ``python`` shim first on ``PATH`` and runs the command. The shim hands a stage
command (``python stages/<file>.py ...``, exactly as ``dvc.yaml`` writes it) to the server, which
forks a monitor, which forks the worker that runs the stage; anything else, or everything once the
server is gone, the shim execs the real interpreter for. The stage commands, ``dvc.yaml`` and
``dvc.lock`` are the same with or without it.

A served stage behaves as a fresh ``python stages/x.py``: cwd, argv, environment, stdio (passed as
file descriptors), umask, niceness, ``__main__``, ``sys.path[0]``, thread pools sized from ``OMP_NUM_THREADS``,
buffering, interpreter shutdown, a fresh import of ``tailsynth`` (only third-party modules are
preloaded), its exit status (death by a signal included), forwarded SIGINT/SIGTERM/SIGHUP/SIGQUIT,
and death with its shim (``tests/test_warm.py`` checks each against a fresh interpreter). Not its
own: ``PYTHONHASHSEED``, ``PYTHONPATH``/``PYTHONSTARTUP`` and environment that libraries read at
import (the server's), and its session. It runs only on Linux, when ``python`` on ``PATH`` is this
environment's and when the preload left no thread and no CUDA context; otherwise the command runs as
it is, with a one-line note.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import traceback
import types
from pathlib import Path

# Third-party modules every stage, or the heaviest ones, import. Never tailsynth: a served stage
# imports the library fresh, from the files as they are when it starts.
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
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
SOCKET_NAME = "stage.sock"
LOG_NAME = "served.log"


def preload() -> str | None:
    """Import :data:`PRELOAD`; return why forking from this process would be unsafe, or None."""
    import importlib
    import threading

    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # is_available() without a CUDA context
    for name in PRELOAD:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        for attr in LAZY_ATTRS.get(name, ()):
            getattr(module, attr, None)
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return "importing the libraries initialised CUDA, which a forked process cannot use"
    if threading.active_count() > 1:
        return f"importing the libraries started {threading.active_count() - 1} thread(s)"
    return None


def _recv_request(conn: socket.socket) -> tuple[dict, list[int]]:
    head, fds, _, _ = socket.recv_fds(conn, 4, 3)
    try:
        if len(head) != 4 or len(fds) != 3:
            raise ConnectionError("incomplete request")
        (size,) = struct.unpack("!I", head)
        body = b""
        while len(body) < size:
            chunk = conn.recv(size - len(body))
            if not chunk:
                raise ConnectionError("client went away")
            body += chunk
        return json.loads(body), list(fds)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def _main_module(path: str) -> tuple[types.ModuleType, types.CodeType]:
    """A fresh ``__main__`` for the script at ``path`` (installed in sys.modules) and its compiled code,
    as the interpreter makes them (runpy would rewrite argv[0])."""
    import builtins
    import importlib.machinery
    import io

    with io.open_code(path) as f:
        source = f.read()
    module = types.ModuleType("__main__")
    module.__file__ = path
    module.__cached__ = None
    module.__builtins__ = builtins
    module.__loader__ = importlib.machinery.SourceFileLoader("__main__", path)
    sys.modules["__main__"] = module
    return module, compile(source, path, "exec", dont_inherit=True)


def _report_uncaught(exc: BaseException) -> None:
    """``sys.excepthook`` with the traceback a fresh interpreter has: from the script's frame on."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    exc = exc.with_traceback(tb)  # the default hook prints the exception's own traceback, not its argument
    try:
        sys.excepthook(type(exc), exc, tb)
    except BaseException:
        traceback.print_exception(type(exc), exc, tb)


def _standard_streams(unbuffered: bool) -> None:
    """stdout/stderr rebuilt on fds 1 and 2 as a fresh interpreter builds them for this environment."""
    import io

    for fd, name in ((1, "stdout"), (2, "stderr")):
        old = getattr(sys, name)
        raw = io.FileIO(fd, "w", closefd=False)
        stream = io.TextIOWrapper(
            raw if unbuffered else io.BufferedWriter(raw),
            encoding=old.encoding,
            errors=old.errors,
            line_buffering=fd == 2 or os.isatty(fd),
            write_through=unbuffered,
        )
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


def _apply_thread_counts(env: dict) -> None:
    """Thread pools sized as a fresh interpreter sizes them from this environment: OpenMP (torch) from
    ``OMP_NUM_THREADS``, BLAS (numpy, scipy) from ``OPENBLAS_NUM_THREADS`` or else ``OMP_NUM_THREADS``.
    The libraries read these when the server imported them."""
    omp = env.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0 and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(omp))
    blas = env.get("OPENBLAS_NUM_THREADS", "") or omp
    if blas.isdigit() and int(blas) > 0:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            return
        threadpool_limits(limits=int(blas), user_api="blas")


def _set_niceness(nice: int) -> None:
    """The caller's niceness (``nice dvc repro``), which a fresh interpreter inherits; threads started
    later (torch's pool) inherit it from this one. Below the server's own it needs CAP_SYS_NICE: without
    it the server's stays."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except PermissionError:
        pass


def _exec_stage(request: dict, fds: list[int]) -> tuple[int, bool]:
    """In the forked worker: become ``python <argv...>`` and run it to the end of interpreter shutdown.

    Returns (exit status, whether it ended by an uncaught Ctrl-C, which a fresh interpreter turns into
    death by SIGINT).
    """
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the others the monitor reset before the fork
    signal.signal(signal.SIGINT, signal.default_int_handler)  # KeyboardInterrupt, as in a fresh interpreter
    for sig in request["ignored"]:  # what the caller ignores, a fresh interpreter would inherit ignored
        signal.signal(sig, signal.SIG_IGN)
    os.chdir(request["cwd"])
    os.umask(request["umask"])
    _set_niceness(request["nice"])
    os.environ.clear()
    os.environ.update(request["env"])
    _standard_streams(bool(os.environ.get("PYTHONUNBUFFERED")))
    _apply_thread_counts(os.environ)
    for name in [m for m in sys.modules if m == "tailsynth" or m.startswith("tailsynth.")]:
        del sys.modules[name]
    script, *args = request["argv"]
    path = os.path.abspath(script)
    if not os.path.isfile(path):
        print(f"{sys.executable}: can't open file {path!r}: [Errno 2] No such file or directory", file=sys.stderr)
        return 2, False
    sys.argv = [script, *args]  # as given, like `python stages/x.py`; __file__ absolute, like it
    sys.path.insert(0, os.path.dirname(path))  # the server dropped its own first entry
    code, interrupted, module = 0, False, None
    try:
        module, compiled = _main_module(path)
        # Blocked by the monitor until now, so that a Ctrl-C forwarded early lands here, in the stage,
        # not in the set-up above (where e.g. a ctypes callback in threadpoolctl would swallow it).
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED_SIGNALS)
        exec(compiled, module.__dict__)
    except SystemExit as exc:
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt as exc:
        _report_uncaught(exc)
        code, interrupted = 1, True
    except BaseException as exc:
        _report_uncaught(exc)
        code = 1
    # Interpreter shutdown, in its order: wait for non-daemon threads, atexit, then tear __main__ down
    # (which closes files it left open, flushing them), then flush stdio.
    import atexit
    import gc
    import threading

    for step in (threading._shutdown, atexit._run_exitfuncs):
        try:
            step()
        except BaseException:
            traceback.print_exc()
    if module is not None:
        module.__dict__.clear()
    gc.collect()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    return code, interrupted


def _monitor(conn: socket.socket, request: dict, fds: list[int]) -> None:
    """In a forked monitor: fork the worker, send its pid, wait, send its exit status, exit.

    If the shim goes away first (killed, even by SIGKILL), the worker is killed: in a fresh interpreter
    the shim's process would have been the stage itself.
    """
    import select

    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    # Forwarded signals wait, pending, until the worker runs the stage (it unblocks them). Not ignored
    # meanwhile: an ignored signal is discarded even while blocked, and the server may have inherited
    # SIGINT ignored (started from a background job).
    for sig in FORWARDED_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED_SIGNALS)
    pid = os.fork()
    if pid == 0:
        conn.close()
        code, interrupted = 1, False
        try:
            code, interrupted = _exec_stage(request, fds)
        finally:
            if interrupted:  # as a fresh interpreter ends on an uncaught Ctrl-C: killed by SIGINT
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGINT)
            os._exit(code & 0xFF)
    for fd in fds:
        os.close(fd)
    try:
        conn.sendall(struct.pack("!i", pid))
    except OSError:
        os.kill(pid, signal.SIGKILL)  # the shim is gone: so is whoever waited for this stage
    try:
        pidfd = os.pidfd_open(pid)  # Linux 5.3+: wait for the worker and watch the shim at once
    except (AttributeError, OSError):
        pidfd = None
    if pidfd is not None:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        poller.register(conn.fileno(), select.POLLIN | select.POLLHUP)
        while True:
            ready = dict(poller.poll())
            if pidfd in ready:
                break
            if conn.fileno() in ready:  # the shim sends nothing after its request: it hung up
                os.kill(pid, signal.SIGKILL)
                poller.unregister(conn.fileno())
    _, status = os.waitpid(pid, 0)
    try:
        conn.sendall(struct.pack("!i", os.waitstatus_to_exitcode(status)))
    except OSError:
        pass
    os._exit(0)


def _die_with_parent() -> None:
    """Linux: have the kernel kill this server when the process that started it exits, however it exits."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def serve(folder: Path) -> None:
    """Preload, print ``ready`` (or ``unsafe <reason>``), then serve requests on ``folder``'s socket."""
    sys.path[:] = [p for p in sys.path if p not in ("", os.getcwd())]  # the cwd must not shadow modules
    _die_with_parent()
    reason = preload()
    if reason is not None:
        print(f"unsafe {reason}", flush=True)
        return
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # monitors are reaped by the kernel
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(folder / SOCKET_NAME))
    server.listen(64)
    print("ready", flush=True)
    log = folder / LOG_NAME
    while True:
        conn, _ = server.accept()
        try:
            request, fds = _recv_request(conn)
        except (ConnectionError, struct.error, ValueError, OSError):
            conn.close()
            continue
        with open(log, "a") as f:  # one line per stage served: cwd and argv
            f.write(f"{request['cwd']} {' '.join(request['argv'])}\n")
        try:
            child = os.fork()
        except OSError:  # no process to spare: the shim runs the stage with the real interpreter
            child = -1
        if child == 0:
            server.close()
            _monitor(conn, request, fds)
        for fd in fds:
            os.close(fd)
        conn.close()


# The shim's client: stdlib only, started with -I -S so that it costs ~20 ms.
CLIENT = """\
import json, os, signal, socket, struct, sys
real, path, args, signals = {real!r}, {path!r}, sys.argv[1:], {signals!r}
# Signals this process ignores stay ignored (the stage inherits that, as a fresh interpreter would);
# the others are caught from the first line on: held until the stage's pid is known, then forwarded.
# (Blocking them instead would lose them: an ignored signal is discarded even while blocked.)
ignored = [sig for sig in signals if signal.getsignal(sig) == signal.SIG_IGN]
pending, pid = [], None
def forward(sig, frame):
    if pid is None:
        pending.append(sig)
        return
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
for sig in signals:
    if sig not in ignored:
        signal.signal(sig, forward)
def run_real():
    if pending:  # a signal came before anything ran: it ends this process, as it would have
        signal.signal(pending[0], signal.SIG_DFL)
        os.kill(os.getpid(), pending[0])
    os.execv(real, [real, *args])  # caught signals return to their defaults across exec
if not (args and args[0].startswith("stages/") and args[0].endswith(".py") and os.path.exists(path)):
    run_real()
try:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
except OSError:
    run_real()
def read_int():
    data = b""
    while len(data) < 4:
        chunk = s.recv(4 - len(data))
        if not chunk:
            return None
        data += chunk
    return struct.unpack("!i", data)[0]
umask = os.umask(0)
os.umask(umask)
request = {{"cwd": os.getcwd(), "argv": args, "env": dict(os.environ), "umask": umask, "ignored": ignored,
           "nice": os.getpriority(os.PRIO_PROCESS, 0)}}
body = json.dumps(request).encode()
try:
    socket.send_fds(s, [struct.pack("!I", len(body))], [0, 1, 2])
    s.sendall(body)
    started = read_int()
except OSError:
    started = None
if started is None:  # the server went away before starting the stage: nothing ran, run it here
    s.close()
    run_real()
pid = started
for sig in pending:
    forward(sig, None)
code = read_int()
if code is None:
    code = 1  # the monitor was killed
if code < 0:  # the stage died of a signal: so does this process, for whoever waits on it
    try:
        signal.signal(-code, signal.SIG_DFL)
    except (OSError, ValueError):  # SIGKILL: nothing to reset
        pass
    os.kill(os.getpid(), -code)
sys.exit(code)
"""


def _real_python() -> str | None:
    """``python`` as ``PATH`` resolves it now, if that is this interpreter's environment (else None)."""
    found = shutil.which("python")
    if found is None:
        return None
    try:  # the same folder: a venv's python is a symlink to the base interpreter, which is not the venv
        same = os.path.samefile(os.path.dirname(found), os.path.dirname(sys.executable))
    except OSError:
        same = False
    return found if same else None


class WarmServer:
    """A running server and the folder holding its ``python`` shim (put :attr:`folder` first on PATH).

    ``folder`` defaults to a new temporary folder, removed by :meth:`stop`. ``served.log`` in it has
    one line (cwd, argv) per stage the server ran.
    """

    def __init__(self, folder: Path | None = None):
        self._owned = folder is None
        self.folder = Path(tempfile.mkdtemp(prefix="tailsynth-warm-")) if folder is None else Path(folder)
        self.process: subprocess.Popen | None = None

    def start(self, real: str | None = None) -> str | None:
        """Start the server and write the shim; return why it cannot run here, or None once it is ready.

        ``real`` is the interpreter the shim runs everything else with; by default ``python`` on PATH,
        which must then be this interpreter's environment.
        """
        if not sys.platform.startswith("linux"):
            return f"forking a preloaded interpreter is only done on Linux (this is {sys.platform})"
        real = real or _real_python()
        if real is None:
            return f"`python` on PATH is not {sys.executable}"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tailsynth.warm", "--serve", str(self.folder)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,  # Ctrl-C reaches a stage through the shim only, once
        )
        line = self.process.stdout.readline().strip()
        if line != "ready":
            self.stop()
            return line.removeprefix("unsafe ") or "the server exited while importing the libraries"
        client = self.folder / "stage_client.py"
        client.write_text(
            CLIENT.format(real=real, path=str(self.folder / SOCKET_NAME), signals=[int(s) for s in FORWARDED_SIGNALS])
        )
        shim = self.folder / "python"
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -I -S "{client}" "$@"\n')
        shim.chmod(shim.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        return None

    def env(self, base: dict | None = None) -> dict:
        """``base`` (default: this environment) with the shim's folder first on PATH."""
        env = dict(os.environ if base is None else base)
        env["PATH"] = f"{self.folder}{os.pathsep}{env.get('PATH', '')}"
        return env

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()  # stages already running finish: they are its grandchildren
            self.process.wait()
        (self.folder / SOCKET_NAME).unlink(missing_ok=True)
        if self._owned:
            shutil.rmtree(self.folder, ignore_errors=True)


def run(cmd: list[str]) -> int:
    """Run ``cmd`` (e.g. ``["dvc", "repro"]``) with warm stage starts where they are safe; its exit status."""
    server = WarmServer()
    try:
        reason = server.start()  # inside the try: a Ctrl-C during the preload still removes the folder
        env = None
        if reason is None:
            env = server.env()
        else:
            print(f"tailsynth.warm: stages start as fresh interpreters: {reason}", file=sys.stderr)
        proc = subprocess.Popen(cmd, env=env)
        # The command handles Ctrl-C itself (it is in the terminal's process group): wait for it. A
        # kill of this process goes on to the command, so that the server is stopped after it.
        signal.signal(signal.SIGINT, lambda *_: None)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, lambda sig, _: proc.send_signal(sig))
        return proc.wait()
    except FileNotFoundError:
        print(f"tailsynth.warm: {cmd[0]}: command not found", file=sys.stderr)
        return 127
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "--serve":
        serve(Path(argv[1]))
        return 0
    if argv[:1] == ["--"]:
        argv = argv[1:]
    usage = "usage: python -m tailsynth.warm COMMAND [ARGS...]   (e.g. dvc repro): warm stage starts"
    if argv[:1] in (["-h"], ["--help"]):
        print(usage)
        return 0
    if not argv:
        print(usage, file=sys.stderr)
        return 2
    code = run(argv)
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main())
