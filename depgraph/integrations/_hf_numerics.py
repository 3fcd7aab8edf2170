"""Numbers transformers recomputes from the config on load: the attention scale and RoPE frequencies.

Pruning head dims keeps ``scaling = 1/sqrt(original head_dim)`` in the pruned
module (that is what makes the prune exact), but ``from_pretrained`` computes
``1/sqrt(new head_dim)``. We fold the ratio into the query projection and store
the new scale: the logits do not change, and a reload computes the same.

Rotary embeddings lose the frequencies of pruned head-dim pairs. Transformers
rebuilds ``inv_freq[j] = theta ** (-2j / dim)`` from ``rope_theta`` and the new
dim; when the kept pairs are the first ``n`` ones (the pruned pairs were the
lowest frequencies), ``theta' = theta ** (dim' / dim)`` gives the kept
frequencies. Any other set is written as ``rope_type="longrope"``, whose
per-pair factors can produce any frequencies (the same list for short and long
sequences, attention factor 1: nothing else changes).

"Gives" up to float32 rounding: transformers computes ``theta' ** (2j / dim')``
in float32, which lands up to a few ulps (relative 1e-7 to 5e-7) away from the
kept ``theta ** (2j / dim)``. Small, but the angle error grows with the position
(about 1e-4 rad at position 4096) and came out as logit differences of 1e-5 to
1e-3 after a reload. So the pruned model adopts the frequencies the reload will
compute: ``save_pretrained`` then ``from_pretrained`` is bit-exact, and the
pruned model differs from the unpruned network with those pairs removed only by
that rounding of its frequencies (which ``depgraph.verify`` tolerates).

Some embeddings multiply their output by ``sqrt(hidden_size)`` (Gemma's scaled
word embedding), a number transformers recomputes from the config. Pruning the
hidden size is not exact anyway (it passes through norms); keeping the old
factor would make the pruned model and its reload compute different things, so
the factor becomes ``sqrt(new hidden_size)``, as ``from_pretrained`` builds it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from ._hf_layers import AttentionLayer
from ._undo import UndoLog

__all__ = ["ScaleFolder", "rotary_modules", "freq_prefixes", "fresh_inv_freq", "retheta", "rescale_embeddings"]

_SCALE_ATTRS = ("scaling", "scale")


class ScaleFolder:
    """Keeps ``scaling == head_dim ** -0.5`` for attention modules whose scale follows the head dim."""

    def __init__(self) -> None:
        # id(module) -> whether its scale was 1/sqrt(head_dim) when first seen (T5 uses 1.0)
        self._follows: dict[int, bool] = {}

    def prime(self, a: AttentionLayer, head_dims: tuple[int | None, ...] = ()) -> None:
        """Decide once whether ``a``'s scale is ``1/sqrt(d)`` for its head dim or one of ``head_dims``.

        Call it before pruning (the graph does, when it attaches the sync); unprimed
        modules are primed with their current head dim on first sight.
        """
        attr = _scale_attr(a)
        if attr is None or id(a.module) in self._follows:
            return
        scale = vars(a.module)[attr]
        # Gemma 2/3 take the scale from their own config field, which merely defaults to the head
        # dim: it does not move with a prune, so the scale stays (exact, and what a reload computes).
        scalar = getattr(getattr(a.module, "config", None), "query_pre_attn_scalar", None)
        if isinstance(scalar, (int, float)) and scalar > 0 and math.isclose(scale * math.sqrt(scalar), 1.0,
                                                                            rel_tol=1e-6):
            self._follows[id(a.module)] = False
            return
        self._follows[id(a.module)] = any(
            d and math.isclose(scale * math.sqrt(d), 1.0, rel_tol=1e-6) for d in (a.head_dim, *head_dims))

    def fold(self, a: AttentionLayer, log: UndoLog) -> None:
        attr = _scale_attr(a)
        if attr is None or not a.head_dim:
            return
        self.prime(a)
        scale = vars(a.module)[attr]
        target = a.head_dim ** -0.5
        if not self._follows[id(a.module)] or math.isclose(scale, target, rel_tol=1e-9):
            return
        # (q * c) . k * target == q . k * scale
        _scale_query(a, scale / target, log)
        log.setattr(a.module, attr, target)


def _scale_attr(a: AttentionLayer) -> str | None:
    return next((n for n in _SCALE_ATTRS if isinstance(vars(a.module).get(n), float)), None)


def _scale_query(a: AttentionLayer, c: float, log: UndoLog) -> None:
    q = a.q
    transposed = not isinstance(q, nn.Linear) and hasattr(q, "nf")  # GPT-2 Conv1D: (in, out)
    with torch.no_grad():
        w = q.weight.data.clone()
        if transposed:
            w[:, : a.q_width] *= c
        else:
            w[: a.q_width] *= c
        log.setdata(q.weight, w)
        bias = getattr(q, "bias", None)
        if isinstance(bias, torch.Tensor):
            b = bias.data.clone()
            b[: a.q_width] *= c
            log.setdata(bias, b)
        q_bias = getattr(a.module, "q_bias", None)  # timm BEiT/EVA: the query bias lives beside a bias-free qkv
        if a.fused and isinstance(q_bias, torch.Tensor) and q_bias.shape[0] == a.q_width:
            log.setdata(q_bias, q_bias.data.clone() * c)
        # Decomposed relative-position tables (timm SAM-ViT, MViTv2: ``rel_pos_h``, ``rel_pos_w`` of
        # (L, head_dim)) are contracted with the unscaled query into an attention bias: dividing
        # them by c keeps that bias as it was.
        for name, t in a.module.named_parameters(recurse=False):
            if name.startswith("rel_pos") and t.ndim == 2 and t.shape[-1] == a.head_dim:
                log.setdata(t, t.data.clone() / c)


def freq_prefixes(rot: nn.Module) -> list[str]:
    """The frequency buffers of a rotary module by prefix: ``""`` for ``inv_freq``, ``"sliding_attention_"``
    for Gemma 3's per-layer-type ``sliding_attention_inv_freq`` (its parameters in ``rope_parameters[type]``)."""
    return [n[: -len("inv_freq")] for n, b in rot._buffers.items()
            if isinstance(b, torch.Tensor) and n.endswith("inv_freq") and not n.endswith("original_inv_freq")]


