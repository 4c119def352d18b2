"""Self-checks for exercises: run the learner's code and the reference on the same inputs.

One diagnosis mechanism serves every check:

- :func:`run_student` is the only place that calls learner code (an unfilled placeholder, an error raised
  inside it, a slip spotted by a stand-in model all become one ❌ message);
- :class:`Slip` is a wrong variant of a formula with the hint that names it; :func:`name_slip` finds the
  variant the learner's output equals (catalogues are generated from the maths in ``variants``);
- :class:`Rung` is one step of a ladder (condition → problem → hint); :func:`climb` stops at the first
  rung that fails;
- :func:`failure` writes the message: the hint first (what is wrong, what to change), then the evidence,
  untruncated.

``compare`` checks a function numerically; ``check_module`` checks a module class (parameter counts,
and outputs when the weights can be copied; when they cannot, it says so instead of printing ✅).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from dlcourse.models import count_parameters
from dlcourse.schedules import Schedule
from dlcourse.validation import describe, fail

__all__ = ["CheckResult", "Slip", "Rung", "Stop", "compare", "check_module", "default_devices", "failure",
           "name_slip", "climb", "run_student"]

Diagnose = Callable[[Any, Any, Any], "str | None"]


@dataclass
class CheckResult:
    """Outcome of a check that did not fail; ``compared`` is False when values could not be compared."""

    name: str
    n_inputs: int
    max_abs_diff: float
    devices: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unit: str = "inputs"
    compared: bool = True

    @property
    def passed(self) -> bool:
        return self.compared

    def __str__(self) -> str:
        where = " and ".join(self.devices)
        if self.compared:
            line = (f"✅ {self.name}: matches the reference on {self.n_inputs} {self.unit} "
                    f"(max |diff| = {self.max_abs_diff:.2e}; {where})")
        else:
            line = (f"⚠️ {self.name}: NOT checked — parameter counts and output shapes match on {self.n_inputs} "
                    f"{self.unit}, but the values could not be compared ({where})")
        return line + "".join(f"\n   note: {note}" for note in self.notes)


# ---- the diagnosis mechanism -----------------------------------------------------------------------

def failure(name: str, evidence: str, hint: str | None = None) -> AssertionError:
    """❌ name: hint (what is wrong and what to change), then the evidence on the next line; no hint: the evidence."""
    if hint:
        return AssertionError(f"❌ {name}: {hint}\n   evidence: {evidence}")
    return AssertionError(f"❌ {name}: {evidence}")


class Stop(Exception):
    """Raised by a check's stand-in (a recording model, say) to stop the learner's code at a named slip."""

    def __init__(self, problem: str, hint: str | None = None):
        super().__init__(problem)
        self.problem, self.hint = problem, hint


def _call(fn, args):
    return fn(**args) if isinstance(args, dict) else fn(*args)


def run_student(fn: Callable, args, name: str, *, seed: int | None = None, where: str = "",
                error_hint: Callable[[Exception], "str | None"] | None = None):
    """``fn(*args)`` (or ``fn(**args)``), the only way a check calls learner code.

    With ``seed`` the global RNG is seeded for the call and restored afterwards. An unfilled placeholder
    (NotImplementedError), a :class:`Stop` from a stand-in and any other exception become one ❌
    AssertionError; ``error_hint(error)`` may name the slip behind an exception.
    """
    try:
        if seed is None:
            return _call(fn, args)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return _call(fn, args)
    except NotImplementedError as error:
        raise AssertionError(
            f"❌ {name}: fill in the exercise first — the code still raises NotImplementedError "
            "(replace the placeholder with your implementation and run the cell again)."
        ) from error
    except Stop as stop:
        raise failure(name, stop.problem, stop.hint) from None
    except Exception as error:  # noqa: BLE001 - any learner error is reported, with the original chained
        shown = f" on input ({_show_args(args)})" if args else ""
        raise failure(name, f"your code raised {type(error).__name__}{shown}{where}: {error}",
                      error_hint(error) if error_hint else None) from error


@dataclass(frozen=True)
class Slip:
    """A wrong variant of a formula: the hint that names it, and ``output()`` computing what it returns."""

    hint: str
    output: Callable[[], Any]


def _close(got, want, atol: float, rtol: float) -> bool:
    """Same structure and values (tensors compared in float64 on the cpu; numbers as numbers)."""
    if isinstance(want, (list, tuple)):
        return (isinstance(got, (list, tuple)) and len(got) == len(want)
                and all(_close(g, w, atol, rtol) for g, w in zip(got, want)))
    if isinstance(got, torch.Tensor) and isinstance(want, torch.Tensor):
        if got.shape != want.shape:
            return False
        return torch.allclose(got.detach().cpu().double(), want.detach().cpu().double(), atol=atol, rtol=rtol,
                              equal_nan=True)
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    if isinstance(want, torch.Tensor) and want.numel() == 1:
        want = want.item()
    if isinstance(got, (int, float)) and isinstance(want, (int, float)):
        return abs(got - want) <= atol + rtol * abs(want)
    return False


def name_slip(student_out, slips: Sequence[Slip], *, atol: float = 1e-5, rtol: float = 1e-4) -> str | None:
    """The hint of the first slip whose output equals the learner's (a slip that cannot run here is skipped).

    An output with no finite value names nothing: every slip that breaks the same way would match it.
    """
    if isinstance(student_out, Exception) or (isinstance(student_out, torch.Tensor) and student_out.numel()
                                              and not bool(torch.isfinite(student_out).any())):
        return None
    for slip in slips:
        try:
            wrong = slip.output()
        except (RuntimeError, IndexError, KeyError, ValueError):
            continue
        if _close(student_out, wrong, atol, rtol):
            return slip.hint
    return None


@dataclass(frozen=True)
class Rung:
    """One rung of a diagnosis ladder: when ``failed()`` is true the check stops with ``hint``, then ``problem``.

    ``problem`` and ``hint`` may be callables, evaluated only when the rung fails.
    """

    failed: Callable[[], bool]
    problem: str | Callable[[], str]
    hint: str | Callable[[], "str | None"] | None = None


def climb(name: str, rungs: Sequence[Rung]) -> None:
    """Raise the ❌ of the first rung that fails (rungs are evaluated in order, lazily)."""
    for rung in rungs:
        if rung.failed():
            problem = rung.problem() if callable(rung.problem) else rung.problem
            hint = rung.hint() if callable(rung.hint) else rung.hint
            raise failure(name, problem, hint)


# ---- compare ---------------------------------------------------------------------------------------

def default_devices() -> list[str]:
    """cpu, plus cuda when available."""
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _move(value, device):
    """Clone tensors (so in-place edits of one side cannot leak) and move them, and schedules, to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone().to(device)
    if isinstance(value, Schedule):
        return value.to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(_move(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _move(v, device) for k, v in value.items()}
    return value


def _show_value(v) -> str:
    """A value as the evidence shows it: small tensors in full, others by shape and dtype; never cut."""
    if isinstance(v, torch.Tensor):
        if v.numel() <= 8 and v.dim() <= 1:
            values = v.tolist() if not v.is_floating_point() else [float(f"{u:.6g}") for u in v.reshape(-1).tolist()]
            return f"tensor {values}"
        return f"tensor of shape {tuple(v.shape)}, {str(v.dtype).replace('torch.', '')}"
    if isinstance(v, Schedule):
        return f"Schedule(T={v.T}, {str(v.dtype).replace('torch.', '')})"
    if isinstance(v, nn.Module):
        return type(v).__name__
    if isinstance(v, torch.Generator):
        return f"Generator(seed={v.initial_seed()})"
    if isinstance(v, (tuple, list)):
        inner = ", ".join(_show_value(u) for u in v)
        return f"({inner})" if isinstance(v, tuple) else f"[{inner}]"
    if callable(v):
        return getattr(v, "__name__", type(v).__name__)
    return repr(v)


def _show_args(args, names: Sequence[str] = ()) -> str:
    """The arguments as the evidence shows them, each named after the learner's parameter when known."""
    if isinstance(args, dict):
        return ", ".join(f"{k}={_show_value(v)}" for k, v in args.items())
    shown = [_show_value(v) for v in args]
    return ", ".join(f"{n}={v}" for n, v in zip(names, shown)) if len(names) >= len(shown) else ", ".join(shown)


def _parameter_names(fn) -> list[str]:
    """The names of ``fn``'s positional parameters ([] when it takes *args or cannot be inspected)."""
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return []
    if any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return []
    return [p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _outputs(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _tensor_difference(label: str, s, r: torch.Tensor, atol: float, rtol: float) -> tuple[str | None, float]:
    """First difference between a learner's tensor and the reference tensor, and max |diff|."""
    if not isinstance(s, torch.Tensor):
        return f"{label} is {describe(s)}, expected a tensor of shape {tuple(r.shape)}", float("inf")
    if s.shape != r.shape:
        return f"{label} has shape {tuple(s.shape)}, expected {tuple(r.shape)}", float("inf")
    if s.dtype != r.dtype:
        return f"{label} has dtype {s.dtype}, expected {r.dtype}", float("inf")
    if s.device != r.device:
        return f"{label} is on {s.device}, expected {r.device} (follow the device of the inputs)", float("inf")
    if s.numel() == 0:
        return None, 0.0
    s64, r64 = s.detach().double(), r.detach().double()
    if not torch.isfinite(s64).all() and torch.isfinite(r64).all():
        return f"{label} contains NaN or inf", float("inf")
    diff = (s64 - r64).abs().nan_to_num(nan=0.0)
    worst = float(diff.max())
    bad = diff > atol + rtol * r64.abs()
    if not bad.any():
        return None, worst
    index = tuple(int(j) for j in torch.unravel_index(torch.argmax(diff.flatten()), diff.shape))
    return (f"{label} differs: max |diff| = {worst:.3e} at index {index} "
            f"(yours {float(s64[index]):.6g}, reference {float(r64[index]):.6g}; "
            f"{int(bad.sum())} of {bad.numel()} values outside atol={atol:g}, rtol={rtol:g})"), worst


def _difference(student_out, reference_out, atol: float, rtol: float) -> tuple[str | None, float]:
    """First difference between two outputs as a sentence (None if they match), and max |diff|."""
    got, want = _outputs(student_out), _outputs(reference_out)
    if len(got) != len(want):
        return f"returned {len(got)} output(s), expected {len(want)}", float("inf")
    worst = 0.0
    for i, (s, r) in enumerate(zip(got, want)):
        label = f"output {i}" if len(want) > 1 else "output"
        if isinstance(r, torch.Tensor):
            problem, diff = _tensor_difference(label, s, r, atol, rtol)
            worst = max(worst, diff)
            if problem:
                return problem, worst
        elif isinstance(r, (int, float)) and not isinstance(r, bool):
            if isinstance(s, torch.Tensor) and s.numel() == 1:
                s = s.item()
            if isinstance(s, bool) or not isinstance(s, (int, float)):
                return f"{label} is {describe(s)}, expected the number {r!r}", float("inf")
            worst = max(worst, abs(s - r))
            if not abs(s - r) <= atol + rtol * abs(r):
                return f"{label} is {s!r}, expected {r!r}", worst
        elif s != r:
            return f"{label} is {s!r}, expected {r!r}", float("inf")
    return None, worst


def _hint(student_out, reference_out, args, slips, diagnose, atol: float = 1e-5, rtol: float = 1e-4) -> str | None:
    """A generated slip that matches first (within the check's tolerance), else ``diagnose``'s word."""
    hint = name_slip(student_out, slips(args), atol=atol, rtol=rtol) if slips is not None else None
    if hint is None and diagnose is not None:
        hint = diagnose(student_out, reference_out, args)
    return hint


def compare(student: Callable, reference: Callable, inputs: Sequence, *, name: str, atol: float = 1e-5,
            rtol: float = 1e-4, diagnose: Diagnose | None = None,
            slips: Callable[[Any], Sequence[Slip]] | None = None,
            devices: Sequence[str] | None = None) -> CheckResult:
    """Check ``student(*args)`` against ``reference(*args)`` for every ``args`` in ``inputs``.

    ``inputs``: a list of argument tuples or kwargs dicts (several shapes are best).
    Outputs (a tensor or a tuple of tensors/numbers) must agree in shape, dtype and
    value (|s − r| ≤ atol + rtol·|r|). On a mismatch ``slips(args)`` (wrong variants) is searched for the
    learner's output, then ``diagnose(student_out, reference_out, args)`` may return a hint;
    ``student_out`` is the exception when the learner's code raised.
    Runs on cpu, then on cuda when available (a reference that cannot run there skips it).
    """
    if not callable(student) or not callable(reference):
        raise fail("student/reference", "callables", f"{describe(student)} / {describe(reference)}")
    if not isinstance(inputs, (list, tuple)) or not inputs or not all(isinstance(a, (tuple, dict)) for a in inputs):
        raise fail("inputs", "a non-empty list of argument tuples or kwargs dicts", describe(inputs))
    devices = list(devices) if devices is not None else default_devices()
    worst, ran, notes, names = 0.0, [], [], _parameter_names(student)
    for device in devices:
        where = "" if device == "cpu" else f" on {device}"
        try:
            references = [_call(reference, _move(args, device)) for args in inputs]
        except Exception as error:  # noqa: BLE001
            if device == "cpu":
                raise RuntimeError(f"{name}: the reference itself failed ({error}); this is a bug in the check") from error
            notes.append(f"skipped {device}: the reference needs cpu inputs")
            continue
        for args, reference_out in zip(inputs, references):
            moved = _move(args, device)
            student_out = run_student(student, moved, name, where=where, error_hint=lambda error: _hint(
                error, reference_out, moved, None, diagnose))
            problem, diff = _difference(student_out, reference_out, atol, rtol)
            if problem:
                raise failure(name, f"on input ({_show_args(args, names)}){where}, {problem}",
                              _hint(student_out, reference_out, moved, slips, diagnose, atol, rtol))
            worst = max(worst, diff)
        ran.append(device)
    result = CheckResult(name, len(inputs), worst, ran, notes)
    print(result)
    return result


# ---- check_module ----------------------------------------------------------------------------------

def seeded(cls, ctor_args, seed: int):
    """``cls(*ctor_args)`` (or ``cls(**ctor_args)``) built right after ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    return _call(cls, ctor_args)


def _layers_by_type(module: nn.Module) -> dict[type, list[dict[str, torch.Tensor]]]:
    """The tensors each layer holds itself (weight, bias, running stats), grouped by layer type, in order."""
    groups: dict[type, list[dict[str, torch.Tensor]]] = {}
    for layer in module.modules():
        own = {**dict(layer.named_parameters(recurse=False)), **dict(layer.named_buffers(recurse=False))}
        if own:
            groups.setdefault(type(layer), []).append(own)
    return groups


def _copy_weights(student: nn.Module, reference: nn.Module) -> str | None:
    """Copy the reference's weights into the student's module when they line up; say how (None = could not).

    First by state_dict name; else layer by layer, pairing the k-th layer of each type (k-th Conv2d with
    k-th Conv2d, …) when every pair holds the same tensors; else parameter by parameter in the order they
    were registered, when the shapes agree one for one (a BatchNorm2d where a GroupNorm belongs still lines up,
    so its values are compared).
    """
    ref_state, stu_state = reference.state_dict(), student.state_dict()
    if {k: v.shape for k, v in ref_state.items()} == {k: v.shape for k, v in stu_state.items()}:
        student.load_state_dict(ref_state)
        return "by name"
    ref_groups, stu_groups = _layers_by_type(reference), _layers_by_type(student)

    def shapes(groups):
        return {kind: [{k: v.shape for k, v in layer.items()} for layer in layers] for kind, layers in groups.items()}

    with torch.no_grad():
        if shapes(ref_groups) == shapes(stu_groups):
            for kind, layers in ref_groups.items():
                for ref_layer, stu_layer in zip(layers, stu_groups[kind]):
                    for key, value in ref_layer.items():
                        stu_layer[key].copy_(value)
            return "by layer"
        ref_params, stu_params = list(reference.parameters()), list(student.parameters())
        if [p.shape for p in ref_params] == [p.shape for p in stu_params]:
            for ref_p, stu_p in zip(ref_params, stu_params):
                stu_p.copy_(ref_p)
            return "by order"
    return None


_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _builtin_layers(module: nn.Module) -> set[str]:
    """Names of the torch.nn layer types inside ``module`` that hold weights or buffers (norms, convs, …)."""
    return {type(m).__name__ for m in module.modules()
            if type(m).__module__.startswith("torch.nn") and not isinstance(m, _CONTAINERS)
            and any(True for _ in m.parameters(recurse=False)) | any(True for _ in m.buffers(recurse=False))}


def layer_type_hint(student: nn.Module, reference: nn.Module, *, substitutions_only: bool = False) -> str | None:
    """Name the torch.nn layers the learner used in place of the reference's (BatchNorm2d for GroupNorm, …);
    with ``substitutions_only`` only a layer type put where the reference has another counts."""
    extra = sorted(_builtin_layers(student) - _builtin_layers(reference))
    missing = sorted(_builtin_layers(reference) - _builtin_layers(student))
    if extra and missing:
        return (f"your module uses nn.{', nn.'.join(extra)} where the reference uses nn.{', nn.'.join(missing)}: "
                f"build it with nn.{', nn.'.join(missing)}.")
    if extra and not substitutions_only:
        return f"your module uses nn.{', nn.'.join(extra)}, which the reference does not: remove it."
    return None


def check_module(student_cls: type, reference_cls: type, ctor_kwargs_list: Sequence[dict],
                 input_fn: Callable[[dict], tuple | dict], *, name: str, atol: float = 1e-5, rtol: float = 1e-4,
                 diagnose: Diagnose | None = None, diagnose_parameters: Diagnose | None = None, seed: int = 0,
                 devices: Sequence[str] | None = None) -> CheckResult:
    """Check a module class: for each constructor kwargs, build both (same seed) and run ``input_fn(kwargs)``.

    Each entry of ``ctor_kwargs_list`` is a kwargs dict or a tuple of positional arguments;
    ``input_fn`` receives it and returns the forward arguments (a tuple or a kwargs dict).

    Parameter counts must match. When the parameters line up (same names and shapes, the same layer
    types holding the same shapes, or the same shapes in registration order) the reference's weights are
    copied into the learner's module and the outputs are compared numerically (train mode, no grad);
    otherwise only output shapes are compared and the result says ⚠️ NOT checked instead of ✅.
    On an output mismatch, torch.nn layers used in place of the reference's are named first, then
    ``diagnose(student_out, reference_out, args)`` explains (it also gets the exception raised);
    ``diagnose_parameters(student_module, reference_module, ctor_kwargs)`` a parameter-count mismatch.
    The global random state is left untouched.
    """
    if (not isinstance(ctor_kwargs_list, (list, tuple)) or not ctor_kwargs_list
            or not all(isinstance(a, (tuple, dict)) for a in ctor_kwargs_list)):
        raise fail("ctor_kwargs_list", "a non-empty list of constructor kwargs dicts (or argument tuples)",
                   describe(ctor_kwargs_list))
    devices = list(devices) if devices is not None else default_devices()
    worst, copied_all, notes = 0.0, True, []
    with torch.random.fork_rng(devices=[]):
        for kwargs in ctor_kwargs_list:
            torch.manual_seed(seed)
            args = input_fn(kwargs)
            worst, copied, new_notes = _check_one_module(
                student_cls, reference_cls, kwargs, args, name=name, atol=atol, rtol=rtol, diagnose=diagnose,
                diagnose_parameters=diagnose_parameters, seed=seed, devices=devices, worst=worst)
            copied_all &= copied
            notes += new_notes
    if not copied_all:
        notes.append("parameter names/shapes differ from the reference, so only output shapes and "
                     "parameter counts were compared (not values): name and order the layers like the reference "
                     "to have the values checked")
    result = CheckResult(name, len(ctor_kwargs_list), worst, devices, sorted(set(notes)), unit="configurations",
                         compared=copied_all)
    print(result)
    return result


def _check_one_module(student_cls, reference_cls, kwargs, args, *, name, atol, rtol, diagnose,
                      diagnose_parameters, seed, devices, worst) -> tuple[float, bool, list[str]]:
    """One constructor configuration of ``check_module``: returns (max |diff|, weights copied, notes)."""
    shown = kwargs.items() if isinstance(kwargs, dict) else ((None, v) for v in kwargs)
    label = f"{name}({', '.join(f'{v!r}' if k is None else f'{k}={v!r}' for k, v in shown)})"
    reference = seeded(reference_cls, kwargs, seed)
    student = run_student(seeded, (student_cls, kwargs, seed), label)
    if not isinstance(student, nn.Module):
        raise failure(label, f"expected an nn.Module, got {describe(student)}")
    with torch.no_grad():  # a first run, before counting parameters, catches an unfilled forward
        first_reference = _call(reference, _move(args, "cpu"))
        run_student(student, _move(args, "cpu"), label,
                    error_hint=lambda error: diagnose and diagnose(error, first_reference, args))
    n_student, n_reference = count_parameters(student), count_parameters(reference)
    if n_student != n_reference:
        raise failure(label, f"your module has {n_student:,} parameters, the reference {n_reference:,} "
                      f"(difference {n_student - n_reference:+,})",
                      diagnose_parameters and diagnose_parameters(student, reference, kwargs))
    how = _copy_weights(student, reference)
    substituted = None if how else layer_type_hint(student, reference, substitutions_only=True)
    if substituted:
        raise failure(label, "your layers differ from the reference's, so their values could not be compared",
                      substituted)
    notes = {"by layer": ["your layer names differ from the reference's, so its weights were copied layer by layer "
                          "(the k-th layer of each type gets the reference's k-th)"],
             "by order": ["your layers differ from the reference's, so its weights were copied parameter by "
                          "parameter in the order they were created"]}.get(how, [])
    for device in devices:
        where = "" if device == "cpu" else f" on {device}"
        student.to(device).train()
        reference.to(device).train()
        with torch.no_grad():
            reference_out = _call(reference, _move(args, device))
            moved = _move(args, device)
            student_out = run_student(student, moved, label, where=where,
                                      error_hint=lambda error: diagnose and diagnose(error, reference_out, moved))
        if how is None:
            shapes = [tuple(o.shape) if isinstance(o, torch.Tensor) else o for o in _outputs(student_out)]
            wanted = [tuple(o.shape) for o in _outputs(reference_out)]
            problem, diff = (None if shapes == wanted else f"output shape {shapes}, expected {wanted}"), 0.0
        else:
            problem, diff = _difference(student_out, reference_out, atol, rtol)
        if problem:
            hint = (how is not None and layer_type_hint(student, reference)) or (
                diagnose and diagnose(student_out, reference_out, moved))
            raise failure(label, f"on input ({_show_args(args)}){where}, {problem}", hint or None)
        worst = max(worst, diff)
    return worst, how is not None, notes
