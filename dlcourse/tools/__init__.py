"""What instructors and maintainers run: ``dlcourse authoring``, ``release``, ``results``, ``timings``,
``doctor``, ``benchmark``, ``train-evaluator`` and the command line that dispatches them (``cli``).

Tools may import the student's library (``dlcourse``) and the grader (``dlcourse.grading``); the library
never imports ``dlcourse.tools`` (``tests/test_house.py`` walks the imports to prove it).
"""
