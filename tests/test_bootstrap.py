"""The README's promise: a clean clone on a machine with only Python 3.11+ runs `make run`.

No uv on PATH, no .venv, no Redis: `make install` bootstraps uv into .uv-bootstrap and
creates .venv, and `make run` starts the broker on its embedded Valkey until Ctrl-C.
uv's download cache is reused (as on any developer machine), which keeps this fast.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.support import ROOT, free_port, pid_alive, request, valkey_pids, wait_for

# Variables that would point the clone at this checkout's environment or make jobs.
_INHERITED = {
    "VIRTUAL_ENV",
    "UV_PROJECT_ENVIRONMENT",
    "PYTHONPATH",
    "MAKEFLAGS",
    "MAKELEVEL",
    "MFLAGS",
}


def python_dir_without_uv() -> Path:
    """A directory whose python3 can create venvs and which holds no uv."""
    for directory in (Path(sys.base_prefix) / "bin", Path("/usr/local/bin"), Path("/usr/bin")):
        python = directory / "python3"
        if not python.exists() or (directory / "uv").exists():
            continue
        check = subprocess.run(
            [str(python), "-c", "import sys, venv, ensurepip; assert sys.version_info >= (3, 11)"],
            capture_output=True,
            timeout=60,
        )
        if check.returncode == 0:
            return directory
    raise AssertionError("no python3 >= 3.11 with venv and without uv next to it on this machine")


def bare_machine_env() -> dict[str, str]:
    path = os.pathsep.join(dict.fromkeys([str(python_dir_without_uv()), "/usr/bin", "/bin"]))
    assert shutil.which("uv", path=path) is None, f"uv is on {path}"
    assert shutil.which("make", path=path) and shutil.which("git", path=path)
    env = {k: v for k, v in os.environ.items() if k not in _INHERITED}
    env["PATH"] = path
    return env


def _reset_sigint() -> None:
    # Like a terminal: a shell that started the test suite in the background may have set
    # SIGINT to "ignore", which children inherit; Ctrl-C must reach make and twistd here.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.timeout(600)  # a cold uv cache downloads every wheel once
def test_make_install_and_make_run_work_from_a_clean_clone_without_uv():
    # A short path: the embedded Valkey's unix socket lives in the clone's restmq-data.
    workdir = Path(tempfile.mkdtemp(prefix="rmq-boot-", dir="/tmp"))
    clone = workdir / "restmq"
    env = bare_machine_env()
    proc = None
    try:
        subprocess.run(
            ["git", "clone", "--quiet", str(ROOT), str(clone)],
            check=True,
            env=env,
            timeout=120,
        )
        assert not (clone / ".venv").exists() and not (clone / ".uv-bootstrap").exists()

        install = subprocess.run(
            ["make", "install"],
            cwd=clone,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert install.returncode == 0, install.stdout + install.stderr
        assert (clone / ".uv-bootstrap" / "bin" / "uv").exists(), "uv was not bootstrapped"
        assert os.access(clone / ".venv" / "bin" / "twistd", os.X_OK)

        # Up to date: a second `make install` does nothing, quickly, and does not run uv.
        started = time.monotonic()
        again = subprocess.run(
            ["make", "install"],
            cwd=clone,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        took = time.monotonic() - started
        output = again.stdout + again.stderr
        assert again.returncode == 0, output
        assert "Nothing to be done" in output or "is up to date" in output, output
        assert "uv sync" not in output and "pip install" not in output, output
        assert took < 10, f"an up-to-date make install took {took:.1f} s"

        port = free_port()
        log_path = workdir / "make-run.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                ["make", "run", f"ARGS=--port {port}"],
                cwd=clone,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, as at a terminal
                preexec_fn=_reset_sigint,
            )

        def serving() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"make run exited {proc.returncode}:\n{log_path.read_text()}")
            try:
                return request(port, "GET", "/stats/", timeout=2).status == 200
            except OSError:
                return False

        wait_for(serving, timeout=60, what=f"make run to serve on port {port}")
        data_dir = clone / "restmq-data"
        server_pids = valkey_pids(data_dir)
        assert len(server_pids) == 1, "the broker should run on its embedded Valkey"

        # Ctrl-C at the terminal: SIGINT to make's whole process group
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(30)
        wait_for(
            lambda: not any(pid_alive(pid) for pid in server_pids),
            timeout=10,
            what="the embedded valkey-server to exit",
        )
        try:
            os.killpg(proc.pid, 0)
            left = True
        except ProcessLookupError:
            left = False
        assert not left, "processes of make run are still alive after Ctrl-C"
        log = log_path.read_text()
        assert "embedded Valkey stopped" in log
        assert "RestMQ stopped" in log
        # a clean stop: no traceback, even if a signal reached twistd twice
        assert "Traceback" not in log and "ReactorNotRunning" not in log, log
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
