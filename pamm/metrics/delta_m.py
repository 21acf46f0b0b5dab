"""Multi-task gain Delta_m (Vandenhende et al.), in percent.

Delta_m = (1/T) sum_t (-1)^{l_t} (M_mt,t - M_st,t) / M_st,t * 100, with l_t = 1 when the task's
headline metric is lower-is-better (depth RMSE, normals mErr) and 0 otherwise; one headline
column per task (``pamm.tasks.TASK_INFO[task].metric``: mIoU, maxF (legacy), RMSE, mErr, odsF).
The single-task baselines must share the multi-task model's backbone and recipe.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

from pamm.tasks import TASK_INFO, dataset_tasks


def delta_m(
    mt: Mapping[str, float],
    st: Mapping[str, float],
    dataset: str,
    tasks: Sequence[str] | None = None,
) -> float:
    """Delta_m in % of the multi-task results ``mt`` over the single-task results ``st``.

    Both map summary columns to values. By default the tasks are those of ``dataset`` whose
    headline column is in ``mt``; every one of them needs a finite, non-zero single-task value
    in ``st``, otherwise a ValueError names what is missing (a silent skip would change T).
    """
    if tasks is None:
        tasks = [task for task in dataset_tasks(dataset) if TASK_INFO[task].metric in mt]
    else:
        tasks = list(dataset_tasks(dataset, list(tasks)))
    if not tasks:
        raise ValueError(f"no headline metric of a {dataset!r} task is in the multi-task results")

    problems = []
    for task in tasks:
        column = TASK_INFO[task].metric
        if column not in mt or not math.isfinite(float(mt[column])):
            problems.append(f"multi-task {column} missing or not finite")
        if column not in st:
            problems.append(f"single-task {column} missing")
        elif not math.isfinite(float(st[column])) or float(st[column]) == 0.0:
            problems.append(f"single-task {column} = {st[column]!r} (must be finite and non-zero)")
    if problems:
        raise ValueError("cannot compute delta_m: " + "; ".join(problems))

    total = 0.0
    for task in tasks:
        column = TASK_INFO[task].metric
        sign = -1.0 if TASK_INFO[task].lower_is_better else 1.0
        total += sign * (float(mt[column]) - float(st[column])) / float(st[column])
    return 100.0 * total / len(tasks)
