"""Perplexity rows: one per method, length, text and position bucket: ``method,
length, text, bucket_start, bucket_end, tokens, nll, ppl, train_length,
train_length_from, params, model, source, seconds``; their resume key and a table of them."""

from __future__ import annotations

__all__ = ["row_key", "summary", "ROW_FIELDS"]

#: The fields of a perplexity row.
ROW_FIELDS = ("method", "length", "text", "bucket_start", "bucket_end", "tokens", "nll", "ppl",
              "train_length", "train_length_from", "params", "model", "source", "seconds")


def row_key(row: dict) -> tuple:
    return (row["method"], int(row["length"]), row["text"], int(row["bucket_start"]),
            int(row["bucket_end"]))


def summary(rows, length: int | None = None) -> list[dict]:
    """One row per method x text at ``length`` (default the longest in
    ``rows``): ``method, text`` and the mean NLL of each bucket as a column
    ``"[start, end)"``, for :func:`mesa_viz.runs.format_table`."""
    rows = list(rows)
    if not rows:
        return []
    length = max(r["length"] for r in rows) if length is None else int(length)
    table: dict = {}
    for r in (r for r in rows if r["length"] == length):
        cell = table.setdefault((r["method"], r["text"]), dict(method=r["method"], text=r["text"]))
        cell[f"[{r['bucket_start']}, {r['bucket_end']})"] = r["nll"]
    return list(table.values())
