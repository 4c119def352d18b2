"""The hostile corpus, sandbox wall: exercise code written as a hostile student would, run straight in
the sandbox (past the syntax-tree check, as if a student had found a way around it). Each case
asserts the status of the function part and that nothing outside the scratch folder changed: the
victim files (world-writable, so only the sandbox protects them), the package source, the
assessment's settings and reference model, and no process is left. ``-m hostile`` runs the whole
corpus; the default run takes the cases marked ``FAST``.
"""
from __future__ import annotations

import hashlib
import os
import socket
import tempfile
from pathlib import Path

import pytest

from dlcourse.grading import exercises, load_settings, sandbox

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = load_settings(ROOT / "assessments" / "grading-cpu.json")
MASTER = exercises.prepare(exercises.read_notebook(ROOT / "assessments" / "assessment.solution.ipynb"))
Q_SAMPLE = "ab = alpha_bars[t].reshape(-1, 1, 1, 1).to(x0.dtype)\nreturn ab.sqrt() * x0 + (1 - ab).sqrt() * noise"
ARGS = {"q_sample": "x0, t, noise, alpha_bars", "drop_context": "c, drop_prob, generator",
        "guided_eps": "model, x_t, t, c, w"}
WATCHED = (ROOT / "dlcourse", ROOT / "assessments" / "reference", ROOT / "assessments" / "grading.json",
           ROOT / "assessments" / "grading-cpu.json")


def _module(name: str, body: str) -> str:
    lines = "\n".join("    " + line for line in body.split("\n"))
    return (exercises._PREAMBLE + "import os, sys, time, signal, shutil, socket, subprocess, threading, ctypes\n\n"
            f"def {name}({ARGS[name]}):\n{lines}\n")


def _attack(code: str) -> str:
    """``code`` (errors swallowed), then the right answer: the attack may not change the grade."""
    return "try:\n" + "\n".join("    " + line for line in code.split("\n")) + "\nexcept Exception:\n    pass\n" + Q_SAMPLE


