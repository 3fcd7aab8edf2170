"""Whether reconstruction + least squares fits in memory: what decides the language-model default.

``reconstruction`` and ``lstsq`` read one float64 Gram matrix per ``nn.Linear`` whose inputs a
group removes (:func:`~depgraph.importance.collect_input_covariance`): ``(C + 1)**2 * 8`` bytes for
a layer of ``C`` inputs (the ``+ 1`` is the constant that carries the bias), all held from the
calibration pass to the last prune. On a Llama with attention kept those layers are the MLP down
projections: SmolLM2-135M (30 x 1536 inputs) holds 0.57 GB, Llama-7B (32 x 11008) 31 GB; with
heads removed the attention output projections add 0.08 GB and 4.3 GB.
Fluctuation + bias keeps two numbers per channel instead, so it is the default that fits any size.

:func:`plan_reconstruction_memory` counts those bytes on the model itself (the same consumer layers
the recipe would measure) and compares them, plus the working copies of one layer, with a budget:
a fraction of the free memory of the device the calibration runs on, or the user's figure.
Block by block (:mod:`depgraph.workflow.blockwise`) holds one block's Gram matrices at a time, plus
the calibration set's hidden states: when one pass does not fit but that does, the default prunes
block by block (close to one pass on SmolLM2, far better than fluctuation + bias:
``benchmarks/quality/results/llm_blockwise.md``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

__all__ = ["ReconstructionMemory", "gram_bytes", "format_bytes", "calibration_budget", "plan_reconstruction_memory",
           "reconstruction_memory", "hidden_state_bytes", "DEFAULT_BUDGET_FRACTION", "WORKING_COPIES"]

#: Share of the device's free memory the calibration statistics may take by default: the rest is
#: left to the copies of the model that the prune and a target search make.
DEFAULT_BUDGET_FRACTION = 0.5
#: Transient copies of the largest Gram matrix while one layer is accumulated, scored or refit (the
#: float32 batch product and its float64 sum; the moment, its slices, the damped inverse and its
#: greedy updates). Measured: peak RSS above the loaded model = the Gram matrices + 8.0 to 8.7 of
#: the largest, on tiny Llamas (4-8 layers, MLPs 1024-2048 wide) pruned to params=0.8.
WORKING_COPIES = 10


def gram_bytes(layers: Sequence[nn.Module]) -> int:
    """Bytes of the float64 Gram matrices :func:`~depgraph.importance.collect_input_covariance` keeps
    for ``layers``: ``(in_features + 1)**2 * 8`` each."""
    return sum((int(m.weight.shape[1]) + 1) ** 2 * 8 for m in layers)


def format_bytes(n: float) -> str:
    """``"0.65 GB"``, ``"31 GB"``, ``"67 KB"``: decimal units, about three significant digits."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            v = n / scale
            return f"{v:.2f} {unit}" if v < 10 else f"{v:.1f} {unit}" if v < 100 else f"{v:.0f} {unit}"
    return f"{int(n)} B"


@dataclass(frozen=True)
class ReconstructionMemory:
    """What reconstruction + lstsq would hold, against the budget.

    Attributes:
        layers: ``nn.Linear`` consumers whose input Gram matrices the recipe measures.
        gram_bytes: the Gram matrices held from calibration to the last prune (exact).
        working_bytes: transient copies of the largest one (:data:`WORKING_COPIES`).
        budget_bytes: the most the calibration statistics may take.
        budget_source: where the budget came from, for the report.
        blockwise_bytes: block by block: the largest block's Gram matrices, the working copies and
            the hidden states (None: not possible, or not asked).
    """

    layers: int
    gram_bytes: int
    working_bytes: int
    budget_bytes: int
    budget_source: str
    blockwise_bytes: int | None = None

    @property
    def needed_bytes(self) -> int:
        """Held plus working bytes: what is compared with the budget."""
        return self.gram_bytes + self.working_bytes

    @property
    def fits(self) -> bool:
        """Whether reconstruction + lstsq in one pass stays within the budget."""
        return self.needed_bytes <= self.budget_bytes

    @property
    def blockwise_fits(self) -> bool:
        """Whether reconstruction + lstsq block by block stays within the budget."""
        return self.blockwise_bytes is not None and self.blockwise_bytes <= self.budget_bytes

    def reason(self) -> str:
        """The sentence the report gives for the language-model default."""
        need, budget = self._need(), self._budget()
        if self.fits:
            return f"language-model default: reconstruction + lstsq needs {need}, within {budget}"
        blockwise = "" if self.blockwise_bytes is None else \
            f"block by block {format_bytes(self.blockwise_bytes)} (largest block, working copies, hidden states)"
        if self.blockwise_fits:
            return (f"language-model default: reconstruction + lstsq block by block, as one pass would need {need}, "
                    f"over {budget}; {blockwise}")
        return (f"language-model default: fluctuation + bias, as reconstruction + lstsq would need {need}"
                f"{', ' + blockwise if blockwise else ''}, over {budget}; pass --importance reconstruction to force "
                "it or --calib-memory to raise the budget")

    def refusal(self, what: str, instead: str) -> str:
        """The message of a path that cannot fall back and refuses instead (the streamed checkpoint path,
        where ``what`` was asked for by name): the figures of :meth:`reason`, then the ways out."""
        return (f"{what} would need {self._need()}, over {self._budget()}; pass --calib-memory "
                f"(calib_memory=) to raise the budget, or {instead}")

    def _need(self) -> str:
        return (f"{format_bytes(self.needed_bytes)} (Gram matrices of {self.layers} layers "
                f"{format_bytes(self.gram_bytes)} + {format_bytes(self.working_bytes)} working)")

    def _budget(self) -> str:
        return f"the {format_bytes(self.budget_bytes)} budget ({self.budget_source})"


