"""`nflows-edu table` at tiny sizes: the shape of its output, not its timings."""
import numpy as np

from nflows_edu import cli, models, table


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
        assert family.trains in flow.bijector.vjps, family.name
        assert set(family.passes) == set(table.OPERATIONS)

