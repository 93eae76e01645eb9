"""The figures as a browser draws them (marker ``browser``): figures written by
``plots.save_html`` are opened in headless Chromium and their rendered SVG is
measured against each axis's own data-to-pixel mapping.

Guards: the ``T`` marker sits where the axis puts ``T`` (log and linear axes;
the old code drew it at ``log10(T)`` on log axes), its label is drawn beside
it, no marker stretches the autorange, the per-row "distance >= T" boundary
of the attention view sits at ``q - T``, marker labels keep a light box on
dark colour maps, and subplot titles overlap no axis title or tick label;
on the multi-panel figures (six hidden-state panels, whole attention maps,
needle mass with two colour bars, 06's theorem figure and its error title,
02's distance figure, 03's threshold plot, passkey, Figure 1) no two titles,
axis titles, annotations, colour bars or legends overlap and none is cut off
at 1400x900, no text shows a share above 100 %, and every curve lies inside
the y range drawn.

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
    centred = abs((lab["left"] + lab["right"]) / 2 - line_px) < 2      # a label over the plot
    assert gap < 10 or centred, f"T label {gap:.1f}px from its line ({shot})"
    above = lab["bottom"] <= g["plot"]["top"] + 1 and lab["top"] >= g["plot"]["top"] - 30
    inside = g["plot"]["top"] - 2 <= lab["top"] and lab["bottom"] <= g["plot"]["bottom"] + 2
    assert above or inside, f"T label at {lab}, plot {g['plot']} ({shot})"


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


# -- every text of the multi-panel figures: no overlaps, nothing cut off, honest % -----------

def hidden_views():
    """Three methods' views of two paper windows (six panels), synthetic values."""
    from mesa_viz.analyses.thresholds.hidden import HiddenView, paper_windows
    rng = np.random.default_rng(3)
    n, pool, layers, dims = 12288, 32, [0, 10, 20], list(range(16))
    windows = paper_windows(n, T)
    edges = [np.arange(a, b + 1, pool) for a, b in windows]
    return [HiddenView(m, T, n, layers, dims, windows, pool, edges,
                       [rng.normal(size=(len(layers), len(dims), len(e) - 1)) for e in edges])
            for m in ("origin", "mesa", "rerope")]


def attention_maps(n=9216, grid=48):
    from mesa_viz.analyses.attention_map.pooling import AttentionMap
    rng = np.random.default_rng(4)
    e = np.linspace(0, n, grid + 1).astype(int)
    return [AttentionMap(m, {}, T, 5, 3, n, "max", [0, n, 0, n], e, e,
                         np.tril(rng.random((grid, grid)) ** 4) + 1e-9,
                         chunk_plan=[(0, 512), (512, 4608), (4608, n)] if m == "mesa" else None)
            for m in ("mesa", "origin")]


def theorem_paper_figure():
    """06's value figure with layer 2 as printed (relative, ReRoPE, Stair run far above H)."""
    from mesa_viz.analyses.theory import compute as theory
    runs = {pe: theory.run(pe, M=16, H=0.5, length=512, **(
        {} if pe == "nope" else dict(layer2="paper", N=3 if pe in ("rerope", "stair") else None,
                                     E=4 if pe == "stair" else None)))
            for pe in theory.PES}
    return runs, plots.theorem_figure({pe: r.value for pe, r in runs.items()}, 16, 0.5,
                                      runs["nope"].t, title="layer 2 paper (Equ.34 as printed)")


def max_over_heads_distance():
    """02's distance figure with the max over heads: rows summing to more than 1."""
    rng = np.random.default_rng(5)
    heads = rng.random((9, 2, 12000)) ** 8
    heads /= heads.sum(axis=-1, keepdims=True)
    return plots.attention_by_distance(heads.max(axis=0), [11999, 11999],
                                       names=["origin", "mesa"], train_length=T,
                                       of="max over heads per key")


def relative_threshold_figure():
    values = hidden_values()
    thr = float(plots.smooth_values(values["origin"], 256)[T - 1])
    return plots.hidden_state_figure(values, T, threshold=thr, smooth=256, relative=True,
                                     correlation=0.995,
                                     title="hidden state, layer 20, dim 363 (trailing mean over "
                                           "256 tokens)")


