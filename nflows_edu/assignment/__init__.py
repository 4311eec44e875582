r"""Assignments generated from the library, graded by the checks the library trusts.

* ``catalogue``: the exercises (one per method a student could write): ``exercise(...)``
  declares one, ``exercises()`` lists them;
* ``declarations``: the library's exercises, one ``exercise(...)`` each (it imports the layers;
  nothing in the library imports ``assignment``);
* ``make``: the student folder (stubs, walkthrough notebook, nbgrader variant, README);
* ``grade``: the autograder (registry checks on the student's class, agreement with the
  reference, a short training run), one subprocess per exercise;
* ``mutants``: the catalogue of bugs students make, each a small edit of a library method, and
  the test that the checker flags every one.

``catalogue`` and ``declarations`` are imported here, so the catalogue is complete once the
package is imported.
"""
from .catalogue import Exercise, exercise, exercises, get_exercise  # noqa: F401
from . import declarations  # noqa: F401,E402  (the library's exercises, after exercise exists)
