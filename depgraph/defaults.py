"""Default layer-type lists, defined once and shared by the graph, the pruners, head finding and criteria.

Why one place: group roots (``get_all_groups``, ``BasePruner``), the layers a unit
of attention heads may be expressed on, and the layers criteria score used to
carry four slightly different lists, so the same call picked different groups
depending on the path. A layer whose handler ``acts_as`` one of these types
counts as one (transformers' ``Conv1D`` as ``nn.Linear``).
"""

from __future__ import annotations

import torch.nn as nn

__all__ = ["CONV_AND_LINEAR", "DEFAULT_ROOT_TYPES", "DEFAULT_TARGET_TYPES"]

#: Layers with filters and input columns: the default of criteria that skip norms.
CONV_AND_LINEAR: tuple[type, ...] = (nn.modules.conv._ConvNd, nn.Linear)

#: Group roots by default (``get_all_groups``, pruners, attention heads, the CLI): convolutions,
#: linears and LSTMs, as the original's pruners (its ``get_all_groups`` alone left LSTMs out).
DEFAULT_ROOT_TYPES: tuple[type, ...] = (*CONV_AND_LINEAR, nn.LSTM)

#: Layers criteria score by default: the root layers' weights plus batch and layer norms.
DEFAULT_TARGET_TYPES: tuple[type, ...] = (*CONV_AND_LINEAR, nn.modules.batchnorm._BatchNorm, nn.LayerNorm)