# (id, exercise, body, expected status); bodies name {victims}, {package}, {assessments}, {grader}, {port}
CASES = [
    ("write_classmate_model", "q_sample", _attack("open('{victims}/class/bob/model.safetensors', 'wb').write(b'x')"), "ok"),
    ("delete_classmate_model", "q_sample", _attack("os.remove('{victims}/class/bob/model.safetensors')"), "ok"),
    ("copy_reference_to_friend", "q_sample", _attack(
        "shutil.copy('{assessments}/reference/model.safetensors', '{victims}/class/carol/model.safetensors')"), "ok"),
    ("append_gradebook", "q_sample", _attack("open('{victims}/out/gradebook.csv', 'a').write('eve,ok,50,50,100')"), "ok"),
    ("rewrite_earlier_report", "q_sample", _attack("open('{victims}/out/reports/alice.html', 'w').write('0/100')"), "ok"),
    ("plant_later_report", "q_sample", _attack("open('{victims}/out/reports/zed.html', 'w').write('x')"), "ok"),
    ("rewrite_child_source", "q_sample", _attack("open('{package}/grading/_child.py', 'a').write('# pwned')"), "ok"),
    ("rewrite_settings", "q_sample", _attack("open('{assessments}/grading.json', 'w').write('{}')"), "ok"),
    ("write_host_tmp", "q_sample", _attack("open('/tmp/dlcourse-hostile-pwned', 'w').write('x')"), "ok"),
    ("write_dev_shm", "q_sample", _attack("open('/dev/shm/dlcourse-hostile-pwned', 'w').write('x')"), "ok"),
    ("write_root", "q_sample", _attack("open('/pwned', 'w').write('x')"), "ok"),
    ("write_scratch_parent", "q_sample", _attack("open('/sandbox/../pwned', 'w').write('x')"), "ok"),
    ("chattr_immutable", "q_sample", _attack("open('pinned', 'w').write('x')\n"
                                             "subprocess.run(['chattr', '+i', 'pinned', '.'], capture_output=True)"), "ok"),
    ("read_only_tree", "q_sample", _attack("os.makedirs('a/b/c')\nopen('a/b/c/f', 'w').write('x')\n"
                                           "os.chmod('a/b/c', 0)\nos.chmod('a/b', 0)\nos.chmod('a', 0)"), "ok"),
    ("kill_parent", "q_sample", _attack("os.kill(os.getppid(), signal.SIGKILL)"), "ok"),
    ("stop_parent", "q_sample", _attack("os.kill(os.getppid(), signal.SIGSTOP)"), "ok"),
    ("kill_grader_by_pid", "q_sample", _attack("os.kill({grader}, signal.SIGKILL)"), "ok"),
    ("stop_grader_by_pid", "q_sample", _attack("os.kill({grader}, signal.SIGSTOP)"), "ok"),
    ("kill_everyone", "q_sample", _attack("os.kill(-1, signal.SIGKILL)"), "ok"),
    ("kill_own_group", "q_sample", "os.killpg(0, signal.SIGKILL)", "crashed"),
    ("escape_sweep", "q_sample", _attack(
        "if os.fork() == 0:\n    os.setsid()\n    os.environ.clear()\n    time.sleep(3)\n"
        "    open('{victims}/out/gradebook.csv', 'w').write('forged')\n    os._exit(0)"), "ok"),
    ("daemon_waits_for_grader", "q_sample", _attack(
        "if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        "        while os.path.exists('/proc/{grader}'):\n            time.sleep(0.1)\n"
        "        open('{victims}/out/gradebook.csv', 'w').write('forged')\n    os._exit(0)"), "ok"),
    ("exec_shell", "q_sample", "os.execv('/bin/sh', ['sh', '-c', 'echo x > {victims}/class/bob/notes.txt'])", "crashed"),
    ("connect_to_host", "q_sample", _attack("socket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'x')"), "ok"),
    ("see_other_processes", "q_sample", "pids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
                                        "assert len(pids) < 5, pids\n" + Q_SAMPLE, "ok"),
    ("become_root", "q_sample", _attack("os.setuid(0)\nopen('{victims}/class/bob/model.safetensors', 'w')"), "ok"),
    ("read_settings", "q_sample", "raise ValueError(open('{assessments}/grading.json').read())", "failed"),
    ("read_reference_model", "q_sample", "open('{assessments}/reference/model.safetensors', 'rb').read()\n" + Q_SAMPLE,
     "failed"),
    ("import_package", "q_sample", "from dlcourse.schedules import Schedule\nreturn Schedule(alpha_bars).q_sample(x0, t, noise)",
     "failed"),
    ("import_package_by_path", "q_sample", "sys.path.insert(0, '{root}')\nimport dlcourse\n" + Q_SAMPLE, "failed"),
    ("read_package_source", "q_sample", "exec(open('{package}/schedules.py').read())\n" + Q_SAMPLE, "failed"),
    ("leak_generator_seed", "drop_context", "raise ValueError(f'seed {generator.initial_seed()}')", "failed"),
    ("leak_hidden_inputs", "q_sample", "raise ValueError(repr(x0.flatten()[:4].tolist()) + repr(t.tolist()))", "failed"),
    ("reset_call_counter", "guided_eps",
     "n = x_t.shape[0]\ne_c = model(x_t, t, c, x_t.new_ones(n))\ne_u = model(x_t, t, torch.zeros_like(c), x_t.new_zeros(n))\n"
     "model.batches[:] = [2 * n]\nreturn (1 + w) * e_c - w * e_u", "failed"),
    ("fake_batch_by_gc", "guided_eps",
     "n = x_t.shape[0]\ne_c = model(x_t, t, c, x_t.new_ones(n))\ne_u = model(x_t, t, torch.zeros_like(c), x_t.new_zeros(n))\n"
     "import gc\nfor o in gc.get_objects():\n    if isinstance(o, list) and o == [n, n]:\n        o[:] = [2 * n]\n"
     "return (1 + w) * e_c - w * e_u", "failed"),
    ("forge_done_and_exit", "q_sample", "open('out/done.json', 'w').write('{\"done\": true}')\nos._exit(0)", "failed"),
    ("forge_fatal_reason", "q_sample", "open('out/fatal.json', 'w').write('{\"reason\": \"<b>=HYPERLINK(1)</b>\"}')\n"
                                       "os._exit(3)", "crashed"),
    ("symlink_result_to_host", "guided_eps", "os.remove('out/q_sample.0.out.npy')\n"
                                             "os.symlink('{victims}/planted.npy', 'out/q_sample.0.out.npy')", "failed"),
    ("fifo_result", "guided_eps", "os.remove('out/q_sample.0.json')\nos.mkfifo('out/q_sample.0.json')", "failed"),
    ("huge_result_record", "guided_eps", "open('out/q_sample.0.json', 'w').write('[' + '0,' * 30_000_000 + '0]')", "failed"),
    ("deep_result_record", "guided_eps", "open('out/q_sample.0.json', 'w').write('[' * 60_000)", "failed"),
    ("huge_result_array", "guided_eps", "np.save('out/q_sample.0.out.npy', np.zeros(6_000_000))", "failed"),
    ("object_result_array", "guided_eps", "np.save('out/q_sample.0.out.npy', np.array([{}], dtype=object), allow_pickle=True)",
     "failed"),
    ("memory_bytearray", "q_sample", "block = bytearray(64 * 2**30)\nreturn x0", "crashed"),
    ("memory_torch", "q_sample", "return torch.empty(2**36, dtype=torch.float64)", "crashed"),
    ("memory_numpy", "q_sample", "return torch.from_numpy(np.ones(2**36))", "crashed"),
    ("infinite_loop", "q_sample", "while True:\n    pass", "timeout"),
    ("sleep_forever", "q_sample", "time.sleep(10**6)", "timeout"),
    ("ignore_sigterm", "q_sample", "signal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True:\n    pass", "timeout"),
    ("thread_keeps_process_alive", "q_sample", "threading.Thread(target=time.sleep, args=(10**6,)).start()\n" + Q_SAMPLE,
     "timeout"),
    ("fork_bomb", "q_sample", "while True:\n    os.fork()", "failed"),
    # Python ignores SIGXFSZ: past RLIMIT_FSIZE a write raises OSError (File too large) in the code
    ("stdout_flood", "q_sample", "sys.stdout.write('x' * 2**27)\nsys.stdout.flush()\n" + Q_SAMPLE, "failed"),
    ("big_scratch_file", "q_sample", "open('big', 'wb').write(b'x' * 2**27)\n" + Q_SAMPLE, "failed"),
    ("abort", "q_sample", "os.abort()", "crashed"),
    ("segfault", "q_sample", "ctypes.string_at(0)", "crashed"),
    ("raise_system_exit", "q_sample", "raise SystemExit(0)", "crashed"),
    ("raise_keyboard_interrupt", "q_sample", "raise KeyboardInterrupt", "crashed"),
    ("unbounded_recursion", "q_sample", "def f(n):\n    return f(n + 1)\nreturn f(0)", "failed"),
    ("close_output_streams", "q_sample", _attack("os.close(1)\nos.close(2)"), "ok"),
    ("patch_comparisons", "q_sample", "torch.allclose = lambda *a, **k: True\nnp.allclose = lambda *a, **k: True\n"
                                      "torch.Tensor.__eq__ = lambda *a: True\nreturn x0", "failed"),
    ("tensor_subclass", "q_sample", "class T(torch.Tensor):\n    pass\nreturn (x0 * 0).as_subclass(T)", "failed"),
    ("array_lookalike", "q_sample", "class A:\n    def __array__(self, *a, **k):\n        return np.zeros((6, 3, 5, 7))\n"
                                    "return A()", "failed"),
    ("html_in_error", "q_sample", "raise ValueError('<script>alert(1)</script> =HYPERLINK(\"x\")')", "failed"),
]
FAST = {"write_classmate_model", "rewrite_child_source", "read_settings", "kill_parent", "stop_grader_by_pid",
        "escape_sweep", "import_package", "reset_call_counter", "fifo_result", "memory_bytearray", "infinite_loop",
        "leak_hidden_inputs"}
