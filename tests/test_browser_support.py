"""The browser test's decisions and harness without a browser (tests/browser_support.py): when it is
skipped and when it fails, how JupyterLab is started and stopped, and that the README's
``python -m pytest`` leaves it out. Runs everywhere, Chromium or not."""
from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from browser_support import (APT_HINT, LAB_SETTINGS, PIP_HINT, Deadline, JupyterLab, artifacts_dir, find_chromium,
                             free_port, in_ci, jupyter_command, readout_value, server_env, unavailable_action,
                             unavailable_reason, wants_browser_tests, write_lab_settings)

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("value, expected", [("true", True), ("True", True), ("1", True), ("yes", True),
                                             ("", False), ("false", False), ("0", False)])
def test_in_ci_reads_the_ci_variable(value, expected):
    assert in_ci({"CI": value}) is expected
    assert in_ci({}) is False


def test_find_chromium_takes_the_first_name_on_the_path():
    found = {"chromium-browser": "/opt/bin/chromium-browser"}
    assert find_chromium({}, which=found.get) == "/opt/bin/chromium-browser"
    found["chromium"] = "/usr/bin/chromium"
    assert find_chromium({}, which=found.get) == "/usr/bin/chromium"
    assert find_chromium({}, which=lambda name: None) is None


def test_find_chromium_override_must_be_an_executable_file(tmp_path):
    browser = tmp_path / "my-chromium"
    browser.write_text("#!/bin/sh\n")
    on_path = {"chromium": "/usr/bin/chromium"}.get
    assert find_chromium({"DLCOURSE_CHROMIUM": str(browser)}, which=on_path) is None  # not executable
    browser.chmod(browser.stat().st_mode | stat.S_IXUSR)
    assert find_chromium({"DLCOURSE_CHROMIUM": str(browser)}, which=on_path) == str(browser)
    assert find_chromium({"DLCOURSE_CHROMIUM": str(tmp_path / "absent")}, which=on_path) is None


def test_unavailable_reason_names_what_is_missing_and_how_to_install_it_on_one_line():
    assert unavailable_reason("/usr/bin/chromium", True, {}) is None
    no_browser = unavailable_reason(None, True, {})
    assert "Chromium" in no_browser and APT_HINT in no_browser and "Playwright" not in no_browser
    no_client = unavailable_reason("/usr/bin/chromium", False, {})
    assert "Playwright" in no_client and PIP_HINT in no_client and "Chromium" not in no_client
    both = unavailable_reason(None, False, {"DLCOURSE_CHROMIUM": "/nowhere/chrome"})
    assert "Chromium" in both and "Playwright" in both and "/nowhere/chrome" in both
    assert "\n" not in both


def test_missing_browser_is_a_skip_locally_and_a_failure_under_ci():
    reason = unavailable_reason(None, True, {})
    assert unavailable_action(reason, {}) == ("skip", reason)
    assert unavailable_action(reason, {"CI": "false"}) == ("skip", reason)
    kind, message = unavailable_action(reason, {"CI": "true"})
    assert kind == "fail" and reason in message and "CI=true" in message
    assert unavailable_action(None, {"CI": "true"}) is None
    assert unavailable_action(None, {}) is None


@pytest.mark.parametrize("markexpr, expected", [
    ("", False), (None, False), ("fullsize", False), ("not fullsize", False), ("browsers", False),
    ("browser", True), ("browser or fullsize", True), ("not browser", True),  # pytest's -m then decides
])
def test_browser_tests_run_only_when_the_marker_expression_names_them(markexpr, expected):
    assert wants_browser_tests(markexpr) is expected


def test_readme_test_command_deselects_the_browser_tests():
    """``python -m pytest`` (the README's command) leaves them out; ``-m browser`` selects them (see above)."""
    result = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "tests/test_browser.py"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 5, result.stdout + result.stderr  # 5: nothing left to run
    # the three tests of notebooks 00, 04 and 06
    assert "3 deselected" in result.stdout and "test_browser.py::" not in result.stdout


def test_free_port_is_a_port_nothing_listens_on():
    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))  # free right after: binding does not fail


