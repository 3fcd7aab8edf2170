"""``nn.MultiheadAttention`` with whole heads removed.

PyTorch's attention ties its inner width (``num_heads * head_dim``) to
``embed_dim``: ``F.multi_head_attention_forward`` derives the head size from
the query's width. Removing a head keeps ``embed_dim`` (the residual stream
is untouched) and shrinks the inner width, so a head-pruned module needs a
forward that reads the head size from ``head_dim``. :class:`PrunedMultiheadAttention`
is that module: a subclass (``isinstance(m, nn.MultiheadAttention)`` holds),
same parameters and attributes, the same call signature and results as the
original with those heads' outputs zeroed. A module becomes one when
:meth:`MultiheadAttentionPruner.prune_heads` first removes one of its heads.

Shapes (``E = embed_dim``, ``H = num_heads`` left, ``d = head_dim``, ``I = H * d``)::

    in_proj_weight (3I, E)  rows [q | k | v]     (or q/k/v_proj_weight (I, E|kdim|vdim))
    in_proj_bias   (3I,)    bias_k, bias_v (1, 1, I)
    out_proj       Linear(I -> E)
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..serialization import register_pruned_class

__all__ = ["PrunedMultiheadAttention", "kept_heads"]

HEADS_KEPT = "_heads_kept"


def kept_heads(module: nn.Module) -> torch.Tensor:
    """Original index of every head ``module`` still has (``arange(num_heads)`` if none was removed).

    The record is the pruned module's own state (its forward narrows per-head masks
    with it), so it lives on the module; this is the one place that reads it.
    """
    kept = module.__dict__.get(HEADS_KEPT)
    return kept if kept is not None else torch.arange(module.num_heads)


def set_kept_heads(module: nn.Module, kept: torch.Tensor) -> None:
    """Record which original heads ``module`` keeps, after a head prune (see :func:`kept_heads`)."""
    module.__dict__[HEADS_KEPT] = kept


@register_pruned_class(HEADS_KEPT)
class PrunedMultiheadAttention(nn.MultiheadAttention):
    """An ``nn.MultiheadAttention`` whose inner width ``num_heads * head_dim`` may be below ``embed_dim``.

    ``_heads_kept`` holds the original index of every remaining head (a 3-D
    ``attn_mask`` given per original head is narrowed to them). Registered with
    :func:`~depgraph.serialization.register_pruned_class`, so ``tp.save`` records
    the swap and ``_heads_kept`` and ``tp.load`` re-creates it from the unpruned model.
    """

    # The fused fast paths of nn.TransformerEncoderLayer / nn.TransformerEncoder read the
    # packed weights directly and assume inner == embed_dim; this switches them off.
    @property
    def _qkv_same_embed_dim(self) -> bool:
        return False

    @_qkv_same_embed_dim.setter
    def _qkv_same_embed_dim(self, value: bool) -> None:
        self.__dict__["_packed"] = value

    @property
    def inner_dim(self) -> int:
        """Width of q/k/v inside the attention: ``num_heads * head_dim``."""
        return self.num_heads * self.head_dim

    def _weights(self) -> tuple[torch.Tensor, ...]:
        i = self.inner_dim
        if self.in_proj_weight is not None:
            wq, wk, wv = self.in_proj_weight.split(i)
        else:
            wq, wk, wv = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        b = self.in_proj_bias.split(i) if self.in_proj_bias is not None else (None, None, None)
        return wq, wk, wv, *b

    def forward(  # noqa: D417 - the arguments of nn.MultiheadAttention.forward
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """As ``nn.MultiheadAttention.forward``."""
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            key_padding_mask = key_padding_mask.unsqueeze(0) if key_padding_mask is not None else None
        elif not self.batch_first:  # (L, B, E) -> (B, L, E)
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        wq, wk, wv, bq, bk, bv = self._weights()
        b, h, d = query.shape[0], self.num_heads, self.head_dim
        q, k, v = F.linear(query, wq, bq), F.linear(key, wk, bk), F.linear(value, wv, bv)  # (B, L|S, I)
        extra = []
        if self.bias_k is not None and self.bias_v is not None:
            k = torch.cat([k, self.bias_k.expand(b, 1, -1)], 1)
            v = torch.cat([v, self.bias_v.expand(b, 1, -1)], 1)
            extra.append(1)
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(b, 1, k.shape[-1])], 1)
            v = torch.cat([v, v.new_zeros(b, 1, v.shape[-1])], 1)
            extra.append(1)
        length, source = q.shape[1], k.shape[1]
        q = q.view(b, length, h, d).transpose(1, 2)  # (B, L, H*d) -> (B, H, L, d)
        k = k.view(b, source, h, d).transpose(1, 2)
        v = v.view(b, source, h, d).transpose(1, 2)
        mask = self._mask(attn_mask, key_padding_mask, is_causal, b, length, source, sum(extra), q.dtype)
        scores = q @ k.transpose(-2, -1) * d**-0.5  # (B, H, L, S)
        if mask is not None:
            scores = scores + mask
        probs = scores.softmax(-1)
        out = F.dropout(probs, self.dropout, self.training) @ v  # (B, H, L, d)
        out = self.out_proj(out.transpose(1, 2).reshape(b, length, h * d))
        if not batched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        weights = probs.mean(1) if average_attn_weights else probs
        return out, (weights.squeeze(0) if not batched else weights)

    def _mask(self, attn_mask, key_padding_mask, is_causal, b, length, source, pad, dtype):
        """One additive float mask (B, H, L, S) from the attention and key-padding masks."""
        if attn_mask is None and is_causal:
            attn_mask = torch.ones(length, source - pad, dtype=torch.bool).triu(1)
        masks = []
        if attn_mask is not None:
            m = _additive(attn_mask, dtype)
            if m.dim() == 3:  # (B * H_original, L, S): keep the rows of the remaining heads
                m = m.view(b, -1, *m.shape[-2:])[:, self._heads_kept.to(m.device)]
            masks.append(F.pad(m, (0, pad)))
        if key_padding_mask is not None:
            masks.append(F.pad(_additive(key_padding_mask, dtype), (0, pad))[:, None, None, :])
        if not masks:
            return None
        return masks[0] if len(masks) == 1 else masks[0] + masks[1]


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)
