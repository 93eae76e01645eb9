"""One colour per method in every figure: each figure function of the plots facade
that draws methods is called on small synthetic rows or arrays, and every trace
named after a method must be drawn in ``method_color(method)`` (its line, or
its markers).  A figure function of the facade that draws methods and has no
case here fails :func:`test_every_method_figure_has_a_case`."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from mesa_viz import plots
from mesa_viz.analyses.crossings import compute as failure
from mesa_viz.methods import METHODS
from mesa_viz.viz.style import method_color

T = 64
#: Methods in an order unlike METHODS, so a figure colouring by its own trace order fails.
NAMES = ["stair", "mesa", "origin", "rerope"]


def passkey_rows():
    return [dict(method=m, length=L, depth=d, correct=(m != "origin" or L <= T), seed=s,
                 train_length=T)
            for m in NAMES for L in (32, 64, 128) for d in (0.1, 0.5) for s in (0, 1)]


def ppl_rows():
    return [dict(method=m, length=128, text=t, bucket_start=a, bucket_end=b, tokens=b - a,
                 nll=2.0 + k, train_length=T)
            for m in NAMES for t in ("book", "code")
            for k, (a, b) in enumerate(((0, 64), (64, 128)))]


def task_rows():
    return [dict(method=m, task=t, length=L, sample=i, score=float(m != "origin" or L <= T))
            for m in NAMES for t in ("niah", "vt") for L in (64, 128) for i in range(2)]


def bench_rows():
    return [dict(kind="point", method=m, length=L, prefill_s=L * (k + 1) / 1e3,
                 peak_mem_bytes=L * (k + 1) * 2 ** 20, decode_ms_per_token=5.0 * (k + 1))
            for k, m in enumerate(NAMES) for L in (64, 128)]


def crossing_rows():
    rows = [dict(method=m, length=n, train_length=T, pairs=3, crossed=c, crossed_at_end=0,
                 crossed_fraction=c / 3, crossed_at_end_fraction=0.0, turned_back=c,
                 past_fraction_sum=0.5 * c, past_fraction_mean=c / 6,
                 first_crossing=T if c else None, per_pair=[{}], params={},
                 thresholds=[[0, 1, 1.0]])
            for m, c in zip(NAMES, (0, 1, 3, 0)) for n in (96, 128)]
    return failure.join(rows, passkey_rows())


def attention(n=200):
    rng = np.random.default_rng(0)
    a = rng.random((len(NAMES), n)) ** 4
    return a / a.sum(axis=1, keepdims=True)


def curves(n=300):
    x = np.arange(n)
    return {m: np.log1p(x) / (k + 1) for k, m in enumerate(NAMES)}


HEADS = [dict(layer=0, head=h, needle={m: 0.1 * h for m in NAMES},
              sinks={m: 0.2 for m in NAMES}, far={m: 0.05 for m in NAMES}) for h in range(3)]

#: figure function name -> a call on synthetic inputs drawing every method of NAMES.
CASES = {
    "attention_by_distance": lambda: plots.attention_by_distance(
        attention(), [199] * len(NAMES), names=NAMES, train_length=T),
    "distance_profile_figure": lambda: plots.distance_profile_figure(
        dict(zip(NAMES, attention())), 199, train_length=T),
    "retrieval_heads_figure": lambda: plots.retrieval_heads_figure(HEADS, NAMES),
    "passkey_accuracy_lines": lambda: plots.passkey_accuracy_lines(passkey_rows(),
                                                                   train_length=T),
    "ppl_by_position": lambda: plots.ppl_by_position(ppl_rows(), train_length=T),
    "task_scores": lambda: plots.task_scores(task_rows(), train_length=T),
    "bench_figure": lambda: plots.bench_figure(bench_rows()),
    "crossing_scatter": lambda: plots.crossing_scatter(crossing_rows()),
    "hidden_state_figure": lambda: plots.hidden_state_figure(curves(), T, threshold=1.0),
    "theorem_figure": lambda: plots.theorem_figure(
        {m: v for m, v in curves().items() if m in ("rerope", "stair")}, 16, 0.5),
    "recovered_position_figure": lambda: plots.recovered_position_figure(
        {m: v for m, v in curves().items() if m in ("rerope", "stair")}),
}

#: Figure functions of the facade that draw no per-method traces (one method, a
#: layout, a heat map coloured by value, or a dict of other figures).
NOT_PER_METHOD = {
    "layout_heatmap", "layouts_side_by_side", "layout_difference", "chunk_plan_figure",
    "figure1", "attention_heatmap", "hidden_heatmap", "passkey_heatmap", "needle_mass_figure",
    "explanation_figures", "attention_map_figure", "attention_maps_figure",
}


def trace_colours(tr) -> set:
    """The colours a trace draws its method in: its line and its markers."""
    found = set()
    for part in ("line", "marker"):
        obj = getattr(tr, part, None)
        colour = getattr(obj, "color", None) if obj is not None else None
        if isinstance(colour, str):
            found.add(colour)
    return found


def figure_functions() -> list[str]:
    """Every function of the facade returning a Figure (by annotation)."""
    out = []
    for name in plots.__all__:
        fn = getattr(plots, name)
        if inspect.isfunction(fn) and "Figure" in str(inspect.signature(fn).return_annotation):
            out.append(name)
    return out


def test_every_method_figure_has_a_case():
    names = figure_functions()
    assert "attention_by_distance" in names and "passkey_heatmap" in names
    missing = [n for n in names if n not in CASES and n not in NOT_PER_METHOD]
    assert not missing, f"figure functions without a method-colour case: {missing}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_methods_drawn_in_method_color(name):
    fig = CASES[name]()
    named = [t for t in fig.data if t.name in METHODS]
    assert named, f"{name}: no trace named after a method"
    for tr in named:
        want = method_color(tr.name)
        assert want in trace_colours(tr), \
            f"{name}: trace {tr.name!r} drawn in {trace_colours(tr)}, method_color is {want}"


def test_method_colors_are_distinct():
    colours = [method_color(m) for m in METHODS]
    assert len(set(colours)) == len(colours), dict(zip(METHODS, colours))