def failed_redraw_title(fig):
    """A figure retitled by the explorer's error path twice (the note replaced, not piled up)."""
    from mesa_viz.viz.explorer import _fitted
    what = "running nope, relative, rerope, stair to t=8192"
    for _ in range(2):
        fig.update_layout(title_text=_fitted(fig, fig.layout.title.text,
                                             f" · not redrawn: {what} failed"))
    return fig


def text_cases() -> dict:
    rows = [r for r in passkey_rows() if not (r["method"] == "mesa" and r["length"] == 32768)]
    lay = plots.figure1_layouts()[0]
    return {
        "hidden_heatmap": plots.hidden_heatmap(hidden_views()),
        "attention_maps": plots.attention_maps_figure(attention_maps()),
        "needle_mass": plots.needle_mass_figure(
            np.random.default_rng(6).random((2, 30, 9)) ** 3, ["origin", "mesa"],
            title="attention on the needle per layer and head (9216 tokens, T=8192, answer "
                  "step q=9215)"),
        "theorem_paper": theorem_paper_figure()[1],
        "theorem_failed": failed_redraw_title(theorem_paper_figure()[1]),
        "distance_max_heads": max_over_heads_distance(),
        "threshold_relative": relative_threshold_figure(),
        "passkey_heatmap": plots.passkey_heatmap(rows, train_length=T),
        "passkey_lines": plots.passkey_accuracy_lines(rows, train_length=T),
        "figure1": plots.figure1(),
        "layout_mesa": plots.layout_heatmap(lay),
        "attention_map": plots.attention_map_figure(attention_maps()[0]),
        "attention_rows": plots.attention_heatmap(
            attention(5), [6000, 9000, 12000, 16000, 19999], train_length=T,
            marks={"needle": (3000, 3040)}),
        "bench": plots.bench_figure(bench_rows()),
    }


TEXT_CASES = ["hidden_heatmap", "attention_maps", "needle_mass", "theorem_paper",
              "theorem_failed", "distance_max_heads", "threshold_relative", "passkey_heatmap",
              "passkey_lines", "figure1", "layout_mesa", "attention_map", "attention_rows",
              "bench"]


TEXT_BOXES = """
const gd = document.getElementById(arguments[0]);
const box = gd.getBoundingClientRect();
const items = [];
const add = (kind, el) => {
  const r = el.getBoundingClientRect();
  if (r.width < 0.5 || r.height < 0.5) return;
  items.push({kind, text: el.textContent.slice(0, 70),
              r: [r.left - box.left, r.top - box.top, r.right - box.left, r.bottom - box.top]});
};
gd.querySelectorAll('text.gtitle, text.gtitle-subtitle').forEach(e => add('title', e));
gd.querySelectorAll('[class^="g-x"][class$="title"] text, [class^="g-y"][class$="title"] text')
  .forEach(e => e.textContent && add('axis title', e));
gd.querySelectorAll('g.annotation').forEach(e => add('annotation', e));
gd.querySelectorAll('g.colorbar').forEach(e => add('colour bar', e));
gd.querySelectorAll('g.legend').forEach(e => add('legend', e));
const texts = [...gd.querySelectorAll('svg text')].map(t => t.textContent);
const plots = [...gd.querySelectorAll('.bglayer rect.bg')].map(e => {
  const r = e.getBoundingClientRect();
  return [r.left - box.left, r.top - box.top, r.right - box.left, r.bottom - box.top]; });
return {items, width: box.width, height: box.height, texts, plots};
"""


#: A notebook's output area in a 1400 px wide JupyterLab (the prompt column and
#: side bar take the rest): figures without a width of their own get this.
OUTPUT_WIDTH = 900

#: Line plots whose T (or M) label sits over the plot, off the curves.
LABELS_ABOVE = ("theorem_paper", "theorem_failed", "distance_max_heads", "threshold_relative",
                "passkey_lines")

