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
#: The released code's constants (``PositionSet``): tokens reserved for generation and
#: the margin under ``train_length`` its middle chunks keep (``T - F - 100``).
_CODE_RESERVE, _CODE_MARGIN = 50, 100


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
    """What the authors' code (``PositionSet.set_align_position`` and its chunk
    loop) runs for a prompt of ``I`` tokens, in this project's parameters.

    Its split: ``R = I + 50 - L - F``, ``D = T - F - 100``, ``N, M = divmod(R,
    D)``, ``C = D`` if ``M < 200`` else ``R // (N + 1)``; chunks of ``C`` follow
    the first while they end before ``I``, the rest is the last chunk.  Its
    stair is anchored at ``a = 1 + C * floor((I - 1) / C)``: keys from ``a``
    on keep their positions, so ``stair_start = s - a + 1`` (``s``: the last
    chunk's start).
    """
    I, T, F, L = prompt_length, train_length, first_chunk, last_context
    C = dynamic_split(I + _CODE_RESERVE, T - _CODE_MARGIN, F, L)
    n_middle = max(0, -(-(I - F) // C) - 1)
    s = F + n_middle * C
    anchor = 1 + C * ((I - 1) // C)
    if I > T and s - anchor + 1 < 0:
        raise ValueError(f"preset='authors-code' at {I} tokens (train_length={T}): the "
                         f"authors' code anchors its stair at {anchor}, inside the last chunk "
                         f"(from {s}), which this project cannot express")
    return dict(PAPER, first_chunk=F, chunk_size=C, last_chunk=max(1, I - s), stair="anchored",
                stair_start=max(0, s - anchor + 1), log_scaling=True)
