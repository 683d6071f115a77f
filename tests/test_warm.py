"""Warm stage starts (tailsynth.warm, what `make run` and the end-to-end tests use): a served stage
behaves as a fresh `python stages/x.py` and writes the same bytes."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from pipeline_utils import command_env, make_project, smoke_overrides, stage_shim

from tailsynth.warm import LOG_NAME, WarmServer

pytestmark = pytest.mark.slow  # a server preloads torch, diffusers and transformers (~10 s)

PROBE = """\
import os, sys
fresh = "tailsynth" not in sys.modules
import torch
from threadpoolctl import threadpool_info
blas = sorted({p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"})
mask = os.umask(0)
os.umask(mask)
print(torch.get_num_threads(), blas, oct(mask), os.getpriority(os.PRIO_PROCESS, 0), os.getcwd(), sys.argv, __name__,
      __file__, sys.path[0], fresh, os.environ["MARK"])
"""


def scripts(tmp_path, **bodies: str):
    (tmp_path / "stages").mkdir(parents=True, exist_ok=True)
    for name, body in bodies.items():
        (tmp_path / "stages" / f"{name}.py").write_text(body)


def served(tmp_path) -> str:
    log = stage_shim() / LOG_NAME
    return log.read_text() if log.exists() else ""


def gone(pid: int, seconds: float = 10) -> bool:
    """Whether process ``pid`` no longer exists, waiting up to ``seconds``."""
    for _ in range(int(seconds * 10)):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def shim_and_fresh(tmp_path, args: list[str], env: dict, nice: int = 0) -> list[subprocess.CompletedProcess]:
    """``args`` run by the shim and by a fresh interpreter, each at ``nice`` more than this process."""
    return [
        subprocess.run(
            [python, *args], cwd=tmp_path, env=env, capture_output=True, text=True, preexec_fn=lambda: os.nice(nice)
        )
        for python in (str(stage_shim() / "python"), sys.executable)
    ]


@pytest.mark.parametrize("threads, nice", [("1", 0), ("2", 5)])
def test_a_served_stage_sees_what_a_fresh_interpreter_sees(tmp_path, threads, nice):
    os.umask(0o22)  # both inherit this process's umask; the served stage gets it through the shim
    scripts(tmp_path, probe=PROBE)
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": threads, "MARK": threads}
    served_proc, fresh_proc = shim_and_fresh(tmp_path, ["stages/probe.py", "a", "b"], env, nice)
    assert served_proc.returncode == fresh_proc.returncode == 0, served_proc.stderr + fresh_proc.stderr
    assert f"{tmp_path} stages/probe.py a b" in served(tmp_path)  # the first one went through the server
    stages = tmp_path / "stages"
    argv = "['stages/probe.py', 'a', 'b']"
    # torch's OpenMP pool and the BLAS pools (numpy, scipy) both follow OMP_NUM_THREADS
    niceness = os.getpriority(os.PRIO_PROCESS, 0) + nice  # `nice dvc repro` reaches its served stages
    expected = (
        f"{threads} [{threads}] 0o22 {niceness} {tmp_path} {argv} __main__ {stages}/probe.py {stages} True {threads}\n"
    )
    assert served_proc.stdout == fresh_proc.stdout == expected


def test_exit_statuses_and_errors_are_the_fresh_interpreters(tmp_path):
    scripts(
        tmp_path,
        three="import sys; sys.exit(3)\n",
        message="import sys; sys.exit('bad param: x')\n",
        error="raise ValueError('no such class folder')\n",
        negative="import sys; sys.exit(-1)\n",
        killed="import os, signal; print('before', flush=True); os.kill(os.getpid(), signal.SIGKILL)\n",
    )
    cases = [
        ("three", 3, ""),
        ("message", 1, "bad param: x"),
        ("error", 1, "ValueError: no such"),
        ("negative", 255, ""),  # an exit status, not a signal
        ("killed", -signal.SIGKILL, ""),
        ("missing", 2, "can't open file"),
    ]
    for name, code, text in cases:
        served_proc, fresh_proc = shim_and_fresh(tmp_path, [f"stages/{name}.py"], {"PATH": "/usr/bin:/bin"})
        assert served_proc.returncode == fresh_proc.returncode == code, name
        assert text in served_proc.stderr and text in fresh_proc.stderr, name
        assert "warm.py" not in served_proc.stderr  # the traceback starts at the stage's own frame
        assert served_proc.stdout == fresh_proc.stdout, name
        assert f"stages/{name}.py" in served(tmp_path)


# A stage that waits in short sleeps. CPython acts on a caught signal only between bytecodes or when a
# blocking call returns with EINTR: a SIGINT whose handler runs just before `time.sleep(60)` enters its
# system call is raised only when the minute is over, in any interpreter. Right after the pid is printed
# that window is likely (the reader of the pipe preempts the stage on a busy core): with one long sleep,
# 7 of 80 shims forwarded SIGINT into it and their stages raised KeyboardInterrupt 30 s later (exit -2);
# with 50 ms sleeps, 0 of 150.
POLLING_SLEEPER = "import os, time\nprint(os.getpid(), flush=True)\nfor _ in range(1200):\n    time.sleep(0.05)\n"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_shim_reaches_the_stage_and_its_status_comes_back(tmp_path, sig):
    scripts(tmp_path, sleeper=POLLING_SLEEPER)
    proc = subprocess.Popen(
        [str(stage_shim() / "python"), "stages/sleeper.py"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # even if this runner ignores it
    )
    worker = int(proc.stdout.readline())
    assert worker != proc.pid  # the stage runs in a forked worker, not in the shim
    proc.send_signal(sig)
    assert proc.wait(timeout=20) == -sig  # as a fresh interpreter: killed by SIGTERM, Ctrl-C re-raised
    assert gone(worker), f"stage process {worker} still alive after {sig!r}"  # reaped by its monitor


def test_other_commands_and_a_stopped_server_go_to_the_real_interpreter(tmp_path):
    scripts(tmp_path, probe=PROBE)
    env = {"PATH": "/usr/bin:/bin", "MARK": "m"}
    where = "import sys; print(sys.executable)"
    proc = subprocess.run([str(stage_shim() / "python"), "-c", where], env=env, capture_output=True, text=True)
    assert proc.stdout.strip() == sys.executable
    server = WarmServer(tmp_path / "warm")
    assert server.start(real=sys.executable) is None
    server.stop()
    proc = subprocess.run(
        [str(tmp_path / "warm" / "python"), "stages/probe.py"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0 and proc.stdout.endswith(" True m\n"), proc.stderr
    assert not (tmp_path / "warm" / LOG_NAME).exists()  # nothing was served


def test_run_passes_the_commands_exit_status_and_stops_the_server(tmp_path):
    env = dict(os.environ, PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(
        [sys.executable, "-m", "tailsynth.warm", "sh", "-c", 'echo "$PATH"; exit 4'],
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 4, proc.stderr
    shim_folder = proc.stdout.split(os.pathsep)[0]
    assert os.path.basename(shim_folder).startswith("tailsynth-warm-")
    assert not os.path.exists(shim_folder)  # stopped and removed


def test_served_stages_write_the_same_bytes_as_fresh_interpreters(tmp_path):
    """prepare, classifier and generator (smoke profile) under fresh interpreters and under the server:
    every output's hash in dvc.lock is the same. The two runs go at once (one core each: the stages get one
    torch thread)."""
    started = []
    for fresh in (True, False):
        (tmp_path / str(fresh)).mkdir()
        root = make_project(tmp_path / str(fresh), smoke_overrides())
        cmd, env = command_env([str(Path(sys.executable).parent / "dvc"), "repro", "classifier", "generator"], fresh)
        with open(root / "repro.log", "w") as log:  # a file, not a pipe: neither run waits on a reader
            started.append((root, subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)))
    locks = []
    for root, proc in started:
        assert proc.wait() == 0, (root / "repro.log").read_text()[-4000:]
        stages = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
        locks.append({name: [(o["path"], o["md5"]) for o in stages[name]["outs"]] for name in stages})
    assert set(locks[0]) == {"prepare", "classifier", "generator"}
    assert locks[0] == locks[1]
    log = served(tmp_path)
    # served, not fallen back to the real interpreter (classifier through stages/launch.py, as runtime.launch says)
    for command in ("stages/prepare.py", "stages/launch.py stages/classifier.py -- python", "stages/generator.py"):
        assert f"{tmp_path / 'False'} {command}\n" in log
        assert f"{tmp_path / 'True'} {command}" not in log


SHUTDOWN = """\
import threading, time
from concurrent.futures import ThreadPoolExecutor
left_open = open("left_open.txt", "w")  # never closed: interpreter shutdown flushes it
left_open.write("flushed at exit")
def late(name):
    time.sleep(0.5)
    with open(name, "w") as f:
        f.write("done")
threading.Thread(target=late, args=("thread.txt",)).start()  # not a daemon: the interpreter waits for it
ThreadPoolExecutor(1).submit(late, "pool.txt")
print("unbuffered", end="")  # with PYTHONUNBUFFERED, written at once
"""


def test_interpreter_shutdown_and_buffering_are_the_fresh_interpreters(tmp_path):
    for kind in ("served", "fresh"):
        work = tmp_path / kind
        scripts(work, shutdown=SHUTDOWN)
        python = str(stage_shim() / "python") if kind == "served" else sys.executable
        env = {"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"}
        proc = subprocess.run([python, "stages/shutdown.py"], cwd=work, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == "unbuffered"
        for name, text in [("left_open.txt", "flushed at exit"), ("thread.txt", "done"), ("pool.txt", "done")]:
            assert (work / name).read_text() == text, (kind, name)


def test_a_killed_shim_takes_its_stage_with_it(tmp_path):
    """As a fresh interpreter would die with it: `timeout -s KILL`, a CI runner's hard kill."""
    scripts(tmp_path, sleeper="import os, time\nprint(os.getpid(), flush=True)\ntime.sleep(60)\n")
    proc = subprocess.Popen(
        [str(stage_shim() / "python"), "stages/sleeper.py"], cwd=tmp_path, stdout=subprocess.PIPE, text=True
    )
    worker = int(proc.stdout.readline())
    proc.kill()
    proc.wait()
    assert gone(worker), f"stage process {worker} outlived its killed shim"


SLEEPER_STAGE = """\
import os, time
open("pid", "w").write(str(os.getpid()))
try:
    for _ in range(2400):  # short sleeps: see POLLING_SLEEPER
        time.sleep(0.05)
except KeyboardInterrupt:
    with open("interrupted", "a") as f:
        f.write("once\\n")
    raise
"""


def test_ctrl_c_on_a_warm_dvc_repro_interrupts_the_stage_once_and_leaves_nothing_running(tmp_path):
    """What a terminal's Ctrl-C does to `make run`: SIGINT to the whole foreground process group."""
    scripts(tmp_path, sleeper=SLEEPER_STAGE)
    stage = "  s:\n    cmd: python stages/sleeper.py\n    deps: [stages/sleeper.py]\n"
    (tmp_path / "dvc.yaml").write_text(f"stages:\n{stage}")
    bin_dir = os.path.dirname(sys.executable)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([os.path.join(bin_dir, "dvc"), "init", "-q"], cwd=tmp_path, env=env, check=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tailsynth.warm", os.path.join(bin_dir, "dvc"), "repro"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # a process group of its own, like a terminal's foreground job
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # even if this runner ignores it
    )
    for _ in range(600):
        if (tmp_path / "pid").exists() and (tmp_path / "pid").read_text():
            break
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail(f"the stage never started:\n{proc.communicate()[0]}")
    worker = int((tmp_path / "pid").read_text())
    os.killpg(proc.pid, signal.SIGINT)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode != 0
    assert "failed to run: python stages/sleeper.py, exited with -2" in output  # as a fresh interpreter
    assert (tmp_path / "interrupted").read_text() == "once\n"  # one KeyboardInterrupt, not two
    with pytest.raises(ProcessLookupError):
        os.kill(worker, 0)
