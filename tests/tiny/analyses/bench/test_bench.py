"""The benchmark on a tiny random model: rows, resume, predicted OOM, the FLOP
formula against hand counts, the CLI.  No timing is asserted."""

import statistics

import numpy as np
import pytest

import mesa_viz.analyses.bench as bench
from mesa_viz.analyses.bench import ab as bench_ab, grid as bench_grid, point as bench_point
from mesa_viz.analyses.bench import machine as bench_machine, rows as bench_rows
from mesa_viz.runtime.memory import ModelDims
from mesa_viz.methods import get_method
from mesa_viz.runs import read_jsonl


POINT_FIELDS = {
    "method": str, "length": int, "prefill_s": float, "peak_mem_bytes": int,
    "decode_ms_per_token": float, "gflops_achieved": float, "useful_flops": int,
    "predicted_mem_bytes": int, "oom": bool, "device": str, "dtype": str, "model": str,
    "backend": str, "params": dict,
}
#: Every field of a measured point row (before splitting bench.run_bench: keep them).
POINT_KEYS = {
    "kind", "method", "length", "prefill_s", "prefill_s_all", "peak_mem_bytes", "peak_mem_all",
    "mem_method", "decode_ms_per_token", "decode_ms_all", "gflops_achieved", "useful_flops",
    "attention_pairs", "predicted_mem_bytes", "oom_check_bytes", "available_bytes", "oom",
    "device", "dtype", "model", "backend", "params", "plan", "train_length", "train_length_from",
    "threads", "repeats",
    "decode_tokens", "time", "sdpa_backends", "piece_tokens", "piece_tokens_used",
    "prefill_pieces"}
MESA_SMALL = dict(first_chunk=8, chunk_size=32, last_chunk=32)
ONE = bench.Settings(repeats=1, decode_tokens=2)
NONE = bench.Settings(repeats=1, decode_tokens=0)


@pytest.fixture(scope="module")
def tiny():
    from mesa_viz.models import tiny_model
    return tiny_model("llama")[0]


