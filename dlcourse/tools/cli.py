"""The ``dlcourse`` command line: one table of subcommands.

Each entry maps a subcommand to ``"module:function"``; the function takes the
remaining arguments (``argv: list[str]``), parses them itself and returns the
exit status, so ``dlcourse X ...`` and ``python -m dlcourse.X ...`` behave the
same. To add a subcommand, add one entry to ``COMMANDS``.
"""
from __future__ import annotations

import argparse
import functools
import importlib
import platform
import sys
from typing import Callable

# name -> (one-line help, "module:function" taking argv and returning an exit status)
COMMANDS: dict[str, tuple[str, str]] = {
    "authoring": ("write notebooks/ from solutions/ (--check: verify, --strip: strip outputs)", "dlcourse.tools.authoring:main"),
    "info": ("print versions, the device and the budget (quick/cpu/full)", "dlcourse.tools.cli:info"),
    "doctor": ("check GPU, torch build, budget, caches and folders; predict each lesson's training time here",
               "dlcourse.tools.doctor:main"),
    "train-evaluator": ("retrain the evaluator classifier of dlcourse.metrics (FID, accuracy)", "dlcourse.tools.evaluator_training:main"),
    "results": ("run the solution notebooks at a budget and write docs/results.md with their pictures",
                "dlcourse.tools.results:main"),
    "timings": ("run every solution notebook at a budget (default full) and write a table of wall times",
                "dlcourse.tools.timings:main"),
    "benchmark": ("images/s of training (each fast-path switch, a diffusers peer) and sampling (per-step sync, "
                  "batched guidance), interleaved repeats; table + JSON", "dlcourse.tools.benchmark:main"),
    "recipe": ("lesson 02's model trained with each change of recipe (v, min-SNR, cosine, lr, batch, EMA) and the "
               "diffusers peer for equal CPU seconds; FID, class shares, noise-like; table + JSON",
               "dlcourse.tools.recipe:main"),
    "release": ("write what students get (no solutions, no assessment masters) into OUT_DIR", "dlcourse.tools.release:main"),
    "grade": ("grade a folder of assessment submissions into a gradebook CSV and HTML reports", "dlcourse.grading:main"),
    "gradebook": ("merge shard gradebooks (merge), flag look-alike submissions (similarity), export for Canvas or "
                  "Moodle (export)",
                  "dlcourse.grading.grader:gradebook_main"),
}


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, ``<prog>: error: <message>``, with exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def reports_errors(prog: str):
    """Decorator for a subcommand's ``main(argv)``: the package's teaching errors (ValueError) become
    one line on stderr, ``<prog>: error: <message>``, and exit status 2 instead of a traceback."""

    def decorate(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
        @functools.wraps(main)
        def wrapped(argv: list[str] | None = None) -> int:
            try:
                return main(argv)
            except ValueError as error:
                message = " ".join(str(error).split())[:500]
                print(f"{prog}: error: {message}", file=sys.stderr)
                return 2

        return wrapped

    return decorate


def _resolve(target: str) -> Callable[[list[str]], int]:
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)


def info_lines() -> list[str]:
    """Versions, device (with GPU name and memory on CUDA) and the mode banner."""
    import torch
    import torchvision

    import dlcourse

    lines = [
        f"python       {platform.python_version()} ({sys.executable})",
        f"torch        {torch.__version__}",
        f"torchvision  {torchvision.__version__}",
        f"dlcourse     {dlcourse.__version__}",
    ]
    device = dlcourse.get_device()
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        lines.append(f"device       cuda: {props.name}, {props.total_memory / 2**30:.1f} GiB")
    else:
        lines.append(f"device       {device.type} (no CUDA GPU found: training will be slow)")
    chosen, reason = dlcourse.mode_and_reason()
    lines.append(f"budget       {chosen} ({reason})")
    lines.append(dlcourse.banner())
    return lines


def info(argv: list[str] | None = None) -> int:
    """``dlcourse info``: print the environment report."""
    Parser(prog="dlcourse info", description=COMMANDS["info"][0]).parse_args(argv)
    print("\n".join(info_lines()))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dlcourse`` console script and ``python -m dlcourse``."""
    parser = argparse.ArgumentParser(prog="dlcourse", description="Helpers of the diffusion-models course.")
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_text, _) in COMMANDS.items():
        # add_help=False: `dlcourse X --help` reaches X's own parser.
        subcommands.add_parser(name, help=help_text, add_help=False)
    args, rest = parser.parse_known_args(argv)
    return _resolve(COMMANDS[args.command][1])(rest)


if __name__ == "__main__":
    sys.exit(main())
