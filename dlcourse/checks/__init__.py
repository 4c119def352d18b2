"""Learner self-checks: ``compare`` / ``check_module`` (core) and one check per exercise concept."""
from .core import *  # noqa: F401,F403
from .models import *  # noqa: F401,F403
from .schedules import *  # noqa: F401,F403
from .guidance import *  # noqa: F401,F403
from .clip import *  # noqa: F401,F403
from .assessment import *  # noqa: F401,F403
