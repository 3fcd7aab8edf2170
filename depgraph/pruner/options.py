"""Pruner options: one frozen, validated dataclass per pruner family.

``BasePruner`` keeps the keyword arguments of the original API; it collects
them into :class:`PrunerOptions`, which checks every value once, in
``__post_init__``, and reports all problems in one ``ValueError``. Mappings
and lists given by the user are copied into tuples, so an options object never
shares mutable state with the caller or with another pruner.

Subclasses (the regularising pruners) add fields by subclassing the dataclass.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn as nn

from .._caller import user_stacklevel
from ..defaults import DEFAULT_ROOT_TYPES
from ..errors import OptionError
from ..importance.compensation_modes import BiasMean, CompensationMode, LeastSquares
from .scheduler import Scheduler, linear_scheduler

__all__ = ["PrunerOptions", "resolve_deprecated", "check_known_modules", "DEFAULT_ROOT_TYPES"]


def _pairs(mapping: Mapping | None, what: str, problems: list[str]) -> tuple:
    if mapping is None:
        return ()
    if not isinstance(mapping, Mapping):
        problems.append(f"{what} must be a dict, got {type(mapping).__name__}")
        return ()
    return tuple(mapping.items())


def _ratio_ok(r: Any) -> bool:
    return isinstance(r, (int, float)) and not isinstance(r, bool) and 0.0 <= float(r) <= 1.0


@dataclass(frozen=True)
class PrunerOptions:
    """Everything a pruner is configured with (see ``BasePruner`` for each field's meaning)."""

    global_pruning: bool = False
    pruning_ratio: float = 0.5
    pruning_ratio_dict: tuple = ()  # ((module or tuple of modules, ratio), ...)
    max_pruning_ratio: float = 1.0
    iterative_steps: int = 1
    iterative_pruning_ratio_scheduler: Scheduler = linear_scheduler
    ignored_layers: tuple = ()
    round_to: int | None = None
    isomorphic: bool = False
    in_channel_groups: tuple = ()  # ((module, groups), ...)
    out_channel_groups: tuple = ()
    num_heads: tuple = ()
    prune_num_heads: bool = False
    prune_head_dims: bool = True
    head_pruning_ratio: float = 0.0
    head_pruning_ratio_dict: tuple = ()
    customized_pruners: tuple = ()
    unwrapped_parameters: Any = None
    root_module_types: tuple = DEFAULT_ROOT_TYPES
    forward_fn: Callable | None = None
    output_transform: Callable | None = None
    soft_pruning: bool = False  # (new) zero the chosen channels instead of removing them
    compensation: Any = None  # (new) a CompensationMode: BiasMean(stats) or LeastSquares(cov)
    problems: tuple = field(default=(), repr=False, compare=False)

    # the flag spellings of ``compensation``, read back from the mode
    @property
    def bias_compensation(self) -> bool:
        """The original's flag, derived from ``compensation`` so the two cannot disagree."""
        return isinstance(self.compensation, BiasMean)

    @property
    def calibration_stats(self) -> Any:
        """The statistics of a ``BiasMean`` compensation (None for any other mode)."""
        return self.compensation.stats if isinstance(self.compensation, BiasMean) else None

    @property
    def lstsq_compensation(self) -> Any:
        """The input covariance of a ``LeastSquares`` compensation (None for any other mode)."""
        return self.compensation.cov if isinstance(self.compensation, LeastSquares) else None

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> PrunerOptions:
        """Build from the user's keyword arguments: copy containers, then validate."""
        problems: list[str] = []
        for name in (
            "pruning_ratio_dict",
            "in_channel_groups",
            "out_channel_groups",
            "num_heads",
            "head_pruning_ratio_dict",
            "customized_pruners",
        ):
            if name in kwargs:
                kwargs[name] = _pairs(kwargs[name], name, problems)
        if "ignored_layers" in kwargs:
            layers = kwargs["ignored_layers"]
            kwargs["ignored_layers"] = tuple(layers) if layers is not None else ()
        _compensation_mode(kwargs, problems)
        if kwargs.get("root_module_types") is not None:
            kwargs["root_module_types"] = tuple(kwargs["root_module_types"])
        else:
            kwargs.pop("root_module_types", None)
        return cls(**kwargs, problems=tuple(problems))

    def __post_init__(self) -> None:
        problems = list(self.problems)
        self.validate(problems)
        if problems:
            raise OptionError("invalid pruner options:\n  - " + "\n  - ".join(problems))

    def validate(self, problems: list[str]) -> None:
        """Append one line per invalid value; subclasses extend it (and call super)."""
        for name in ("pruning_ratio", "max_pruning_ratio", "head_pruning_ratio"):
            v = getattr(self, name)
            if not _ratio_ok(v):
                problems.append(f"{name} must be a number in [0, 1], got {v!r}")
        for key, ratio in self.pruning_ratio_dict:
            mods = key if isinstance(key, tuple) else (key,)
            if not mods or not all(isinstance(m, nn.Module) for m in mods):
                problems.append(f"pruning_ratio_dict keys must be modules or tuples of modules, got {key!r}")
            if not _ratio_ok(ratio):
                problems.append(
                    f"pruning_ratio_dict ratio for {_short(key)} must be in [0, 1], got {ratio!r}"
                )
        for key, ratio in self.head_pruning_ratio_dict:
            if not _ratio_ok(ratio):
                problems.append(
                    f"head_pruning_ratio_dict ratio for {_short(key)} must be in [0, 1], got {ratio!r}"
                )
        if (
            not isinstance(self.iterative_steps, int)
            or isinstance(self.iterative_steps, bool)
            or self.iterative_steps < 1
        ):
            problems.append(f"iterative_steps must be a positive integer, got {self.iterative_steps!r}")
        if not callable(self.iterative_pruning_ratio_scheduler):
            problems.append(
                "iterative_pruning_ratio_scheduler must be callable (pruning_ratio, steps) -> list"
            )
        if self.round_to is not None and (
            not isinstance(self.round_to, int) or isinstance(self.round_to, bool) or self.round_to < 1
        ):
            problems.append(f"round_to must be a positive integer or None, got {self.round_to!r}")
        for name in ("in_channel_groups", "out_channel_groups", "num_heads"):
            for module, n in getattr(self, name):
                if not isinstance(module, nn.Module):
                    problems.append(f"{name} keys must be modules, got {type(module).__name__}")
                if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                    problems.append(f"{name}[{_short(module)}] must be a positive integer, got {n!r}")
        for layer in self.ignored_layers:
            if not isinstance(layer, (nn.Module, torch.Tensor)):
                problems.append(f"ignored_layers must hold modules or parameters, got {type(layer).__name__}")
        if self.compensation is not None:
            if not isinstance(self.compensation, CompensationMode):
                problems.append("compensation must be tp.importance.BiasMean(stats) or "
                                f"tp.importance.LeastSquares(cov), got {type(self.compensation).__name__}")
            elif self.soft_pruning and not self.compensation.works_with_soft_pruning:
                problems.append(f"compensation={type(self.compensation).__name__}(...) changes the consumers of "
                                "removed channels; it cannot be combined with soft_pruning, which removes none")
        bad_types = [
            t for t in self.root_module_types if not (isinstance(t, type) and issubclass(t, nn.Module))
        ]
        if bad_types:
            problems.append(f"root_module_types must be nn.Module subclasses, got {bad_types!r}")

    def replace(self, **changes: Any) -> PrunerOptions:
        """A copy with ``changes`` applied (and validated)."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "problems"}
        values.update(changes)
        return type(self)(**values)


def _compensation_mode(kwargs: dict[str, Any], problems: list[str]) -> None:
    """Map the flag spellings (``bias_compensation``, ``calibration_stats``, ``lstsq_compensation``)
    onto ``compensation``, refusing combinations that would ignore one of them."""
    bias = kwargs.pop("bias_compensation", False)
    stats = kwargs.pop("calibration_stats", None)
    cov = kwargs.pop("lstsq_compensation", None)
    given = kwargs.get("compensation")
    flags = [n for n, v in (("bias_compensation", bias), ("lstsq_compensation", cov is not None)) if v]
    if given is not None and flags:
        problems.append(f"compensation= and {' and '.join(flags)}= both given; pass only compensation=")
        return
    if len(flags) == 2:
        problems.append("lstsq_compensation already refits the bias; drop bias_compensation=True "
                        "(or pass compensation=tp.importance.LeastSquares(cov))")
        return
    if stats is not None and not bias:
        problems.append("calibration_stats is only read by bias compensation: pass "
                        "compensation=tp.importance.BiasMean(stats) (or bias_compensation=True too)")
        return
    try:
        if bias:
            kwargs["compensation"] = BiasMean(stats)
        elif cov is not None:
            kwargs["compensation"] = LeastSquares(cov)
    except (TypeError, ValueError) as e:
        name = "calibration_stats" if bias else "lstsq_compensation"
        problems.append(f"{name}: {e}")


def _short(obj: Any) -> str:
    if isinstance(obj, tuple):
        return "(" + ", ".join(type(m).__name__ for m in obj) + ")"
    return type(obj).__name__


_DEPRECATED = {
    "ch_sparsity": "pruning_ratio",
    "ch_sparsity_dict": "pruning_ratio_dict",
    "max_ch_sparsity": "max_pruning_ratio",
    "iterative_sparsity_scheduler": "iterative_pruning_ratio_scheduler",
    "channel_groups": "in_channel_groups",
}


def resolve_deprecated(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Map deprecated argument names (``ch_sparsity`` ...) to the current ones, with a warning.

    The warning names the user's line, however many pruner ``__init__`` frames lie between.

    Raises:
        OptionError (a ValueError): both spellings were given with different values.
    """
    for old, new in _DEPRECATED.items():
        if kwargs.get(old) is None:
            kwargs.pop(old, None)
            continue
        value = kwargs.pop(old)
        warnings.warn(f"{old} is deprecated; use {new}= instead", DeprecationWarning,
                      stacklevel=user_stacklevel())
        current = kwargs.get(new)
        if current is not None and current != value and not (new == "pruning_ratio" and current == 0.5):
            raise OptionError(f"both {old}={value!r} and {new}={current!r} were given; pass only {new}=")
        kwargs[new] = value
    return kwargs


def floor_fraction(width: int, keep_fraction: float) -> int:
    """``width * keep_fraction`` rounded down, immune to float noise (0.3*10 is 3, not 2)."""
    return int(math.floor(width * keep_fraction + 1e-9))


def check_known_modules(model: nn.Module, options: PrunerOptions) -> None:
    """Every module or parameter named in the options must belong to ``model``.

    Raises:
        OptionError (a ValueError): listing each foreign module (a common slip: passing the
            layers of another copy of the model).
    """
    modules = {id(m) for m in model.modules()}
    params = {id(p) for p in model.parameters()} | {id(b) for b in model.buffers()}
    problems = []

    def check(obj: Any, where: str) -> None:
        known = params if isinstance(obj, torch.Tensor) else modules
        if id(obj) not in known:
            problems.append(f"{where}: {type(obj).__name__} is not part of the model being pruned")

    for layer in options.ignored_layers:
        check(layer, "ignored_layers")
    for key, _ in options.pruning_ratio_dict:
        for m in key if isinstance(key, tuple) else (key,):
            check(m, "pruning_ratio_dict")
    for name in ("in_channel_groups", "out_channel_groups", "num_heads"):
        for m, _ in getattr(options, name):
            check(m, name)
    for key, _ in options.head_pruning_ratio_dict:  # a tuple key is one pooled scope
        for m in key if isinstance(key, tuple) else (key,):
            check(m, "head_pruning_ratio_dict")
    if problems:
        raise OptionError("invalid pruner options:\n  - " + "\n  - ".join(problems))
