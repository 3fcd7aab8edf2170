"""Importance criteria: score each channel of a pruning group (low = prune first).

Also importable as ``depgraph.pruner.importance``.
"""

from .activation import ActivationImportance
from .base import (
    CONV_AND_LINEAR,
    DEFAULT_TARGET_TYPES,
    GroupImportance,
    Importance,
    create_importance,
    list_importances,
    register_importance,
)
from .blockwise import BlockwiseCalibration, block_members, find_blocks
from .calibration import CalibrationStats, ChannelStats, calibration_batches, collect_activation_stats
from .channels import ChannelSlice, channel_slices, register_channel_slices
from .compensation import BiasCompensation, compensate_bias, enable_bias_compensation
from .compensation_modes import BiasMean, CompensationMode, LeastSquares
from .data_aware import ActivationWeightImportance, CalibratedImportance, FluctuationImportance
from .fpgm import FPGMImportance
from .magnitude import (
    BNScaleImportance,
    GroupMagnitudeImportance,
    GroupNormImportance,
    LAMPImportance,
    MagnitudeImportance,
    RandomImportance,
)
from .matgrad import ComputeMatGrad
from .obdc import OBDCImportance
from .reconstruction import (
    InputCovariance,
    LayerCovariance,
    LeastSquaresCompensation,
    ReconstructionImportance,
    collect_input_covariance,
    enable_lstsq_compensation,
    refit_consumers,
)
from .reduce import NORMALIZERS, REDUCTIONS, normalize, reduce_stack
from .taylor import GroupHessianImportance, GroupTaylorImportance, HessianImportance, TaylorImportance

__all__ = [
    # base and registry
    "Importance",
    "GroupImportance",
    "register_importance",
    "create_importance",
    "list_importances",
    "DEFAULT_TARGET_TYPES",
    "CONV_AND_LINEAR",
    # magnitude family
    "GroupMagnitudeImportance",
    "MagnitudeImportance",
    "GroupNormImportance",
    "BNScaleImportance",
    "LAMPImportance",
    "FPGMImportance",
    "RandomImportance",
    # gradient and data driven
    "GroupTaylorImportance",
    "TaylorImportance",
    "GroupHessianImportance",
    "HessianImportance",
    "OBDCImportance",
    "ComputeMatGrad",
    "ActivationImportance",
    # calibrated on real inputs, bias compensation (new)
    "ActivationWeightImportance",
    "FluctuationImportance",
    "CalibratedImportance",
    "CalibrationStats",
    "ChannelStats",
    "collect_activation_stats",
    "calibration_batches",
    "compensate_bias",
    "enable_bias_compensation",
    "BiasCompensation",
    # least-squares reconstruction (new)
    "ReconstructionImportance",
    "InputCovariance",
    "LayerCovariance",
    "collect_input_covariance",
    "refit_consumers",
    "enable_lstsq_compensation",
    "LeastSquaresCompensation",
    "BlockwiseCalibration",
    "find_blocks",
    "block_members",
    # compensation modes for BasePruner(compensation=...) (new)
    "CompensationMode",
    "BiasMean",
    "LeastSquares",
    # building blocks
    "REDUCTIONS",
    "NORMALIZERS",
    "reduce_stack",
    "normalize",
    "ChannelSlice",
    "channel_slices",
    "register_channel_slices",
]
