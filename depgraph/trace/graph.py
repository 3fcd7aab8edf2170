"""The recorded forward pass: values (tensor versions) and the ops between them.

A :class:`Value` is one *version* of a tensor: an in-place op produces a new
version of the same storage, so the graph stays acyclic and every value has
exactly one producer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn


@dataclass(eq=False)
class Value:
    """One tensor version seen during the trace.

    ``kind`` is ``"input"`` (a model input), ``"param"`` (a parameter or buffer
    used directly by an op), ``"const"`` (a tensor of unknown origin, e.g. a
    constant created outside the model), or ``"op"`` (produced by an op).
    """

    id: int
    shape: tuple[int, ...]
    kind: str
    producer: OpNode | None = None
    owner: nn.Module | None = None  # for params: the module holding it
    attr: str = ""  # for params: attribute name on ``owner``
    qualname: str = ""  # for params: fully qualified name in the model
    tensor_ref: Any = None  # for params: the Parameter / buffer object

    @property
    def ndim(self) -> int:
        """Number of dims of the recorded tensor."""
        return len(self.shape)

    def __repr__(self) -> str:
        return f"Value#{self.id}{list(self.shape)}<{self.kind}>"


def op_name(target: Any) -> str:
    """The name a user writes for a torch callable: ``torch.cat``, ``Tensor.view``, ``F.pad``, ``torch.fft.fft``.

    Builtins report C-level owners (``_VariableFunctionsClass.cat``,
    ``TensorBase.add``, ``torch._C._fft`` / ``fft_fft``); map them back.
    """
    if getattr(target, "__name__", "") == "__get__" and hasattr(getattr(target, "__self__", None), "__name__"):
        return f"Tensor.{target.__self__.__name__}"  # a Tensor property such as .real or .T
    qual = getattr(target, "__qualname__", None) or getattr(target, "__name__", None) or repr(target)
    mod = getattr(target, "__module__", None) or ""
    owner, _, last = qual.rpartition(".")
    if owner in ("Tensor", "TensorBase", "_TensorBase"):
        return f"Tensor.{last}"
    if owner == "_VariableFunctionsClass":
        return f"torch.{last}"
    if mod.startswith("torch.nn.functional"):
        return f"F.{qual}"
    if mod.startswith("torch._C._"):
        sub = mod[len("torch._C._"):]
        if sub == "nn":
            return f"F.{last}"
        if last.startswith(sub + "_"):
            last = last[len(sub) + 1:]
        return f"torch.{sub}.{last}"
    return f"torch.{qual}" if not mod or mod.startswith("torch") else f"{mod}.{qual}"


@dataclass(eq=False)
class OpNode:
    """One call: a torch function / Tensor method, or a leaf module.

    ``args``/``kwargs`` keep the exact call arguments with tensors replaced by
    their :class:`Value`, so dimension rules can read ``cat`` dims, ``view``
    shapes, ``getitem`` slices and so on.
    """

    id: int
    target: Any  # a callable, or an nn.Module for leaf modules
    args: tuple
    kwargs: dict
    inputs: list[Value]
    outputs: list[Value]
    scope: str  # qualified name of the module whose forward made the call
    output_struct: Any = None  # outputs as returned (Values in place of tensors)

    @property
    def is_module(self) -> bool:
        """Whether the op is a leaf module call (else a torch function or Tensor method)."""
        return isinstance(self.target, nn.Module)

    @property
    def name(self) -> str:
        """The op as the user wrote it: the module class or the function name."""
        t = self.target
        if isinstance(t, nn.Module):
            return type(t).__name__
        return op_name(t)

    def where(self) -> str:
        """``"<op> in <module scope>"``, for warnings and errors."""
        return f"{self.name} in {self.scope or '<model>'}"

    def __repr__(self) -> str:
        return f"OpNode#{self.id}({self.where()})"


@dataclass
class Trace:
    """Everything the recorder saw in one forward pass."""

    ops: list[OpNode] = field(default_factory=list)
    values: list[Value] = field(default_factory=list)
    inputs: list[Value] = field(default_factory=list)
    outputs: list[Value] = field(default_factory=list)
    params: dict[int, Value] = field(default_factory=dict)  # id(tensor) -> Value
    module_calls: dict[nn.Module, list[OpNode]] = field(default_factory=dict)
    module_names: dict[nn.Module, str] = field(default_factory=dict)
    kept: list = field(default_factory=list)  # depgraph.trace.kept.Kept: op results the model holds on to
    # (value id, dim) of sizes the forward compared or tested in Python: control flow no rule sees
    size_reads: set = field(default_factory=set)
    on_meta: bool = False  # recorded on a meta-device shadow of the model (depgraph.trace.meta_shadow)
    why_real: str = ""  # when not on meta: why the real forward ran
