"""Does the config rebuild the model? Ask transformers: validate it and build the class on the meta device."""

from __future__ import annotations

import copy
import math
import sys
import warnings
from typing import Any

import torch
import torch.nn as nn

from ._hf_layers import AttentionLayer, config_scopes, find_attention

__all__ = ["validate_configs", "compare_with_rebuilt", "head_size_problems"]

_SIZE_ATTRS = ("head_dim", "attention_head_size", "key_value_proj_dim", "scaling", "scale", "num_heads",
               "num_attention_heads", "n_heads", "n_head", "num_key_value_groups", "model_dim")


def validate_configs(model: nn.Module) -> list[str]:
    """The config's own checks, which ``save_pretrained`` runs (e.g. hidden size a multiple of the heads)."""
    problems = []
    for _, cfg in config_scopes(model):
        validate = getattr(cfg, "validate", None)
        if not callable(validate):
            continue
        try:
            validate()
        except Exception as e:  # noqa: BLE001 - the config's verdict is the finding
            cause = e.__cause__ or e
            problems.append(f"{type(cfg).__name__} rejects the pruned sizes: {cause}; prune channels in "
                            "multiples that keep it valid (round_to= in the pruners)")
    return list(dict.fromkeys(problems))


def _rebuild(model: nn.Module) -> nn.Module | Exception:
    """``type(model)(config)`` on the meta device, or the exception transformers raised."""
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return type(model)(copy.deepcopy(model.config))
    except Exception as e:  # noqa: BLE001 - transformers refusing the config is the finding
        return e


def compare_with_rebuilt(model: nn.Module) -> list[str]:
    """What transformers would build from the config, compared with the model as it is."""
    fresh = _rebuild(model)
    if isinstance(fresh, Exception):
        return [f"transformers refuses the updated config ({type(fresh).__name__}: {fresh})"]
    problems = []
    # Weights, and the non-persistent buffers the constructor computes from the config (RoPE
    # frequencies under any name, e.g. Gemma 3's per-layer-type ``sliding_attention_inv_freq``).
    mine = {**dict(model.named_buffers()), **model.state_dict()}
    theirs = {**dict(fresh.named_buffers()), **fresh.state_dict()}
    for key, t in mine.items():
        other = theirs.get(key)
        if other is not None and tuple(other.shape) != tuple(t.shape):
            problems.append(f"{key}: pruned to {tuple(t.shape)}, but the config builds {tuple(other.shape)}")
    fresh_modules = dict(fresh.named_modules())
    for name, m in model.named_modules():
        f = fresh_modules.get(name)
        if f is None:
            continue
        for attr in _SIZE_ATTRS:
            a, b = vars(m).get(attr), vars(f).get(attr)
            if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not math.isclose(a, b, rel_tol=1e-6):
                problems.append(f"{name}.{attr} is {a}, but the config gives {b}")
    if len(problems) > 12:
        problems = problems[:12] + [f"... and {len(problems) - 12} more"]
    return problems


def head_size_problems(model: nn.Module) -> tuple[list[str], str]:
    """Attention that heads x head dim != its width, in a config that derives the head size from the width.

    BERT, RoBERTa, GPT-2, OPT, CLIP and Swin build ``head size = width // heads`` and
    size the output projection by the width, so they can only describe attention whose
    heads x head dim equals the hidden (stage) width. Transformers 5 has no way around
    it: these configs read no ``head_dim``, and ``config.pruned_heads`` /
    ``PreTrainedModel.prune_heads`` were removed. Configs that honour a head size
    (ViT's ``head_dim``, Llama's) never produce a finding here.

    Returns:
        One sentence per distinct shape (empty when the config can describe every
        attention layer) and the hint saying how to prune so that it can.
    """
    odd = [a for a in find_attention(model) if a.head_dim and a.q_width != a.hidden]
    if not odd:
        return [], ""
    fresh = _rebuild(model)
    cfg = type(model.config).__name__
    version = getattr(sys.modules.get("transformers"), "__version__", "?")
    if isinstance(fresh, Exception):
        derived, why = odd, f"transformers refuses it ({type(fresh).__name__}: {fresh})"
    else:
        rebuilt = {a.name: a for a in find_attention(fresh)}
        derived = [a for a in odd if _derives_head_size(a, rebuilt.get(a.name))]
        why = "it builds head size = width // heads"
    by_shape: dict[tuple[int, int, int], list[str]] = {}
    for a in derived:
        by_shape.setdefault((int(a.heads or 0), int(a.head_dim or 0), a.hidden), []).append(a.name)
    problems = [
        f"{', '.join(names[:3])}{' ...' if len(names) > 3 else ''}: {_heads(h)} x {d} dims = {h * d} attention "
        f"channels in a {width}-wide layer, but {cfg} (transformers {version}) can only describe attention "
        f"whose heads x head dim equals the layer width: {why}, and it has no field for the head size "
        "(it reads no head_dim; config.pruned_heads and prune_heads() were removed in transformers 5)"
        for (h, d, width), names in by_shape.items()]
    if not problems:
        return [], ""
    (h, d, width), _ = next(iter(by_shape.items()))
    stages = (" Stage widths must stay embed_dim * 2**stage, and MLP widths one mlp_ratio times them."
              if hasattr(model.config, "depths") else "")
    hint = (f"To save it with save_pretrained, prune so that heads x head dim equals the width in every layer, "
            f"uniformly: prune the hidden size together with whole heads or head dims ({_heads(h)} of {d} dims "
            f"a width of {h * d}, not {width}), or prune only MLP channels, which this config always "
            f"describes.{stages} To keep the model as it is, save it with depgraph.save(model, path) and reload "
            "it with depgraph.load(<the unpruned model>, path).")
    return problems, hint


def _heads(n: int) -> str:
    return f"{n} head" if n == 1 else f"{n} heads"


def _derives_head_size(pruned: AttentionLayer, rebuilt: Any) -> bool:
    """The rebuilt layer did not get the pruned head size, and its own is width // heads."""
    if rebuilt is None or not rebuilt.head_dim or not rebuilt.heads:
        return True
    if (rebuilt.head_dim, rebuilt.q_width) == (pruned.head_dim, pruned.q_width):
        return False
    return rebuilt.head_dim == rebuilt.hidden // rebuilt.heads