def rotary_modules(model: nn.Module) -> list[nn.Module]:
    """Modules holding RoPE frequencies computed from the model config."""
    return [m for m in model.modules() if hasattr(m, "config") and freq_prefixes(m)]


def fresh_inv_freq(rot: nn.Module, prefix: str = "") -> torch.Tensor | None:
    """The frequencies transformers would compute for ``rot`` from its config now (None: unknown)."""
    try:
        with torch.device("cpu"):
            return getattr(type(rot)(config=rot.config), prefix + "inv_freq")
    except Exception:  # noqa: BLE001 - a constructor we cannot call means we cannot check
        return None


def retheta(rot: nn.Module, before: torch.Tensor | None, log: UndoLog, prefix: str = "") -> bool:
    """Make the config describe ``rot.inv_freq`` after its pairs were pruned; True if possible.

    ``before`` is what the config gave before this prune (``fresh_inv_freq`` then).
    Kept pairs that are the first ``n`` re-derive ``rope_theta``; any other kept
    set becomes ``rope_type="longrope"`` with one factor per kept pair (see
    :func:`_longrope`). On the meta device the frequencies have no values to
    compare: nothing is re-derived (such a model holds no weights to save).
    ``prefix`` names a per-layer-type buffer set (see :func:`freq_prefixes`).
    """
    freqs = getattr(rot, prefix + "inv_freq")
    previous = getattr(rot, prefix + "original_inv_freq", None)  # the frequencies as of the last sync
    if isinstance(previous, torch.Tensor) and not previous.is_meta:
        # The config is no witness here: the graph may already have set bound config sizes
        # (num_attention_heads) while head_dim still waits for this sync.
        before = previous.detach().float().cpu()
    if before is None or freqs.numel() == before.numel() or freqs.is_meta:
        return True
    now = freqs.detach().float().cpu()
    all_params: Any = getattr(rot.config, "rope_parameters", None)
    params = all_params.get(prefix[:-1]) if prefix and isinstance(all_params, dict) else all_params
    if (not isinstance(params, dict) or "rope_theta" not in params
            or getattr(rot, prefix + "attention_scaling", 1.0) != 1.0):
        return False
    n, rope_type = now.numel(), params.get("rope_type", "default")
    if rope_type == "default" and n < before.numel() and torch.allclose(now, before[:n].float(), rtol=1e-6, atol=0):
        new = {**params, "rope_theta": float(params["rope_theta"]) ** (n / before.numel())}
    elif rope_type == "default" or (rope_type == "longrope" and _flat_longrope(params)):
        new = _longrope(params, now, rot.config)
    else:
        return False
    log.setconfig(rot.config, "rope_parameters", {**all_params, prefix[:-1]: new} if prefix else new)
    # Adopt what from_pretrained will compute (see module docstring). In place: the graph holds
    # these tensor objects and prunes them again on the next head-dim prune.
    reloaded = fresh_inv_freq(rot, prefix)
    if reloaded is not None and reloaded.shape == now.shape and torch.allclose(reloaded.float(), now, rtol=1e-5):
        log.setdata(freqs, reloaded.to(dtype=freqs.dtype, device=freqs.device))
    if isinstance(previous, torch.Tensor):
        log.setdata(previous, freqs.detach().clone())
    return True


