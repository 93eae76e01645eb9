"""A headless, self-contained HTML report of the analyses.

``report.build(out, model=..., tokenizer=..., results={"passkey": ..., "bench": ...})``
writes one HTML file (plotly.js inlined: it works offline) and saves every
computed array next to it (``<out>_data/``) before drawing it.

The report is the analyses' sections in order (:data:`SECTIONS`: each
``mesa_viz/analyses/<name>/section.py`` gives its own); each is a title and a
function of one :class:`Context` returning page items (figures and HTML
strings).  A section that lacks its input (no model, no results file) says how
to include it instead of being left out.  The model runs through
:meth:`Context.trace`, once per method, whatever sections use it.
"""

from __future__ import annotations

import dataclasses
import html
import json
import logging
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path

import numpy as np

from ..analyses import ANALYSES
from ..analyses.passkey.samples import make_sample
from ..analyses.thresholds.compute import default_hidden_layers
from ..methods import METHODS
from ..models.parts import train_length_of
from ..runtime import Trace, trace
from ..viz.page import Section, note, save_html

__all__ = ["build", "Context", "Section", "SECTIONS", "RESULT_KINDS"]

log = logging.getLogger(__name__)

#: Every section, in page order: the analyses' ``SECTIONS`` in :data:`ANALYSES` order.
SECTIONS: tuple[Section, ...] = tuple(
    s for name in ANALYSES for s in import_module(f"mesa_viz.analyses.{name}.section").SECTIONS)
#: The results files the sections draw (``results={kind: file}``); ``ppl`` is read as
#: ``perplexity``.
RESULT_KINDS = tuple(dict.fromkeys(s.reads for s in SECTIONS if s.reads))
_KIND_ALIASES = {"ppl": "perplexity"}


@dataclass
class Context:
    """What every section sees: the data folder, the model (or None), the
    options, the traces computed so far (:meth:`trace`) and the drill-down
    the explain section made (``explanation``, for the attention map)."""

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
    explanation: object = None
    _prompt: dict | None = None

    @property
    def T(self) -> int:
        """The training length: given, else the model's."""
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
            tr = trace(self.model, self.prompt()["input_ids"], method=method,
                       layers=self.attention_layers(), query_rows=[self.n - 1],
                       hidden_layers=default_hidden_layers(self.model.config.num_hidden_layers),
                       tokenizer=self.tokenizer, train_length=self.T)
            tr.save(self.data / f"trace_{method}")
            self.traces[method] = tr
        return self.traces[method]


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
    items: list = [note("Mesa-Extrapolation (arXiv 2410.15859) and its baselines: position "
                        "layouts, attention past the training length, hidden-state thresholds, "
                        f"passkey retrieval and cost. Data: {ctx.data.name}/")]
    for section in tqdm(sections, desc="report", unit="section"):
        log.info("report section: %s", section.title)
        items += [f"<h2>{html.escape(section.title)}</h2>", *section.draw(ctx)]
    return save_html(items, out, title="mesa_viz report")


def _context(out: Path, model, tokenizer, results: dict, sections, options: dict) -> Context:
    if (model is None) != (tokenizer is None):
        raise ValueError("model and tokenizer: allowed both (the model sections) or neither")
    allowed = {f.name for f in dataclasses.fields(Context)} - {
        "data", "model", "tokenizer", "results", "traces", "explanation", "_prompt"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"unknown report options {unknown}: allowed {sorted(allowed)}")
    results = {_KIND_ALIASES.get(k, k): v for k, v in results.items()}
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
