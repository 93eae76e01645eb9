"""Which RULER tasks run offline, the refusal of hub-only ones and the
score summary: pure code (no lm-eval import, no model)."""

from __future__ import annotations

import pytest

from mesa_viz.lm_eval_tasks import (GROUP, HUB_ONLY, OFFLINE_TASKS, STOCK_OFFLINE, TASK_DIR,
                                    VARIANTS, check_tasks, summary)

pytestmark = pytest.mark.unit


def test_group_expands_to_every_offline_task():
    assert check_tasks(GROUP) == list(OFFLINE_TASKS)
    assert check_tasks(["ruler_vt", GROUP, "ruler_vt"]) == ["ruler_vt", *[
        t for t in OFFLINE_TASKS if t != "ruler_vt"]]
    assert len(OFFLINE_TASKS) == 9 and set(OFFLINE_TASKS) == set(STOCK_OFFLINE) | set(VARIANTS)


@pytest.mark.parametrize("task, what", [
    ("niah_single_2", "baber/paul_graham_essays"), ("niah_multivalue", "niah_multivalue_noise"),
    ("niah_multiquery", "niah_multiquery_noise"), ("niah_multikey_1", "niah_multikey_1_noise"),
    ("ruler_qa_squad", "rajpurkar.github.io"), ("ruler_qa_hotpot", "huggingface.co"),
    ("ruler", "7 of its 13 tasks")])
def test_hub_only_tasks_are_refused_with_the_offline_ones(task, what):
    with pytest.raises(ValueError) as err:
        check_tasks([task, "ruler_vt"])
    text = str(err.value)
    assert f"task {task!r} needs the network" in text and what in text
    assert "'ruler_offline'" in text and "'niah_single_1'" in text


@pytest.mark.parametrize("tasks, match", [(["hellaswag"], "unknown task 'hellaswag'"),
                                          ([], "tasks is empty")])
def test_unknown_or_no_task(tasks, match):
    with pytest.raises(ValueError, match=match):
        check_tasks(tasks)


def test_task_files_ship_the_variants_and_the_group():
    names = {p.stem for p in TASK_DIR.glob("*.yaml")}
    assert names == {*VARIANTS, GROUP}
    group = (TASK_DIR / f"{GROUP}.yaml").read_text()
    assert all(f"- {t}\n" in group for t in OFFLINE_TASKS)
    assert not set(HUB_ONLY) & set(OFFLINE_TASKS)


def test_summary_weights_tasks_equally():
    rows = [dict(method=m, task=t, length=L, score=s) for m, t, L, s in [
        ("mesa", "a", 100, 1.0), ("mesa", "a", 100, 1.0), ("mesa", "a", 100, 0.0),
        ("mesa", "b", 100, 0.0), ("origin", "a", 100, 0.5), ("mesa", "a", 200, 0.25)]]
    assert summary(rows) == [dict(method="mesa", length=100, n=4, score=(2 / 3 + 0) / 2),
                             dict(method="mesa", length=200, n=1, score=0.25),
                             dict(method="origin", length=100, n=1, score=0.5)]
    by_task = summary(rows, by_task=True)
    assert by_task[0] == dict(method="mesa", task="a", length=100, n=3, score=2 / 3)
