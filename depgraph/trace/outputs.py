"""Which parts of a model's output count as outputs (whose dims never change).

Every output tensor freezes its dims: a pruned model must return what the
original returned. Hugging Face models also return, next to their result,
key/value caches and, on request, per-layer ``hidden_states`` and
``attentions``. Counted as outputs, those would freeze the hidden size (every
layer's hidden states), head dims and key/value heads (caches, attention
maps) - nothing but the MLP could be pruned. They describe the computation,
they are not its result, so by default only the result counts:

* a ``ModelOutput`` (any ``transformers`` output class): ``logits`` if present;
  else the embeddings (``image_embeds``, ``text_embeds`` ...); else
  ``last_hidden_state`` and ``pooler_output``; else every field but caches and
  per-layer tuples;
* a plain tuple from a transformers model (``return_dict=False``): its first tensor.

Anything else is taken whole. ``output_transform=`` overrides the default.
"""

from __future__ import annotations

from typing import Any

__all__ = ["primary_outputs", "AUXILIARY_FIELDS"]

#: Fields of a ``ModelOutput`` that are never results: caches and per-layer records.
AUXILIARY_FIELDS = frozenset({
    "past_key_values", "cache", "hidden_states", "attentions", "cross_attentions", "encoder_hidden_states",
    "encoder_attentions", "decoder_hidden_states", "decoder_attentions", "encoder_last_hidden_state", "mems",
    "router_logits", "vision_hidden_states", "image_hidden_states", "reshaped_hidden_states",
})
# Result fields in order of preference: the first tier present is what the model computes.
_TIERS = (
    ("logits",),
    ("image_embeds", "text_embeds", "embeddings", "sentence_embedding"),
    ("last_hidden_state", "pooler_output"),
)


def _from_transformers(obj: Any) -> bool:
    return type(obj).__module__.startswith(("transformers.", "transformers_modules."))


def primary_outputs(model: Any, out: Any) -> Any:
    """The part of ``out`` that counts as the model's output by default (see module docstring)."""
    if isinstance(out, dict) and _from_transformers(out):
        present = {k: v for k, v in out.items() if v is not None}
        for tier in _TIERS:
            picked = {k: present[k] for k in tier if k in present}
            if picked:
                return picked
        rest = {k: v for k, v in present.items()
                if k not in AUXILIARY_FIELDS and not k.endswith(("_hidden_states", "_attentions", "past_key_values"))}
        return rest or out
    if isinstance(out, tuple) and _from_transformers(model) and out:
        return out[0]
    return out
