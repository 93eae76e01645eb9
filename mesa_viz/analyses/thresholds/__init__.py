"""The paper's hidden-state thresholds (Section 3): the finder and each method's
crossings (:mod:`.compute`), and the paper's heat maps of hidden states around
and past ``T`` (:mod:`.hidden`)."""

from .compute import (INPUTS, Crossings, Found, ThresholdPair, crossings, default_hidden_layers,
                      find, find_thresholds, format_pairs, measure_crossings, order_pairs,
                      past_fraction, smooth, threshold_input, trace_methods, traces_folder)
from .hidden import (HiddenView, format_changes, hidden_view, layer_changes, mean_change,
                     paper_windows)

__all__ = ["ThresholdPair", "Found", "Crossings", "smooth", "crossings", "find_thresholds",
           "measure_crossings", "past_fraction", "INPUTS", "threshold_input",
           "default_hidden_layers", "find", "trace_methods", "traces_folder", "format_pairs",
           "order_pairs", "HiddenView", "paper_windows", "hidden_view", "mean_change",
           "layer_changes", "format_changes"]
