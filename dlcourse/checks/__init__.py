"""Learner self-checks: one per exercise of lessons 01–06 and of the assessment.

All go through one mechanism (``core``): ``run_student`` calls the learner's code, ``Slip``/``name_slip`` name the
wrong variant the output equals (catalogues generated from the formulas in ``variants``), ``Rung``/``climb``
ladders stop at the first failing condition, and ``failure`` writes the hint first, then the evidence.
"""
from .core import *  # noqa: F401,F403
from .models import *  # noqa: F401,F403
from .schedules import *  # noqa: F401,F403
from .guidance import *  # noqa: F401,F403
from .clip import *  # noqa: F401,F403
from .assessment import *  # noqa: F401,F403
from .attention import *  # noqa: F401,F403
from .recipe import *  # noqa: F401,F403
