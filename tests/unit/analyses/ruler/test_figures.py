"""Perplexity and RULER results drawn without a model: the figures (T marked
with the marker helper, buckets as steps), the viewer widget and the report
sections (drawn when given a file, else saying how to include it)."""

from __future__ import annotations

import json
import math

import pytest

from mesa_viz import plots, report, widgets

EDGES = [(0, 64), (64, 96), (96, 128), (128, 150)]


def ppl_rows(lengths=(150,)):
    return [dict(method=m, length=L, text=t, bucket_start=a, bucket_end=min(b, L),
                 tokens=min(b, L) - max(a, 1), nll=3.0 + k / 10 + (m == "origin") * (a >= 64),
                 train_length=64)
            for L in lengths for m in ("origin", "mesa") for t in ("book", "code")
            for k, (a, b) in enumerate(EDGES) if a < L]


def task_rows():
    return [dict(method=m, task=t, length=L, sample=i, score=float(m == "mesa" or L <= 64),
                 train_length=64)
            for m in ("origin", "mesa") for t in ("niah_single_1", "ruler_vt")
            for L in (64, 128) for i in range(3)]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_ppl_figure_steps_per_bucket_and_marks_T():
    fig = plots.ppl_by_position(ppl_rows())
    assert [t.name for t in fig.data] == ["origin", "mesa", "origin", "mesa"]
    mesa_book = fig.data[1]
    assert list(mesa_book.x) == [0, 64, 96, 128, 150] and mesa_book.line.shape == "hv"
    assert list(mesa_book.y) == pytest.approx([3.0, 3.1, 3.2, 3.3, 3.3])
    assert math.isclose(mesa_book.customdata[0][3], math.exp(3.0))
    marks = [s for s in fig.layout.shapes if s.name == "train_length"]
    assert len(marks) == 2 and all(s.x0 == 64 for s in marks)          # one per text
    assert {a.text for a in fig.layout.annotations} >= {"book", "code"}
    assert "T=64" in fig.layout.title.subtitle.text        # named once, off the data


def test_ppl_figure_picks_a_length():
    rows = ppl_rows((100, 150))
    assert max(plots.ppl_by_position(rows).data[0].x) == 150
    assert max(plots.ppl_by_position(rows, length=100).data[0].x) == 100
    with pytest.raises(ValueError, match=r"length=7: perplexity rows have lengths \[100, 150\]"):
        plots.ppl_by_position(rows, length=7)
    with pytest.raises(ValueError, match="lacks"):
        plots.ppl_by_position([{"method": "origin"}])


def test_task_scores_panels_means_and_counts():
    fig = plots.task_scores(task_rows(), train_length=96)
    titles = [a.text for a in fig.layout.annotations if a.text in (
        "niah_single_1", "ruler_vt", "mean over tasks")]
    assert titles == ["niah_single_1", "ruler_vt", "mean over tasks"]
    origin = [t for t in fig.data if t.name == "origin"]
    assert len(origin) == 3 and list(origin[0].y) == [1.0, 0.0]
    assert origin[2].customdata[0][0] == 6                            # two tasks x 3 samples
    assert "95% CI" in origin[0].customdata[0][1]
    assert len([s for s in fig.layout.shapes if s.name == "train_length"]) == 3


def test_task_scores_lines_of_equal_scores_stay_visible():
    """Methods drawn earlier are wider, so equal scores show as nested
    stripes, not only the last method drawn; the widths stay bounded."""
    fig = plots.task_scores(task_rows())
    widths = {t.name: t.line.width for t in fig.data}
    assert widths["origin"] > widths["mesa"] == 2
    many = [dict(r, method=m) for m in ("origin", "mesa", "rerope", "stair", "pi", "ntk", "yarn",
                                        "string", "dual-chunk", "self-extend")
            for r in task_rows() if r["method"] == "origin"]
    widths = [t.line.width for t in plots.task_scores(many).data[:10]]
    assert widths == sorted(widths, reverse=True) and widths[0] <= 10 and widths[-1] == 2


def test_task_scores_mark_cut_needles():
    """A point where the layout cut some sample's needle carries ✂ and the
    hover says how many; tasks without needles (None) and older rows (no
    field) say nothing."""
    rows = task_rows()
    for r in rows:
        if r["task"] == "niah_single_1":
            r["needle_cuts"] = [70] if r["method"] == "mesa" and r["length"] == 128 \
                and r["sample"] < 2 else []
        elif r["method"] == "mesa":
            r["needle_cuts"] = None
    fig = plots.task_scores(rows)
    mesa, origin = ([t for t in fig.data if t.name == m] for m in ("mesa", "origin"))
    assert list(mesa[0].text) == ["", "✂"] and list(origin[0].text) == ["", ""]
    assert mesa[0].customdata[1][2] == "<br>needle cut by a chunk boundary: 2 of 3"
    assert origin[0].customdata[1][2] == "<br>needle cut by a chunk boundary: 0 of 3"
    assert list(mesa[1].text) == ["", ""] and mesa[1].customdata[1][2] == ""   # ruler_vt: None
    assert list(mesa[2].text) == ["", "✂"]                                      # the mean panel
    assert mesa[2].customdata[1][2] == "<br>needle cut by a chunk boundary: 2 of 3"
    assert "✂: the layout cut a needle" in fig.layout.title.text
    assert "✂" not in plots.task_scores(task_rows()).layout.title.text


def test_task_scores_fractional_scores_have_no_binary_interval():
    rows = [dict(method="mesa", task="niah_multivalue", length=100, score=s) for s in (0.5, 1.0)]
    fig = plots.task_scores(rows)
    assert fig.data[0].y[0] == 0.75 and fig.data[0].customdata[0][1] == ""


def test_eval_viewer_redraws_on_controls(tmp_path):
    ex = widgets.eval_viewer(_write(tmp_path / "p.jsonl", ppl_rows((100, 150))), task_rows())
    assert set(ex.figures) == {"ppl", "tasks"} and len(ex.figures["ppl"].data) == 4
    ex.controls["methods"].value = ("mesa",)
    assert {t.name for t in ex.figures["ppl"].data} == {"mesa"}
    assert {t.name for t in ex.figures["tasks"].data} == {"mesa"}
    ex.controls["length"].value = 100
    assert max(ex.figures["ppl"].data[0].x) == 100
    ex.controls["methods"].value = ()
    assert not ex.figures["ppl"].data and "no method selected" in str(ex.figures["ppl"].layout)
    with pytest.raises(ValueError, match="no rows"):
        widgets.eval_viewer()


def test_report_sections_draw_given_files_or_say_how(tmp_path):
    page = report.build(tmp_path / "r.html").read_text()
    assert "Not included: no perplexity results" in page
    assert "mesa-viz report --perplexity FILE" in page
    assert "Not included: no ruler results" in page and "mesa-viz ruler" in page
    results = {"ppl": _write(tmp_path / "ppl.jsonl", ppl_rows()),
               "ruler": _write(tmp_path / "ruler.jsonl", task_rows())}
    page = report.build(tmp_path / "r2.html", results=results).read_text()
    assert "16 rows from ppl.jsonl" in page and "24 samples from ruler.jsonl" in page
    assert "negative log-likelihood by position" in page and "task score against length" in page
    assert "[64, 96)" in page and "Not included: no perplexity" not in page
    saved = json.loads((tmp_path / "r2_data" / "ruler.json").read_text())
    assert len(saved) == 24
