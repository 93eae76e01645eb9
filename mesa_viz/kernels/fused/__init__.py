"""The one-launch attention of a method's near/far rules: :mod:`.twin` (torch, the
reference of its blocking) and :mod:`.triton` (the Triton kernels, imported only
where ``triton`` is)."""
