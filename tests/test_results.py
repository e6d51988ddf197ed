"""The fronts and the hypervolume that the search's table, the report, the export and the bench share."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import numpy as np
import pytest
from _study_fixture import synthetic_study

from kdnas.results import hypervolume_2d, pareto_mask, pareto_table, trials_frame
from kdnas.runner import print_pareto_table


def _area_on_a_grid(points: list[tuple[float, float]], reference: tuple[float, float]) -> float:
    """The dominated area by another method: every cell of the grid that the points' coordinates draw is
    counted when some point is no worse than its lower-left corner."""
    xs = sorted({x for x, _ in points if x < reference[0]} | {reference[0]})
    ys = sorted({y for _, y in points if y < reference[1]} | {reference[1]})
    area = 0.0
    for (x0, x1), (y0, y1) in itertools.product(itertools.pairwise(xs), itertools.pairwise(ys)):
        if any(px <= x0 and py <= y0 for px, py in points):
            area += (x1 - x0) * (y1 - y0)
    return area


@pytest.mark.parametrize("seed", range(5))
def test_hypervolume_2d_equals_the_area_counted_cell_by_cell(seed: int) -> None:
    rng = random.Random(seed)
    points = [(rng.random() * 1.2, rng.random() * 1.2) for _ in range(12)]  # some beyond the reference
    assert hypervolume_2d(points, (1.0, 1.0)) == pytest.approx(_area_on_a_grid(points, (1.0, 1.0)))


def test_hypervolume_2d_of_known_points() -> None:
    assert hypervolume_2d([], (1.0, 1.0)) == 0.0
    assert hypervolume_2d([(0.5, 0.5)], (1.0, 1.0)) == pytest.approx(0.25)
    assert hypervolume_2d([(0.5, 0.5), (0.6, 0.6)], (1.0, 1.0)) == pytest.approx(0.25)  # dominated: adds nothing
    assert hypervolume_2d([(0.0, 0.5), (0.5, 0.0)], (1.0, 1.0)) == pytest.approx(0.75)


def test_pareto_mask_keeps_exactly_the_undominated_rows() -> None:
    costs = np.array([[1, 5], [2, 2], [3, 3], [5, 1], [2, 2], [1, 6]])
    # [3, 3] is dominated by [2, 2]; [1, 6] by [1, 5]; the two equal [2, 2] rows do not dominate each other.
    assert pareto_mask(costs).tolist() == [True, True, False, True, True, False]


def test_the_search_table_and_the_report_list_the_same_front_without_duplicates(tmp_path: Path, capsys) -> None:
    df = trials_frame(synthetic_study(tmp_path / "run"))
    table = pareto_table(df)
    assert sorted(table["trial"]) == [0, 1, 2, 3, 6]  # trial 8 repeats trial 2: a duplicate, never listed
    print_pareto_table(table, "smoke")
    lines = capsys.readouterr().out.splitlines()
    listed = [int(line.split()[0]) for line in lines[2:]]
    assert listed == table["trial"].tolist() and 8 not in listed
    assert listed[0] == 2  # most accurate first


def test_pareto_table_shows_the_size_when_measured_and_fits_long_architecture_names(tmp_path, capsys):
    table = pareto_table(trials_frame(synthetic_study(tmp_path / "run", metrics=("val_accuracy", "params", "size_kb"))))
    table.loc[table.index[0], "arch"] = "mbconv x0.75 hardswish d1-2-3-1 e3-4-6-3 k3-5-3-5 se0-1-0-1"
    print_pareto_table(table, "smoke")
    header, *rows = capsys.readouterr().out.splitlines()[1:]
    assert header.split()[-1] == "size" and all(row.endswith(" KiB") for row in rows)
    assert len({len(row) for row in rows}) == 1  # columns stay aligned
