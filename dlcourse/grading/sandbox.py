"""Run untrusted code in a fresh interpreter with limits, and leave nothing behind.

The process gets: ``python -I`` (no PYTHONPATH, no user site), a temporary working directory,
no standard input, a minimal environment, RLIMIT_AS (memory), RLIMIT_FSIZE (file size),
a process limit of ``MAX_TASKS`` tasks (a pids cgroup where the grader may create one, which holds
even for root; otherwise RLIMIT_NPROC at the user's current count plus ``MAX_TASKS``, which the
kernel does not enforce for root: run as root only inside a container, see assessments/README.md),
RLIMIT_CPU, RLIMIT_CORE = 0, and its own session. Every process it starts carries a random
token in its environment; afterwards each one still alive is killed, whether or not it changed
session, and the working directory is removed.
"""
from __future__ import annotations

import os
import resource
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

TOKEN_VARIABLE = "DLCOURSE_SANDBOX"
MAX_TASKS = 64
PIDS_CGROUP_ROOTS = (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup"))
OUTPUT_CAP = 16 * 2**20


@dataclass
class SandboxResult:
    """How the sandboxed process ended: ``timed_out``, ``returncode`` (negative: killed by that signal)
    and the tail of what it printed."""

    timed_out: bool
    returncode: int | None
    output_tail: str
    seconds: float


def _user_tasks() -> int:
    uid, count = os.getuid(), 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    count += len(os.listdir(f"/proc/{entry.name}/task"))
            except OSError:
                continue
    return count


def pids_cgroup(token: str, max_tasks: int = MAX_TASKS) -> Path | None:
    """A new pids cgroup (v1 or v2) holding at most ``max_tasks`` tasks, or None where none can be made."""
    for root in PIDS_CGROUP_ROOTS:
        controls = root / "cgroup.subtree_control"
        v1 = root.name == "pids" and (root / "cgroup.procs").exists()
        v2 = controls.exists() and "pids" in controls.read_text(errors="replace").split()
        if not (v1 or v2):
            continue
        folder = root / f"dlcourse-{token}"
        try:
            folder.mkdir()
            (folder / "pids.max").write_text(str(max_tasks))
            return folder
        except OSError:
            if folder.is_dir():
                _remove_cgroup(folder)
    return None


def _remove_cgroup(folder: Path) -> None:
    for _ in range(100):
        try:
            folder.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.02)


def processes_with_token(token: str | None) -> list[int]:
    """Ids of live processes whose environment carries ``token`` (started inside that sandbox);
    ``None``: of any sandbox."""
    needle = f"{TOKEN_VARIABLE}={token or ''}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                variables = f.read().split(b"\0")
                if needle in variables or (token is None and any(v.startswith(needle) for v in variables)):
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def kill_token(token: str, rounds: int = 200) -> None:
    """SIGKILL every process carrying ``token`` until none is left (a fork bomb keeps forking for a while)."""
    for _ in range(rounds):
        pids = processes_with_token(token)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.02)
    raise RuntimeError(f"sandbox {token}: processes {processes_with_token(token)} survive SIGKILL")


def remove_tree(path: Path) -> None:
    """Delete ``path`` even where the code inside made folders read-only; never follows symlinks."""
    def make_writable(function, name, _exc):
        parent = os.path.dirname(name)
        os.chmod(parent, stat.S_IRWXU)
        if os.path.isdir(name) and not os.path.islink(name):
            os.chmod(name, stat.S_IRWXU)
        function(name)

    if path.exists() or path.is_symlink():
        shutil.rmtree(path, onerror=make_writable)


def run(argv: list[str], workdir: Path, *, time_limit: float, memory_mb: int, file_mb: int = 64,
        extra_env: dict[str, str] | None = None) -> SandboxResult:
    """Run ``argv`` in ``workdir`` under the limits above; wait at most ``time_limit`` seconds."""
    token = secrets.token_hex(8)
    cgroup = pids_cgroup(token)
    max_tasks = _user_tasks() + MAX_TASKS
    memory, file_size = memory_mb * 2**20, file_mb * 2**20
    cpu = int(time_limit) + 5

    def limit():
        if cgroup is not None:
            (cgroup / "cgroup.procs").write_text(str(os.getpid()))
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))
        resource.setrlimit(resource.RLIMIT_NPROC, (max_tasks, max_tasks))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    env = {"PATH": "/usr/bin:/bin", "HOME": str(workdir), "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1",
           "MPLBACKEND": "Agg", TOKEN_VARIABLE: token, **(extra_env or {})}
    log_path = workdir / "output.log"
    start = time.monotonic()
    timed_out = False
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, preexec_fn=limit, start_new_session=True,
                                   close_fds=True)
        try:
            process.wait(timeout=time_limit)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            kill_token(token)
            process.wait()
            if cgroup is not None:
                _remove_cgroup(cgroup)
    seconds = time.monotonic() - start
    with open(log_path, "rb") as f:
        f.seek(max(0, log_path.stat().st_size - 2000))
        tail = f.read().decode("utf-8", "replace")
    return SandboxResult(timed_out, None if timed_out else process.returncode, tail, seconds)


def python_argv(script: str | os.PathLike, *args: str) -> list[str]:
    """``python -I script args...`` with this interpreter."""
    return [sys.executable, "-I", str(script), *args]
