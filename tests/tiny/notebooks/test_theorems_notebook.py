"""Notebook 06 (the theorems, run): committed clean, executed top to bottom in
test mode with nbclient, and its theorem explorer driven from Python.

Layer ``tiny``: no model is involved, but the file starts a Jupyter kernel and
imports the whole package in it, as the other notebook tests do (seconds, not
the milliseconds of ``unit`` tests)."""

from __future__ import annotations

import html
import logging
import re

import nbformat
import numpy as np
import pytest

from mesa_viz import widgets
from mesa_viz.analyses.theory import compute as theory


from repo import ROOT  # noqa: E402

PATH = ROOT / "notebooks" / "06_theorems.ipynb"


@pytest.fixture(autouse=True)
def _quiet(caplog):
    caplog.set_level(logging.ERROR, logger="mesa_viz")


def ys(fw, name) -> np.ndarray:
    trace = next(t for t in fw.data if t.name == name)
    return np.array(trace.y, dtype=float)


def statements(ex) -> list[str]:
    text = ex.outputs["statements"].value.replace("<br>", "\n")
    return html.unescape(re.sub(r"<[^>]+>", "", text)).split("\n")


# -- committed state and execution ---------------------------------------------------------

def test_notebook_committed_clean():
    nb = nbformat.read(PATH, as_version=4)
    nbformat.validate(nb)
    assert nb.cells[0].cell_type == "markdown" and "predict" in nb.cells[0].source.lower()
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert "MESA_VIZ_TEST" in code[0].source
    assert "theorem_explorer" in code[0].source      # the main picture is on the first screen


def test_notebook_runs_in_test_mode(tmp_path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("MESA_VIZ_TEST", "1")
    nb = nbformat.read(PATH, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert not [o for o in outputs if o.get("name") == "stderr" and "Traceback" in o.text]
    first = [o for o in code[0].outputs if o.output_type in ("display_data", "execute_result")]
    assert first and "application/vnd.jupyter.widget-view+json" in first[0].data
    text = "".join(o.text for o in outputs if o.output_type == "stream")
    # the check table: closed forms agree to float64 rounding, Equ.34 as printed fails Thm 3.2
    table = [line.split() for line in text.splitlines() if line.startswith(("nope", "relative"))]
    assert [(r[0], r[1], r[-1]) for r in table] == [
        ("nope", "corrected", "True"), ("relative", "corrected", "True"),
        ("relative", "paper", "False")]
    assert all(float(r[3]) < 1e-12 for r in table)
    assert any(o.output_type == "display_data" and "application/vnd.plotly.v1+json" in o.data
               for o in outputs)


# -- the explorer ----------------------------------------------------------------------------

@pytest.fixture()
def explorer():
    return widgets.theorem_explorer(M=16, H=0.5, N=3, E=2, length=200)


def test_explorer_draws_every_pe_with_H_and_M(explorer):
    fig = explorer.figures["value"]
    assert [t.name for t in fig.data][:4] == list(theory.PES)
    assert [s.name for s in fig.layout.shapes] == ["H", "M"]
    assert fig.layout.shapes[0].y0 == 0.5 and fig.layout.shapes[1].x0 == 16
    assert "nope holds" in fig.layout.title.text and "stair fails" in fig.layout.title.text
    np.testing.assert_allclose(ys(fig, "stair"), theory.run("stair", 16, 0.5, 200, N=3, E=2).value)
    np.testing.assert_allclose(ys(fig, "nope"), 16 / np.arange(1, 201) - 0.5, rtol=1e-11)
    lines = statements(explorer)
    assert len(lines) == 4 and [ln.split(" (")[0] for ln in lines] == [
        "NoPE", "relative PE", "ReRoPE clamp N=3", "Stair PE N=3, E=2"]
    assert lines[0].endswith("holds (t <= 200)") and "fails, below H from t = 38" in lines[3]
    assert [t.name for t in explorer.figures["position"].data][1:] == [
        "relative", "rerope", "stair"]


def test_explorer_layer2_paper_breaks_theorem_3_2(explorer):
    explorer.controls["layer2"].value = "paper"
    lines = statements(explorer)
    assert "fails" in lines[1] and "first t = 17" in lines[1]
    assert "holds" in lines[3]                           # the stair 'holds' trivially too
    assert ys(explorer.figures["value"], "relative")[-1] == pytest.approx(15.5, abs=1e-6)
    assert "Equ.34" in explorer.figures["value"].layout.title.text


def test_explorer_sliders_redraw(explorer):
    ex = explorer
    ex.controls["M"].value = 40
    assert ex.figures["value"].layout.shapes[1].x0 == 40
    np.testing.assert_allclose(ys(ex.figures["value"], "relative"), 40 / np.arange(1, 201) - 0.5,
                               rtol=1e-11, atol=1e-12)
    ex.controls["H"].value = -0.25
    assert ex.figures["value"].layout.shapes[0].y0 == pytest.approx(-0.25)
    ex.controls["E"].value = 1                           # the stair is the relative PE
    np.testing.assert_allclose(ys(ex.figures["value"], "stair"),
                               ys(ex.figures["value"], "relative"))
    ex.controls["length"].value = 50
    assert len(ys(ex.figures["value"], "nope")) == 50
    assert statements(ex)[0].endswith("holds (t <= 50)")


def test_explorer_invalid_N_keeps_figure(explorer):
    before = ys(explorer.figures["value"], "rerope")
    explorer.controls["N"].value = 20                    # N >= M = 16
    assert "invalid" in explorer.message and "N=20" in explorer.message
    np.testing.assert_array_equal(ys(explorer.figures["value"], "rerope"), before)
    explorer.controls["N"].value = 2
    assert explorer.message == ""
    assert not np.array_equal(ys(explorer.figures["value"], "rerope"), before)


def test_explorer_recovery_closed_forms_and_axis(explorer):
    pos = explorer.figures["position"]
    assert np.array_equal(ys(pos, "rerope"), np.round(ys(pos, "rerope")))
    explorer.controls["recovery"].value = "exact"
    np.testing.assert_allclose(ys(pos, "rerope"), theory.clamp_position(np.arange(1, 201), 3))
    fig = explorer.figures["value"]
    assert "rerope (closed form)" in [t.name for t in fig.data]
    explorer.controls["closed_form"].value = False
    assert [t.name for t in fig.data] == list(theory.PES)
    assert fig.layout.xaxis.type == "log"
    explorer.controls["log_x"].value = False
    assert fig.layout.xaxis.type == "linear"


def test_explorer_bad_arguments():
    with pytest.raises(ValueError, match="length=9000"):
        widgets.theorem_explorer(length=9000, max_length=4096)
    with pytest.raises(ValueError, match="E=0"):
        widgets.theorem_explorer(E=0)
