"""The paper's theory as code: the constructions of Appendix E (NoPE, the relative
PE, the ReRoPE clamp, Stair PE) run on explicit weights, with their statements
checked and their closed forms (:mod:`.compute`)."""

from .compute import *  # noqa: F401,F403
from .compute import __all__  # noqa: F401
