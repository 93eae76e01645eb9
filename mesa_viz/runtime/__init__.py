"""The method runtime: the only code that touches transformers' internals.

``apply()`` (:mod:`.apply`) installs a method on a model for a ``with`` block:
hooks and state (:mod:`.state`, :mod:`.install`), a prefill in pieces
(:mod:`.pieces`), the presized KV cache and the contract the decode memo relies
on (:mod:`.cache`), a frequency rule's rotary (:mod:`.rotary`), and the guard
that refuses what the kernels cannot run exactly (:mod:`.guard`).  Probes
(:mod:`.probes`) capture what a forward computed (:class:`~.trace.Trace`);
:mod:`.memory` says what a length will need before it runs.  What models *are*
(training length, rotary module, families) is ``mesa_viz.models``, imported
here, never the reverse.
"""

from .apply import apply
from .cache import presized_cache
from .capture import Capture, CaptureDone
from .guard import GUARD_TOKENS, guard
from .memory import LengthTooLong, PeakMemory, check_fits, estimate_peak_bytes, fits
from .probes import (Captured, CapturedQK, capture_qk, capture_rows, first_layers, saved_trace,
                     trace)
from .state import SUPPORTED_BACKENDS, Applied, Settings
from .trace import Trace, needle_share

__all__ = ["apply", "Applied", "Settings", "Capture", "CaptureDone", "guard", "GUARD_TOKENS",
           "presized_cache", "trace", "saved_trace", "capture_qk", "capture_rows", "Captured",
           "CapturedQK", "first_layers", "Trace", "needle_share", "check_fits", "fits",
           "estimate_peak_bytes", "LengthTooLong", "PeakMemory", "SUPPORTED_BACKENDS"]
