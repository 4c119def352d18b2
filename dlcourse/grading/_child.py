"""The program that runs student code inside the sandbox (a fresh ``python -I`` process).

Usage (by the grader only): ``python -I WORKDIR/_child.py WORKDIR``, the grader's copy of this
file in the sandbox's scratch folder (the package itself is out of the sandbox's reach). WORKDIR holds one
module per exercise (``ex_NAME.py``), ``job.json`` (exercise names → a list of hidden cases' input files) and the hidden
inputs as ``.npy``. Each exercise is imported and called on its inputs; its outputs are written to
``WORKDIR/out`` as ``NAME.CASE.KEY.npy`` (numbers only, no pickle) plus ``NAME.CASE.json`` (error
text, call log), one per hidden case.
``out/done.json`` is written last: without it the grader treats the run as crashed.

This module is also imported by the grader for :func:`probe_model`, so both sides share one
definition of the stand-in network that ``guided_eps`` is called with.
"""
from __future__ import annotations

import json
import os
import sys
import traceback

import numpy as np
import torch

FATAL_EXIT = 3  # the memory limit was hit: the grader reports "crashed (memory limit)"
_PROBE_SEED = 1234


def probe_model(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor | None = None,
                c_mask: torch.Tensor | None = None) -> torch.Tensor:
    """A fixed stand-in for ε_θ(x_t, t, c) with the ConditionalUNet call signature (c=None: null context).

    Every output depends on the whole batch (its size and mean context), so only one call on both
    contexts together reproduces the reference: a behaviour the code under test cannot fake by
    editing a call counter."""
    n = x.shape[0]
    d = 11 if c is None else c.shape[1]
    c = x.new_zeros(n, d) if c is None else c.to(x.dtype)
    if c_mask is not None:
        c = c * c_mask.to(x.dtype)[:, None]
    g = torch.Generator().manual_seed(_PROBE_SEED)
    mix = torch.randn(d, x.shape[1], generator=g).to(x.dtype)
    shift = (c @ mix)[:, :, None, None] + (t.to(x.dtype) / 100.0)[:, None, None, None]
    shift = shift + 0.05 * n + (c.mean(0) @ mix)[None, :, None, None]
    return torch.tanh(0.7 * x + shift)


class _CountingModel:
    """Calls :func:`probe_model` and records each call's batch size."""

    def __init__(self):
        self.batches: list[int] = []

    def __call__(self, x, t, c=None, c_mask=None):
        self.batches.append(int(x.shape[0]))
        return probe_model(x, t, c, c_mask)


def _tensor(out, what: str) -> np.ndarray:
    # exact types only: a subclass or look-alike object is rejected, never compared
    if type(out) is torch.Tensor:
        return out.detach().cpu().numpy()
    if type(out) is np.ndarray:
        return out
    raise TypeError(f"{what}: expected a torch.Tensor, got {type(out).__name__}")


def _run(name: str, case: int, fn, inputs: dict, outdir: str) -> dict:
    args = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in inputs.items()}
    log: dict = {}
    if name == "drop_context":
        args["generator"] = torch.Generator().manual_seed(int(args.pop("seed")))
    if name == "guided_eps":
        model = _CountingModel()
        args["model"] = model
    out = fn(**args)
    if name == "guided_eps":
        log["batches"] = model.batches
    if name == "forward_coefficients":
        if type(out) is not tuple or len(out) != 2:
            raise TypeError(f"forward_coefficients: expected a tuple (alphas, alpha_bars), got {type(out).__name__}")
        outputs = {"alphas": _tensor(out[0], "alphas"), "alpha_bars": _tensor(out[1], "alpha_bars")}
    else:
        outputs = {"out": _tensor(out, name)}
    for key, value in outputs.items():
        np.save(os.path.join(outdir, f"{name}.{case}.{key}.npy"), np.ascontiguousarray(value), allow_pickle=False)
    return log


def _is_memory_error(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, MemoryError) or "can't allocate memory" in text or "out of memory" in text


def main(workdir: str) -> int:
    main_pid = os.getpid()
    sys.path[0] = workdir
    outdir = os.path.join(workdir, "out")
    os.makedirs(outdir, exist_ok=True)
    with open(os.path.join(workdir, "job.json"), encoding="utf-8") as f:
        job = json.load(f)
    for name, specs in job.items():
        for case, spec in enumerate(specs):
            record: dict = {}
            try:
                inputs = {k: (np.load(os.path.join(workdir, v["npy"]), allow_pickle=False) if isinstance(v, dict)
                              else v) for k, v in spec.items()}
                module = __import__(f"ex_{name}")
                fn = getattr(module, name, None)
                if not callable(fn):
                    raise NameError(f"the exercise cell no longer defines {name}()")
                record = _run(name, case, fn, inputs, outdir)
            except Exception as error:  # noqa: BLE001 - a student's exception is that case's result
                if _is_memory_error(error):
                    with open(os.path.join(outdir, "fatal.json"), "w", encoding="utf-8") as f:
                        json.dump({"reason": f"memory limit reached in {name}()"}, f)
                    os._exit(FATAL_EXIT)
                lines = traceback.format_exception_only(type(error), error)
                record = {"error": "".join(lines).strip()[-600:]}
            if os.getpid() != main_pid:  # a process the student forked: never let it write results
                os._exit(0)
            with open(os.path.join(outdir, f"{name}.{case}.json"), "w", encoding="utf-8") as f:
                json.dump(record, f)
    with open(os.path.join(outdir, "done.json"), "w", encoding="utf-8") as f:
        json.dump({"done": True}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
