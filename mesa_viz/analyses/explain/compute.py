"""The drill-down (``mesa_viz.explain``): from one result row to the heads that
missed the needle.

``explain(row, model, tokenizer)`` takes one result row of passkey (or of a
needle task: a row carrying ``input_ids`` and ``needle_span``), rebuilds its
exact sample, and re-runs it under the row's method (with the row's resolved
parameters) and under a comparison method, capturing, at every layer and
head, the answer step's attention row and its pre-softmax logits exactly as
each method computes them (``[layer, head, 1, n]`` per method, nothing
else: a 32k-token sample stays within the memory of its forward pass).  Each
method also answers greedily from that same forward, so the explanation says
which one retrieves the key.

The result, :class:`Explanation`, is plain data (``save``/``load`` as JSON
plus npz) with the derived views: attention mass on the needle per layer and
head, the heads that carry it under the method that answers and what the same
heads do under the one that fails (mass on the needle, on the first tokens,
at distance ``>= T``, their top keys), attention entropy, and the logits
against distance (:func:`.figures.explanation_figures` draws them).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...methods import METHODS, get_method
from ...models.parts import train_length_of
from ...runs.arrays import load_result, save_result
from ...runtime import capture_rows
from ..passkey.samples import make_sample, parse_answer

__all__ = ["explain", "Explanation", "sample_of", "comparison_for", "file_name", "SINK_TOKENS"]

log = logging.getLogger(__name__)

#: How many first tokens count as attention sinks (StreamingLLM's 4).
SINK_TOKENS = 4


# -- the sample of a row ------------------------------------------------------------------

def _spans(row: dict, n: int) -> list[list[int]]:
    spans = row.get("needle_spans") or ([row["needle_span"]] if row.get("needle_span") else [])
    spans = [[int(a), int(b)] for a, b in spans]
    bad = [s for s in spans if not 0 <= s[0] < s[1] <= n]
    if bad:
        raise ValueError(f"needle span {bad[0]} is outside the {n}-token input: allowed "
                         f"[start, stop] with 0 <= start < stop <= {n}")
    return spans


def sample_of(row: dict, tokenizer=None) -> dict:
    """``input_ids``, ``needle`` (``[[start, stop], ...]``) and ``expected``
    (the answer, or None) of a result row.

    A row carrying ``input_ids`` and ``needle_span`` (or ``needle_spans``) is
    used as it is; a passkey row without them is rebuilt with
    ``passkey.make_sample(tokenizer, length, depth, seed)`` and checked
    against the key and needle span it records.
    """
    if not isinstance(row, dict):
        raise ValueError(f"row is {type(row).__name__}: allowed a result row (dict)")
    expected = row.get("expected", row.get("passkey"))
    if "input_ids" in row:
        ids = [int(i) for i in row["input_ids"]]
        needle = _spans(row, len(ids))
        if not needle:
            raise ValueError("the row has input_ids but no needle_span: allowed rows with "
                             "needle_span [start, stop] (or needle_spans) beside input_ids")
        return dict(input_ids=ids, needle=needle, expected=expected)
    missing = [k for k in ("length", "depth", "seed") if k not in row]
    if missing or tokenizer is None:
        raise ValueError(f"cannot rebuild the sample of row {_label(row)}: allowed a row with "
                         "input_ids and needle_span, or a passkey row with length, depth, "
                         f"seed and a tokenizer (missing {missing or ['tokenizer']})")
    s = make_sample(tokenizer, int(row["length"]), float(row["depth"]), int(row["seed"]))
    if expected is not None and int(expected) != s["passkey"]:
        raise ValueError(f"row {_label(row)} expects key {expected} but its rebuilt sample "
                         f"holds {s['passkey']}: pass a row with input_ids and needle_span")
    if row.get("needle_span") and list(row["needle_span"]) != list(s["needle_span"]):
        raise ValueError(f"row {_label(row)} has needle_span {row['needle_span']} but its "
                         f"rebuilt sample has {s['needle_span']}: the tokenizer differs")
    return dict(input_ids=s["input_ids"], needle=[list(s["needle_span"])], expected=s["passkey"])


def _label(row: dict) -> str:
    return ", ".join(f"{k}={row[k]}" for k in ("method", "length", "depth", "seed") if k in row)


def comparison_for(method: str) -> str:
    """The default method to compare a row's ``method`` with: origin, or mesa
    for an origin row."""
    return "mesa" if method == "origin" else "origin"


def file_name(row: dict, against: str) -> str:
    """Where a drill-down of ``row`` against ``against`` is saved (no suffix)."""
    depth = f"{float(row['depth']):g}".replace(".", "p") if "depth" in row else "x"
    return (f"explain_{row.get('method')}_{row.get('length', 'x')}_d{depth}_"
            f"s{row.get('seed', 0)}_vs_{against}")


def _score(text: str | None, expected) -> bool | None:
    """Whether ``text`` gives ``expected`` (a pass key: its first 5-digit
    number; a string: contained), None when either is unknown."""
    if text is None or expected is None:
        return None
    if isinstance(expected, (int, np.integer)):
        return parse_answer(text) == int(expected)
    return str(expected).strip() in text


# -- the result -----------------------------------------------------------------------------

@dataclass
class Explanation:
    """One sample re-run under two methods, captured at the answer step.

    ``methods``: ``[the row's method, the comparison]``; ``params``: each
    one's resolved parameters.  ``attention``, ``logits [method, layer, head,
    k_pos]``: the answer step's (``query_row``) probabilities and pre-softmax
    logits (``-inf`` where the layout hides a key).  ``needle``: ``[[start,
    stop], ...]`` token spans; ``answers``: per method ``text`` (greedy),
    ``correct`` (None when unknown) and, for the row's method, ``reproduced``
    (the re-run gave the row's text).  ``needle_cuts``: per method, the
    positions where its layout cuts a needle span
    (:meth:`~mesa_viz.methods.Method.span_cuts`; empty for older saves).
    """

    row: dict
    methods: list
    params: list
    train_length: int
    query_row: int
    needle: list
    input_ids: np.ndarray                    # [pos]
    attention: np.ndarray                    # [method, layer, head, k_pos]
    logits: np.ndarray                       # [method, layer, head, k_pos]
    answers: list
    chunk_plans: list
    needle_cuts: list = field(default_factory=list)
    sink_tokens: int = SINK_TOKENS
    meta: dict = field(default_factory=dict)

    @property
    def seq_len(self) -> int:
        return int(len(self.input_ids))

    @property
    def distance(self) -> np.ndarray:
        """``[k_pos]`` distance of each key from the answer step (negative: after it)."""
        return self.query_row - np.arange(self.seq_len)

    def _mass(self, keys: np.ndarray) -> np.ndarray:
        return self.attention[..., keys].sum(axis=-1)

    def needle_mass(self) -> np.ndarray:
        """``[method, layer, head]`` attention on the needle tokens."""
        keys = np.zeros(self.seq_len, dtype=bool)
        for a, b in self.needle:
            keys[a:b] = True
        return self._mass(keys)

    def sink_mass(self) -> np.ndarray:
        """``[method, layer, head]`` attention on the first ``sink_tokens`` tokens."""
        return self._mass(np.arange(self.seq_len) < self.sink_tokens)

    def far_mass(self) -> np.ndarray:
        """``[method, layer, head]`` attention at distance ``>= train_length``."""
        return self._mass(self.distance >= self.train_length)

    def entropy(self) -> np.ndarray:
        """``[method, layer, head]`` entropy of the answer step's attention (nats)."""
        p = self.attention.astype(np.float64)
        return -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=-1)

    def max_logit(self, far: bool) -> np.ndarray:
        """``[method, layer, head]`` largest logit at distance ``>= T`` (``far``) or
        ``< T`` (``-inf`` where there is none)."""
        keys = (self.distance >= self.train_length) == far
        return self.logits[..., keys].max(axis=-1, initial=-np.inf)

    def order(self) -> tuple[int, int]:
        """``(answers, fails)``: indices into ``methods`` of the method that
        answers and the one that fails (the row's method first when both or
        neither answer)."""
        ok = [a.get("correct") for a in self.answers]
        return (1, 0) if ok[1] is True and ok[0] is not True else (0, 1)

    def retrieval_heads(self, top: int = 8) -> list[dict]:
        """The ``top`` heads with the most attention on the needle under the
        method that answers, and what they do under each method: ``needle``,
        ``sinks``, ``far`` (distance ``>= T``) mass, ``entropy``, and
        ``top_keys`` (the three keys they attend to most, with distances)."""
        a, _ = self.order()
        needle, sinks, far, ent = (self.needle_mass(), self.sink_mass(), self.far_mass(),
                                   self.entropy())
        H = needle.shape[2]
        best = np.argsort(-needle[a].ravel(), kind="stable")[:top]
        heads = []
        for layer, head in (divmod(int(i), H) for i in best):
            per = lambda arr: {m: float(arr[k, layer, head])               # noqa: E731
                               for k, m in enumerate(self.methods)}
            heads.append(dict(layer=layer, head=head, needle=per(needle), sinks=per(sinks),
                              far=per(far), entropy=per(ent),
                              top_keys={m: self._top_keys(k, layer, head)
                                        for k, m in enumerate(self.methods)}))
        return heads

    def _top_keys(self, k: int, layer: int, head: int, most: int = 3) -> list[dict]:
        row = self.attention[k, layer, head]
        return [dict(key=int(j), distance=int(self.query_row - j), p=float(row[j]))
                for j in np.argsort(-row, kind="stable")[:most]]

    def summary(self, top: int = 5) -> str:
        """A few lines: each method's answer, then the heads that carry the
        needle under the one that answers and what they do under the other."""
        a, b = self.order()
        ma, mb = self.methods[a], self.methods[b]
        lines = [f"{self.seq_len} tokens, T={self.train_length}, answer step q={self.query_row}, "
                 f"needle tokens {self.needle}"]
        for m, ans in zip(self.methods, self.answers):
            verdict = {True: "answers", False: "fails", None: "(no verdict)"}[ans.get("correct")]
            lines.append(f"{m}: {verdict}: {ans.get('text')!r}")
        for m, cuts in zip(self.methods, self.needle_cuts):
            if cuts:
                lines.append(f"{m} cuts the needle at token {', '.join(map(str, cuts))}: from "
                             "there on the needle's earlier tokens are hidden (a chunk boundary)")
        lines.append(f"heads carrying the needle under {ma} (needle mass {ma} / {mb}; "
                     f"{mb}: sinks, distance >= T, its top key):")
        for h in self.retrieval_heads(top):
            key = h["top_keys"][mb][0]
            lines.append(
                f"  L{h['layer']}H{h['head']}: {h['needle'][ma]:.2f} / {h['needle'][mb]:.2f}; "
                f"sinks {h['sinks'][mb]:.2f}, far {h['far'][mb]:.2f}, top key {key['key']} "
                f"(distance {key['distance']}, p={key['p']:.2f})")
        return "\n".join(lines)

    # -- persistence ----------------------------------------------------------------
    _ARRAYS = ("input_ids", "attention", "logits")

    def save(self, path: "str | Path") -> Path:
        """Write ``path.npz`` (arrays) and ``path.json`` (everything else)."""
        return save_result(self, path, self._ARRAYS)

    @classmethod
    def load(cls, path: "str | Path") -> "Explanation":
        return load_result(cls, path)


