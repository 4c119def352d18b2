"""Test-session environment, loaded by pytest for every path in the repo (tests/ and solutions/).

Set here rather than in tests/conftest.py so that `pytest solutions/x.ipynb` alone gets it too.
nbval kernels are child processes and inherit os.environ, so the notebooks run in quick mode,
draw with the non-interactive Agg backend and import this working tree's `dlcourse`.
Set DLCOURSE_QUICK=0 in the shell to run everything in full mode.
"""
import os
from pathlib import Path

os.environ.setdefault("DLCOURSE_QUICK", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# Tiny quick-mode tensors: one thread avoids OpenMP contention between pytest and the nbval kernel.
os.environ.setdefault("OMP_NUM_THREADS", "1")
_ROOT = str(Path(__file__).resolve().parent)
os.environ["PYTHONPATH"] = os.pathsep.join(
    [_ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != _ROOT]
)
