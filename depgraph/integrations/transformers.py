"""Keep a Hugging Face model's ``config`` and size attributes in step with its pruned layers.

After a prune the weights have new shapes, but ``save_pretrained`` writes the
``config`` and ``from_pretrained`` builds layers from it. This module rewrites
the config fields that size the layers (hidden size, MLP width, attention and
key/value heads, head dim), fixes the module attributes the forward pass does
not read but users and transformers do (``num_heads``, ``all_head_size``,
``embed_dim`` ...), folds the attention scale into the query projection when
head dims shrink, and re-derives ``rope_theta`` when RoPE pairs are pruned.

``DependencyGraph.build_dependency`` attaches :func:`attach` by itself to models
whose class comes from transformers: the sync runs inside every prune's
transaction and is undone if the prune is rolled back. Values are measured
from weights, so the sync is generic; where a config holds one value for every
layer and the layers differ, it warns once and :func:`check_config` raises.

Example:
    >>> DG = tp.DependencyGraph().build_dependency(model, {"input_ids": ids})
    >>> DG.get_pruning_group(model.model.layers[0].mlp.down_proj, tp.prune_linear_in_channels, idxs).prune()
    >>> check_config(model)                      # raises if the config cannot describe it
    >>> model.save_pretrained(path)              # from_pretrained(path) gives the same logits

Nothing here imports transformers: models are recognised by their class's module.
"""

from __future__ import annotations

import contextlib
import math
import warnings
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.nn as nn

from .._caller import user_stacklevel
from ..errors import DepgraphError
from ._hf_check import compare_with_rebuilt, head_size_problems, validate_configs
from ._hf_layers import (
    AttentionLayer,
    LayerIndex,
    MlpLayer,
    config_scopes,
    find_attention,
    find_mlps,
    stage_of,
)
from ._hf_numerics import (
    ScaleFolder,
    freq_prefixes,
    fresh_inv_freq,
    rescale_embeddings,
    retheta,
    rotary_modules,
)
from ._hooks import attach_once
from ._undo import UndoLog

__all__ = ["is_transformers_model", "attach", "sync_config", "check_config", "ConfigSync", "attention_layers",
           "mlp_layers", "AttentionLayer", "MlpLayer"]

# Config fields, first one the config has wins (aliases like GPT-2's hidden_size -> n_embd apply).
_HIDDEN = ("hidden_size", "d_model", "n_embd")
_INTERMEDIATE = ("intermediate_size", "ffn_dim", "d_ff", "n_inner")
_HEADS = ("num_attention_heads", "num_heads", "n_head")
# Module attributes that mirror a measured size.
_HEAD_COUNT_ATTRS = ("num_heads", "num_attention_heads", "n_heads", "n_head")
_HIDDEN_ATTRS = ("hidden_size", "embed_dim", "d_model", "model_dim", "n_embd")
_UNIFORM_HINT = (
    "Prune uniformly - the same number of heads, head dims and MLP channels in every layer, e.g. "
    "tp.pruner.BasePruner(..., global_pruning=False) with one pruning_ratio/head_pruning_ratio for all "
    "layers - or keep per-layer sizes and save with depgraph.save(model, path), reloading with "
    "depgraph.load(<the unpruned model>, path)."
)


_STRUCTURE_HINT = (
    "This architecture ties sizes together when transformers builds it (often head size = "
    "hidden_size / num_attention_heads, so heads, head dims and the hidden size cannot shrink alone); "
    "prune only what its config can express (MLP channels always can), or save with "
    "depgraph.save(model, path) and reload with depgraph.load(<the unpruned model>, path)."
)


def is_transformers_model(model: Any) -> bool:
    """True for transformers model classes (and ``trust_remote_code`` ones) that carry a ``config``."""
    return type(model).__module__.startswith(("transformers.", "transformers_modules.")) and hasattr(model, "config")


