"""The harness of the browser end-to-end test (tests/test_browser.py): a JupyterLab server on localhost
and the decisions around it, kept free of Playwright so that tests/test_browser_support.py can check
them on machines without Chromium.

- ``unavailable_reason`` / ``unavailable_action``: Chromium or Playwright missing → skip with a one-line
  reason, except under ``CI=true``, where it is a failure.
- ``wants_browser_tests``: the browser test runs only when ``-m`` names the ``browser`` marker.
- ``JupyterLab``: started on 127.0.0.1 with a free port and a random token, its config, settings,
  runtime and workspace folders in a temporary directory, kernels in quick mode; ``stop()`` shuts it
  down (REST, then the process group, then any kernel it left behind) and is safe to call twice.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Mapping

import pytest

from dlcourse.widgets import MINUS

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
)
CHROMIUM_NAMES = ("chromium", "chromium-browser")
APT_HINT = "sudo apt-get install -y chromium"
PIP_HINT = 'pip install -e ".[browser]"'
ARTIFACTS_ENV = "DLCOURSE_BROWSER_ARTIFACTS"
CHROMIUM_ENV = "DLCOURSE_CHROMIUM"
_TRUE = {"1", "true", "yes", "on"}
ARTIFACTS_KEY = pytest.StashKey[Path]()  # the screenshot folder of this run, printed in pytest's summary
SCREENSHOTS = ("00_dataset_grid.png", "04_guidance_explorer_before.png", "04_guidance_explorer_after.png",
               "06_latent_explorer.png", "06_prompt_explorer_before.png", "06_prompt_explorer_after.png",
               "00_failure.png", "04_failure.png", "06_failure.png")  # the only files the test writes (and removes)


def in_ci(env: Mapping[str, str]) -> bool:
    """True when the environment says CI (``CI=true``, as GitHub Actions, GitLab and most runners set it)."""
    return env.get("CI", "").strip().lower() in _TRUE


def find_chromium(env: Mapping[str, str], which: Callable[[str], str | None] = shutil.which) -> str | None:
    """Path of the Chromium executable: ``$DLCOURSE_CHROMIUM`` when set (None if it is not an executable
    file), else the first of ``chromium``, ``chromium-browser`` on the PATH, else None."""
    override = env.get(CHROMIUM_ENV, "").strip()
    if override:
        return override if os.path.isfile(override) and os.access(override, os.X_OK) else None
    for name in CHROMIUM_NAMES:
        path = which(name)
        if path:
            return path
    return None


def unavailable_reason(chromium: str | None, has_playwright: bool, env: Mapping[str, str]) -> str | None:
    """One line saying what is missing for the browser test and how to install it; None when nothing is."""
    missing = []
    if chromium is None:
        override = env.get(CHROMIUM_ENV, "").strip()
        where = f"${CHROMIUM_ENV}={override} is not an executable file" if override else \
            f"no {' or '.join(CHROMIUM_NAMES)} on the PATH"
        missing.append(f"Chromium not found ({where}; install it with: {APT_HINT})")
    if not has_playwright:
        missing.append(f"Playwright's Python client is not installed (install it with: {PIP_HINT})")
    return "; ".join(missing) or None


def unavailable_action(reason: str | None, env: Mapping[str, str]) -> tuple[str, str] | None:
    """What the test does about ``reason``: None (run), ("skip", reason) or, under CI, ("fail", message)."""
    if reason is None:
        return None
    if in_ci(env):
        return "fail", f"the browser test must run under CI=true, but {reason}"
    return "skip", reason


def wants_browser_tests(markexpr: str | None) -> bool:
    """True when a ``-m`` expression names the ``browser`` marker (``-m browser``, ``-m "browser or x"``);
    otherwise the browser tests are deselected, so the README's ``python -m pytest`` needs no Chromium."""
    return bool(markexpr) and re.search(r"\bbrowser\b", markexpr) is not None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listened on a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def artifacts_dir(env: Mapping[str, str], root: Path) -> Path:
    """Where screenshots go: ``$DLCOURSE_BROWSER_ARTIFACTS`` when set, else ``ROOT/test-artifacts/browser``."""
    chosen = env.get(ARTIFACTS_ENV, "").strip()
    return Path(chosen).expanduser().resolve() if chosen else root / "test-artifacts" / "browser"


def readout_value(text: str) -> float:
    """The number a slider readout shows; ipywidgets writes negatives with a Unicode minus (−2.0)."""
    return float(text.strip().replace(MINUS, "-"))


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def jupyter_command(python: str, port: int, token: str, root_dir: Path, as_root: bool) -> list[str]:
    """The JupyterLab command line: localhost only, no browser, a fixed port (no retries: the test
    knows it), ``--allow-root`` only when running as root."""
    command = [
        python, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root_dir}",
        "--ServerApp.open_browser=False", "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    if as_root:
        command.append("--allow-root")
    return command


