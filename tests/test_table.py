"""`nflows-edu table` at tiny sizes: the shape of its output, not its timings."""
import numpy as np
import pytest

from nflows_edu import cli, flow_matching, models, table


def test_table_cli_fast_prints_every_family_and_operation(capsys):
    assert cli.main(["table", "--fast"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("family"))
    rows = lines[header + 2:]
    assert len(rows) == len(table.FAMILIES) * len(table.OPERATIONS)
    for row in rows:
        numbers = row.split()[-3:]
        assert all(float(v) > 0 for v in numbers), row  # D=4, D=8 and their ratio
    names = [row.split()[0] for row in rows[::len(table.OPERATIONS)]]
    assert names == [f.name for f in table.FAMILIES]
    by_family = {name: rows[i * 4:(i + 1) * 4] for i, name in enumerate(names)}
    assert " D " in by_family["MAF"][1] and " D " in by_family["IAF"][2]  # sampling, density


def test_a_family_joins_the_table_by_one_entry():
    mine = table.Family("Tiny RealNVP",
                        lambda d, rng, hidden, dtype: models.realnvp(d, 1, (4,), rng=rng),
                        dict(table.PARALLEL_ML))
    rows = table.run(dims=(2, 3), n=8, repeats=1, families=[mine])
    assert [r["operation"] for r in rows] == list(table.OPERATIONS)
    assert all(set(r["times"]) == {2, 3} and min(r["times"].values()) > 0 for r in rows)
    text = table.format_table(rows, dims=(2, 3), n=8, hidden=(4,), repeats=1)
    assert "Tiny RealNVP" in text and "3/2" in text


def test_table_rejects_a_single_size(capsys):
    assert cli.main(["table", "--dims", "16"]) == 2
    assert "two sizes" in capsys.readouterr().err


def test_table_families_train_in_a_direction_they_can():
    rng = np.random.default_rng(0)
    for family in table.FAMILIES:
        flow = family.build(3, rng, (4,), np.float64)
        if family.trains == "flow matching":   # regresses the field of its one CNF
            assert flow_matching.field_of(flow, "test") is not None, family.name
        else:
            assert family.trains in flow.bijector.vjps, family.name
        assert set(family.passes) == set(table.OPERATIONS)



def test_curves_give_times_against_d_in_increasing_order():
    rows = [dict(family="A", operation="inference", passes="1", trains="forward",
                 times={8: 2.0, 4: 1.0}),
            dict(family="A", operation="sampling", passes="D", trains="forward",
                 times={4: 1.0, 8: 4.0}),
            dict(family="B", operation="inference", passes="1", trains="forward",
                 times={2: 3.0, 16: 3.0, 4: 3.0})]
    got = table.curves(rows)
    assert set(got) == {"A", "B"} and set(got["A"]) == {"inference", "sampling"}
    dims, seconds = got["A"]["inference"]
    assert dims.tolist() == [4, 8] and seconds.tolist() == [1.0, 2.0]
    assert got["B"]["inference"][0].tolist() == [2, 4, 16]


def test_loglog_slope_recovers_the_exponent_of_a_power_law():
    dims = np.array([4, 8, 16, 32, 64])
    for p in (0.0, 1.0, 2.0, 0.5):
        assert abs(table.loglog_slope(dims, 3e-3 * dims ** p) - p) < 1e-12
    # a flat cost until the hidden layers stop dominating, then linear: in between
    assert 0 < table.loglog_slope(dims, 1.0 + dims / 64) < 1


def test_loglog_slope_refuses_what_it_cannot_fit():
    for dims, seconds in (([4], [1.0]), ([4, 8], [1.0, 0.0]), ([4, 8], [1.0, 2.0, 3.0])):
        with pytest.raises(ValueError, match="loglog_slope"):
            table.loglog_slope(dims, seconds)


def test_curves_of_a_measured_family():
    tiny = table.Family("Tiny NICE", lambda d, rng, hidden, dtype: models.nice(
        d, 1, (4,), rng=rng), dict(table.PARALLEL_ML))
    got = table.curves(table.run(dims=(3, 2, 5), n=8, repeats=1, families=[tiny]))
    assert set(got["Tiny NICE"]) == set(table.OPERATIONS)
    for dims, seconds in got["Tiny NICE"].values():
        assert dims.tolist() == [2, 3, 5] and (seconds > 0).all()


def test_best_time_is_the_fastest_call_after_a_warm_up():
    calls = []
    seconds = table.best_time(lambda: calls.append(sum(range(20000))), repeats=3)
    assert len(calls) == 4 and 0 <= seconds < 1


def test_best_time_is_the_minimum_not_the_mean_nor_the_warm_up(monkeypatch):
    """On a clock where the calls take 5 (the untimed warm-up), 3, 1 and 2 seconds, the
    answer is 1: not the warm-up, the first, the last or the mean (2)."""
    from types import SimpleNamespace
    durations, now = iter([5.0, 3.0, 1.0, 2.0]), [0.0]
    monkeypatch.setattr(table, "time", SimpleNamespace(process_time=lambda: now[0]))

    def call():
        now[0] += next(durations)

    assert table.best_time(call, repeats=3) == 1.0