class ConfigSync:
    """The after-prune hook: ``hook(graph, plan)`` syncs; ``hook(graph, None)`` undoes the last sync.

    One instance per model. It keeps the undo log of its last call (the graph
    calls it again with ``None`` when the forward check rolls the prune back),
    and warns once, the first time the config cannot describe the model.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model_ref = weakref.ref(model)
        self._folder = ScaleFolder()
        self._layout = _Layout(model)
        for a in self._layout.layers.measure()[0]:  # before any prune: which scales follow the head dim
            self._folder.prime(a)
        self._last = UndoLog()
        # RoPE frequencies the config gave after the last sync. Recomputing them at the start of a
        # sync would be too late: the graph has already set the size attributes this prune bound
        # (Phi-3's forward reads config.num_attention_heads), so the config has started to move.
        self._freqs = {id(r): fresh_inv_freq(r) for r in self._layout.rotary}
        self._freqs_before_last = self._freqs
        self._warned: set[str] = set()
        self._deferred = 0
        self._pending = False  # prunes of a deferred block not yet synced (see flush)
        self._problems: list[str] = []

    def __call__(self, graph: Any, plan: Any) -> None:
        model = self.model_ref()
        if model is None:
            return
        if plan is None:
            self._last.undo()
            self._freqs = self._freqs_before_last
            return
        if self._deferred:
            # Inside a pruner step: the sync measures every layer, so one per prune is quadratic in
            # depth; the graph calls flush() once, inside the step's transaction, before its forward
            # check. Nothing changed here, so undoing this call changes nothing either.
            self._last = UndoLog()
            self._freqs_before_last = self._freqs
            self._pending = True
            return
        self._sync_now()

    def flush(self, graph: Any) -> None:
        """Sync once for every prune made since the deferred block began (no-op when none is pending)."""
        if self._pending and self.model_ref() is not None:
            self._pending = False
            self._sync_now()

    def _sync_now(self) -> None:
        model = self.model_ref()
        self._last = UndoLog()
        self._problems = _sync(model, self._last, self._folder, self._layout, self._freqs)
        self._freqs_before_last = self._freqs
        self._freqs = {id(r): fresh_inv_freq(r) for r in self._layout.rotary}
        if not self._deferred:
            self._warn(self._problems)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Sync and warn (if at all) only for the state after the block: a pruner's step prunes layer
        by layer through uneven states on its way to an even one, and a sync per prune would measure
        every layer for each of them. ``DependencyGraph.prune_groups`` flushes the sync inside its
        transaction, before its forward check."""
        self._deferred += 1
        try:
            yield
        finally:
            self._deferred -= 1
            if not self._deferred:
                self.flush(None)  # prunes made outside DependencyGraph.prune_groups, which flushes itself
                self._warn(self._problems)

    def _warn(self, problems: list[str]) -> None:
        model = self.model_ref()
        if problems and not self._warned and model is not None:
            # Once per model: pruning layer by layer passes through uneven states on its way
            # to an even one, and check_config gives the full picture when it matters.
            self._warned.update(problems)
            warnings.warn(
                f"depgraph: after this prune {type(model).__name__}'s config cannot describe the model:\n  - "
                + "\n  - ".join(problems) + "\nThe config keeps its old value for these fields until the layers "
                "agree again (expected while pruning layer by layer). Call "
                "depgraph.integrations.transformers.check_config(model) before save_pretrained. "
                + _UNIFORM_HINT, stacklevel=user_stacklevel())


def attach(graph: Any) -> ConfigSync | None:
    """Register the config sync on a built ``DependencyGraph`` of a transformers model (once)."""
    return attach_once(graph, ConfigSync, is_transformers_model)


def sync_config(model: nn.Module) -> list[str]:
    """Bring ``model.config`` and size attributes up to date; the problems left, as sentences.

    Use it after pruning with the low-level ``tp.prune_*`` functions, which run
    no hooks. Pruning through a ``DependencyGraph`` syncs by itself.
    """
    folder = ScaleFolder()
    for scope, cfg in config_scopes(model):  # the config still holds the head dim the scales were made for
        heads = getattr(cfg, _first_field(cfg, _HEADS) or "", None)
        hidden = getattr(cfg, _first_field(cfg, _HIDDEN) or "", None)
        old = getattr(cfg, "head_dim", None) or (hidden // heads if isinstance(hidden, int) and
                                                 isinstance(heads, int) and heads else None)
        for a in find_attention(scope):
            folder.prime(a, (old,))
    return _sync(model, UndoLog(), folder)


