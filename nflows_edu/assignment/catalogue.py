r"""The exercise catalogue: one exercise per method a student could write.

The library's exercises are declared in ``declarations.py`` (which imports the layers; the
layers do not import the assignment code), one call per method::

    exercise("Scaling.backward", Scaling, "easy",
             "the VJP of a diagonal scaling, and the gradient of its log-det",
             registry=("Scaling",))

and then ``nflows-edu assignment list / make / grade`` offer it with no change to the
assignment code. Grading runs the registry checks of the layers named in ``registry`` with
every instance of the class replaced by the student's subclass (so ``Linear.backward`` is
graded inside a coupling layer's network), compares with the library's own class on the same
parameters, and trains a small flow with it.
"""
from dataclasses import dataclass

DIFFICULTIES = ("easy", "medium", "hard")


@dataclass(frozen=True)
class Exercise:
    r"""One exercise: write ``cls.<method>`` in a subclass of ``cls``.

    Attributes
    ----------
    name : str, ``"Class.method"``
    cls : type, the library class (the student's class subclasses it)
    difficulty : one of ``DIFFICULTIES``
    description : str, one line
    registry : tuple of str, the ``gradcheck`` registry entries that grade it (built, then
        every instance of ``cls`` inside is given the student's class)
    shapes : str, the TODO line of the stub (shapes of the arguments and results)
    extra : tuple of str, names of extra checks in ``grade.EXTRA_CHECKS`` (e.g. the
        training-mode batch gradient of ``BatchNorm``)
    setup : callable(instance) or None, run on every instance after its class is replaced
        (e.g. rebuild a MADE's masks with the student's ``masks``)
    train : bool, whether the short training run is part of the grade (False for a layer
        without parameters: there is nothing to train)
    hide : tuple of str, helper functions the library's method calls that would give the
        exercise away (``squeeze`` for ``Squeeze.forward``): not imported into the student's
        module (``make.library_source`` imports them inside the pasted method instead)
    """

    name: str
    cls: type
    difficulty: str
    description: str
    registry: tuple
    shapes: str = ""
    extra: tuple = ()
    setup: object = None
    train: bool = True
    hide: tuple = ()

    @property
    def class_name(self):
        return self.name.split(".")[0]

    @property
    def method(self):
        return self.name.split(".", 1)[1]


_CATALOGUE = {}


def exercise(name, cls, difficulty, description, registry, shapes="", extra=(), setup=None,
             train=True, hide=()):
    r"""Declare an exercise (see ``Exercise`` for the arguments); returns it.

    ``name`` must be ``"Class.method"`` with ``Class`` the name of ``cls`` and ``method`` one
    of its methods. Raises ``ValueError`` for a duplicate name or a bad declaration.
    """
    if name in _CATALOGUE:
        raise ValueError(f"exercise: {name!r} is declared already")
    cls_name, _, method = name.partition(".")
    if cls_name != cls.__name__ or not callable(getattr(cls, method, None)):
        raise ValueError(f"exercise: expected a name 'Class.method' naming a method of "
                         f"{cls.__name__}, got {name!r}")
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"exercise: expected difficulty in {DIFFICULTIES}, got {difficulty!r}")
    if isinstance(registry, str) or not registry:
        raise ValueError(f"exercise {name}: expected a non-empty tuple of registry names")
    entry = Exercise(name, cls, difficulty, description, tuple(registry), shapes, tuple(extra),
                     setup, train, tuple(hide))
    _CATALOGUE[name] = entry
    return entry


def exercises():
    """Every declared exercise, in declaration order (the library's own first)."""
    from . import declarations  # noqa: F401  (the library's exercises)
    return tuple(_CATALOGUE.values())


def get_exercise(name):
    """The exercise called ``name``; ``ValueError`` listing the names if there is none."""
    names = [e.name for e in exercises()]
    if name not in _CATALOGUE:
        raise ValueError(f"no exercise {name!r}; the catalogue has: {', '.join(names)}")
    return _CATALOGUE[name]


def format_catalogue():
    """The catalogue as a table (what ``nflows-edu assignment list`` prints)."""
    rows = exercises()
    width = max(len(e.name) for e in rows)
    lines = [f"{'exercise':{width}s}  {'level':6s}  description", "-" * (width + 60)]
    lines += [f"{e.name:{width}s}  {e.difficulty:6s}  {e.description}" for e in rows]
    return "\n".join(lines)
