"""Perplexity by position: how well each method predicts long real text before and
past the training length (:mod:`.compute`), swept over methods, lengths and
texts (:mod:`.run`), one row per position bucket (:mod:`.rows`)."""

from .compute import SLICE_TOKENS, TEXTS, bucket_edges, by_bucket, check_head, token_nll
from .rows import ROW_FIELDS, row_key, summary
from .run import evaluate

__all__ = ["evaluate", "token_nll", "bucket_edges", "by_bucket", "check_head", "summary",
           "row_key", "ROW_FIELDS", "TEXTS", "SLICE_TOKENS"]