def check_config(model: nn.Module) -> None:
    """Raise unless ``save_pretrained`` then ``from_pretrained`` rebuilds ``model`` as it is.

    Syncs the config first, then builds the model's class from that config on the
    meta device and compares every parameter shape and size attribute.

    Raises:
        DepgraphError: the config cannot describe the pruned model; the message lists
            the layers that differ and how to prune so that it can.
    """
    if not is_transformers_model(model):
        raise DepgraphError(f"{type(model).__name__} is not a transformers model (it has no config to check)")
    problems, hint = sync_config(model), _UNIFORM_HINT
    if not problems:
        problems, hint = head_size_problems(model)
    if not problems:
        problems, hint = validate_configs(model) or compare_with_rebuilt(model), _STRUCTURE_HINT
    if problems:
        raise DepgraphError(
            f"{type(model).__name__}'s config cannot describe the pruned model, so save_pretrained/"
            "from_pretrained would not rebuild it:\n  - " + "\n  - ".join(problems) + "\n" + hint)


def attention_layers(model: nn.Module) -> list[AttentionLayer]:
    """Every attention module with its projections and measured widths (heads, kv heads, head dim).

    Recognised by projection names shared across families: ``q_proj``/``query``/``q`` with
    their key and value siblings, or a fused ``qkv_proj``/``c_attn``/``qkv``.
    """
    return find_attention(model)


def mlp_layers(model: nn.Module) -> list[MlpLayer]:
    """Every MLP (``up_proj``/``down_proj``, ``fc1``/``fc2``, ``c_fc``/``c_proj``, ``wi``/``wo`` ...) and its width."""
    return find_mlps(model)


# -- the sync ------------------------------------------------------------------------------------


class _Layout:
    """The parts of a model the sync reads, found once per model (pruning never adds or removes modules)."""

    def __init__(self, model: nn.Module) -> None:
        names = {id(m): n for n, m in model.named_modules()}
        self.layers = LayerIndex(model)
        self.scopes = [(names.get(id(s), ""), s, cfg) for s, cfg in config_scopes(model)]
        self.rotary = rotary_modules(model)
        self.tables = [m for m in model.modules() if isinstance(m, (nn.Embedding, nn.Linear))]
        self.names = names


def _sync(model: nn.Module, log: UndoLog, folder: ScaleFolder, layout: _Layout | None = None,
          freqs: dict[int, torch.Tensor | None] | None = None) -> list[str]:
    layout = layout or _Layout(model)
    _sync_layer_widths(layout.tables, log)
    attention, mlps = layout.layers.measure()
    for a in attention:
        folder.fold(a, log)
        _sync_attention_attrs(a, log)
    for m in mlps:
        for attr in ("intermediate_size", "ffn_dim"):
            _set_int(m.module, attr, m.width, log)
    # what the config gave before this prune (``freqs``: kept by ConfigSync since its last sync)
    before = freqs if freqs is not None else {id(r): fresh_inv_freq(r) for r in layout.rotary}
    problems: list[str] = []
    for prefix, scope, cfg in layout.scopes:
        mine = [a for a in attention if _under(a.name, prefix)]
        own_mlps = [m for m in mlps if _under(m.name, prefix)]
        problems += _sync_scope(scope, cfg, mine, own_mlps, log)
    for r in layout.rotary:
        name = layout.names.get(id(r), type(r).__name__)
        for prefix in freq_prefixes(r):  # "" (inv_freq), or one per layer type (Gemma 3)
            if not retheta(r, before[id(r)] if not prefix else None, log, prefix):
                problems.append(_rope_problem(name, r, prefix))
                continue
            fresh = fresh_inv_freq(r, prefix)  # None: its constructor cannot be called alone, nothing to compare
            mine = getattr(r, prefix + "inv_freq")
            if fresh is not None and not mine.is_meta and (fresh.shape != mine.shape or
                                      not torch.allclose(fresh.float(), mine.float().cpu(), rtol=1e-5)):
                problems.append(_rope_problem(name, r, prefix))
    return list(dict.fromkeys(problems))


