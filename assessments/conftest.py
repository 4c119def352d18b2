"""pytest runs the assessment master under nbval (quick mode); the student copy only raises NotImplementedError."""
collect_ignore = ["assessment.ipynb", "train_reference.py"]
