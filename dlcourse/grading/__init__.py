"""The assessment grader (``dlcourse grade``): sandboxed exercise code, strict model reading, reports.

Modules: ``sandbox`` (a fresh interpreter under limits), ``exercises`` (the function part),
``model`` (strict reading, sampling, scoring), ``report`` (HTML, gradebook, histogram), ``grader``
(the batch and the command line). The threat model is in assessments/README.md.
"""
from .exercises import EXERCISES, SubmissionError
from .grader import Grader, Settings, grade_class, load_settings, main

__all__ = ["EXERCISES", "SubmissionError", "Grader", "Settings", "grade_class", "load_settings", "main"]