# every message the report may show must be free of these (the hidden seed and the first hidden inputs)
_INPUTS = exercises.hidden_inputs(SETTINGS.hidden_seed)
SECRETS = (str(SETTINGS.hidden_seed), str(exercises._derived_seed(SETTINGS.hidden_seed)),
           repr(_INPUTS["q_sample"]["x0"].flatten()[0].item())[:8])


# the rest of the corpus runs only when -m names the marker (python -m pytest -m hostile tests/test_grading_hostile.py)
HOSTILE_ONLY = (pytest.mark.hostile, pytest.mark.skipif("'hostile' not in (config.getoption('markexpr') or '')",
                                                        reason="the whole hostile corpus runs with -m hostile"))


def _params():
    for case in CASES:
        yield pytest.param(*case, id=case[0], marks=(pytest.mark.hostile,) if case[0] in FAST else HOSTILE_ONLY)


def _state(*roots: Path) -> dict[str, tuple]:
    """Every file, folder and link under ``roots`` (but the scratch folders' temp/): its mode and content
    hash (links not followed)."""
    state = {str(root): (root.lstat().st_mode, hashlib.sha256(root.read_bytes()).hexdigest(), "")
             for root in roots if root.is_file()}
    for root in roots:
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if Path(folder, d) != root / "temp" and d != "__pycache__"]
            for name in dirs + files:
                path = Path(folder) / name
                info = path.lstat()
                digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() and not path.is_symlink() else ""
                state[str(path)] = (info.st_mode, digest, os.readlink(path) if path.is_symlink() else "")
    return state


