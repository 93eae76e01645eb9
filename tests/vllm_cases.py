"""Helpers of the vLLM layer (``tests/vllm``): the transformers reference
under ``apply()``, a vLLM engine run of the same prompts, their comparison, and
the exactness table."""

from __future__ import annotations

import json
from pathlib import Path

import torch

#: Why a test of the vllm layer is skipped in the main environment.
NOT_HERE = "the vllm layer runs in its own environment, .venv-vllm: make test-vllm"
#: Where the exactness table is written (``make test-vllm`` prints it).
TABLE = Path(__file__).resolve().parent / "artifacts" / "vllm_exactness.md"
#: The largest log-probability difference allowed (float32 on CPU).
TOLERANCE = 1e-4
#: The KV cache of each test engine (vLLM would otherwise reserve most of the RAM).
KV_CACHE_BYTES = 64 << 20
#: Weights drawn 5x wider than transformers' default (``initializer_range`` 0.02): sharp enough
#: attention that another method's layout changes greedy tokens and log-probabilities by
#: 0.3-1.6 on these models (with the default, by 1e-3 and no token), so the comparison tells
#: methods apart (``test_another_methods_reference_is_told_apart``).
INIT = dict(initializer_range=0.1)
#: Tiny models' configs beyond ``mesa_viz.models.TINY_FAMILIES``: ``max_position_embeddings``
#: below the test lengths, so vLLM's own limit is passed (``model_max_length``).
FAMILY_CONFIGS = {
    "llama": dict(INIT, max_position_embeddings=128),
    "qwen3": dict(INIT, max_position_embeddings=128),
    "mistral": dict(INIT, max_position_embeddings=128),
    "qwen2": dict(INIT, max_position_embeddings=128),
    "llama3-rope": dict(INIT, max_position_embeddings=1024, rope_parameters={
        "rope_type": "llama3", "rope_theta": 10000.0, "factor": 16.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
    "qwen3-yarn": dict(INIT, max_position_embeddings=1024, rope_parameters={
        "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
        "original_max_position_embeddings": 64}),
}
_ROWS: list[dict] = []


def tiny_family(name: str) -> str:
    """The transformers model type of a :data:`FAMILY_CONFIGS` name."""
    return {"llama3-rope": "llama", "qwen3-yarn": "qwen3"}.get(name, name)


def prompts_of(lengths, seed: int = 0) -> list[list[int]]:
    """Random token prompts of ``lengths`` (ids 3..511: no BOS, EOS or pad)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 512, (n,), generator=g).tolist() for n in lengths]


def reference(model, method: str, T: int, params: dict, prompts, steps: int) -> list:
    """Greedy decoding under ``apply()`` on transformers, as a user runs it,
    for each prompt: a prefill of the whole prompt, then one forward per
    generated token on the cache.  Returns ``[(tokens, log-probabilities
    [len(prompt) - 1 + steps, vocab])]``: row ``r`` scores the token at ``r + 1``."""
    from mesa_viz.runtime import apply
    out = []
    with apply(model, method, train_length=T, **params), torch.no_grad():
        for prompt in prompts:
            out.append(_greedy(model, prompt, steps))
    return out


def _greedy(model, prompt: list[int], steps: int):
    """``(tokens, log-probabilities)`` of :func:`reference` for one prompt."""
    tokens, rows = [], []
    out = model(torch.tensor([prompt]), use_cache=True)
    rows.append(out.logits[0].log_softmax(-1))
    for _ in range(steps):
        nxt = int(rows[-1][-1].argmax())
        tokens.append(nxt)
        out = model(torch.tensor([[nxt]]), cache=out.cache, use_cache=True)
        rows.append(out.logits[0].log_softmax(-1))
    return tokens, torch.cat(rows)[:-1]


def run_vllm(llm, prompts, steps: int, prompt_logprobs: bool = True):
    """The engine's greedy tokens and log-probabilities for ``prompts`` in one
    ``generate`` call: ``[(tokens, generated logprobs, prompt logprobs or None)]``."""
    from vllm import SamplingParams, TokensPrompt
    sp = SamplingParams(temperature=0.0, max_tokens=steps, ignore_eos=True, logprobs=0,
                        prompt_logprobs=0 if prompt_logprobs else None)
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], sp,
                        use_tqdm=False)
    result = []
    for p, o in zip(prompts, outs):
        c = o.outputs[0]
        gen = [d[t].logprob for d, t in zip(c.logprobs, c.token_ids)]
        pl = None if o.prompt_logprobs is None else \
            [d[t].logprob for d, t in zip(o.prompt_logprobs[1:], p[1:])]
        result.append((list(c.token_ids), gen, pl))
    return result


def compare(label: dict, prompt, ref, got) -> dict:
    """One row of the exactness table (:func:`compare_only`, kept for the table)."""
    row = dict(label, **compare_only(prompt, ref, got))
    _ROWS.append(row)
    return row


def compare_only(prompt, ref, got) -> dict:
    """Greedy tokens equal, and the largest log-probability difference over
    the prompt's and the generated tokens (where the tokens agree)."""
    tokens, lp = ref
    v_tokens, v_gen, v_prompt = got
    n = len(prompt)
    seq = prompt + tokens
    diffs = [abs(v - float(lp[n - 1 + k, t])) for k, (v, t) in enumerate(zip(v_gen, v_tokens))
             if k < len(tokens) and t == tokens[k]]
    if v_prompt is not None:
        diffs += [abs(v - float(lp[k, seq[k + 1]])) for k, v in enumerate(v_prompt)]
    return dict(length=n, greedy_equal=v_tokens == tokens,
                max_logprob_diff=max(diffs) if diffs else float("nan"))


def check_rows(rows: list[dict]) -> None:
    """Every row exact: the same greedy tokens, log-probabilities within
    :data:`TOLERANCE`."""
    bad = [r for r in rows if not (r["greedy_equal"] and r["max_logprob_diff"] <= TOLERANCE)]
    assert not bad, json.dumps(bad, indent=1)



def write_table() -> None:
    """Write the rows :func:`compare` collected as a markdown table to :data:`TABLE`."""
    if not _ROWS:
        return
    TABLE.parent.mkdir(parents=True, exist_ok=True)
    keys = ["family", "method", "setting", "length", "greedy_equal", "max_logprob_diff"]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in _ROWS:
        cells = [f"{r[k]:.1e}" if k == "max_logprob_diff" else str(r.get(k, "")) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    TABLE.write_text("\n".join(lines) + "\n")
