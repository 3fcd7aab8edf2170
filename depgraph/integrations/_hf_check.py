"""Does the config rebuild the model? Ask transformers: validate it and build the class on the meta device."""

from __future__ import annotations

import copy
import math
import warnings

import torch
import torch.nn as nn

from ._hf_layers import config_scopes

__all__ = ["validate_configs", "compare_with_rebuilt"]

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


def compare_with_rebuilt(model: nn.Module) -> list[str]:
    """What transformers would build from the config, compared with the model as it is."""
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fresh = type(model)(copy.deepcopy(model.config))
    except Exception as e:  # noqa: BLE001 - transformers refusing the config is the finding
        return [f"transformers refuses the updated config ({type(e).__name__}: {e})"]
    problems = []
    mine, theirs = model.state_dict(), fresh.state_dict()
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
