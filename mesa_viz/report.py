"""A headless, self-contained HTML report of the analyses.

``report.build(out, model=..., tokenizer=..., results={"passkey": ..., "bench": ...})``
writes one HTML file (plotly.js inlined: it works offline) and saves every
computed array next to it (``<out>_data/``) before drawing it.

The report is a list of :class:`Section` (:data:`SECTIONS`): each one a
title and a function of one :class:`Context` returning page items (figures
and HTML strings).  A section that lacks its input (no model, no results
file) says how to include it instead of being left out.  The model runs
through :meth:`Context.trace`, once per method, whatever sections use it.
Adding a section: one function and one :class:`Section` line (with
``reads="KIND"`` if it draws a results file passed as ``results={KIND: path}``).
"""

from __future__ import annotations

import dataclasses
import html
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import plots
from .layouts import layout
from .methods import METHODS
from .results import Trace

__all__ = ["build", "Context", "Section", "SECTIONS"]

log = logging.getLogger(__name__)


@dataclass
class Context:
    """What every section sees: the data folder, the model (or None), the
    options, and the traces computed so far (:meth:`trace`)."""

    data: Path
    model: object = None
    tokenizer: object = None
    train_length: int | None = None
    length: int | None = None
    methods: tuple[str, ...] = ("origin", "mesa")
    layers: list[int] | None = None
    layout_length: int = 48
    layout_train_length: int = 16
    window: int | None = None
    min_correlation: float = 0.99
    results: dict[str, Path] = field(default_factory=dict)
    seed: int = 0
    traces: dict[str, Trace] = field(default_factory=dict)
    _prompt: dict | None = None

    @property
    def T(self) -> int:
        """The training length: given, else the model's."""
        from .application import train_length_of
        return int(self.train_length or train_length_of(self.model))

    @property
    def n(self) -> int:
        """Prompt length in tokens: given, else 1.25 x T."""
        return int(self.length or self.T * 1.25)

    @property
    def smoothing(self) -> int:
        """The threshold finder's window: given, else min(256, T / 4)."""
        return int(self.window or max(1, min(256, self.T // 4)))

    def prompt(self) -> dict:
        """The passkey sample every model section shares (needle at half
        depth), saved as ``input_ids.npy`` and ``prompt.json``."""
        if self._prompt is None:
            from .passkey import make_sample
            self._prompt = make_sample(self.tokenizer, self.n, depth=0.5, seed=self.seed)
            np.save(self.data / "input_ids.npy", np.asarray(self._prompt["input_ids"]))
            (self.data / "prompt.json").write_text(json.dumps(
                {k: self._prompt[k] for k in ("passkey", "needle_span", "length", "depth",
                                              "seed")}))
        return self._prompt

    def attention_layers(self) -> list[int]:
        """The decoder layers whose attention is shown: given, else first,
        middle and last."""
        L = self.model.config.num_hidden_layers
        if self.layers is None:
            return sorted({0, L // 2, L - 1})
        bad = [l for l in self.layers if not 0 <= l < L]
        if bad:
            raise ValueError(f"layers {bad} out of range: allowed 0..{L - 1}")
        return list(self.layers)

    def trace(self, method: str) -> Trace:
        """``method``'s trace of :meth:`prompt`: attention of the last query in
        :meth:`attention_layers` and the hidden states the threshold finder
        reads; computed once, saved as ``trace_<method>``."""
        if method not in self.traces:
            from .probes import trace
            from .thresholds import default_hidden_layers
            tr = trace(self.model, self.prompt()["input_ids"], method=method,
                       layers=self.attention_layers(), query_rows=[self.n - 1],
                       hidden_layers=default_hidden_layers(self.model.config.num_hidden_layers),
                       tokenizer=self.tokenizer, train_length=self.T)
            tr.save(self.data / f"trace_{method}")
            self.traces[method] = tr
        return self.traces[method]


@dataclass(frozen=True)
class Section:
    """One part of the report: ``draw(context)`` returns its page items;
    ``reads`` names the ``results`` file it draws, if any."""

    title: str
    draw: Callable[[Context], list]
    reads: str | None = None


def _p(text: str) -> str:
    return f"<p class='note'>{html.escape(text)}</p>"


def _missing(what: str, how: str) -> list:
    return [_p(f"Not included: {what}. To include it, {how}.")]


# -- sections ---------------------------------------------------------------------

def layouts_section(ctx: Context) -> list:
    """The paper's Figure 1 (Mesa and Stair PE on toy sizes), every method's
    layout at a small size, Mesa's chunk plan and its difference with origin."""
    n, T = ctx.layout_length, ctx.layout_train_length
    figure1 = [_p("The paper's Figure 1: Mesa on 13 tokens (T=8; a first chunk of 2, middle "
                  "chunks of 3 that see the first chunk and themselves, a last chunk of 2 that "
                  "sees every key through Stair PE) and Stair PE with N=4, E=2 over the whole "
                  "matrix. Each cell holds the relative position query q uses for key k."),
               plots.figure1()]
    lays = [layout(m, n, train_length=T) for m in METHODS]
    summary = [{"method": l.method, "seq_len": n, "params": l.params,
                "max_relative_position": l.max_relative_position,
                "chunk_plan": l.chunk_plan.to_dict() if l.chunk_plan else None} for l in lays]
    (ctx.data / "layouts.json").write_text(json.dumps(summary, indent=1))
    mesa = next(l for l in lays if l.method == "mesa")
    origin = next(l for l in lays if l.method == "origin")
    beyond = [l.method for l in lays if l.max_relative_position >= T]
    return [*figure1, _p(f"n={n}, T={T}. Methods using relative positions >= T somewhere: "
               f"{', '.join(beyond) or 'none'}."),
            plots.layouts_side_by_side(lays), plots.layout_heatmap(mesa),
            plots.chunk_plan_figure(mesa), plots.layout_difference(mesa, origin)]


_NO_MODEL = ("no model was given",
             "pass model= and tokenizer= to report.build (mesa-viz report without --no-model)")


def attention_section(ctx: Context) -> list:
    """Attention of the last query past ``T`` per method (max over heads, the
    needle marked), its needle share and its mass by distance."""
    if ctx.model is None:
        return _missing(*_NO_MODEL)
    needle, n, T = tuple(ctx.prompt()["needle_span"]), ctx.n, ctx.T
    items = [_p(f"{n} tokens, T={T}; passkey prompt, needle at half depth "
                f"(tokens [{needle[0]}, {needle[1]}))")]
    for method in ctx.methods:
        tr = ctx.trace(method)
        items.append(plots.attention_heatmap(
            tr.attention[:, :, 0].max(axis=1), [f"layer {l}" for l in tr.layers],
            marks={"needle": needle}, train_length=T, row_title="layer (max over heads)",
            query_positions=[n - 1] * len(tr.layers),
            title=f"{method}: attention of the last query (q={n - 1}), max over heads"))
        share = tr.needle_share(needle).mean(axis=1)                       # [layer]
        items.append(_p(f"{method}: needle share of the last query's attention, mean over "
                        "heads, by layer: " + ", ".join(
                            f"{l}: {s:.2%}" for l, s in zip(tr.layers, share))))
    rows = np.stack([ctx.trace(m).attention[:, :, 0].mean(axis=(0, 1)) for m in ctx.methods])
    items.append(plots.attention_by_distance(
        rows, [n - 1] * len(rows), names=list(ctx.methods), train_length=T,
        title="attention mass of the last query by distance (mean over layers and heads)"))
    return items


def thresholds_section(ctx: Context) -> list:
    """The threshold finder on origin's trace and each method's crossings."""
    from .thresholds import find_thresholds, measure_crossings, order_pairs
    if ctx.model is None:
        return _missing(*_NO_MODEL)
    if ctx.n < ctx.T:
        return _missing(f"the prompt has {ctx.n} tokens, fewer than T={ctx.T}",
                        "give a length >= T")
    window = ctx.smoothing
    traces = {m: ctx.trace(m) for m in dict.fromkeys(["origin", *ctx.methods])}
    pairs = find_thresholds(traces["origin"], min_correlation=ctx.min_correlation,
                            window=window)
    measure_crossings(pairs, traces, window)
    pairs = [dataclasses.asdict(p) for p in order_pairs(pairs)]
    (ctx.data / "thresholds.json").write_text(json.dumps(pairs, indent=1, default=float))
    items = [_p(f"(layer, dim) pairs whose value follows log(position) inside T (|r| >= "
                f"{ctx.min_correlation}), smoothed over {window} tokens; the horizontal line "
                "is the value reached at T. The theory: origin passes it beyond T, a weave PE "
                f"stays inside. {len(pairs)} pairs found; shown first those origin crosses "
                "most often past T (then by |r|); the y axis spans the trend after the first "
                "smoothing window (the start transient is clipped).")]
    for p in pairs[:4]:
        values = {m: tr.hidden_values(p["layer"], p["dim"]) for m, tr in traces.items()}
        fractions = ", ".join(f"{k} {v:.0%}" for k, v in p["past_fraction"].items())
        items.append(plots.hidden_state_figure(
            values, ctx.T, threshold=p["threshold"], smooth=window,
            correlation=p["correlation"],
            title=f"layer {p['layer']}, dim {p['dim']}, r={p['correlation']:+.3f}; past T "
                  f"beyond the threshold: {fractions}"))
    return items


def hidden_heatmap_section(ctx: Context) -> list:
    """The paper's Figures 11-16 on the report's prompt: the first 16 dims of
    the finder's hidden layers around ``T`` and at the end, each method beside
    origin, as values and minus origin's value at ``T - 1``."""
    from .thresholds import format_changes, hidden_view
    if ctx.model is None:
        return _missing(*_NO_MODEL)
    if ctx.n <= ctx.T:
        return _missing(f"the prompt has {ctx.n} tokens, no more than T={ctx.T}",
                        "give a length > T")
    traces = {m: ctx.trace(m) for m in dict.fromkeys(["origin", *ctx.methods])}
    dims = traces["origin"].dims[:16]
    views = [hidden_view(tr, dims=dims) for tr in traces.values()]
    relative = [hidden_view(tr, dims=dims, relative_to=ctx.T - 1, reference=traces["origin"])
                for tr in traces.values()]
    change = format_changes(traces, min(ctx.smoothing, ctx.n - ctx.T), dims=dims)
    (ctx.data / "hidden_heatmap.txt").write_text(change + "\n")
    return [_p(f"Hidden layers {views[0].layers}, dims {dims[0]}-{dims[-1]}, positions "
               f"{views[0].windows} of the passkey prompt (the paper uses a word repeated: "
               "mesa-viz hidden-map, notebook 03). The paper sees colour jumps past T under "
               "origin and none under a weave PE."),
            plots.hidden_heatmap(views),
            plots.hidden_heatmap(relative, title="minus origin's value at T - 1"),
            f"<pre>{html.escape(change)}</pre>"]


def _from_results(ctx: Context, kind: str, unit: str, how: str, draw) -> list:
    """Draw the ``kind`` results file (copied to ``<kind>.json`` first), or say
    how to include it."""
    if kind not in ctx.results:
        return _missing(f"no {kind} results were given",
                        f"{how} and pass results={{'{kind}': FILE}} to report.build "
                        f"(mesa-viz report --{kind} FILE)")
    path = ctx.results[kind]
    rows = plots.load_rows(path)
    (ctx.data / f"{kind}.json").write_text(json.dumps(rows, indent=1, default=str))
    return [_p(f"{len(rows)} {unit} from {path.name}"), *draw(rows)]


def passkey_section(ctx: Context) -> list:
    """Passkey accuracy by length and depth from a results file."""
    return _from_results(
        ctx, "passkey", "samples", "run `make demo` (FILE = runs/demo/passkey.jsonl) or "
        "mesa-viz passkey --out DIR (FILE = DIR/passkey.jsonl)",
        lambda rows: [plots.passkey_accuracy_lines(rows, train_length=ctx.train_length),
                      plots.passkey_heatmap(rows)])


def bench_section(ctx: Context) -> list:
    """Prefill time, memory and decode time from a bench results file."""
    return _from_results(ctx, "bench", "rows", "run `make bench` (FILE = runs/bench.jsonl)",
                         lambda rows: [plots.bench_figure(rows)])


def why_it_fails_section(ctx: Context) -> list:
    """The drill-down of the shortest failed passkey sample (when results are
    given) and the whole attention map of one head of the prompt, pooled, per
    method beside origin (the head carrying the needle)."""
    from .drilldown import explain, file_name
    from .probes import attention_map
    if ctx.model is None:
        return _missing("the drill-down and the whole attention map (they re-run the model, "
                        "and none was given)", "pass model= and tokenizer= to report.build")
    items, exp = [], None
    rows = plots.load_rows(ctx.results["passkey"]) if "passkey" in ctx.results else []
    failed = [r for r in rows if not r["correct"]]
    rebuildable = sorted((r for r in failed if "seed" in r or "input_ids" in r),
                         key=lambda r: (r["length"], r["depth"], r.get("seed", 0)))
    if failed and not rebuildable:
        items += _missing("the drill-down of a failed passkey sample: its rows record no "
                          "seed (written before per-sample keys), so the sample cannot be "
                          "rebuilt", "rerun mesa-viz passkey into a new --out")
    failed = rebuildable
    if failed:
        exp = explain(failed[0], ctx.model, ctx.tokenizer, train_length=ctx.train_length)
        exp.save(ctx.data / file_name(failed[0], exp.methods[1]))
        items += [f"<pre>{html.escape(exp.summary())}</pre>",
                  *plots.explanation_figures(exp).values()]
    elif not items:
        items.append(_p("No failed passkey sample to explain (give passkey results with one)."))
    layer, head = _needle_head(ctx, exp)
    maps = [attention_map(ctx.model, ctx.prompt()["input_ids"], m, layer=layer, head=head,
                          grid=min(256, ctx.n), train_length=ctx.T, keep_qk=False)
            for m in dict.fromkeys([*ctx.methods, "origin"])]
    for m in maps:
        m.save(ctx.data / f"attention_map_{m.method}", qk=False)
    items.append(_p(f"The whole attention map of layer {layer}, head {head} on the prompt "
                    f"({ctx.n} tokens, T={ctx.T}), max-pooled: " + "; ".join(
                        f"{m.method} {sum(m.seconds.values()):.1f} s" for m in maps) + "."))
    items += [plots.attention_maps_figure([m, maps[-1]]) for m in maps[:-1]] or \
        [plots.attention_map_figure(maps[0])]
    return items


def _needle_head(ctx: Context, exp) -> tuple[int, int]:
    """The head carrying the needle: the drill-down's first, else the one whose
    last query puts most attention on the prompt's needle under the first
    method traced that is not origin."""
    if exp is not None:
        best = exp.retrieval_heads(1)[0]
        return best["layer"], best["head"]
    method = next((m for m in ctx.methods if m != "origin"), "origin")
    tr = ctx.trace(method)
    share = tr.needle_share(tuple(ctx.prompt()["needle_span"]))            # [layer, head]
    li, hi = np.unravel_index(int(np.argmax(share)), share.shape)
    return tr.layers[li], tr.heads[hi]
def _pre(text: str) -> str:
    return f"<pre>{html.escape(text)}</pre>"


def ppl_section(ctx: Context) -> list:
    """Perplexity by position bucket from a ``mesa-viz ppl`` results file."""
    from .perplexity import summary
    from .results import format_table
    return _from_results(
        ctx, "ppl", "rows", "run mesa-viz ppl --methods origin,mesa --lengths 16384 --out FILE",
        lambda rows: [plots.ppl_by_position(rows, train_length=ctx.train_length),
                      _p("mean NLL (nats per token) by position bucket, longest length:"),
                      _pre(format_table(summary(rows)))])


def ruler_section(ctx: Context) -> list:
    """RULER task scores by method and length from a ``mesa-viz ruler`` results file."""
    from .lm_eval_tasks import summary
    from .results import format_table
    return _from_results(
        ctx, "ruler", "samples", "run mesa-viz ruler --methods origin,mesa --lengths "
        "4096,8192,12288,16384 --out FILE",
        lambda rows: [plots.task_scores(rows, train_length=ctx.train_length
                                        or rows[0].get("train_length")),
                      _p("mean score over tasks (each task weighted equally):"),
                      _pre(format_table(summary(rows)))])


#: The report's sections, in page order.
SECTIONS = (
    Section("Position layouts", layouts_section),
    Section("Attention past the training length", attention_section),
    Section("Hidden-state thresholds (Figure 2)", thresholds_section),
    Section("Hidden states around and past T (Figures 11-16)", hidden_heatmap_section),
    Section("Passkey retrieval", passkey_section, reads="passkey"),
    Section("Memory and latency", bench_section, reads="bench"),
    Section("Why it fails: the heads that miss the needle, the whole map", why_it_fails_section,
            reads="passkey"),
    Section("Perplexity by position", ppl_section, reads="ppl"),
    Section("Long-context tasks (RULER, through lm-eval)", ruler_section, reads="ruler"),
)


# -- the page -----------------------------------------------------------------------

def build(out: "str | Path", *, model=None, tokenizer=None, results: dict | None = None,
          sections=SECTIONS, **options) -> Path:
    """Compute, save and draw every section; returns the HTML path.

    ``model`` and ``tokenizer``: both or neither (without them the model
    sections say how to include them).  ``results``: ``{kind: file}`` for the
    sections that draw saved results (``"passkey"``, ``"bench"``: ``.jsonl``,
    ``.json`` or ``.csv``).  ``options``: the :class:`Context` fields
    (``train_length``, ``length``, ``methods``, ``layers``, ``layout_length``,
    ``layout_train_length``, ``window``, ``min_correlation``, ``seed``).
    """
    from tqdm.auto import tqdm

    out = Path(out)
    ctx = _context(out, model, tokenizer, results or {}, sections, options)
    items: list = [_p("Mesa-Extrapolation (arXiv 2410.15859) and its baselines: position "
                      "layouts, attention past the training length, hidden-state thresholds, "
                      f"passkey retrieval and cost. Data: {ctx.data.name}/")]
    for section in tqdm(sections, desc="report", unit="section"):
        log.info("report section: %s", section.title)
        items += [f"<h2>{html.escape(section.title)}</h2>", *section.draw(ctx)]
    return plots.save_html(items, out, title="mesa_viz report")


def _context(out: Path, model, tokenizer, results: dict, sections, options: dict) -> Context:
    if (model is None) != (tokenizer is None):
        raise ValueError("model and tokenizer: allowed both (the model sections) or neither")
    allowed = {f.name for f in dataclasses.fields(Context)} - {
        "data", "model", "tokenizer", "results", "traces", "_prompt"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"unknown report options {unknown}: allowed {sorted(allowed)}")
    kinds = {s.reads for s in sections if s.reads}
    bad = sorted(set(results) - kinds)
    if bad:
        raise ValueError(f"results for {bad}: allowed kinds {sorted(kinds)}")
    unknown_methods = [m for m in options.get("methods", ()) if m not in METHODS]
    if unknown_methods:
        raise ValueError(f"unknown methods {unknown_methods}: allowed {list(METHODS)}")
    data = out.with_name(out.stem + "_data")
    data.mkdir(parents=True, exist_ok=True)
    return Context(data=data, model=model, tokenizer=tokenizer,
                   results={k: Path(v) for k, v in results.items()}, **options)
