"""Mesa's presets: the paper's Appendix B.2 settings (Algorithm 2's DynamicSplit)
and what the authors' released code runs, as this project's parameters.
"""

from __future__ import annotations

__all__ = ["MESA_PRESETS", "PAPER", "PAPER_M_MAX", "dynamic_split", "authors_code_values"]


#: The values of :attr:`Mesa.preset`.
MESA_PRESETS = ("paper", "authors-code")
#: Appendix B.2 of the paper: F, L, M_max of Algorithm 2, Stair PE N and E (floor form).
PAPER = dict(first_chunk=100, last_chunk=512, stair="per-query", stair_start=512,
             stair_width=50, log_scaling=False)
PAPER_M_MAX = 200
#: The released code's constants (``PositionSet``): tokens reserved for generation
#: (``max_token_len``; prompts from ``T - 50`` tokens on are split), the margin under
#: ``train_length`` its middle chunks keep (``T - F - 100``), and the chunk size it keeps
#: from its class default when it does not split (``context_window_length``, a fresh
#: process).
_CODE_RESERVE, _CODE_MARGIN, _CODE_DEFAULT_CHUNK = 50, 100, 1800


def dynamic_split(prompt_length: int, train_length: int, first_chunk: int = 100,
                  last_chunk: int = 512, max_remainder: int = PAPER_M_MAX) -> int:
    """Algorithm 2 (DynamicSplit) of the paper: the middle-chunk length ``C``.

    With ``R = I - L - F``, ``N, M = divmod(R, T - F)``: ``C = T - F`` if
    ``M < M_max`` (the remainder joins the last chunk), else ``R // (N + 1)``
    (equal chunks).  ``I``: prompt length, ``T``: training length.
    """
    rest, room = prompt_length - last_chunk - first_chunk, train_length - first_chunk
    if rest <= 0:
        return room
    n, m = divmod(rest, room)
    return room if m < max_remainder else rest // (n + 1)


def authors_code_values(prompt_length: int, train_length: int, first_chunk: int,
                        last_context: int) -> dict:
    """What the authors' code (``PositionSet.set_align_position``, ``chunk_forward``
    and ``attention_chunk_forward``) runs for a prompt of ``I`` tokens, in this
    project's parameters.

    It splits prompts of ``I >= T - 50`` tokens: ``R = I + 50 - L - F``, ``D =
    T - F - 100``, ``N, M = divmod(R, D)``, ``C = D`` if ``M < 200`` else ``R //
    (N + 1)``; chunks of ``C`` follow the first while they end before ``I``, the
    rest is the last chunk (below ``T - 50`` it keeps ``C = 1800``, its class
    default, at most ``T - F - 100``, and runs Origin).  Once the cache of ``K``
    keys exceeds ``T`` (the whole prompt past ``T``, the first generated token
    past ``T`` otherwise), token ``x`` sits at ``x`` from the anchor ``a = 1 +
    C * floor((K - 1) / C)`` on and at ``a - 1 - floor((a - 1 - x) / 50)``
    before it, queries too: ``stair="anchored"`` with ``stair_start = s - a +
    1`` (``s``: the last chunk's start; negative where ``a`` falls inside the
    last chunk).
    """
    I, T, F, L = prompt_length, train_length, first_chunk, last_context
    split = T - _CODE_RESERVE
    if I >= split:
        C = dynamic_split(I + _CODE_RESERVE, T - _CODE_MARGIN, F, L)
        s = F + max(0, -(-(I - F) // C) - 1) * C
    else:
        C, s = min(_CODE_DEFAULT_CHUNK, T - F - _CODE_MARGIN), 0
    K = max(I, T + 1)
    anchor = 1 + C * ((K - 1) // C)
    return dict(PAPER, first_chunk=F, chunk_size=C, last_chunk=max(1, I - s), stair="anchored",
                stair_start=s - anchor + 1, log_scaling=True, split_from=split,
                decode_stair=True)