@pytest.fixture(scope="module")
def ran(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.jsonl"
    rows = bench.run(tiny, ["origin", "mesa"], [64, 160], out, model_name="tiny", settings=ONE,
                     train_length=128, progress=False, method_params={"mesa": MESA_SMALL},
                     matmul_size=256)
    return out, rows


def test_rows_have_every_field_typed(ran):
    out, rows = ran
    assert rows == read_jsonl(out)
    machine = [r for r in rows if r["kind"] == "machine"]
    assert len(machine) == 1 and machine[0]["matmul_gflops"] > 0
    assert isinstance(machine[0]["threads"], int) and machine[0]["device"] == "cpu"
    pts = [r for r in rows if r["kind"] == "point"]
    assert sorted((r["method"], r["length"]) for r in pts) == [
        ("mesa", 64), ("mesa", 160), ("origin", 64), ("origin", 160)]
    for r in pts:
        assert set(r) == POINT_KEYS
        for k, t in POINT_FIELDS.items():
            assert isinstance(r[k], t), (k, r[k])
        assert r["oom"] is False and r["prefill_s"] > 0 and r["peak_mem_bytes"] >= 0
        assert r["gflops_achieved"] == pytest.approx(r["useful_flops"] / r["prefill_s"] / 1e9)
        assert len(r["decode_ms_all"]) == 2 and r["dtype"] == "float32"
        assert r["mem_method"] in ("hwm-exact", "sampled-exact")
        assert r["oom_check_bytes"] >= r["predicted_mem_bytes"]
        assert r["backend"] == "sdpa" and r["model"] == "tiny"
        assert isinstance(r["sdpa_backends"], dict)
        if r["method"] == "origin":                       # the model's own SDPA calls
            assert sum(r["sdpa_backends"].values()) > 0
    mesa160 = next(r for r in pts if r["method"] == "mesa" and r["length"] == 160)
    assert mesa160["params"]["chunk_size"] == 32 and mesa160["plan"]["chunks"] == 5
    origin160 = next(r for r in pts if r["method"] == "origin" and r["length"] == 160)
    assert mesa160["useful_flops"] < origin160["useful_flops"]
    table = bench.summary_table(rows)
    assert "mesa" in table and "origin" in table and "GFLOP/s" in table


def test_resume_skips_finished_points(ran, tiny, monkeypatch):
    out, _ = ran
    before = out.read_text()

    def boom(*a, **k):
        raise AssertionError("a finished point was measured again")
    monkeypatch.setattr(bench_grid, "measure_point", boom)
    again = bench.run(tiny, ["origin", "mesa"], [64, 160], out, model_name="tiny", settings=ONE,
                      train_length=128, progress=False, method_params={"mesa": MESA_SMALL},
                      matmul_size=256)
    assert again == [] and out.read_text() == before


def test_predicted_oom_is_written_not_run(tiny, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("an OOM point was run")
    monkeypatch.setattr(bench_grid, "measure_point", boom)
    monkeypatch.setattr(bench_grid, "available_bytes", lambda device=None, cap=None: 1000)
    out = tmp_path / "oom.jsonl"
    rows = bench.run(tiny, ["origin"], [64], out, model_name="tiny", settings=NONE,
                     progress=False, matmul_size=128)
    (r,) = [r for r in rows if r["kind"] == "point"]
    assert r["oom"] is True and r["prefill_s"] is None and r["peak_mem_bytes"] is None
    assert r["predicted_mem_bytes"] > 1000 and "GiB" in r["oom_reason"]
    assert read_jsonl(out)[-1] == r
    assert "OOM" in bench.summary_table(rows)


def test_measured_oom_becomes_a_row(tiny, tmp_path, monkeypatch):
    def oom(*a, **k):
        raise MemoryError("can't allocate memory")
    monkeypatch.setattr(bench_grid, "measure_point", oom)
    rows = bench.run(tiny, ["mesa"], [32], tmp_path / "o.jsonl", model_name="tiny",
                     settings=NONE, progress=False, machine=False)
    assert rows[0]["oom"] is True and "MemoryError" in rows[0]["oom_reason"]


def test_time_budget_skips_longer_lengths(tiny, tmp_path):
    out = tmp_path / "t.jsonl"
    rows = bench.run(tiny, ["origin"], [32, 64, 128], out, model_name="tiny", settings=NONE,
                     progress=False, machine=False, point_limit_s=1e-12)
    assert rows[0]["prefill_s"] is not None
    assert all(r.get("skipped") for r in rows[1:]) and len(rows) == 3
    # skipped points are retried on resume
    assert len(bench.run(tiny, ["origin"], [32, 64], out, model_name="tiny", settings=NONE,
                         progress=False, machine=False)) == 1


@pytest.mark.parametrize("args, match", [
    (dict(methods=[]), "methods is empty"), (dict(methods=["nope"]), "unknown method 'nope'"),
    (dict(lengths=[]), "lengths is empty"), (dict(lengths=[64, 0]), r"lengths \[0\]"),
    (dict(method_params={"rerope": {"window": 8}}), "not among methods"),
    (dict(method_params={"origin": {"bogus": 1}}), "unknown parameter"),
])
def test_bad_grids_are_refused_before_anything_runs(tiny, tmp_path, args, match):
    kwargs = {**dict(methods=["origin"], lengths=[64], method_params=None), **args}
    with pytest.raises(ValueError, match=match):
        bench.run(tiny, kwargs.pop("methods"), kwargs.pop("lengths"), tmp_path / "b.jsonl",
                  **kwargs)
    assert not (tmp_path / "b.jsonl").exists()


# -- FLOPs -------------------------------------------------------------------------------

DIMS = ModelDims(layers=2, hidden=8, intermediate=16, heads=2, kv_heads=1, head_dim=4,
                 vocab=10, max_positions=8)
# per layer: q,o 8*2*4 each; k,v 8*1*4 each; gate/up/down 8*16 each
PER_LAYER = 2 * 64 + 2 * 32 + 3 * 128          # 576 weights


def test_prefill_flops_origin_by_hand():
    n = 4
    pairs = 10                                   # 1+2+3+4
    want = 2 * n * 2 * PER_LAYER + 4 * 4 * 2 * pairs * 2 + 2 * 1 * 8 * 10
    assert want == 10016
    assert bench.prefill_flops(DIMS, "origin", n) == want
    parts = bench.prefill_flops(DIMS, "origin", n, detail=True)
    assert parts["pairs"] == pairs and parts["lm_head"] == 160
    # all logits kept
    assert bench.prefill_flops(DIMS, "origin", n, logits_kept=None) == want + 3 * 160


def test_prefill_flops_mesa_figure_plan_by_hand():
    # the paper's Figure 1: n=13, first chunk 2, middle chunks of 3, last chunk 2
    m = get_method("mesa", first_chunk=2, chunk_size=3, last_chunk=2).resolve(13, 8)
    assert m.plan().chunks == ((0, 2), (2, 5), (5, 8), (8, 11), (11, 13))
    pairs = 3 + 3 * (3 * 2 + 6) + (12 + 13)     # first, 3 middle chunks, last rows 11, 12
    assert pairs == 64 == bench.visible_pairs(m, 13)
    want = 2 * 13 * 2 * PER_LAYER + 4 * 4 * 2 * pairs * 2 + 160
    assert bench.prefill_flops(DIMS, m, 13) == want
    assert bench.prefill_flops(DIMS, "mesa", 13, params=dict(
        first_chunk=2, chunk_size=3, last_chunk=2)) == want


@pytest.mark.parametrize("name,params", [
    ("origin", {}), ("dynamic-ntk", {}), ("rerope", {"window": 5}),
    ("leaky-rerope", {"window": 5}), ("streaming-llm", {"sink_tokens": 2, "window": 4}),
    ("lm-infinite", {"sink_tokens": 3, "window": 5}),
    ("mesa", dict(first_chunk=3, chunk_size=4, last_chunk=3)),
    ("mesa", dict(first_chunk=2, chunk_size=3, last_chunk=2, stair="anchored", stair_start=2,
                  stair_limit=8)),
])
@pytest.mark.parametrize("n", [1, 7, 8, 23, 40])
def test_visible_pairs_match_the_layout(name, params, n):
    m = get_method(name, **params).resolve(n, 8)
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    _, vis = m.relative(i, j)
    assert bench.visible_pairs(m, n) == int(vis.sum())


def test_cli_end_to_end(tmp_path, capsys):
    from mesa_viz.cli import main
    out, fig = tmp_path / "cli", tmp_path / "figures" / "bench.html"
    rc = main(["bench", "--tiny", "--methods", "origin,mesa", "--lengths", "32,80",
               "--repeats", "1", "--decode-tokens", "1", "--train-length", "64",
               "--out", str(out), "--figure", str(fig), "--no-progress",
               "--param", "mesa.first_chunk=4", "--param", "mesa.chunk_size=16",
               "--param", "mesa.last_chunk=16"])
    assert rc == 0
    rows = read_jsonl(out / "bench.jsonl")
    assert sum(r["kind"] == "point" for r in rows) == 4
    mesa = [r for r in rows if r.get("method") == "mesa"]
    assert all(r["params"]["chunk_size"] == 16 and r["train_length"] == 64 for r in mesa)
    assert mesa[-1]["plan"]["chunks"] > 1 and mesa[-1]["model"] == "tiny-llama"
    assert fig.exists() and fig.stat().st_size > 1000 and not (out / "bench.html").exists()
    text = capsys.readouterr().out
    assert "origin" in text and "mesa" in text
    assert all(r["mem_method"].endswith("-exact") for r in rows if r["kind"] == "point")


def test_cli_rss_memory_measures_the_timed_prefill(tmp_path):
    from mesa_viz.cli import main
    out = tmp_path / "rss"
    rc = main(["bench", "--tiny", "--methods", "origin", "--lengths", "48", "--repeats", "2",
               "--decode-tokens", "0", "--train-length", "64", "--memory", "rss",
               "--out", str(out), "--no-progress"])
    assert rc == 0
    (row,) = [r for r in read_jsonl(out / "bench.jsonl") if r["kind"] == "point"]
    assert not row["mem_method"].endswith("-exact") and len(row["peak_mem_all"]) == 2


@pytest.mark.parametrize("method,params", [
    ("origin", {}), ("mesa", dict(first_chunk=8, chunk_size=16, last_chunk=16))])
def test_prefill_flops_against_torch_flop_counter(method, params):
    """torch's FlopCounterMode on a real prefill (tiny model, eager attention):
    every matmul of the linear layers and the LM head is counted exactly as
    :func:`bench.prefill_flops` counts it; the attention products it counts
    (every score the kernels compute, masked ones included) are at least the
    useful ones (visible pairs) and, for origin, exactly the full square of
    which the causal half is useful."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import mesa_viz as mv
    from mesa_viz.models import tiny_model
    model = tiny_model("llama", attn_implementation="eager")[0]
    n, T = 200, 64
    ids = torch.randint(0, 500, (1, n), generator=torch.Generator().manual_seed(0))
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), mv.apply(model, method, train_length=T, **params), counter:
        model(ids, use_cache=True, logits_to_keep=1)
    counted = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    want = bench.prefill_flops(model.config, method, n, train_length=T, params=params,
                               detail=True)
    assert counted["aten.mm"] == want["linear"] + want["lm_head"]
    cfg = model.config
    square = 4 * cfg.head_dim * cfg.num_attention_heads * n * n * cfg.num_hidden_layers
    assert want["attention"] <= counted["aten.bmm"] <= square
    if method == "origin":
        assert counted["aten.bmm"] == square
        assert want["attention"] == square * (n + 1) // (2 * n)


def test_matmul_calibration_takes_the_best_shape():
    rates = bench.matmul_rates("cpu", "float32", 128, shapes=[(64, 32, 48)], min_seconds=0.0)
    assert set(rates) == {"128 x 128 x 128", "64 x 32 x 48"} and min(rates.values()) > 0
    assert bench.model_gemms(DIMS, 10) == [(10, 8, 8), (10, 8, 4), (10, 8, 16), (10, 16, 8)]


def test_a_memory_cap_makes_a_point_out_of_memory_without_running_it(tiny, tmp_path,
                                                                     monkeypatch):
    """``Settings.memory_cap_bytes`` holds the out-of-memory check to the cap
    (a smaller card's memory on a larger one): a point predicted past it is
    written as out of memory, never run."""
    from mesa_viz.runtime.memory import _rss

    def boom(*a, **k):
        raise AssertionError("a point past the cap was run")
    monkeypatch.setattr(bench_grid, "measure_point", boom)
    capped = bench.Settings(repeats=1, decode_tokens=0, memory_cap_bytes=_rss() + 1000)
    rows = bench.run(tiny, ["origin"], [64], tmp_path / "cap.jsonl", model_name="tiny",
                     settings=capped, progress=False, machine=False)
    (r,) = rows
    assert r["oom"] is True and r["available_bytes"] <= 1000 and r["prefill_s"] is None


def test_recorded_errors_keep_the_grid_going(tiny, tmp_path, monkeypatch):
    """``record_errors``: a point that raises (not out of memory) becomes a row
    with its error, and the next points run; without it the error stops the run."""
    measure = bench.measure_point

    def fails_for_mesa(model, method, *a, **k):
        if method == "mesa":
            raise RuntimeError("expanded size of the tensor (32) must match")
        return measure(model, method, *a, **k)
    monkeypatch.setattr(bench_grid, "measure_point", fails_for_mesa)
    settings = bench.Settings(repeats=1, decode_tokens=0, record_errors=True)
    rows = bench.run(tiny, ["mesa", "origin"], [64], tmp_path / "e.jsonl", model_name="tiny",
                     settings=settings, progress=False, machine=False,
                     method_params={"mesa": MESA_SMALL}, train_length=128)
    by = {r["method"]: r for r in rows}
    assert "RuntimeError: expanded size" in by["mesa"]["error"]
    assert by["mesa"]["prefill_s"] is None and by["origin"]["prefill_s"] > 0
    assert "error: RuntimeError" in bench.summary_table(rows)
    with pytest.raises(RuntimeError, match="expanded size"):
        bench.run(tiny, ["mesa"], [64], tmp_path / "e2.jsonl", model_name="tiny", settings=NONE,
                  progress=False, machine=False, method_params={"mesa": MESA_SMALL},
                  train_length=128)


def test_piece_tokens_reach_the_prefill_and_the_rows(tiny, tmp_path):
    """``Settings.piece_tokens``: Mesa's prefill runs in pieces of at most that
    many tokens (counted at the decoder stack), and every row says it."""
    calls = []

    def count(module, args, kwargs):
        x = kwargs.get("input_ids", args[0] if args else None)
        calls.append((x if x is not None else kwargs["inputs_embeds"]).shape[1])
    hook = tiny.get_decoder().register_forward_pre_hook(count, with_kwargs=True)
    try:
        settings = bench.Settings(repeats=1, decode_tokens=0, piece_tokens=64)
        (row,) = bench.run(tiny, ["mesa"], [300], tmp_path / "p.jsonl", model_name="tiny",
                           settings=settings, progress=False, machine=False, train_length=128,
                           method_params={"mesa": MESA_SMALL})
    finally:
        hook.remove()
    assert row["piece_tokens"] == 64 and row["prefill_s"] > 0
    pieces = [n for n in calls if 16 < n < 300]     # not the callers' forwards, the guard's
    assert pieces and max(pieces) <= 64 and len(pieces) >= 2 * (300 // 64)   # two prefills
    per_prefill = len(pieces) // 2 + 1              # the last piece runs in the caller's forward
    assert row["prefill_pieces"] == per_prefill
    assert f"{per_prefill} pieces of <= 64" in bench.summary_table([row])


def test_pieces_note_only_where_the_prefill_ran_in_pieces():
    """The table says "N pieces of <= S" for a prefill of several forwards, nothing
    for one forward (origin, or a prompt within one piece); rows written before
    ``prefill_pieces`` was recorded keep the size alone."""
    assert bench_rows._pieces_note({"piece_tokens_used": 16384, "prefill_pieces": 1}) == ""
    assert bench_rows._pieces_note({"piece_tokens_used": 16384, "prefill_pieces": 17}) == \
        "17 pieces of <= 16384 (default)"
    assert bench_rows._pieces_note({"piece_tokens": 64, "piece_tokens_used": 64,
                                    "prefill_pieces": 5}) == "5 pieces of <= 64"
    assert bench_rows._pieces_note({"piece_tokens": None, "piece_tokens_used": 4096}) == \
        "pieces of 4096 (default)"
    assert bench_rows._pieces_note({}) == ""


def test_resume_tells_piece_sizes_apart(tiny, tmp_path):
    """Points measured with one piece size do not count as done for another
    (the resume key holds ``piece_tokens``); the same size is not run again."""
    out = tmp_path / "r.jsonl"

    def run(size):
        return bench.run(tiny, ["mesa"], [300], out, model_name="tiny", progress=False,
                         settings=bench.Settings(repeats=1, decode_tokens=0, piece_tokens=size),
                         machine=False, train_length=128, method_params={"mesa": MESA_SMALL})
    assert len(run(64)) == 1 and len(run(128)) == 1 and run(64) == []
    assert [r["piece_tokens"] for r in read_jsonl(out)] == [64, 128]


def test_interleaved_decode_takes_steps_in_turn_and_decodes_as_alone(tiny):
    """Two runs on two models sharing one set of weights, origin and Mesa
    past the training length, decoded step by step in turn: each run's greedy
    tokens are those of its run alone (the two ``apply`` scopes do not touch
    each other), every step is timed, and the paired ratio is the median of
    the per-step ratios."""
    import torch

    from mesa_viz.runtime import apply
    twin = bench.weight_sharing_twin(tiny)
    assert twin is not tiny and twin.model.layers[0] is not tiny.model.layers[0]
    assert all(p is q for p, q in zip(twin.parameters(), tiny.parameters()))
    got = bench.interleaved_decode({"origin": (tiny, "origin"), "mesa": (twin, "mesa")}, 160, 4,
                                   train_length=128)
    assert set(got) == {"origin", "mesa"}
    assert all(len(r["seconds"]) == 4 and min(r["seconds"]) > 0 for r in got.values())
    ids = bench.random_ids(tiny.config.vocab_size, 160)
    for label in got:
        with torch.no_grad(), apply(tiny, label, train_length=128):
            alone = tiny.generate(ids, max_new_tokens=5, do_sample=False)[0, 161:].tolist()
        assert got[label]["tokens"] == alone, label
    assert bench.paired_ratio([2.0, 4.0, 9.0, 3.0], [1.0, 1.0, 3.0, 2.0]) == 3.0
    with pytest.raises(ValueError, match="more than skip=1"):
        bench.paired_ratio([1.0], [1.0])
    with pytest.raises(ValueError, match="two different methods"):
        next(bench.decode_ab(tiny, ["mesa", "mesa"], [160], 3))
    rows = list(bench.decode_ab(tiny, ["origin", "mesa"], [160], 3, train_length=128))
    assert rows[0]["methods"] == ["origin", "mesa"] and rows[0]["ratio_paired"] > 0
    # the first step's SDPA backends: origin's layers through SDPA, Mesa's kernels never
    assert sum(rows[0]["sdpa_backends"]["origin"].values()) == tiny.config.num_hidden_layers
    assert rows[0]["sdpa_backends"]["mesa"] == {}
    assert {k: len(v) for k, v in rows[0]["tokens"].items()} == {"origin": 3, "mesa": 3}
    assert rows[0]["params"] == {"origin": {}, "mesa": {}}
    import transformers
    assert rows[0]["host"] == {"device_name": bench_machine._cpu_name(),
                               "threads": torch.get_num_threads(), "torch": torch.__version__,
                               "transformers": transformers.__version__}
    # --param reaches the A/B: recorded in the row, and a bad one refused by apply
    row = next(bench.decode_ab(tiny, ["origin", "mesa"], [160], 2, train_length=128,
                               method_params={"mesa": {"stair_width": 2}}))
    assert row["params"] == {"origin": {}, "mesa": {"stair_width": 2}}
    with pytest.raises(ValueError, match="stair_wide"):
        next(bench.decode_ab(tiny, ["origin", "mesa"], [160], 2, train_length=128,
                             method_params={"mesa": {"stair_wide": 2}}))


def test_prefill_ab_takes_the_prefills_in_turn_each_under_its_method(tiny, monkeypatch):
    """``bench.prefill_ab``: per length, warm-up rounds and timed rounds, one
    prefill of each method a round in turn (the second on the weight-sharing
    twin), each giving the logits of its method run alone; medians of the timed
    ones and the per-round ratio; bad counts and one method refused by name."""
    import torch

    from mesa_viz.runtime import apply
    seen, real = [], bench_point.prefill

    def spy(model, ids, dev, **kw):
        out, p = real(model, ids, dev, **kw)
        seen.append((model, out.logits[0, -1].clone()))
        return out, p
    monkeypatch.setattr(bench_ab, "prefill", spy)
    (row,) = bench.prefill_ab(tiny, ["origin", "mesa"], [160], 2, warmup=1, train_length=128)
    assert row["kind"] == "prefill-ab" and row["methods"] == ["origin", "mesa"]
    assert [len(row["s_all"][m]) for m in ("origin", "mesa")] == [3, 3]
    assert row["s"]["mesa"] == statistics.median(row["s_all"]["mesa"][1:])
    assert row["ratio_paired"] == bench.paired_ratio(row["s_all"]["mesa"],
                                                     row["s_all"]["origin"], skip=1)
    assert [m is tiny for m, _ in seen] == [True, False] * 3           # in turn, two objects
    ids = bench.random_ids(tiny.config.vocab_size, 160)
    for label, (_, logits) in zip(("origin", "mesa"), seen[:2]):
        with torch.no_grad(), apply(tiny, label, train_length=128):
            alone = tiny(ids).logits[0, -1]
        assert torch.allclose(logits, alone, atol=1e-5), label
    assert not torch.allclose(seen[0][1], seen[1][1], atol=1e-3)       # the methods differ here
    for bad, match in (({"repeats": 0}, "repeats=0"), ({"warmup": -1}, "warmup=-1")):
        kw = {"repeats": 1, **bad}
        with pytest.raises(ValueError, match=match):
            next(bench.prefill_ab(tiny, ["origin", "mesa"], [160], kw.pop("repeats"), **kw))
    with pytest.raises(ValueError, match="two different methods"):
        next(bench.prefill_ab(tiny, ["mesa"], [160], 1))


def test_decode_floor_counts_a_rotated_key_copy_only_where_one_is_read():
    """The decode floor's bytes: weights and the KV cache, plus a rotated copy
    of the keys for a kernel method on CPU (the decode memo), not on CUDA (the
    split-key launch rotates what it reads) unless the row says that launch was
    off; origin never."""
    from mesa_viz.runtime.memory import ModelDims
    dims = ModelDims(layers=2, hidden=64, intermediate=128, heads=4, kv_heads=2, head_dim=16,
                     vocab=100, max_positions=128)
    machine = {"matmul_gflops": 1.0, "memory_gbps": 1.0}

    def floor(method, device, **extra):
        row = {"method": method, "length": 1000, "dtype": "float32", "useful_flops": 1,
               "device": device, **extra}
        return bench.floors(row, machine, dims, n_params=0)["decode_floor_ms"]
    kv = floor("origin", "cpu")
    assert kv == floor("origin", "cuda") == floor("mesa", "cuda")
    assert floor("mesa", "cpu") == floor("mesa", "cuda", fused_off="check failed") == 1.5 * kv
