"""Delta_m: Vandenhende's formula with lower-is-better signs, on a worked example; clear errors."""
from __future__ import annotations

import pytest

from pamm.metrics import delta_m

SINGLE_TASK = {"semseg_miou": 40.0, "depth_rmse": 0.6, "normals_merr": 18.0, "edge_odsf": 70.0}


def test_worked_example_with_lower_is_better_signs():
    multi_task = {"semseg_miou": 50.0, "depth_rmse": 0.5, "normals_merr": 20.0, "edge_odsf": 70.0, "extra": 1.0}
    # semseg +10/40 = +0.25; depth RMSE fell 0.1/0.6 -> +1/6; normals mErr rose 2/18 -> -1/9; edge 0
    expected = 100 * (0.25 + 1 / 6 - 1 / 9 + 0.0) / 4
    assert delta_m(multi_task, SINGLE_TASK, "nyud") == pytest.approx(expected)
    assert expected == pytest.approx(7.638888, abs=1e-5)


def test_only_tasks_of_the_multi_task_model_count():
    multi_task = {"semseg_miou": 44.0, "depth_rmse": 0.66}  # +10% and -10% (worse)
    assert delta_m(multi_task, SINGLE_TASK, "nyud") == pytest.approx(0.0)
    assert delta_m(multi_task, SINGLE_TASK, "nyud", tasks=["depth"]) == pytest.approx(-10.0)


def test_missing_or_zero_single_task_values_raise():
    with pytest.raises(ValueError, match="single-task depth_rmse missing"):
        delta_m({"depth_rmse": 0.5}, {"semseg_miou": 40.0}, "nyud")
    with pytest.raises(ValueError, match="non-zero"):
        delta_m({"edge_odsf": 50.0}, {"edge_odsf": 0.0}, "nyud")
    with pytest.raises(ValueError, match="no headline"):
        delta_m({"something": 1.0}, SINGLE_TASK, "nyud")
    with pytest.raises(ValueError, match="not tasks of"):
        delta_m(SINGLE_TASK, SINGLE_TASK, "nyud", tasks=["sal"])
