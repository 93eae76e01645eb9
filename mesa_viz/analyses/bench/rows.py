"""The bench's rows as a plain-text table (and the machine's matmul rate).
"""

from __future__ import annotations

from ...runtime.memory import GiB

__all__ = ["summary_table"]


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def _pieces_note(row: dict) -> str:
    """"N pieces of at most S tokens" where the prefill ran in more than one
    forward (rows before ``prefill_pieces`` was recorded: the size alone)."""
    size = row.get("piece_tokens") or row.get("piece_tokens_used")
    if not size:
        return ""
    label = f"{size}" if row.get("piece_tokens") else f"{size} (default)"
    count = row.get("prefill_pieces")
    if count is None:
        return f"pieces of {label}"
    return f"{count} pieces of <= {label}" if count > 1 else ""


def summary_table(rows, matmul_gflops: float | None = None) -> str:
    """A plain-text table of point rows (and the machine's matmul rate)."""
    pts = [r for r in rows if r.get("kind", "point") == "point"]
    if matmul_gflops is None:
        ms = [r["matmul_gflops"] for r in rows if r.get("kind") == "machine"]
        matmul_gflops = ms[-1] if ms else None
    head = (f"{'method':<14}{'length':>8}{'prefill s':>11}{'peak GiB':>10}{'pred GiB':>10}"
            f"{'decode ms':>11}{'GFLOP/s':>9}{'% mm':>6}  note")
    lines = [head, "-" * len(head)]
    for r in sorted(pts, key=lambda r: (r["method"], r["length"])):
        g = r.get("gflops_achieved")
        pct = None if (g is None or not matmul_gflops) else 100 * g / matmul_gflops
        note = "OOM" if r.get("oom") else ("skipped: " + r["skipped"] if r.get("skipped") else
                                           "error: " + r["error"][:60] if r.get("error") else "")
        note = "; ".join(x for x in (_pieces_note(r), note) if x)
        mem = r.get("peak_mem_bytes")
        lines.append(
            f"{r['method']:<14}{r['length']:>8}{_fmt(r.get('prefill_s'), '.3f'):>11}"
            f"{_fmt(None if mem is None else mem / GiB, '.3f'):>10}"
            f"{_fmt(r.get('predicted_mem_bytes', 0) / GiB, '.3f'):>10}"
            f"{_fmt(r.get('decode_ms_per_token'), '.1f'):>11}{_fmt(g, '.1f'):>9}"
            f"{_fmt(pct, '.0f'):>6}  {note}")
    if matmul_gflops:
        lines.append(f"(machine: {matmul_gflops:.1f} GFLOP/s dense matmul; '% mm' = achieved "
                     "useful GFLOP/s as a share of it)")
    return "\n".join(lines)
