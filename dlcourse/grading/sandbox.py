"""Run untrusted code in a fresh interpreter with limits, and leave nothing behind.

Isolated (the default): the process runs in bubblewrap (``bwrap``, Debian ``bubblewrap``, what
Flatpak uses) in its own PID, network, mount, IPC and UTS namespaces and its own session, with an
empty environment. It sees only the Python installation (read-only, this package hidden) and its
scratch folder, mounted at ``/sandbox``: never the class folder, the output folder, the settings,
the reference model or the grader's code. Run as root, the grader drops the process to a sandbox
uid of its own (``setpriv``); run as another user, bwrap maps it to ``nobody`` in a user namespace.
When its first process ends, the kernel kills everything left in its PID namespace. Without
bwrap, :func:`run` fails closed (:class:`SandboxUnavailable`) unless the caller passes
``isolated=False`` (``dlcourse grade --unsafe-no-sandbox``), which gives only the limits below and
a sweep of the processes that carry a random token in their environment.

Both add: no standard input, RLIMIT_AS (memory), RLIMIT_FSIZE (file size), RLIMIT_CPU,
RLIMIT_CORE = 0, and at most ``MAX_TASKS`` tasks (a pids cgroup where the grader may create one;
otherwise RLIMIT_NPROC, which the kernel does not enforce for root).
"""
from __future__ import annotations

import contextlib
import functools
import os
import resource
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