# -- the drill-down -------------------------------------------------------------------------

def _method_of(name: str, params: dict | None):
    """The method value to re-run: ``name`` with ``params`` (resolved ones
    reproduce the row exactly; ``prefill_length`` is the sample's own, set by
    its forward) and their ``train_length`` (or None)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}: allowed {sorted(METHODS)}")
    params = {k: v for k, v in (params or {}).items() if k != "prefill_length"}
    return get_method(name, **params), params.get("train_length")


def explain(row: dict, model, tokenizer=None, *, against: str | None = None,
            against_params: dict | None = None, query_row: int | None = None,
            max_new_tokens: int = 8, train_length: int | None = None,
            check_memory: bool = True) -> Explanation:
    """Re-run the sample of result ``row`` under its method and ``against``
    (default :func:`comparison_for` the row's method), capturing the answer
    step (``query_row``, default the last prompt token, whose query gives the
    first answer token) at every layer and head; each method also answers
    greedily (``max_new_tokens``; 0: no answers, the row's verdict only).

    ``row``: a passkey row (method, length, depth, seed, params, ...; needle-task
    rows with ``input_ids`` and ``needle_span`` are used as they are).  The
    row's method runs with the row's resolved ``params``; ``against`` with
    ``against_params`` (default: its defaults at this length).  Returns an
    :class:`Explanation`.
    """

    sample = sample_of(row, tokenizer)
    ids, n = sample["input_ids"], len(sample["input_ids"])
    q = n - 1 if query_row is None else query_row
    if isinstance(q, bool) or not isinstance(q, (int, np.integer)) or not 0 <= q < n:
        raise ValueError(f"query_row={query_row!r} is outside the input: allowed 0..{n - 1} "
                         f"(the answer step of a {n}-token prompt is {n - 1})")
    name = row.get("method")
    against = against or comparison_for(name)
    runs = [_method_of(name, row.get("params")), _method_of(against, against_params)]
    if against == name and not against_params:
        raise ValueError(f"against={against!r} is the row's own method: allowed another "
                         f"method of {sorted(METHODS)} (or against_params that differ)")
    T = int(train_length or runs[0][1] or train_length_of(model))
    pad = None if tokenizer is None else (tokenizer.pad_token_id or tokenizer.eos_token_id)
    got = [capture_rows(model, ids, m, rows=[int(q)], train_length=T, check_memory=check_memory,
                        max_new_tokens=max_new_tokens if tokenizer is not None else 0,
                        pad_token_id=pad) for m, _ in runs]
    answers = [_answer(c, tokenizer, sample["expected"]) for c in got]
    answers[0].update(_reproduced(row, answers[0]))
    return Explanation(
        row=dict(row), methods=[name, against], params=[c.method.params() for c in got],
        train_length=T, query_row=int(q), needle=sample["needle"], input_ids=np.asarray(ids),
        attention=np.stack([c.attention[:, :, 0] for c in got]).astype(np.float32),
        logits=np.stack([c.logits[:, :, 0] for c in got]).astype(np.float32),
        answers=answers,
        chunk_plans=[[list(p) for p in c.method.plan().chunks] if c.method.chunked else None
                     for c in got],
        needle_cuts=[sorted(i for a, b in sample["needle"] for i in c.method.span_cuts(a, b))
                     for c in got],
        meta={"seconds": [c.seconds for c in got], "expected": sample["expected"],
              "model": getattr(model.config, "_name_or_path", "")})


def _answer(captured, tokenizer, expected) -> dict:
    text = tokenizer.decode(captured.generated, skip_special_tokens=True) \
        if tokenizer is not None and captured.generated else None
    return dict(text=text, correct=_score(text, expected), tokens=list(captured.generated))


def _reproduced(row: dict, answer: dict) -> dict:
    """The row's verdict where the re-run gave none, and whether it reproduced the row."""
    out = {}
    if answer["correct"] is None and "correct" in row:
        out["correct"] = bool(row["correct"])
    if answer["text"] is not None and "text" in row:
        out["reproduced"] = answer["text"] == row["text"]
        if not out["reproduced"]:
            log.warning("row %s answered %r, its re-run %r: the verdicts below are the "
                        "re-run's", _label(row), row["text"], answer["text"])
    return out
