"""Domain aliases used across depgraph, defined once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

#: Channel indices as users pass them: a list/tuple of ints or a 1-D integer tensor.
Indices = Sequence[int] | torch.Tensor

#: What ``build_dependency`` accepts as example inputs: a tensor, a tuple/list of
#: positional inputs, or a dict of keyword inputs.
ExampleInputs = Any

#: The sides of a layer that are channels (``Dependency.side``); a ``"heads"`` member
#: removes whole attention heads, which no per-channel layout or criterion describes.
CHANNEL_SIDES: tuple[str, ...] = ("out", "in")