# User settings that keep a fresh JupyterLab quiet and its DOM complete: no news or update check (the
# "would you like to receive official Jupyter news?" toast), no toasts at all, and every notebook cell
# attached to the page (the default windowing mode may leave off-screen cells out of the DOM).
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
        {"fetchNews": "false", "checkForUpdates": False, "doNotDisturbMode": True},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}


def server_env(base: Mapping[str, str], home: Path) -> dict[str, str]:
    """The server's (and so its kernels') environment: ``base`` with quick mode on, matplotlib's own
    notebook backend (no Agg from the test session: students see inline figures) and every Jupyter
    folder that it writes to under ``home``."""
    env = dict(base)
    env.pop("MPLBACKEND", None)
    env.update({
        "DLCOURSE_QUICK": "1",
        "JUPYTER_CONFIG_DIR": str(home / "config"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
        "IPYTHONDIR": str(home / "ipython"),
    })
    return env


def write_lab_settings(settings_dir: Path) -> None:
    for relative, values in LAB_SETTINGS.items():
        path = settings_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values, indent=1) + "\n")


class Deadline:
    """A total time budget: ``left()`` seconds remain; ``timeout(cap)`` is the smaller of both (≥ 1 s)."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self.end = clock() + seconds

    def left(self) -> float:
        return self.end - self._clock()

    def timeout(self, cap: float) -> float:
        return max(1.0, min(cap, self.left()))


class JupyterLab:
    """One JupyterLab server for the test session. ``start()``; ``url(path)``; ``api(path)``; ``stop()``."""

    def __init__(self, home: Path, root_dir: Path, env: Mapping[str, str], python: str = sys.executable):
        self.home, self.root_dir, self.python = Path(home), Path(root_dir), python
        self.port = free_port()
        self.token = secrets.token_hex(24)
        self.env = server_env(env, self.home)
        self.log_path = self.home / "jupyterlab.log"
        self.process: subprocess.Popen | None = None
        self._descendants: dict[int, object] = {}  # pid -> psutil.Process

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def url(self, path: str) -> str:
        separator = "&" if "?" in path else "?"
        return f"{self.base}{path}{separator}token={self.token}"

    def start(self, timeout: float) -> "JupyterLab":
        for sub in ("config", "runtime", "workspaces", "ipython"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        write_lab_settings(self.home / "settings")
        command = jupyter_command(self.python, self.port, self.token, self.root_dir, is_root())
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, cwd=self.root_dir, env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
        end = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with code {self.process.returncode} before answering; "
                                   f"its log:\n{self.log_tail()}")
            try:
                self.api("api/status", timeout=2)
                return self
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > end:
                raise TimeoutError(f"JupyterLab did not answer on port {self.port} within {timeout:.0f} s; "
                                   f"its log:\n{self.log_tail()}")
            time.sleep(0.25)

    def api(self, path: str, method: str = "GET", timeout: float = 10):
        """JSON from the server's REST API (None for an empty answer)."""
        request = urllib.request.Request(self.base + path, method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
        return json.loads(body) if body.strip() else None

    def kernel_states(self) -> list[str]:
        return [kernel["execution_state"] for kernel in self.api("api/kernels")]

    def shutdown_kernels(self) -> None:
        for kernel in self.api("api/kernels"):
            self.api(f"api/kernels/{kernel['id']}", method="DELETE", timeout=20)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError as error:
            return f"(no log: {error})"

    def _remember_descendants(self) -> None:
        """Kernels run in their own sessions (jupyter_client starts them so), so killing the server's
        process group would not reach them: note their ids to end them one by one if needed."""
        if self.process is None:
            return
        try:
            import psutil
        except ImportError:
            return
        try:
            for child in psutil.Process(self.process.pid).children(recursive=True):
                self._descendants.setdefault(child.pid, child)
        except psutil.Error:
            pass

    def stop(self, timeout: float = 15) -> None:
        """Shut the server down: ask it (it ends its kernels), then SIGTERM and SIGKILL its process group,
        then SIGKILL any kernel it started that is still alive. Safe to call more than once."""
        process = self.process
        if process is None:
            return
        self._remember_descendants()
        if process.poll() is None:
            try:
                self.api("api/shutdown", method="POST", timeout=5)
            except (urllib.error.URLError, OSError):
                pass
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
                    try:
                        os.killpg(process.pid, sig)
                    except ProcessLookupError:
                        break
                    try:
                        process.wait(timeout=wait)
                        break
                    except subprocess.TimeoutExpired:
                        continue
        for child in self._descendants.values():
            try:
                if child.is_running():  # psutil compares start times, so a reused pid is left alone
                    child.kill()
            except Exception:  # psutil.NoSuchProcess / AccessDenied: nothing left to end
                pass
        self.process = None
