"""The figures as a browser draws them (marker ``browser``): figures written by
``plots.save_html`` are opened in headless Chromium and their rendered SVG is
measured against each axis's own data-to-pixel mapping.

Guards: the ``T`` marker sits where the axis puts ``T`` (log and linear axes;
the old code drew it at ``log10(T)`` on log axes), its label is drawn beside
it, no marker stretches the autorange, the per-row "distance >= T" boundary
of the attention view sits at ``q - T``, marker labels keep a light box on
dark colour maps, and subplot titles overlap no axis title or tick label.

Needs ``/usr/bin/chromium`` and ``/usr/bin/chromedriver``
(``scripts/install_browser.sh``); skipped when they are missing.  Screenshots
go to ``tests/artifacts/``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest

from mesa_viz import plots


from repo import ROOT  # noqa: E402
ARTIFACTS = ROOT / "tests" / "artifacts"
T = 8192

pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


# -- figures ---------------------------------------------------------------------------

def passkey_rows():
    rng = np.random.default_rng(0)
    return [dict(method=m, length=L, depth=d, correct=bool(L <= ok and rng.random() > 0.1))
            for m, ok in (("origin", T), ("mesa", 10 ** 9), ("rerope", 10 ** 9),
                          ("dynamic-ntk", 12000))
            for L in (2048, 4096, 8192, 12288, 16384, 32768)
            for d in (0.1, 0.5, 0.9) for _ in range(3)]


def attention(n_rows=2, width=20000):
    rng = np.random.default_rng(1)
    a = rng.random((n_rows, width)) ** 6
    return a / a.sum(axis=1, keepdims=True)


def hidden_values(n=16384):
    rng = np.random.default_rng(2)
    pos = np.arange(n)
    origin = np.log1p(pos) / 10 + rng.normal(0, 0.01, n)
    origin[T:] += np.linspace(0, 0.3, n - T)
    mesa = np.log1p(np.minimum(pos, T)) / 10 + rng.normal(0, 0.01, n)
    origin[0] = mesa[0] = 40.0                                 # the position-0 transient
    return {"origin": origin, "mesa": mesa}


def make_case(case: str):
    """``case`` = ``<figure>-<axis type>``; the default axis type of each figure
    is built without the new ``log_x`` argument."""
    kind, axis = case.rsplit("-", 1)
    if kind == "passkey_lines":
        extra = {} if axis == "log" else {"log_x": False}
        return plots.passkey_accuracy_lines(passkey_rows(), train_length=T, **extra)
    if kind == "distance":
        extra = {} if axis == "log" else {"log_x": False}
        return plots.attention_by_distance(attention(), [19999, 15000], names=["a", "b"],
                                           train_length=T, **extra)
    extra = {} if axis == "linear" else {"log_x": True}
    values = hidden_values()
    thr = float(plots.smooth_values(values["origin"], 256)[T - 1])
    return plots.hidden_state_figure(values, T, threshold=thr, smooth=256, **extra)


CASES = ["passkey_lines-log", "passkey_lines-linear", "distance-log", "distance-linear",
         "hidden-linear", "hidden-log"]


def bare(fig: go.Figure) -> go.Figure:
    """The same figure without shapes or annotations (the range the data alone gets)."""
    out = go.Figure(fig)
    out.layout.shapes, out.layout.annotations = (), ()
    return out


def render(drv, figs: dict, path: Path) -> dict:
    """Write ``figs`` (name -> Figure) to one page, open it, wait until every
    figure is drawn; returns name -> div id."""
    plots.save_html(list(figs.values()), path, title="plots in the browser")
    drv.get(path.as_uri())
    try:
        WebDriverWait(drv, 60, poll_frequency=0.25).until(lambda d: d.execute_script(
            "const g = [...document.querySelectorAll('.plotly-graph-div')];"
            "return g.length === arguments[0] && g.every(gd => gd._fullLayout &&"
            " gd.querySelector('.main-svg') && gd.querySelectorAll('g.annotation').length"
            " === gd._fullLayout.annotations.length)", len(figs)))
    except TimeoutException:
        raise AssertionError(f"{path} did not finish drawing in 60 s") from None
    return {name: f"fig{k}" for k, name in enumerate(figs)}


@pytest.fixture(scope="module")
def page(driver, tmp_path_factory):
    """Every case and its bare copy drawn on one page (one browser load); a case
    that cannot be built keeps its exception for its own test to raise."""
    figs, errors = {}, {}
    for case in CASES:
        try:
            fig = make_case(case)
        except TypeError as err:                  # e.g. a plots.py without log_x
            errors[case] = err
            continue
        figs[case], figs[case + ":bare"] = fig, bare(fig)
    ids = render(driver, figs, tmp_path_factory.mktemp("plots") / "cases.html")
    return ids, errors


GEOMETRY = """
const [id, name, value] = arguments;
const gd = document.getElementById(id), fl = gd._fullLayout;
const box = gd.getBoundingClientRect();
const rel = r => ({left: r.left - box.left, right: r.right - box.left,
                   top: r.top - box.top, bottom: r.bottom - box.top});
