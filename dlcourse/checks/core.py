"""Self-checks for exercises: run the learner's code and the reference on the same inputs.

``compare`` checks a function numerically; ``check_module`` checks a module class
(output shapes, parameter count, and outputs too when the weights can be copied).
Each prints one ✅ line or raises ``AssertionError`` starting with ❌ and saying
what differed first, plus a hint from ``diagnose`` when it has one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from dlcourse.models import count_parameters
from dlcourse.schedules import Schedule
from dlcourse.validation import describe, fail

__all__ = ["CheckResult", "compare", "check_module", "default_devices"]

Diagnose = Callable[[Any, Any, Any], "str | None"]


@dataclass
class CheckResult:
    """Outcome of a passed check (a failed check raises instead)."""

    name: str
    n_inputs: int
    max_abs_diff: float
    devices: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unit: str = "inputs"

    @property
    def passed(self) -> bool:
        return True

    def __str__(self) -> str:
        where = " and ".join(self.devices)
        line = (f"✅ {self.name}: matches the reference on {self.n_inputs} {self.unit} "
                f"(max |diff| = {self.max_abs_diff:.2e}; {where})")
        return line + "".join(f"\n   note: {note}" for note in self.notes)


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


def _call(fn, args):
    return fn(**args) if isinstance(args, dict) else fn(*args)


def _show_value(v) -> str:
    if isinstance(v, torch.Tensor):
        return f"tensor {v.tolist()}" if v.numel() <= 8 and v.dim() <= 1 else f"tensor of shape {tuple(v.shape)}"
    return repr(v)[:60]


def _show_args(args) -> str:
    if isinstance(args, dict):
        return ", ".join(f"{k}={_show_value(v)}" for k, v in args.items())
    return ", ".join(_show_value(v) for v in args)


def _outputs(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _hint(diagnose: Diagnose | None, student_out, reference_out, args) -> str:
    if diagnose is None:
        return ""
    text = diagnose(student_out, reference_out, args)
    return f"\n   Hint: {text}" if text else ""


def _run_student(fn, args, name: str, where: str, diagnose, reference_out):
    """Call the learner's code; turn its exceptions into a friendly AssertionError."""
    try:
        return _call(fn, args)
    except NotImplementedError as error:
        raise AssertionError(
            f"❌ {name}: fill in the exercise first — the code still raises NotImplementedError "
            "(replace the placeholder with your implementation and run the cell again)."
        ) from error
    except Exception as error:  # noqa: BLE001 - any learner error is reported, with the original chained
        raise AssertionError(
            f"❌ {name}: your code raised {type(error).__name__} on input ({_show_args(args)}){where}: {error}"
            + _hint(diagnose, error, reference_out, args)
        ) from error


def _difference(student_out, reference_out, atol: float, rtol: float) -> tuple[str | None, float]:
    """First difference between two outputs as a sentence (None if they match), and max |diff|."""
    got, want = _outputs(student_out), _outputs(reference_out)
    if len(got) != len(want):
        return f"returned {len(got)} output(s), expected {len(want)}", float("inf")
    worst = 0.0
    for i, (s, r) in enumerate(zip(got, want)):
        label = f"output {i}" if len(want) > 1 else "output"
        if isinstance(r, torch.Tensor):
            if not isinstance(s, torch.Tensor):
                return f"{label} is {describe(s)}, expected a tensor of shape {tuple(r.shape)}", float("inf")
            if s.shape != r.shape:
                return f"{label} has shape {tuple(s.shape)}, expected {tuple(r.shape)}", float("inf")
            if s.dtype != r.dtype:
                return f"{label} has dtype {s.dtype}, expected {r.dtype}", float("inf")
            if s.device != r.device:
                return f"{label} is on {s.device}, expected {r.device} (follow the device of the inputs)", float("inf")
            if s.numel() == 0:
                continue
            s64, r64 = s.detach().double(), r.detach().double()
            if not torch.isfinite(s64).all() and torch.isfinite(r64).all():
                return f"{label} contains NaN or inf", float("inf")
            diff = (s64 - r64).abs().nan_to_num(nan=0.0)
            worst = max(worst, float(diff.max()))
            bad = diff > atol + rtol * r64.abs()
            if bad.any():
                index = tuple(int(j) for j in torch.unravel_index(torch.argmax(diff.flatten()), diff.shape))
                return (f"{label} differs: max |diff| = {float(diff.max()):.3e} at index {index} "
                        f"(yours {float(s64[index]):.6g}, reference {float(r64[index]):.6g}; "
                        f"{int(bad.sum())} of {bad.numel()} values outside atol={atol:g}, rtol={rtol:g})"), worst
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


def compare(student: Callable, reference: Callable, inputs: Sequence, *, name: str, atol: float = 1e-5,
            rtol: float = 1e-4, diagnose: Diagnose | None = None,
            devices: Sequence[str] | None = None) -> CheckResult:
    """Check ``student(*args)`` against ``reference(*args)`` for every ``args`` in ``inputs``.

    ``inputs``: a list of argument tuples or kwargs dicts (several shapes are best).
    Outputs (a tensor or a tuple of tensors/numbers) must agree in shape, dtype and
    value (|s − r| ≤ atol + rtol·|r|). ``diagnose(student_out, reference_out, args)``
    may return a hint; ``student_out`` is the exception when the learner's code raised.
    Runs on cpu, then on cuda when available (a reference that cannot run there skips it).
    """
    if not callable(student) or not callable(reference):
        raise fail("student/reference", "callables", f"{describe(student)} / {describe(reference)}")
    if not isinstance(inputs, (list, tuple)) or not inputs or not all(isinstance(a, (tuple, dict)) for a in inputs):
        raise fail("inputs", "a non-empty list of argument tuples or kwargs dicts", describe(inputs))
    devices = list(devices) if devices is not None else default_devices()
    worst, ran, notes = 0.0, [], []
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
            student_out = _run_student(student, moved, name, where, diagnose, reference_out)
            problem, diff = _difference(student_out, reference_out, atol, rtol)
            if problem:
                raise AssertionError(f"❌ {name}: on input ({_show_args(args)}){where}, {problem}"
                                     + _hint(diagnose, student_out, reference_out, moved))
            worst = max(worst, diff)
        ran.append(device)
    result = CheckResult(name, len(inputs), worst, ran, notes)
    print(result)
    return result


