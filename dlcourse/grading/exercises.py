"""The function part: find the exercise cells, run them on hidden inputs in the sandbox, compare.

Each exercise cell of the assessment carries the tag ``exercise:NAME`` and starts with the line
``# exercise: NAME``; either finds it, wherever the student moved it. Only its imports and
function definitions are taken (top-level statements never run), and only after a check of the
syntax tree: imports of ``ALLOWED_IMPORTS`` only, none of ``FORBIDDEN_NAMES``, no dunder names or
attributes. The sandbox cannot reach the package anyway; the check says why in the report. Outputs
come back as ``.npy`` and are compared here: dtype kind and shape first, then values with
tolerances. A student object is never called or compared in the grader process, and everything
read back is size-capped before it is parsed.
"""
from __future__ import annotations

import ast
import hashlib
import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..guidance import guided_eps_fn
from ..schedules import Schedule, scaled_linear_betas
from . import sandbox
from ._child import FATAL_EXIT, probe_model

EXERCISES = ("forward_coefficients", "q_sample", "reverse_step", "drop_context", "guided_eps")
TAG_PREFIX = "exercise:"
_MARKER_RE = re.compile(r"^\s*#\s*exercise:\s*(\w+)\s*$", re.MULTILINE)
_PREAMBLE = "import math\nimport numpy as np\nimport torch\nimport torch.nn.functional as F\n\n"
NOTEBOOK_CAP = 8 * 2**20
CELL_CAP = 64 * 2**10
RECORD_CAP = 64 * 2**10
OUTPUT_CAP = 16 * 2**20
JSON_DEPTH = 64
INT_DIGITS = 30
ALLOWED_IMPORTS = ("math", "numpy", "torch")
FORBIDDEN_NAMES = frozenset({"__import__", "exec", "eval", "compile", "open", "breakpoint", "globals", "locals",
                             "vars", "getattr", "setattr", "delattr", "input", "importlib", "sys", "os"})
CHILD = Path(__file__).resolve().parent / "_child.py"
_STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*"')
_SECRET_NUMBER_RE = re.compile(r"\d*\.\d+(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+|\d{4,}")


class SubmissionError(ValueError):
    """A submission the grader cannot read as handed in (status ``invalid``)."""


@dataclass
class ExerciseResult:
    """One exercise: the fraction of its hidden cases passed and what the report says (never a hidden value)."""

    name: str
    fraction: float
    message: str

    @property
    def passed(self) -> bool:
        return self.fraction == 1


@dataclass
class FunctionPart:
    """Result of the function part: ``status`` is ok, failed, timeout or crashed."""

    status: str
    results: list[ExerciseResult] = field(default_factory=list)
    reason: str = ""
    seconds: float = 0.0

    @property
    def score(self) -> float:
        return sum(r.fraction for r in self.results) / len(EXERCISES)


