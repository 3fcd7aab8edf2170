"""``tp.pruner.function``: the low-level pruning functions under their original module path.

Every public name of :mod:`depgraph.functional` is re-exported unchanged, so
``tp.pruner.function.prune_conv_out_channels is tp.prune_conv_out_channels``.
"""

from .. import functional as _functional

__all__ = list(_functional.__all__)
globals().update({name: getattr(_functional, name) for name in __all__})
