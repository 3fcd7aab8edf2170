"""Per-sample weight gradients of linears and 2-D convolutions (the ``ComputeMatGrad`` of Torch-Pruning).

From a layer's input and the gradient at its output, one sample's gradient of
``weight`` (with a last column for ``bias`` when the layer has one) is an outer
product summed over positions. K-FAC-style criteria square and average these
to estimate the Fisher information of each weight.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UnsupportedOpError

__all__ = ["ComputeMatGrad"]


def _with_ones(x: torch.Tensor) -> torch.Tensor:
    """Append a constant-1 feature: the input the bias sees."""
    return torch.cat([x, x.new_ones(*x.shape[:-1], 1)], dim=-1)


class ComputeMatGrad:
    """``ComputeMatGrad()(input, grad_output, layer)`` -> ``(batch, out, in [+ 1])`` gradients."""

    def __call__(self, input: torch.Tensor, grad_output: torch.Tensor, layer: nn.Module) -> torch.Tensor:  # noqa: A002
        """Dispatch on the layer type.

        Raises:
            UnsupportedOpError: a layer other than ``nn.Linear`` or an ungrouped ``nn.Conv2d``.
        """
        if isinstance(layer, nn.Linear):
            return self.linear(input, grad_output, layer)
        if isinstance(layer, nn.Conv2d):
            return self.conv2d(input, grad_output, layer)
        raise UnsupportedOpError(
            f"ComputeMatGrad: {type(layer).__name__} is not supported; only nn.Linear and nn.Conv2d are"
        )

    @staticmethod
    @torch.no_grad()
    def linear(input: torch.Tensor, grad_output: torch.Tensor, layer: nn.Linear) -> torch.Tensor:  # noqa: A002
        """``(B, in)``, ``(B, out)`` -> ``(B, out, in [+1])``: ``g_b x_b^T`` per sample."""
        x = _with_ones(input) if layer.bias is not None else input
        return torch.einsum("bo,bi->boi", grad_output, x)

    @staticmethod
    @torch.no_grad()
    def conv2d(input: torch.Tensor, grad_output: torch.Tensor, layer: nn.Conv2d) -> torch.Tensor:  # noqa: A002
        """``(B, C, H, W)``, ``(B, O, h, w)`` -> ``(B, O, C*kh*kw [+1])``, summed over output positions.

        Raises:
            UnsupportedOpError: a grouped convolution (its weight does not see every input channel).
        """
        if layer.groups != 1:
            raise UnsupportedOpError(
                f"ComputeMatGrad.conv2d: grouped Conv2d (groups={layer.groups}) is not supported"
            )
        if isinstance(layer.padding, str):
            raise UnsupportedOpError("ComputeMatGrad.conv2d: string padding is not supported; give the numbers")
        # (B, C*kh*kw, L): one column per output position, channel-major like the weight's flattening
        patches = F.unfold(input, layer.kernel_size, dilation=layer.dilation, padding=layer.padding,
                           stride=layer.stride).transpose(1, 2)
        if layer.bias is not None:
            patches = _with_ones(patches)
        g = grad_output.flatten(2).transpose(1, 2)  # (B, L, O)
        return torch.einsum("blo,bli->boi", g, patches)