# ------------------------------------------------------------------ capped reading
def json_depth(text: str) -> int:
    """How deeply the arrays and objects of JSON ``text`` nest (strings skipped)."""
    depth = deepest = 0
    for bracket in re.findall(r"[\[\]{}]", _STRING_RE.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > INT_DIGITS:
        raise SubmissionError(f"a {len(text)}-digit integer (at most {INT_DIGITS} digits)")
    return int(text)


def read_json(path: Path, cap: int, hint: str = ""):
    """The JSON in ``path``, read only when it is a plain file of at most ``cap`` bytes nesting at most
    ``JSON_DEPTH`` deep, its integers at most ``INT_DIGITS`` digits; SubmissionError (naming the file) otherwise."""
    if path.is_symlink() or not path.is_file():
        raise SubmissionError(f"{path.name}: missing{hint}")
    with open(path, "rb") as f:
        data = f.read(cap + 1)
    if len(data) > cap:
        raise SubmissionError(f"{path.name}: over the {cap} byte cap{hint}")
    try:
        text = data.decode("utf-8")
        if json_depth(text) > JSON_DEPTH:
            raise SubmissionError(f"{path.name}: nested more than {JSON_DEPTH} deep{hint}")
        return json.loads(text, parse_int=_bounded_int)
    except SubmissionError as error:
        raise SubmissionError(f"{path.name}: {error}{hint}") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise SubmissionError(f"{path.name}: not valid JSON ({str(error)[:100]}){hint}") from None


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``text`` without anything that could carry a hidden input out: every decimal, exponent or
    4-digit number becomes ``#``, and so does each of ``secrets``."""
    for secret in secrets:
        text = text.replace(secret, "#")
    return _SECRET_NUMBER_RE.sub("#", text)


# ------------------------------------------------------------------ notebook
def read_notebook(path: Path) -> dict:
    """The notebook JSON (size- and depth-capped, UTF-8); SubmissionError when it is not one."""
    nb = read_json(path, NOTEBOOK_CAP, " (export the submission with dlcourse.grading.assessment.export; "
                   "clear large outputs first)")
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise SubmissionError(f"{path.name}: not a notebook (no list of cells)")
    return nb


def _source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def exercise_cells(nb: dict) -> dict[str, str]:
    """{exercise name: source of its cell}, found by tag or marker line; SubmissionError if one is missing."""
    found: dict[str, str] = {}
    for cell in nb["cells"]:
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        source = _source(cell)
        tags = cell.get("metadata", {}).get("tags", []) if isinstance(cell.get("metadata"), dict) else []
        names = {t[len(TAG_PREFIX):] for t in tags if isinstance(t, str) and t.startswith(TAG_PREFIX)}
        names |= set(_MARKER_RE.findall(source))
        for name in names & set(EXERCISES):
            found.setdefault(name, source)
    missing = [name for name in EXERCISES if name not in found]
    if missing:
        raise SubmissionError(f"exercise cell(s) {', '.join(missing)} not found (each starts with "
                              "'# exercise: NAME'; restore the cell from the handed-out notebook)")
    return found


def _forbidden(tree: ast.Module) -> str | None:
    """What the kept code may not do (an import outside ALLOWED_IMPORTS, a forbidden or dunder name)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            modules = [("." * node.level) + (node.module or "")]
        else:
            modules = []
        for module in modules:
            if module.split(".")[0] not in ALLOWED_IMPORTS:
                return f"imports {module} (allowed: {', '.join(ALLOWED_IMPORTS)} and their submodules)"
        name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
        if name is not None and (name in FORBIDDEN_NAMES or name.startswith("__")):
            return f"uses {name} (not allowed in an exercise)"
    return None


def module_source(name: str, cell: str) -> str:
    """The cell's imports and function definitions as a module; SyntaxError as the student wrote it,
    ValueError when the code is too large, too deep or does what an exercise may not."""
    if len(cell) > CELL_CAP:
        raise ValueError(f"the {name} cell is {len(cell)} characters, over the {CELL_CAP} cap")
    lines = [line for line in cell.split("\n") if not line.lstrip().startswith(("%", "!"))]  # IPython magics
    try:
        tree = ast.parse("\n".join(lines), filename=f"exercise cell {name}")
        kept = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef))]
        if not any(isinstance(node, ast.FunctionDef) and node.name == name for node in kept):
            raise SubmissionError(f"exercise cell {name}: it no longer defines {name}() "
                                  "(keep the function name and signature of the handed-out notebook)")
        module = ast.Module(body=kept, type_ignores=[])
        problem = _forbidden(module)
        if problem:
            raise ValueError(f"the {name} cell {problem}")
        return _PREAMBLE + ast.unparse(module) + "\n"
    except (RecursionError, MemoryError):
        raise ValueError(f"the {name} cell nests too deeply to be read") from None


# ------------------------------------------------------------------ hidden inputs and references
def _derived_seed(seed: int) -> int:
    """A generator seed for drop_context that reveals nothing about ``seed``."""
    return int.from_bytes(hashlib.sha256(f"drop_context:{seed}".encode()).digest()[:4], "little")


def hidden_inputs(seed: int) -> dict[str, dict]:
    """The inputs each exercise is called with (never shown in the notebook; ``seed`` is a grading setting)."""
    g = torch.Generator().manual_seed(seed)
    T = 37 + seed % 50
    betas = scaled_linear_betas(T).double()
    alpha_bars = torch.cumprod(1 - betas, 0)
    n = 6
    x = torch.randn(n, 3, 5, 7, generator=g, dtype=torch.float64)
    t = torch.randint(0, T, (n,), generator=g)
    t[0] = 0
    c = torch.cat([torch.eye(5)[torch.randint(0, 5, (n,), generator=g)],
                   torch.eye(6)[torch.randint(0, 6, (n,), generator=g)]], 1).double()
    many = torch.rand(4000, 11, generator=g, dtype=torch.float64) + 0.5
    return {
        "forward_coefficients": {"betas": betas},
        "q_sample": {"x0": x, "t": t, "noise": torch.randn(x.shape, generator=g, dtype=torch.float64),
                     "alpha_bars": alpha_bars},
        "reverse_step": {"x_t": x, "t": t, "eps_pred": torch.randn(x.shape, generator=g, dtype=torch.float64),
                         "z": torch.randn(x.shape, generator=g, dtype=torch.float64), "betas": betas,
                         "alpha_bars": alpha_bars},
        "drop_context": {"c": many, "drop_prob": 0.1 + 0.2 * (seed % 3) / 2, "seed": _derived_seed(seed)},
        "guided_eps": {"x_t": x.float(), "t": t, "c": c.float(), "w": 1.5 + seed % 4},
    }


# the kinds of hidden case of each exercise, in the order of hidden_cases(); the report names the failed kinds
KINDS = {
    "forward_coefficients": ("the hidden schedule", "a three-step float32 schedule"),
    "q_sample": ("a float64 batch with t = 0", "a float32 batch", "a batch of one at t = T - 1"),
    "reverse_step": ("a float64 batch with t = 0", "a batch with t > 0 only", "a float32 batch with t = 0"),
    "drop_context": ("the hidden drop_prob", "drop_prob = 0 (nothing dropped)", "drop_prob = 1 (everything dropped)"),
    "guided_eps": ("the hidden w", "w = 0 (the conditional prediction)", "a batch of one"),
}


def _float32(inputs: dict) -> dict:
    return {k: v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in inputs.items()}


def hidden_cases(seed: int) -> dict[str, list[dict]]:
    """{exercise: its hidden cases' inputs, one per kind of KINDS}: each exercise scores the fraction it passes."""
    base = hidden_inputs(seed)
    qs, rs, ge, dc = base["q_sample"], base["reverse_step"], base["guided_eps"], base["drop_context"]
    last = torch.tensor([len(qs["alpha_bars"]) - 1])
    return {
        "forward_coefficients": [base["forward_coefficients"], {"betas": scaled_linear_betas(3).float()}],
        "q_sample": [qs, _float32(qs), {**qs, "x0": qs["x0"][:1], "t": last, "noise": qs["noise"][:1]}],
        "reverse_step": [rs, {**rs, "t": rs["t"].clamp(min=1)}, _float32(rs)],
        "drop_context": [dc, {**dc, "drop_prob": 0.0}, {**dc, "drop_prob": 1.0}],
        "guided_eps": [ge, {**ge, "w": 0.0}, {**ge, "x_t": ge["x_t"][:1], "t": ge["t"][:1], "c": ge["c"][:1]}],
    }


def reference(name: str, inputs: dict) -> dict[str, np.ndarray]:
    """Expected outputs of exercise ``name`` on one case, from the package's own definitions in float64
    (drop_context has none: it is checked by its statistics)."""
    x = {k: v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in inputs.items()}
    if name == "forward_coefficients":
        schedule = Schedule(x["betas"], dtype=torch.float64)
        return {"alphas": schedule.alphas.numpy(), "alpha_bars": schedule.alpha_bars.numpy()}
    if name == "q_sample":
        alphas = x["alpha_bars"] / torch.cat([x["alpha_bars"].new_ones(1), x["alpha_bars"][:-1]])
        return {"out": Schedule(1 - alphas, dtype=torch.float64).q_sample(x["x0"], x["t"], x["noise"]).numpy()}
    if name == "reverse_step":
        schedule = Schedule(x["betas"], dtype=torch.float64)
        return {"out": schedule.ddpm_step(x["x_t"], x["t"], x["eps_pred"], x["z"]).numpy()}
    if name == "guided_eps":
        return {"out": guided_eps_fn(probe_model, inputs["c"], x["w"])(inputs["x_t"], inputs["t"]).numpy()}
    return {}


def _compare(got: np.ndarray, expected: np.ndarray, what: str, tol: float) -> str | None:
    """None when equal within tolerance, else what is wrong (dtype kind and shape checked first)."""
    if got.dtype.kind != "f":
        return f"{what}: expected floating-point values, got dtype {got.dtype}"
    if got.shape != expected.shape:
        return f"{what}: expected shape {expected.shape}, got {got.shape}"
    if not np.isfinite(got).all():
        return f"{what}: contains NaN or inf"
    error = float(np.max(np.abs(got.astype(np.float64) - expected)))
    if error > tol * (1 + float(np.max(np.abs(expected)))):
        return f"{what}: wrong values on the hidden inputs (largest difference {error:.3g})"
    return None


def _check_drop_context(got: np.ndarray, c: np.ndarray, drop_prob: float) -> str | None:
    """Whole rows dropped with probability drop_prob: each row is c_i or all zeros, the rate is right."""
    if got.dtype.kind != "f" or got.shape != c.shape:
        return f"drop_context: expected a float array of shape {c.shape}, got {got.dtype} {got.shape}"
    kept = np.all(np.abs(got - c) < 1e-5, axis=1)
    dropped = np.all(got == 0, axis=1)
    if not np.all(kept | dropped):
        return "drop_context: some rows are neither kept whole nor zeroed whole (drop the whole context)"
    n, rate = len(c), float(dropped.mean())
    sigma = (drop_prob * (1 - drop_prob) / n) ** 0.5
    if abs(rate - drop_prob) > 5 * sigma:
        return f"drop_context: dropped {rate:.3f} of the rows, expected about drop_prob = {drop_prob:.3f}"
    return None


def compare_outputs(name: str, case: int, outdir: Path, inputs: dict, expected: dict, tol: float,
                    secrets: tuple[str, ...] = ()) -> str | None:
    """None when exercise ``name`` passed hidden case ``case``, else a message for the student (never a
    hidden value)."""
    record_path = outdir / f"{name}.{case}.json"
    if not record_path.is_file():
        return f"{name}: no result (the process ended inside it)"
    try:
        record = read_json(record_path, RECORD_CAP)
    except SubmissionError as error:
        return f"{name}: unreadable result ({error})"
    if not isinstance(record, dict):
        return f"{name}: no result"
    if record.get("error"):
        return f"{name} raised {redact(str(record['error'])[:300], secrets)}"
    keys = ("alphas", "alpha_bars") if name == "forward_coefficients" else ("out",)
    for key in keys:
        path = outdir / f"{name}.{case}.{key}.npy"
        try:
            if path.is_symlink() or path.stat().st_size > OUTPUT_CAP:
                return f"{name}: output {key} is a link or over {OUTPUT_CAP} bytes"
            got = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as error:
            return f"{name}: unreadable output {key} ({redact(str(error)[:100])})"
        if not isinstance(got, np.ndarray):
            return f"{name}: output {key} is not an array"
        if name == "drop_context":
            return _check_drop_context(got, inputs["c"].numpy(), inputs["drop_prob"])
        problem = _compare(got, expected[key], f"{name} ({key})" if len(keys) > 1 else name, tol)
        if problem:
            return problem
    if name == "guided_eps":
        batches, n = record.get("batches"), inputs["x_t"].shape[0]
        if batches != [2 * n]:
            return (f"guided_eps: called the model with batches {str(batches)[:60]}; expected one call on both "
                    f"contexts together ([{2 * n}])")
    return None


# ------------------------------------------------------------------ the part
def _result(name: str, problems: list[str | None]) -> ExerciseResult:
    """The exercise's fraction of cases passed; the message names each failed kind with its problem."""
    failed = [f"{kind}: {problem}" for kind, problem in zip(KINDS[name], problems) if problem]
    if not failed:
        return ExerciseResult(name, 1.0, f"{name}: correct on all {len(problems)} hidden cases")
    passed = len(problems) - len(failed)
    return ExerciseResult(name, passed / len(problems), f"{name}: {passed} of {len(problems)} hidden cases "
                          "passed; failed: " + " | ".join(failed))


def code_fingerprint(modules: dict[str, str | Exception]) -> str:
    text = json.dumps({k: str(v) for k, v in sorted(modules.items())})
    return hashlib.sha256(text.encode()).hexdigest()


def prepare(nb: dict) -> dict[str, str | Exception]:
    """{name: module source, or the SyntaxError raised by the student's cell}; SubmissionError if a cell is gone."""
    modules: dict[str, str | Exception] = {}
    for name, cell in exercise_cells(nb).items():
        try:
            modules[name] = module_source(name, cell)
        except SyntaxError as error:
            modules[name] = SyntaxError(f"SyntaxError in the {name} cell, line {error.lineno}: {error.msg}")
        except SubmissionError:
            raise
        except ValueError as error:
            modules[name] = error
    return modules


def grade_functions(modules: dict[str, str | Exception], *, seed: int, time_limit: float, memory_mb: int,
                    tol: float = 1e-4, isolated: bool = True) -> FunctionPart:
    """Run the exercise modules in a sandbox on the hidden cases of ``seed`` and compare the outputs
    (``isolated=False``: without bubblewrap, see :mod:`.sandbox`)."""
    cases = hidden_cases(seed)
    secrets = (str(seed), str(_derived_seed(seed)))
    with tempfile.TemporaryDirectory(prefix="dlcourse-grade-") as temp:
        workdir = Path(temp) / "work"
        workdir.mkdir()
        shutil.copyfile(CHILD, workdir / CHILD.name)
        job: dict[str, list[dict]] = {}
        for name in EXERCISES:
            if isinstance(modules[name], Exception):
                continue
            (workdir / f"ex_{name}.py").write_text(modules[name], encoding="utf-8")
            job[name] = []
            for case, inputs in enumerate(cases[name]):
                spec = {}
                for key, value in inputs.items():
                    if isinstance(value, torch.Tensor):
                        np.save(workdir / f"{name}.{case}.{key}.npy", value.numpy(), allow_pickle=False)
                        spec[key] = {"npy": f"{name}.{case}.{key}.npy"}
                    else:
                        spec[key] = value
                job[name].append(spec)
        (workdir / "job.json").write_text(json.dumps(job), encoding="utf-8")
        result = sandbox.run_python(CHILD.name, workdir, time_limit=time_limit, memory_mb=memory_mb,
                                    isolated=isolated)
        outdir = workdir / "out"
        try:
            if result.timed_out:
                return FunctionPart("timeout", reason=f"the exercise code ran past the {time_limit:g} s limit",
                                    seconds=result.seconds)
            fatal = outdir / "fatal.json"
            if result.returncode == FATAL_EXIT and fatal.is_file():
                return FunctionPart("crashed", reason=f"memory limit reached ({memory_mb} MiB)",
                                    seconds=result.seconds)
            if result.returncode != 0 or not (outdir / "done.json").is_file():
                how = (f"killed by signal {-result.returncode}" if result.returncode and result.returncode < 0
                       else f"exit status {result.returncode}")
                return FunctionPart("crashed", reason=f"the exercise code ended the process early ({how}; "
                                    "sys.exit, os._exit or a resource limit)", seconds=result.seconds)
            results = []
            for name in EXERCISES:
                if isinstance(modules[name], Exception):
                    results.append(ExerciseResult(name, 0.0, str(modules[name])))
                    continue
                problems = [compare_outputs(name, case, outdir, inputs, reference(name, inputs), tol, secrets)
                            for case, inputs in enumerate(cases[name])]
                results.append(_result(name, problems))
        finally:
            sandbox.remove_tree(workdir)
    status = "ok" if all(r.passed for r in results) else "failed"
    failed = [r.name for r in results if not r.passed]
    return FunctionPart(status, results, reason=f"wrong: {', '.join(failed)}" if failed else "",
                        seconds=result.seconds)
