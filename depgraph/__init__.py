"""depgraph: structural pruning for PyTorch.

Removes whole channels, hidden dimensions and attention heads - physically -
while keeping every coupled layer consistent. The public API follows the
DepGraph / Torch-Pruning documentation, so ``import depgraph as tp`` runs
scripts written for it.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

# Subpackages: tp.functional, tp.importance, tp.pruner, tp.utils; new: tp.dims (dimension rules), tp.layers (layer specs)
from . import dims, functional, importance, layers, pruner, utils

# Dependency graph
from .dependency import Dependency, DependencyGraph, Group, GroupItem, Node

# Errors
from .errors import (
    DepgraphError,
    ExportError,
    ExportMismatchError,
    HandlerMismatchError,
    InvalidIndicesError,
    OptionError,
    OptionTypeError,
    OverPruningError,
    PrunedStateError,
    PruneFailedError,
    RecoveryError,
    StaleGroupError,
    TraceError,
    UnknownModuleError,
    UnsupportedOpError,
)

# Recovery and export (new)
from .export import export_onnx, export_program

# Low-level pruning functions
from .functional import (
    BasePruningFunc,
    PrunerBox,
    prune_batchnorm,
    prune_batchnorm_in_channels,
    prune_batchnorm_out_channels,
    prune_conv,
    prune_conv1d_in_channels,
    prune_conv1d_out_channels,
    prune_conv_in_channels,
    prune_conv_out_channels,
    prune_depthwise_conv_in_channels,
    prune_depthwise_conv_out_channels,
    prune_embedding_in_channels,
    prune_embedding_out_channels,
    prune_groupnorm_in_channels,
    prune_groupnorm_out_channels,
    prune_gru_in_channels,
    prune_gru_out_channels,
    prune_instancenorm_in_channels,
    prune_instancenorm_out_channels,
    prune_layernorm_in_channels,
    prune_layernorm_out_channels,
    prune_linear,
    prune_linear_in_channels,
    prune_linear_out_channels,
    prune_lstm_in_channels,
    prune_lstm_out_channels,
    prune_multihead_attention_in_channels,
    prune_multihead_attention_out_channels,
    prune_parameter_in_channels,
    prune_parameter_out_channels,
    prune_prelu_in_channels,
    prune_prelu_out_channels,
    prune_related_conv,
    prune_related_linear,
    prune_rmsnorm_in_channels,
    prune_rmsnorm_out_channels,
    prune_rnn_in_channels,
    prune_rnn_out_channels,
)

# Bias compensation with calibration statistics (new)
from .importance.compensation import compensate_bias

# The built-in layer specs (registered on import)
from .layers import builtin as _builtin_layers  # noqa: F401

# Pruners, also at the top level as in the original
# The original's module path of the handlers: tp.function (= tp.pruner.function)
from .pruner import (
    BasePruner,
    BNScalePruner,
    GroupNormPruner,
    GrowingRegPruner,
    MagnitudePruner,
    MetaPruner,
    function,
)
from .recovery import average_models, recover

# Saving pruned models as data
from .serialization import load, load_state_dict, save, state_dict

# Proof (new)
from .verify import VerifyResult, verify

try:
    __version__ = version("depgraph")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = [
    # dependency graph
    "DependencyGraph",
    "Group",
    "GroupItem",
    "Dependency",
    "Node",
    # low-level pruning functions
    "functional",
    "function",
    "BasePruningFunc",
    "PrunerBox",
    "prune_conv",
    "prune_related_conv",
    "prune_batchnorm",
    "prune_linear",
    "prune_related_linear",
    "prune_conv_out_channels",
    "prune_conv_in_channels",
    "prune_depthwise_conv_out_channels",
    "prune_depthwise_conv_in_channels",
    "prune_batchnorm_out_channels",
    "prune_batchnorm_in_channels",
    "prune_linear_out_channels",
    "prune_linear_in_channels",
    "prune_conv1d_out_channels",
    "prune_conv1d_in_channels",
    "prune_prelu_out_channels",
    "prune_prelu_in_channels",
    "prune_layernorm_out_channels",
    "prune_layernorm_in_channels",
    "prune_rmsnorm_out_channels",
    "prune_rmsnorm_in_channels",
    "prune_embedding_out_channels",
    "prune_embedding_in_channels",
    "prune_parameter_out_channels",
    "prune_parameter_in_channels",
    "prune_multihead_attention_out_channels",
    "prune_multihead_attention_in_channels",
    "prune_groupnorm_out_channels",
    "prune_groupnorm_in_channels",
    "prune_instancenorm_out_channels",
    "prune_instancenorm_in_channels",
    "prune_lstm_out_channels",
    "prune_lstm_in_channels",
    "prune_gru_out_channels",
    "prune_gru_in_channels",
    "prune_rnn_out_channels",
    "prune_rnn_in_channels",
    # importance criteria, pruners, utilities
    "importance",
    "pruner",
    "utils",
    "BasePruner",
    "MetaPruner",
    "MagnitudePruner",
    "BNScalePruner",
    "GroupNormPruner",
    "GrowingRegPruner",
    "compensate_bias",
    # dimension rules and layer specs (new)
    "dims",
    "layers",
    # recovery and export (new)
    "recover",
    "average_models",
    "export_onnx",
    "export_program",
    # proof (new)
    "verify",
    "VerifyResult",
    # saving
    "state_dict",
    "load_state_dict",
    "save",
    "load",
    # errors
    "DepgraphError",
    "TraceError",
    "UnsupportedOpError",
    "InvalidIndicesError",
    "OverPruningError",
    "UnknownModuleError",
    "HandlerMismatchError",
    "OptionError",
    "OptionTypeError",
    "PrunedStateError",
    "PruneFailedError",
    "StaleGroupError",
    "RecoveryError",
    "ExportError",
    "ExportMismatchError",
    "__version__",
]