const si = fl.shapes.findIndex(s => s.name === name);
let ai = fl.annotations.findIndex(a => a.name === name);
if (ai < 0) ai = fl.annotations.findIndex(a => String(a.text).startsWith('T='));
const shape = si < 0 ? null : fl.shapes[si];
const ax = fl[shape ? 'xaxis' + shape.xref.slice(1) : 'xaxis'];
const ya = fl['yaxis' + ax._id.slice(1)];
const el = si < 0 ? null : gd.querySelector(`.shapelayer path[data-index="${si}"]`);
const label = ai < 0 ? null : gd.querySelector(`g.annotation[data-index="${ai}"]`);
const tick = [...gd.querySelectorAll('.xtick text')].find(t => t.textContent === String(value));
const l = v => ax.type === 'log' ? Math.log10(v) : v;
return {
  type: ax.type, x0: shape && shape.x0, range: ax.range,
  axis_px: ax._offset + ax.l2p(l(value)),
  shape: el && rel(el.getBoundingClientRect()),
  label: label && rel(label.getBoundingClientRect()),
  tick_px: tick ? (rel(tick.getBoundingClientRect()).left + rel(tick.getBoundingClientRect()).right) / 2 : null,
  plot: {left: ax._offset, right: ax._offset + ax._length, top: ya._offset,
         bottom: ya._offset + ya._length},
  yrange: ya.range,
};
"""


def geometry(drv, div_id: str, name: str = "train_length", value: float = T) -> dict:
    """Where the marker ``name`` and its label are drawn, and where the x axis
    itself puts ``value`` (from its own mapping ``l2p``), in pixels."""
    return drv.execute_script(GEOMETRY, div_id, name, value)


def screenshot_div(drv, div_id: str, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    el = drv.find_element("id", div_id)
    drv.execute_script("arguments[0].scrollIntoView()", el)
    path = ARTIFACTS / f"plots_{name}.png"
    el.screenshot(str(path))
    return path


def data_span(fig: go.Figure, log: bool) -> tuple[float, float]:
    x = np.concatenate([np.asarray(t.x, dtype=float) for t in fig.data])
    x = x[x > 0] if log else x
    return (np.log10(x.min()), np.log10(x.max())) if log else (x.min(), x.max())


# -- T on log and linear axes ---------------------------------------------------------------

@pytest.mark.parametrize("case", CASES)
def test_T_marker_sits_where_the_axis_puts_T(driver, page, case):
    ids, errors = page
    if case in errors:
        raise errors[case]
    g = geometry(driver, ids[case])
    shot = screenshot_div(driver, ids[case], case.replace("-", "_"))
    axis = case.rsplit("-", 1)[1]
    assert g["type"] == axis, g
    assert g["shape"] is not None, f"no train_length shape drawn ({shot})"
    line_px = (g["shape"]["left"] + g["shape"]["right"]) / 2
    assert abs(line_px - g["axis_px"]) < 1.5, \
        f"T line at {line_px:.1f}px, the x axis puts T={T} at {g['axis_px']:.1f}px ({shot})"
    assert g["plot"]["left"] <= line_px <= g["plot"]["right"]
    if g["tick_px"] is not None:                       # a tick labelled 8192: the same place
        assert abs(g["tick_px"] - line_px) < 2, (g, shot)
    lab = g["label"]
    assert lab is not None and lab["right"] > lab["left"], f"T label not drawn ({shot})"
    gap = min(abs(lab["left"] - line_px), abs(lab["right"] - line_px))
    assert gap < 10, f"T label {gap:.1f}px from its line ({shot})"
    assert g["plot"]["top"] - 2 <= lab["top"] and lab["bottom"] <= g["plot"]["bottom"] + 2


@pytest.mark.parametrize("case", CASES)
def test_markers_do_not_stretch_the_axis_range(driver, page, case):
    ids, errors = page
    if case in errors:
        raise errors[case]
    marked, alone = geometry(driver, ids[case]), geometry(driver, ids[case + ":bare"])
    r, r0 = np.array(marked["range"], dtype=float), np.array(alone["range"], dtype=float)
    span = abs(r0[1] - r0[0])
    assert np.allclose(r, r0, atol=0.002 * span), \
        f"x range {r.tolist()} with markers, {r0.tolist()} without"
    lo, hi = data_span(make_case(case), marked["type"] == "log")
    assert r[0] <= lo and r[1] >= hi and (r[1] - r[0]) <= 1.2 * (hi - lo), \
        f"x range {r.tolist()} vs the data's [{lo}, {hi}]"
    y, y0 = np.array(marked["yrange"], dtype=float), np.array(alone["yrange"], dtype=float)
    assert np.allclose(y, y0, atol=0.002 * abs(y0[1] - y0[0]))


def test_hidden_state_zoom_shows_the_crossing(driver, page):
    """The default threshold plot spans the trend: origin's rise past T is a
    good fraction of the plot's height, not a hairline under the transient."""
    ids, errors = page
    if "hidden-linear" in errors:
        raise errors["hidden-linear"]
    g = geometry(driver, ids["hidden-linear"])
    lo, hi = g["yrange"]
    values = hidden_values()
    rise = plots.smooth_values(values["origin"], 256)[-1] - plots.smooth_values(
        values["origin"], 256)[T - 1]
    assert rise / (hi - lo) > 0.3, f"origin's rise past T is {rise / (hi - lo):.1%} of the y range"