def _flat_longrope(params: dict) -> bool:
    """A longrope config that only rescales frequencies: one factor list for all lengths, no attention factor."""
    return params.get("short_factor") == params.get("long_factor") and params.get("attention_factor") == 1.0


def _longrope(params: dict, kept: torch.Tensor, config: Any) -> dict:
    """``rope_parameters`` that give exactly the ``kept`` frequencies, whichever pairs they are.

    Longrope computes ``inv_freq[j] = 1 / (factor[j] * theta ** (2j / dim))``; with
    ``factor[j] = 1 / (kept[j] * theta ** (2j / dim))`` (the same list for short and
    long sequences, no attention factor) that is ``kept[j]`` at every length.
    """
    theta, n = float(params["rope_theta"]), kept.numel()
    j = torch.arange(n, dtype=torch.float64)
    factors = (1.0 / (kept.double() * theta ** (2 * j / (2 * n)))).tolist()
    out = {k: v for k, v in params.items() if k not in ("factor", "original_max_position_embeddings")}
    return {**out, "rope_type": "longrope", "short_factor": factors, "long_factor": list(factors),
            "attention_factor": 1.0, "factor": 1.0,
            "original_max_position_embeddings": int(getattr(config, "max_position_embeddings", 0) or 2 ** 31 - 1)}


def rescale_embeddings(scope: nn.Module, old_hidden: int, new_hidden: int, log: UndoLog) -> None:
    """Embedding factors equal to ``sqrt(old_hidden)`` (a float attribute, a 0-d buffer) become ``sqrt(new_hidden)``."""
    old, new = math.sqrt(old_hidden), math.sqrt(new_hidden)
    for m in scope.modules():
        if not isinstance(m, nn.Embedding):
            continue
        for name, v in list(vars(m).items()):
            if type(v) is float and math.isclose(v, old, rel_tol=1e-6):
                log.setattr(m, name, new)
        for name, b in list(m._buffers.items()):
            if (isinstance(b, torch.Tensor) and b.ndim == 0 and b.is_floating_point() and not b.is_meta
                    and math.isclose(float(b), old, rel_tol=max(1e-6, 2 * torch.finfo(b.dtype).eps))):
                log.setbuffer(m, name, torch.tensor(new, dtype=b.dtype, device=b.device))