def _seeded(cls, ctor_args, seed: int):
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

    First by state_dict name; else layer by layer, pairing the k-th layer of each type
    (k-th Conv2d with k-th Conv2d, …) when every pair holds the same tensors.
    """
    ref_state, stu_state = reference.state_dict(), student.state_dict()
    if {k: v.shape for k, v in ref_state.items()} == {k: v.shape for k, v in stu_state.items()}:
        student.load_state_dict(ref_state)
        return "by name"
    ref_groups, stu_groups = _layers_by_type(reference), _layers_by_type(student)
    def shapes(groups):
        return {kind: [{k: v.shape for k, v in layer.items()} for layer in layers] for kind, layers in groups.items()}

    if shapes(ref_groups) != shapes(stu_groups):
        return None
    with torch.no_grad():
        for kind, layers in ref_groups.items():
            for ref_layer, stu_layer in zip(layers, stu_groups[kind]):
                for key, value in ref_layer.items():
                    stu_layer[key].copy_(value)
    return "by layer"


def check_module(student_cls: type, reference_cls: type, ctor_kwargs_list: Sequence[dict],
                 input_fn: Callable[[dict], tuple | dict], *, name: str, atol: float = 1e-5, rtol: float = 1e-4,
                 diagnose: Diagnose | None = None, diagnose_parameters: Diagnose | None = None, seed: int = 0,
                 devices: Sequence[str] | None = None) -> CheckResult:
    """Check a module class: for each constructor kwargs, build both (same seed) and run ``input_fn(kwargs)``.

    Each entry of ``ctor_kwargs_list`` is a kwargs dict or a tuple of positional arguments;
    ``input_fn`` receives it and returns the forward arguments (a tuple or a kwargs dict).

    Parameter counts must match. When the parameters line up (same names and shapes,
    or the same layer types holding the same shapes) the reference's weights are copied into the
    learner's module and the outputs are compared numerically (train mode, no grad);
    otherwise only output shapes are compared, and the ✅ line says so.
    ``diagnose(student_out, reference_out, args)`` explains an output mismatch (or the
    exception raised); ``diagnose_parameters(student_module, reference_module, ctor_kwargs)``
    a parameter-count mismatch. The global random state is left untouched.
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
                     "parameter counts were compared (not values)")
    result = CheckResult(name, len(ctor_kwargs_list), worst, devices, sorted(set(notes)), unit="configurations")
    print(result)
    return result


def _check_one_module(student_cls, reference_cls, kwargs, args, *, name, atol, rtol, diagnose,
                      diagnose_parameters, seed, devices, worst) -> tuple[float, bool, list[str]]:
    """One constructor configuration of ``check_module``: returns (max |diff|, weights copied, notes)."""
    shown = kwargs.items() if isinstance(kwargs, dict) else ((None, v) for v in kwargs)
    label = f"{name}({', '.join(f'{v!r}' if k is None else f'{k}={v!r}' for k, v in shown)})"
    reference = _seeded(reference_cls, kwargs, seed)
    student = _run_student(lambda *a, **kw: _seeded(student_cls, kw or a, seed), kwargs, label, "", None, None)
    if not isinstance(student, nn.Module):
        raise AssertionError(f"❌ {label}: expected an nn.Module, got {describe(student)}")
    with torch.no_grad():  # a first run, before counting parameters, catches an unfilled forward
        _run_student(student, _move(args, "cpu"), label, "", diagnose, _call(reference, _move(args, "cpu")))
    n_student = count_parameters(student)
    n_reference = count_parameters(reference)
    if n_student != n_reference:
        raise AssertionError(
            f"❌ {label}: your module has {n_student:,} parameters, the reference {n_reference:,} "
            f"(difference {n_student - n_reference:+,})" + _hint(diagnose_parameters, student, reference, kwargs)
        )
    how = _copy_weights(student, reference)
    notes = ["your layer names differ from the reference's, so its weights were copied layer by layer "
             "(the k-th layer of each type gets the reference's k-th)"] if how == "by layer" else []
    for device in devices:
        where = "" if device == "cpu" else f" on {device}"
        student.to(device).train()
        reference.to(device).train()
        with torch.no_grad():
            reference_out = _call(reference, _move(args, device))
            moved = _move(args, device)
            student_out = _run_student(student, moved, label, where, diagnose, reference_out)
        if how is None:
            shapes = [tuple(o.shape) if isinstance(o, torch.Tensor) else o for o in _outputs(student_out)]
            wanted = [tuple(o.shape) for o in _outputs(reference_out)]
            problem, diff = (None if shapes == wanted else f"output shape {shapes}, expected {wanted}"), 0.0
        else:
            problem, diff = _difference(student_out, reference_out, atol, rtol)
        if problem:
            raise AssertionError(f"❌ {label}: on input ({_show_args(args)}){where}, {problem}"
                                 + _hint(diagnose, student_out, reference_out, moved))
        worst = max(worst, diff)
    return worst, how is not None, notes
