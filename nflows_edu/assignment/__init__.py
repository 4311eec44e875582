r"""Assignments generated from the library, graded by the checks the library trusts.

* ``catalogue``: the exercises (one per method a student could write), declared by each layer
  next to its registry entry with ``exercise(...)``;
* ``make``: the student folder (stubs, walkthrough notebook, nbgrader variant, README);
* ``grade``: the autograder (registry checks on the student's class, agreement with the
  reference, a short training run), one subprocess per exercise;
* ``mutants``: the catalogue of bugs students make, each a small edit of a library method, and
  the test that the checker flags every one.

Only ``catalogue`` is imported here: the bijector modules import it to declare their exercises.
"""
from .catalogue import Exercise, exercise, exercises, get_exercise  # noqa: F401