NARROW = """
const w = arguments[0], done = arguments[arguments.length - 1];
const gds = [...document.querySelectorAll('.plotly-graph-div')];
Promise.all(gds.map(gd => { if (!gd.layout.width) gd.style.width = w + 'px';
                            return Plotly.Plots.resize(gd); })).then(() => done(true));
"""


@pytest.fixture(scope="module")
def text_page(driver, tmp_path_factory):
    """The cases on one page at 1400x900, each figure as wide as a notebook's
    output area."""
    figs = text_cases()
    driver.set_window_size(1400, 900)
    ids = render(driver, figs, tmp_path_factory.mktemp("texts") / "texts.html")
    driver.set_script_timeout(60)
    driver.execute_async_script(NARROW, OUTPUT_WIDTH)
    return figs, ids


@pytest.mark.parametrize("name", TEXT_CASES)
def test_titles_colour_bars_and_labels_overlap_nothing(driver, text_page, name):
    """At 1400x900: no two titles, axis titles, annotations (panel titles, mark
    labels), colour bars or legends overlap, and none runs past the figure."""
    figs, ids = text_page
    shot = screenshot_div(driver, ids[name], f"texts_{name}")
    got = driver.execute_script(TEXT_BOXES, ids[name])
    items = got["items"]
    assert any(i["kind"] == "title" for i in items), (items, shot)
    for i in items:
        l, t, r, b = i["r"]
        assert l >= -1 and t >= -1 and r <= got["width"] + 1 and b <= got["height"] + 1, \
            f"{name}: {i['kind']} {i['text']!r} at {i['r']} cut off by the figure's edges " \
            f"({got['width']}x{got['height']}, {shot})"
    for k, a in enumerate(items):
        for b in items[k + 1:]:
            assert not overlaps(a["r"], b["r"]), \
                f"{name}: {a['kind']} {a['text']!r} {a['r']} overlaps {b['kind']} " \
                f"{b['text']!r} {b['r']} ({shot})"
    assert got["plots"], shot
    top = min(p[1] for p in got["plots"])
    for i in items:                  # T and M over line plots: labelled above the data
        if name in LABELS_ABOVE and i["kind"] == "annotation" and \
                i["text"].startswith(("T=", "M =")):
            assert i["r"][3] <= top + 1, f"{name}: {i['text']!r} {i['r']} on the data ({shot})"
    for i in items:                  # marks' labels may sit on the data; nothing else may
        if i["kind"] != "annotation":
            for p in got["plots"]:
                assert not overlaps(i["r"], p, pad=2), \
                    f"{name}: {i['kind']} {i['text']!r} {i['r']} over a plot area {p} ({shot})"


def test_no_share_above_100_percent(driver, text_page):
    """No text shows a percentage above 100 % unless it says it is a sum."""
    import re
    figs, ids = text_page
    for name, div in ids.items():
        for text in driver.execute_script(TEXT_BOXES, div)["texts"]:
            for value in re.findall(r"(\d+(?:\.\d+)?)\s?%", text):
                assert float(value) <= 100 or "sum" in text, f"{name}: {text!r}"
    meta = figs["distance_max_heads"].layout.meta["mass_beyond_train_length"]
    assert max(meta.values()) > 1            # the case does sum past 1: the check could fail
    assert "not a share" in figs["distance_max_heads"].layout.title.subtitle.text


def test_theorem_paper_draws_every_curve_inside_the_y_range(driver, text_page):
    """06 with layer 2 as printed: every PE's curve lies inside the y range drawn."""
    figs, ids = text_page
    runs, _ = theorem_paper_figure()
    yrange = driver.execute_script(
        "return document.getElementById(arguments[0])._fullLayout.yaxis.range",
        ids["theorem_paper"])
    for pe, r in runs.items():
        v = np.asarray(r.value, dtype=float)
        v = v[np.isfinite(v)]
        assert yrange[0] <= v.min() and v.max() <= yrange[1], (pe, v.min(), v.max(), yrange)
    assert max(float(np.nanmax(r.value)) for r in runs.values()) > 0.5 + 2.5   # off the old range