# -- attention rows: distance >= T per row ---------------------------------------------------

ROW_SEGMENTS = """
const gd = document.getElementById(arguments[0]), fl = gd._fullLayout;
const box = gd.getBoundingClientRect(), xa = fl.xaxis, ya = fl.yaxis;
return fl.shapes.map((s, i) => [s, i]).filter(([s]) => s.name === 'train_length').map(([s, i]) => {
  const r = gd.querySelector(`.shapelayer path[data-index="${i}"]`).getBoundingClientRect();
  return {x: (r.left + r.right) / 2 - box.left, top: r.top - box.top, bottom: r.bottom - box.top,
          want_x: xa._offset + xa.l2p(s.x0),
          row_top: ya._offset + Math.min(ya.l2p(s.y0), ya.l2p(s.y1)),
          row_bottom: ya._offset + Math.max(ya.l2p(s.y0), ya.l2p(s.y1)), y0: s.y0, x0: s.x0};
});
"""

LABEL_BOX = """
const gd = document.getElementById(arguments[0]), fl = gd._fullLayout;
return fl.annotations.map((a, i) => [a, i]).filter(([a]) => a.name === arguments[1]).map(([a, i]) => {
  const bg = gd.querySelector(`g.annotation[data-index="${i}"] rect.bg`);
  const st = getComputedStyle(bg);
  return [st.fill, parseFloat(st.fillOpacity)];
});
"""