def test_artifacts_dir_default_and_override(tmp_path):
    assert artifacts_dir({}, tmp_path) == tmp_path / "test-artifacts" / "browser"
    assert artifacts_dir({"DLCOURSE_BROWSER_ARTIFACTS": str(tmp_path / "shots")}, Path("/x")) == tmp_path / "shots"


def test_readout_value_reads_the_unicode_minus_of_a_slider_readout():
    assert readout_value(" \u22122.0 ") == -2.0
    assert readout_value("-1.5") == -1.5 and readout_value("2.0") == 2.0


def test_jupyter_command_binds_localhost_with_the_token_and_allows_root_only_as_root(tmp_path):
    command = jupyter_command("/venv/bin/python", 8765, "secret", tmp_path, as_root=False)
    assert command[:3] == ["/venv/bin/python", "-m", "jupyterlab"]
    for option in ("--no-browser", "--ServerApp.ip=127.0.0.1", "--ServerApp.port=8765",
                   "--ServerApp.port_retries=0", "--IdentityProvider.token=secret", f"--ServerApp.root_dir={tmp_path}",
                   "--LabApp.news_url=None"):
        assert option in command
    assert "--allow-root" not in command
    assert "--allow-root" in jupyter_command("/venv/bin/python", 8765, "secret", tmp_path, as_root=True)


def test_server_env_turns_quick_mode_on_and_keeps_jupyter_files_in_the_temp_home(tmp_path):
    base = {"DLCOURSE_QUICK": "0", "MPLBACKEND": "Agg", "PATH": "/bin", "PYTHONPATH": "/repo"}
    env = server_env(base, tmp_path)
    assert env["DLCOURSE_QUICK"] == "1" and "MPLBACKEND" not in env
    assert env["PATH"] == "/bin" and env["PYTHONPATH"] == "/repo"
    for key in ("JUPYTER_CONFIG_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTERLAB_SETTINGS_DIR", "JUPYTERLAB_WORKSPACES_DIR",
                "IPYTHONDIR"):
        assert Path(env[key]).is_relative_to(tmp_path)
    assert base["DLCOURSE_QUICK"] == "0" and base["MPLBACKEND"] == "Agg"  # the caller's mapping is untouched


def test_lab_settings_turn_news_and_toasts_off(tmp_path):
    write_lab_settings(tmp_path)
    notification = json.loads((tmp_path / "@jupyterlab/apputils-extension/notification.jupyterlab-settings")
                              .read_text())
    assert notification["fetchNews"] == "false" and notification["checkForUpdates"] is False
    assert all((tmp_path / name).is_file() for name in LAB_SETTINGS)


def test_deadline_caps_each_wait_by_what_is_left():
    now = [100.0]
    deadline = Deadline(60, clock=lambda: now[0])
    assert deadline.timeout(45) == 45 and deadline.left() == 60
    now[0] = 130.0
    assert deadline.timeout(45) == 30
    now[0] = 200.0
    assert deadline.left() < 0 and deadline.timeout(45) == 1.0  # never 0: Playwright reads 0 as "no timeout"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_stop_ends_the_process_group_and_children_in_their_own_session(tmp_path):
    """A server that ignores the shutdown request: stop() kills its group, and a child that started its own
    session (as jupyter_client starts kernels) by its remembered id."""
    psutil = pytest.importorskip("psutil")
    lab = JupyterLab(tmp_path / "home", tmp_path, os.environ)
    lab.process = subprocess.Popen(["bash", "-c", "setsid sleep 60 & sleep 60 & wait"], start_new_session=True)
    end, children, sessions = time.monotonic() + 10, [], set()
    while (len(children) < 2 or len(sessions) < 2) and time.monotonic() < end:
        time.sleep(0.05)
        children = [p.pid for p in psutil.Process(lab.process.pid).children()]
        sessions = {os.getsid(pid) for pid in children if _alive(pid)}
    assert len(children) == 2 and len(sessions) == 2  # one child left the server's session
    server = lab.process
    try:
        lab.stop(timeout=0.5)
        assert server.poll() is not None
        end = time.monotonic() + 5
        while any(_alive(pid) for pid in children) and time.monotonic() < end:
            time.sleep(0.05)
        assert not any(_alive(pid) for pid in children)
        assert lab.process is None
        lab.stop()  # a second call does nothing
    finally:
        for pid in [server.pid, *children]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