def _host_markers() -> list[Path]:
    return [p for p in (Path("/tmp/dlcourse-hostile-pwned"), Path("/dev/shm/dlcourse-hostile-pwned"), Path("/pwned"))
            if p.exists()]


def _sandbox_uid_processes() -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        try:
            if entry.name.isdigit() and entry.stat().st_uid >= sandbox.UID_BASE:
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.fixture(scope="module")
def arena():
    """World-writable victims (a classmate's folder, a gradebook, reports) and a listening socket."""
    if sandbox.unavailable_reason() is not None:
        pytest.fail(f"the sandbox is unavailable: {sandbox.unavailable_reason()}")
    victims = Path(tempfile.mkdtemp(prefix="dlcourse-victims-"))
    for relative, content in (("class/bob/model.safetensors", b"bob's model"), ("class/carol/answers.json", b"{}"),
                              ("out/gradebook.csv", b"id,status\nalice,ok\n"), ("out/reports/alice.html", b"<p>alice</p>"),
                              ("planted.npy", b"not an array")):
        path = victims / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    for folder, dirs, files in os.walk(victims):
        os.chmod(folder, 0o777)
        for name in files:
            os.chmod(Path(folder) / name, 0o666)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    with pytest.MonkeyPatch.context() as patch:  # scratch folders go here, apart from other runs on this machine
        patch.setattr(tempfile, "tempdir", str(victims / "temp"))
        (victims / "temp").mkdir()
        yield {"victims": victims, "listener": listener, "before": _state(victims, *WATCHED)}
    listener.close()
    sandbox.remove_tree(victims)


def _fill(body: str, arena: dict) -> str:
    values = {"victims": arena["victims"], "package": ROOT / "dlcourse", "assessments": ROOT / "assessments",
              "grader": os.getpid(), "port": arena["listener"].getsockname()[1], "root": ROOT}
    for key, value in values.items():
        body = body.replace("{" + key + "}", str(value))
    return body


def _grade(modules: dict, time_limit: float, isolated: bool = True) -> exercises.FunctionPart:
    return exercises.grade_functions(modules, seed=SETTINGS.hidden_seed, time_limit=time_limit, memory_mb=4096,
                                     isolated=isolated)


@pytest.mark.parametrize("case, exercise, body, expected", _params())
def test_hostile_code_is_contained(arena, case, exercise, body, expected):
    modules = {**MASTER, exercise: _module(exercise, _fill(body, arena))}
    part = _grade(modules, time_limit=10 if expected == "timeout" else 90)
    messages = " ".join([part.reason] + [r.message for r in part.results])
    assert part.status == expected, (part.status, messages[:500])
    assert _state(arena["victims"], *WATCHED) == arena["before"]
    assert _host_markers() == [] and _sandbox_uid_processes() == []
    assert list((arena["victims"] / "temp").iterdir()) == []  # the scratch folder is gone
    with pytest.raises(BlockingIOError):
        arena["listener"].accept()
    assert not any(secret in messages for secret in SECRETS), messages[:500]
    if expected == "ok":
        assert part.score == 1
    if case == "forge_fatal_reason":
        assert "HYPERLINK" not in part.reason


def test_attacks_are_real_without_the_sandbox(tmp_path):
    """Control: the same write, run with isolated=False, does change the victim (the corpus tests something)."""
    victim = tmp_path / "victim.txt"
    victim.write_text("before")
    modules = {**MASTER, "q_sample": _module("q_sample", _attack(f"open('{victim}', 'w').write('after')"))}
    part = _grade(modules, time_limit=90, isolated=False)
    assert part.status == "ok" and victim.read_text() == "after"


def test_run_python_fails_closed_without_a_sandbox(tmp_path, monkeypatch):
    monkeypatch.setattr(sandbox, "unavailable_reason", lambda: "bubblewrap (bwrap) is not installed")
    with pytest.raises(sandbox.SandboxUnavailable, match="bwrap"):
        sandbox.run_python("x.py", tmp_path, time_limit=5, memory_mb=256)


def test_corpus_is_large_and_its_ids_unique():
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES) and FAST <= {c[0] for c in CASES}