def calibration_budget(device: torch.device | str, budget: int | str | None = None,
                       fraction: float = DEFAULT_BUDGET_FRACTION) -> tuple[int, str]:
    """Bytes the calibration statistics may take on ``device``, and where that figure came from.

    Args:
        device: where the calibration runs (the model's device): CUDA reads its free memory,
            anything else the system's available memory (``/proc/meminfo`` MemAvailable).
        budget: the user's figure (``8GB``, ``1.5GiB``, bytes); None: ``fraction`` of the free memory.
        fraction: share of the free memory when ``budget`` is None.

    Raises:
        OptionError: ``budget`` is not a positive memory size.
    """
    from ..streaming.memory import available_memory, parse_size

    if budget is not None:
        return parse_size(budget), f"set by calib_memory {budget}"
    device = torch.device(device)
    if device.type == "cuda":
        free = int(torch.cuda.mem_get_info(device)[0])
        where = f"free on {device}"
    else:
        free = available_memory()
        where = "available"
    return int(free * fraction), f"{fraction:.0%} of the {format_bytes(free)} {where}"


def hidden_state_bytes(model: nn.Module, batches: Sequence[Any]) -> int | None:
    """Bytes of a language model's hidden states over the calibration batches, as block by block keeps
    them: ``tokens x hidden size x element size``, twice (a block's outputs are built beside its inputs).

    None when that cannot be read off the model and the batches (no input embedding, no ``input_ids``).
    """
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    weight = getattr(embed, "weight", None)
    tokens = [b.get("input_ids") for b in batches if isinstance(b, Mapping)]
    if not isinstance(weight, torch.Tensor) or not tokens or any(t is None for t in tokens):
        return None
    return 2 * sum(int(t.numel()) for t in tokens) * int(weight.shape[1]) * weight.element_size()


def plan_reconstruction_memory(model: nn.Module, example_inputs: Any, keep: Sequence[nn.Module],
                               budget: int | str | None = None, pruner_kwargs: Mapping[str, Any] | None = None,
                               stream_bytes: int | None = None) -> tuple[ReconstructionMemory, list[nn.Module]]:
    """Count the Gram matrices reconstruction + lstsq would hold on ``model``, against the budget.

    Builds the dependency graph once to find the consumers (the layers that
    :func:`~depgraph.workflow.recipes.build_scoring` would measure; pass them back to it).

    Args:
        budget: as in :func:`calibration_budget`.
        pruner_kwargs: the pruner's attention settings (see :func:`~depgraph.workflow.recipes.linear_consumers`).
        stream_bytes: :func:`hidden_state_bytes` to size block by block too (None: one pass only).

    Returns:
        The memory figures and the consumer layers.

    Raises:
        OptionError: ``budget`` is not a positive memory size.
    """
    from .recipes import linear_consumers

    layers = linear_consumers(model, example_inputs, keep, pruner_kwargs)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    memory = reconstruction_memory(layers, device, budget)
    if stream_bytes is not None:
        per_block = _gram_bytes_per_block(model, layers)
        if per_block is not None:
            memory = dataclasses.replace(memory, blockwise_bytes=per_block + memory.working_bytes + stream_bytes)
    return memory, layers


def _gram_bytes_per_block(model: nn.Module, layers: Sequence[nn.Module]) -> int | None:
    """The largest block's Gram bytes; None when the model has no stack of blocks or a layer lies outside it."""
    from ..errors import DepgraphError
    from ..importance import block_members

    try:
        where = block_members(model)
    except DepgraphError:
        return None
    if any(m not in where for m in layers):
        return None
    sizes: dict[int, int] = {}
    for m in layers:
        sizes[where[m]] = sizes.get(where[m], 0) + gram_bytes([m])
    return max(sizes.values(), default=0)


def reconstruction_memory(layers: Sequence[nn.Module], device: torch.device | str,
                          budget: int | str | None = None) -> ReconstructionMemory:
    """The Gram matrices of ``layers`` held together, plus one layer's working copies, against the budget.

    For a caller that knows its consumer layers already (:func:`plan_reconstruction_memory` finds
    them; the streamed checkpoint path asks its meta-model pruner through
    :func:`~depgraph.workflow.recipes.shrinkable_linears`). Shapes only: ``meta`` layers serve.

    Args:
        layers: the ``nn.Linear`` layers whose input Gram matrices are measured.
        device: where the calibration runs, as in :func:`calibration_budget`.
        budget: as in :func:`calibration_budget`.

    Raises:
        OptionError: ``budget`` is not a positive memory size.
    """
    limit, source = calibration_budget(device, budget)
    largest = max((gram_bytes([m]) for m in layers), default=0)
    return ReconstructionMemory(len(layers), gram_bytes(layers), WORKING_COPIES * largest, limit, source)
