"""Does crossing predict failure?  The threshold pairs found once on origin,
measured for every method and length, joined with task scores (:mod:`.compute`)."""

from .compute import (X_MEASURES, crossing_row, format_table, join, measure, pair_crossings,
                      pairs_file, summary)

__all__ = ["X_MEASURES", "pair_crossings", "crossing_row", "measure", "pairs_file", "join",
           "summary", "format_table"]
