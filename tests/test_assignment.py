"""The assignment toolkit: the exercise catalogue, the mutation catalogue (the checker's
mutation score), and the autograder (make + grade on stubs, on the library's own methods, on
mutants, on student modules that loop, exit, raise or return the wrong shapes)."""
import numpy as np
import pytest

from nflows_edu import gradcheck
from nflows_edu.assignment import exercises, get_exercise
from nflows_edu.assignment.mutants import MUTANTS, SURVIVORS, check_mutant

REQUIRED = ["Linear.backward", "MLP.backward", "AdditiveCoupling.forward",
            "AdditiveCoupling.inverse", "AdditiveCoupling.backward", "AffineCoupling.forward",
            "AffineCoupling.inverse", "AffineCoupling.backward",
            "AffineCoupling.inverse_backward", "Scaling.backward", "MaskedLinear.backward",
            "MADE.masks", "MAF.inverse", "BatchNorm.backward", "ActNorm.backward",
            "LUInvertible1x1Conv.log_abs_det", "Squeeze.forward", "ResidualBlock.inverse",
            "ResidualBlock._logdet_backward"]


def test_catalogue_covers_the_required_exercises():
    names = [e.name for e in exercises()]
    assert set(REQUIRED) <= set(names)
    assert len(names) == len(set(names))
    registered = set(gradcheck.layer_names())
    for ex in exercises():
        assert set(ex.registry) <= registered, ex.name
        assert ex.difficulty in ("easy", "medium", "hard")


def test_a_bad_declaration_is_refused():
    from nflows_edu.assignment import exercise
    from nflows_edu.bijectors import Scaling
    with pytest.raises(ValueError, match="Class.method"):
        exercise("Scaling.nonexistent", Scaling, "easy", "x", registry=("Scaling",))
    with pytest.raises(ValueError, match="declared already"):
        exercise("Scaling.backward", Scaling, "easy", "x", registry=("Scaling",))


# ------------------------------------------------------------------ mutation catalogue
def test_mutation_catalogue_size():
    assert len(MUTANTS) >= 30
    assert len({m.layer for m in MUTANTS}) >= 8
    assert len({m.name for m in MUTANTS}) == len(MUTANTS)
    for name, reason in SURVIVORS:
        assert len(reason) > 50, name


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
def test_the_checker_catches_every_mutant(mutant):
    result = check_mutant(mutant, draws=2, seed=0)
    assert result.caught, f"{mutant.name} survived the checker"
    # it is caught by the check the catalogue says
    expected = {"gradient": "gradient", "log-det": "log-det", "round trip": "round trip",
                "bookkeeping": "bookkeeping", "training-mode gradient": "training-mode",
                "raised": "raised"}[mutant.expected]
    assert any(expected in f or "raised" in f for f in result.failures), result.failures


def test_the_unmutated_methods_pass_the_same_checks():
    """The control: every exercise's own library method, through the same path, is not
    flagged (so a caught mutant is caught by its edit)."""
    from nflows_edu.assignment.checks import registry_checks
    for ex in exercises():
        results = registry_checks(ex, ex.cls, np.random.default_rng(0), draws=1)
        assert all(not bad for _, bad in results), (ex.name, results)
