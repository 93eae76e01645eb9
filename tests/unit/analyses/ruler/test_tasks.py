"""Which RULER tasks run offline, the refusal of hub-only ones and the
score summary: pure code (no lm-eval import, no model)."""

from __future__ import annotations

import pytest

from mesa_viz.analyses.ruler import (GROUP, HUB_ONLY, NEEDLE_TASKS, OFFLINE_TASKS, STOCK_OFFLINE,
                                     TASK_DIR, VARIANTS, check_tasks, needle_chars, needle_cuts,
                                     summary)


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
    none = dict(needles_cut=None)
    assert summary(rows) == [dict(method="mesa", length=100, n=4, score=(2 / 3 + 0) / 2, **none),
                             dict(method="mesa", length=200, n=1, score=0.25, **none),
                             dict(method="origin", length=100, n=1, score=0.5, **none)]
    by_task = summary(rows, by_task=True)
    assert by_task[0] == dict(method="mesa", task="a", length=100, n=3, score=2 / 3, **none)


NIAH = ("The grass is green. The sky is blue.\nOne of the special magic numbers for "
        "real-fun is: 7119165.\nThe grass is green.\nOne of the special magic numbers for "
        "odd-one is: 42.\nWhat is the special magic number for real-fun?")
VT = ("Memorize.\n VAR QQQQQ = 12 The grass is green.\n VAR ORFBA = 11005 The sky.\n "
      "VAR JCQNH = VAR ORFBA  The grass.\nQuestion: Find all variables assigned 11005.")


def test_needles_are_the_answer_lines_and_the_chain_statements():
    a = NIAH.index("One of the special magic numbers for real-fun")
    assert needle_chars("niah_single_1", NIAH, ["7119165"]) == [(a, NIAH.index("7119165.") + 8)]
    both = needle_chars("niah_multivalue_noise", NIAH, ["42", "7119165"])
    assert [NIAH[x:y] for x, y in both] == [
        "One of the special magic numbers for real-fun is: 7119165.",
        "One of the special magic numbers for odd-one is: 42."]
    got = needle_chars("ruler_vt", VT, ["ORFBA", "JCQNH"])
    assert [VT[x:y] for x, y in got] == ["VAR ORFBA = 11005", "VAR JCQNH = VAR ORFBA"]
    assert needle_chars("ruler_cwe", NIAH, ["grass"]) is None
    assert needle_chars("ruler_fwe", NIAH, ["grass"]) is None
    assert set(NEEDLE_TASKS) == set(OFFLINE_TASKS) - {"ruler_cwe", "ruler_fwe"}


@pytest.mark.parametrize("task, targets, match", [
    ("niah_single_1", ["1234"], "no needle line with the answer '1234'"),
    ("niah_single_1", ["green"], "no needle line with the answer 'green'"),
    ("ruler_vt", ["ABCDE"], "no assignment of the variable 'ABCDE'"),
    ("niah_single_2", ["7119165"], "task 'niah_single_2': allowed")])
def test_needles_not_where_the_task_puts_them_are_refused(task, targets, match):
    with pytest.raises(ValueError, match=match):
        needle_chars(task, NIAH if task != "ruler_vt" else VT, targets)


def test_summary_counts_cut_needles_where_rows_say():
    rows = [dict(method="mesa", task="a", length=100, score=0.0, needle_cuts=[7]),
            dict(method="mesa", task="a", length=100, score=1.0, needle_cuts=[]),
            dict(method="mesa", task="b", length=100, score=1.0, needle_cuts=None),
            dict(method="mesa", task="b", length=200, score=1.0)]
    assert [needle_cuts(r) for r in rows][:2] == [[7], []]
    assert [needle_cuts(r) for r in rows][2:] == [None, None]
    assert [s["needles_cut"] for s in summary(rows)] == [1, None]
    assert [s["needles_cut"] for s in summary(rows, by_task=True)] == [1, None, None]