def test_attention_rows_mark_distance_T_per_row(driver, tmp_path):
    rows = [6000, 9000, 12000, 16000, 19999]
    fig = plots.attention_heatmap(attention(5), rows, train_length=T,
                                  marks={"needle": (3000, 3040)})
    ids = render(driver, {"rows": fig}, tmp_path / "rows.html")
    shot = screenshot_div(driver, ids["rows"], "attention_rows")
    segs = driver.execute_script(ROW_SEGMENTS, ids["rows"])
    assert [s["x0"] for s in segs] == [q - T + 0.5 for q in rows if q >= T], shot
    for s in segs:
        assert abs(s["x"] - s["want_x"]) < 1.5, (s, shot)
        assert s["top"] >= s["row_top"] - 1.5 and s["bottom"] <= s["row_bottom"] + 1.5, (s, shot)
    for name in ("train_length", "needle"):            # light label boxes on the dark map
        ((fill, opacity),) = driver.execute_script(LABEL_BOX, ids["rows"], name)
        assert fill == "rgb(255, 255, 255)" and opacity >= 0.8, (name, fill, opacity)


# -- subplot titles, axis titles, tick labels -------------------------------------------------

BOXES = """
const gd = document.getElementById(arguments[0]), fl = gd._fullLayout;
const box = e => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
const titles = new Set(arguments[1]);
return {
  subplot_titles: [...gd.querySelectorAll('g.annotation')].filter(
      g => titles.has(g.textContent)).map(box),
  axis_titles: [...gd.querySelectorAll('[class^="g-x"][class$="title"] text,'
      + ' [class^="g-y"][class$="title"] text')].filter(e => e.textContent).map(box),
  ticks: [...gd.querySelectorAll('[class$="tick"] text')].map(box),
  legend: [...gd.querySelectorAll('.legend .bg')].map(box),
};
"""


def overlaps(a, b, pad=1.0) -> bool:
    return a[0] < b[2] - pad and b[0] < a[2] - pad and a[1] < b[3] - pad and b[1] < a[3] - pad


def bench_rows():
    rows = [{"kind": "machine", "method": None, "cpu": "test"},
            {"method": None, "length": None, "cpu": "a machine line without kind"}]
    rows += [dict(kind="point", method=m, length=L, prefill_s=L * k / 1e3,
                  peak_mem_bytes=L * k * 2 ** 20, decode_ms_per_token=5.0 * k)
             for m, k in (("origin", 4), ("mesa", 1), ("rerope", 2))
             for L in (2048, 4096, 8192, 16384)]
    rows.append(dict(kind="point", method="origin", length=32768, oom=True,
                     predicted_mem_bytes=40 * 2 ** 30))
    return rows


def test_subplot_titles_overlap_nothing(driver, tmp_path):
    heat = plots.passkey_heatmap(passkey_rows())
    bench = plots.bench_figure(bench_rows())
    ids = render(driver, {"heat": heat, "bench": bench}, tmp_path / "subplots.html")
    for name, fig in (("heat", heat), ("bench", bench)):
        shot = screenshot_div(driver, ids[name], f"subplots_{name}")
        titles = [a.text for a in fig.layout.annotations if a.name is None]
        b = driver.execute_script(BOXES, ids[name], titles)
        assert len(b["subplot_titles"]) == len(titles), (titles, shot)
        assert b["axis_titles"], shot
        for t in b["subplot_titles"]:
            for other in b["axis_titles"] + b["ticks"]:
                assert not overlaps(
                    t, other), f"{name}: subplot title {t} overlaps {other} ({shot})"
        for leg in b["legend"]:
            for other in b["axis_titles"] + b["ticks"]:
                assert not overlaps(leg, other), f"{name}: legend overlaps {other} ({shot})"
    texts = driver.execute_script(
        "return [...document.getElementById(arguments[0]).querySelectorAll('.textpoint text')]"
        ".map(t => t.textContent)", ids["bench"])
    assert "OOM" in texts and "None" not in driver.find_element("id", ids["bench"]).text