def _under(name: str, prefix: str) -> bool:
    return not prefix or name == prefix or name.startswith(prefix + ".")


def _set_int(obj: Any, attr: str, value: int | None, log: UndoLog) -> None:
    old = vars(obj).get(attr)
    if value is not None and isinstance(old, int) and not isinstance(old, bool) and old != value:
        log.setattr(obj, attr, int(value))


def _sync_layer_widths(tables: list[nn.Module], log: UndoLog) -> None:
    """Embeddings and linears that hold a pruned tensor but were not traced (T5's ``shared``)."""
    for m in tables:
        if isinstance(m, nn.Embedding):
            _set_int(m, "embedding_dim", int(m.weight.shape[1]), log)
        elif isinstance(m, nn.Linear):
            _set_int(m, "out_features", int(m.weight.shape[0]), log)
            _set_int(m, "in_features", int(m.weight.shape[1]), log)


def _sync_attention_attrs(a: AttentionLayer, log: UndoLog) -> None:
    for attr in _HEAD_COUNT_ATTRS:
        _set_int(a.module, attr, a.heads, log)
    _set_int(a.module, "num_key_value_heads", a.kv_heads, log)
    if a.heads and a.kv_heads and a.heads % a.kv_heads == 0:
        _set_int(a.module, "num_key_value_groups", a.heads // a.kv_heads, log)
    for attr in ("all_head_size", "inner_dim"):
        _set_int(a.module, attr, a.q_width, log)
    for attr in ("embed_dim", "hidden_size", "d_model"):
        _set_int(a.module, attr, a.hidden, log)


def _uniform(what: str, values: Iterable[tuple[str, int | None]], cfg: Any) -> tuple[int | None, str | None]:
    """The one value all layers agree on, or a problem sentence naming the layers that differ."""
    by_value: dict[int, list[str]] = {}
    for name, v in values:
        if v is not None:
            by_value.setdefault(int(v), []).append(name)
    if len(by_value) <= 1:
        return next(iter(by_value), None), None
    parts = "; ".join(f"{v} in {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
                      for v, names in sorted(by_value.items()))
    return None, f"{what} differs between layers ({parts}), but {type(cfg).__name__} holds one value for all layers"


def _first_field(cfg: Any, fields: tuple[str, ...]) -> str | None:
    return next((f for f in fields if hasattr(cfg, f)), None)


def _sync_scope(scope: nn.Module, cfg: Any, attention: list[AttentionLayer], mlps: list[MlpLayer],
                log: UndoLog) -> list[str]:
    if isinstance(getattr(cfg, "num_heads", None), list) and hasattr(cfg, "depths"):
        return _sync_stages(cfg, attention, mlps, log)
    problems: list[str] = []
    hidden, p1 = _uniform("hidden size", [(a.name, a.hidden) for a in attention] +
                          [(m.name, m.hidden) for m in mlps], cfg)
    heads, p2 = _uniform("the number of attention heads", [(a.name, a.heads) for a in attention], cfg)
    kv_heads, p3 = _uniform("the number of key/value heads", [(a.name, a.kv_heads) for a in attention], cfg)
    head_dim, p4 = _uniform("head_dim", [(a.name, a.head_dim) for a in attention], cfg)
    width, p5 = _uniform("the MLP width", [(m.name, m.width) for m in mlps], cfg)
    problems += [p for p in (p1, p2, p3, p4, p5) if p]
    field = _first_field(cfg, _HIDDEN)
    old_hidden = getattr(cfg, field, None) if field else None
    if hidden is not None and field and old_hidden != hidden:
        if isinstance(old_hidden, int):
            for m in scope.modules():  # model_dim (T5) and the like, which mirror the config
                for attr in _HIDDEN_ATTRS:
                    if vars(m).get(attr) == old_hidden:
                        _set_int(m, attr, hidden, log)
            rescale_embeddings(scope, old_hidden, hidden, log)
            for f in ("word_embed_proj_dim", "embedding_size"):  # embedding width when it equals hidden
                if getattr(cfg, f, None) == old_hidden:
                    log.setconfig(cfg, f, hidden)
        log.setconfig(cfg, field, hidden)
    field = _first_field(cfg, _HEADS)
    if heads is not None and field:
        log.setconfig(cfg, field, heads)
    if kv_heads is not None and hasattr(cfg, "num_key_value_heads"):
        log.setconfig(cfg, "num_key_value_heads", kv_heads)
    if head_dim is not None and heads and (hasattr(cfg, "head_dim") or head_dim * heads != hidden):
        log.setconfig(cfg, "head_dim", head_dim)
    field = _first_field(cfg, _INTERMEDIATE)
    if width is not None and field:
        log.setconfig(cfg, field, width)
    return problems


def _sync_stages(cfg: Any, attention: list[AttentionLayer], mlps: list[MlpLayer], log: UndoLog) -> list[str]:
    """Hierarchical models (Swin): per-stage head counts, ``embed_dim * 2**i`` widths, one ``mlp_ratio``."""
    problems: list[str] = []
    n = len(cfg.depths)
    heads, hidden, ratio = list(cfg.num_heads), [None] * n, [None] * n
    for i in range(n):
        stage_attn = [a for a in attention if stage_of(a.name) == i]
        stage_mlp = [m for m in mlps if stage_of(m.name) == i]
        h, p1 = _uniform(f"the number of heads in stage {i}", [(a.name, a.heads) for a in stage_attn], cfg)
        d, p2 = _uniform(f"the width of stage {i}", [(a.name, a.hidden) for a in stage_attn] +
                         [(m.name, m.hidden) for m in stage_mlp], cfg)
        w, p3 = _uniform(f"the MLP width of stage {i}", [(m.name, m.width) for m in stage_mlp], cfg)
        problems += [p for p in (p1, p2, p3) if p]
        heads[i] = h if h is not None else heads[i]
        hidden[i] = d
        ratio[i] = w / d if w is not None and d else None
    if any(h != o for h, o in zip(heads, cfg.num_heads, strict=True)):
        log.setconfig(cfg, "num_heads", heads)
    if hidden[0] is not None:
        if any(d is not None and d != hidden[0] * 2 ** i for i, d in enumerate(hidden)):
            problems.append(f"stage widths {hidden} are not embed_dim * 2**stage, as {type(cfg).__name__} requires: "
                            "prune every stage by the same fraction (stage i losing 2**i times the channels "
                            "stage 0 loses)")
        else:
            log.setconfig(cfg, "embed_dim", hidden[0])
            log.setconfig(cfg, "hidden_size", hidden[-1])
    known = [(r, d) for r, d in zip(ratio, hidden, strict=True) if r is not None]
    if known:
        r0 = known[0][0]
        if all(int(d * r0) == round(r * d) for r, d in known):
            if not math.isclose(r0, float(cfg.mlp_ratio)):
                log.setconfig(cfg, "mlp_ratio", r0)
        else:
            problems.append(f"MLP widths are not one mlp_ratio times the stage widths {hidden}")
    return problems


def _rope_problem(name: str, rot: nn.Module, prefix: str = "") -> str:
    params = getattr(rot.config, "rope_parameters", None)
    if prefix and isinstance(params, dict):  # per layer type (Gemma 3)
        params = params.get(prefix[:-1])
    kind = params.get("rope_type", "default") if isinstance(params, dict) else "unknown"
    return (f"{name} keeps RoPE frequencies its config cannot produce: after a head-dim prune depgraph rewrites "
            "'default' RoPE (a new rope_theta, or one longrope factor per kept pair) but not rope_type "
            f"{kind!r} with its scaling; do not prune head dims of this model (heads and MLP channels are fine), "
            "or keep them and save with depgraph.save(model, path), reloading with "
            "depgraph.load(<the unpruned model>, path)")
