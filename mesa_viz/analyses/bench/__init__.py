"""Benchmark: prefill time, peak memory, decode time and FLOP rate by method and
length (:mod:`.grid`, one point: :mod:`.point`), methods in turn (:mod:`.ab`),
the machine (:mod:`.machine`) and the floors it sets (:mod:`.flops`)."""

from .ab import (decode_ab, interleaved_decode, interleaved_prefill, paired_ratio, prefill_ab,
                 weight_sharing_twin)
from .flops import decode_bytes, floors, model_gemms, prefill_flops, visible_pairs
from .grid import ALL_METHODS, DEFAULT_LENGTHS, Settings, check_grid, rows_for, run
from .machine import (CALIBRATION_SIZES, machine_row, matmul_gflops, matmul_rates, memory_gbps,
                      sdpa_choices)
from .point import measure_point, page_in, random_ids
from .rows import summary_table

__all__ = ["visible_pairs", "prefill_flops", "matmul_gflops", "matmul_rates", "model_gemms",
           "memory_gbps", "decode_bytes", "floors", "CALIBRATION_SIZES", "measure_point", "run",
           "Settings", "machine_row", "check_grid", "rows_for", "summary_table",
           "sdpa_choices", "ALL_METHODS", "DEFAULT_LENGTHS", "decode_ab", "prefill_ab",
           "interleaved_decode", "interleaved_prefill", "weight_sharing_twin", "paired_ratio",
           "page_in", "random_ids"]