TOKEN_VARIABLE = "DLCOURSE_SANDBOX"
MAX_TASKS = 64
PIDS_CGROUP_ROOTS = (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup"))
SCRATCH = "/sandbox"
UID_BASE = 100_000
BWRAP, SETPRIV = shutil.which("bwrap"), shutil.which("setpriv")
PACKAGE_DIR = str(Path(__file__).resolve().parents[1])
_UID_LOCK = threading.Lock()
_UIDS_IN_USE: set[int] = set()


class SandboxUnavailable(RuntimeError):
    """No isolating sandbox here, and running without one was not asked for."""


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


def _read_only_roots() -> list[str]:
    """The folders a sandboxed interpreter needs: the system, this Python, and the numpy and torch it imports."""
    import numpy
    import torch

    wanted = {"/usr", sys.prefix, sys.base_prefix, os.path.dirname(sys.executable),
              str(Path(numpy.__file__).parents[1]), str(Path(torch.__file__).parents[1])}
    paths = sorted({os.path.realpath(p) for p in wanted} | {os.path.abspath(p) for p in wanted})
    return [p for p in paths if not any(p != q and p.startswith(q.rstrip("/") + "/") for q in paths)]


@functools.lru_cache(maxsize=1)
def unavailable_reason() -> str | None:
    """None where the isolating sandbox works on this machine, else what is missing and how to get it."""
    if BWRAP is None:
        return "bubblewrap (bwrap) is not installed (apt-get install bubblewrap)"
    if os.getuid() == 0 and SETPRIV is None:
        return "setpriv (util-linux) is not installed; the grader runs as root and needs it to drop to a sandbox uid"
    with tempfile.TemporaryDirectory(prefix="dlcourse-probe-") as temp:
        _give_scratch(Path(temp), UID_BASE)
        argv = _isolated_argv([sys.executable, "-I", "-c", "import numpy, torch"], Path(temp), UID_BASE,
                              _environment(SCRATCH))
        try:
            probe = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"bwrap could not start a sandbox here ({error})"
    if probe.returncode != 0:
        detail = probe.stderr.decode("utf-8", "replace").strip()[-300:]
        return (f"bwrap could not start a sandbox here ({detail}; a container needs user namespaces allowed, "
                "or run the grader as root inside it)")
    return None


def _environment(scratch: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": scratch, "TMPDIR": scratch, "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1", "MPLBACKEND": "Agg"}


def _give_scratch(scratch: Path, uid: int) -> None:
    """Make ``scratch`` the sandbox uid's (run as root) and reachable by it."""
    os.chmod(scratch, 0o755)
    if os.getuid() == 0:
        os.chown(scratch, uid, uid)


def _isolated_argv(argv: list[str], scratch: Path, uid: int, env: dict[str, str]) -> list[str]:
    command = [BWRAP, "--die-with-parent", "--new-session", "--clearenv", "--unshare-pid", "--unshare-net",
               "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    if os.getuid() != 0:  # bwrap maps this user to nobody in a user namespace of its own
        command += ["--unshare-user", "--uid", "65534", "--gid", "65534", "--disable-userns"]
    for name in ("/bin", "/lib", "/lib64", "/sbin"):
        if os.path.islink(name):
            command += ["--symlink", os.readlink(name), name]
        elif os.path.isdir(name):
            command += ["--ro-bind", name, name]
    roots = _read_only_roots()
    parents = sorted({str(parent) for root in roots for parent in Path(root).parents if str(parent) != "/"})
    for parent in parents:  # bwrap would make them 0700, closed to the sandbox uid
        command += ["--perms", "0755", "--dir", parent]
    for root in roots:
        command += ["--ro-bind", root, root]
    if any(PACKAGE_DIR.startswith(root.rstrip("/") + "/") for root in roots):
        command += ["--tmpfs", PACKAGE_DIR]  # an installed copy of this package stays out of reach
    command += ["--proc", "/proc", "--dev", "/dev", "--bind", str(scratch), SCRATCH, "--chdir", SCRATCH]
    for key, value in env.items():
        command += ["--setenv", key, value]
    if os.getuid() == 0:
        command += [SETPRIV, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs",
                    "--inh-caps=-all", "--bounding-set=-all"]
    return command + argv


@contextlib.contextmanager
def _sandbox_uid():
    """A uid no other sandbox of this grader uses at the same time."""
    with _UID_LOCK:
        slot = next(i for i in range(100) if i not in _UIDS_IN_USE)
        _UIDS_IN_USE.add(slot)
    try:
        yield UID_BASE + (os.getpid() % 9000) * 100 + slot
    finally:
        with _UID_LOCK:
            _UIDS_IN_USE.discard(slot)


def processes_of_uid(uid: int) -> list[int]:
    """Ids of live processes whose real uid is ``uid``."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _wait_empty(uid: int, cgroup: Path | None) -> None:
    """Wait until the sandbox's namespace is gone (the kernel kills it when its first process dies)."""
    for _ in range(500):
        if os.getuid() == 0:
            busy = processes_of_uid(uid)
        else:
            busy = cgroup is not None and (cgroup / "cgroup.procs").read_text().split()
        if not busy:
            return
        time.sleep(0.02)
    raise RuntimeError(f"sandbox uid {uid}: processes survive the end of their namespace")


def run_python(script: str, scratch: Path, *, time_limit: float, memory_mb: int, file_mb: int = 64,
               isolated: bool = True) -> SandboxResult:
    """Run ``python -I SCRATCH/script SCRATCH`` under the limits above; wait at most ``time_limit`` seconds.

    ``scratch`` is the only folder the code may write (it is made the sandbox uid's); isolated, the
    script sees it as ``/sandbox``. Raises SandboxUnavailable where isolation is asked for but missing."""
    if isolated and unavailable_reason() is not None:
        raise SandboxUnavailable(f"no sandbox: {unavailable_reason()}; grade only inside a container "
                                 "with --unsafe-no-sandbox")
    token = secrets.token_hex(8)
    cgroup = pids_cgroup(token)
    own_uid = isolated and os.getuid() == 0  # the sandbox uid has no other processes to count
    max_tasks = (0 if own_uid else _user_tasks()) + MAX_TASKS
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

    inside = SCRATCH if isolated else str(scratch)
    env = _environment(inside)
    start = time.monotonic()
    timed_out = False
    with _sandbox_uid() as uid, tempfile.TemporaryFile() as log:
        argv = [sys.executable, "-I", f"{inside}/{script}", inside]
        if isolated:
            _give_scratch(scratch, uid)
            argv = _isolated_argv(argv, scratch, uid, env)
        else:
            env[TOKEN_VARIABLE] = token
        process = subprocess.Popen(argv, cwd=scratch, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, preexec_fn=limit, start_new_session=True,
                                   close_fds=True)
        try:
            process.wait(timeout=time_limit)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            process.kill()
            process.wait()
            if isolated:
                _wait_empty(uid, cgroup)
            else:
                kill_token(token)
            if cgroup is not None:
                _remove_cgroup(cgroup)
        seconds = time.monotonic() - start
        log.seek(max(0, log.seek(0, os.SEEK_END) - 2000))
        tail = log.read().decode("utf-8", "replace")
    return SandboxResult(timed_out, None if timed_out else process.returncode, tail, seconds)
