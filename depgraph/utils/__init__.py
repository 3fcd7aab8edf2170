"""Utilities around pruning: MAC/parameter counting, printing, benchmarks, pictures.

``draw_*`` import matplotlib lazily, so ``import depgraph.utils`` never needs it.
"""

from . import batchnorm, benchmark, layer_latency, print_tool
from .batchnorm import batchnorm_layers, recalibrate_batchnorm
from .benchmark import measure_fps, measure_latency, measure_memory, measure_throughput
from .compat import TORCH_BATCHNORM, TORCH_CONV, TORCH_LINEAR, TORCH_PRELU, flatten_as_list, module2type
from .draw import draw_computational_graph, draw_dependency_graph, draw_groups
from .layer_latency import compare_profiles, gap_by_kind, layer_table, profile_layers
from .op_counter import count_ops_and_params, count_params
from .op_rules import register_op_rule

__all__ = [
    # counting
    "count_ops_and_params",
    "count_params",
    "register_op_rule",
    # printing
    "print_tool",
    # benchmarks
    "benchmark",
    "measure_latency",
    "measure_memory",
    "measure_fps",
    "measure_throughput",
    # BatchNorm statistics after a prune
    "batchnorm",
    "batchnorm_layers",
    "recalibrate_batchnorm",
    # per-layer latency against MACs
    "layer_latency",
    "profile_layers",
    "compare_profiles",
    "gap_by_kind",
    "layer_table",
    # Torch-Pruning helpers
    "flatten_as_list",
    "module2type",
    "TORCH_CONV",
    "TORCH_BATCHNORM",
    "TORCH_LINEAR",
    "TORCH_PRELU",
    # pictures
    "draw_dependency_graph",
    "draw_groups",
    "draw_computational_graph",
]
