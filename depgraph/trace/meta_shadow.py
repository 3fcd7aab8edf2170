"""Run the traced forward on a meta-device shadow of the model, when that cannot change the trace.

Why: the dimension rules read shapes, op arguments and which tensor came from
where - never a tensor's values. A forward whose parameters, buffers and inputs
are meta tensors (shape, dtype and strides, no data) computes no arithmetic, so
the recorded trace costs the recorder's own Python work only: ViT-B/16's real
forward is 0.52 s, the same forward on meta 0.12 s.

The shadow (:func:`shadowed`) swaps every ``_parameters`` / ``_buffers`` entry
of every module for a meta tensor of the same shape, dtype and strides (a
``Parameter`` stays a ``Parameter`` with the same ``requires_grad``; one real
tensor held in several places - tied weights - gets one meta tensor), maps the
example inputs the same way, and puts the real entries back in ``finally``.
The recorder then names every parameter by its real tensor.

It is taken only where the trace cannot differ from a real one, and the real
forward runs instead whenever that is not certain:

* before the call (:func:`refusal`): every parameter, buffer and input tensor
  is a plain dense CPU tensor (code may branch on the device type, and a meta
  model already traces on meta); no module has a forward, backward or
  pre-hook and no global module hook is set (a user's hook must see real
  data); no module holds a tensor outside its parameters and buffers (a
  cache filled by an earlier call, a constant the forward would mix with meta
  tensors); no module's ``forward`` is replaced on the instance (accelerate's
  device hooks); the inputs are tensors in plain tuples, lists and dicts;
  ``DEPGRAPH_TRACE_ON_META`` (:data:`ENV_VAR`) is not ``0``; and, unless it
  is ``1``, the model is heavy enough to gain: meta kernels are Python
  reference code for many ops (0.1-3 ms a call), cheaper than real kernels on
  large weights (ResNet-50, ViT, LLMs) and dearer on small ones (DenseNet,
  MobileNet, tiny test models), so a model whose parametrized modules average
  fewer than :data:`MIN_MEAN_WEIGHT` weight elements keeps the real forward;
* after it (:class:`ModelSnapshot`, and the recorder's own checks): the call
  raised nothing (a data-dependent op - ``.item()``, ``nonzero``, ``bool(t)``,
  a boolean mask - raises on meta, so does mixing a real tensor with a meta
  one); it left every module's ``__dict__`` (and the dicts, lists and sets in
  it, and the plain objects such as a Hugging Face ``config`` the modules hold)
  exactly as it found them - a cache it filled, a buffer it registered, an
  activation it kept all count; it drew no random numbers and read no storage
  address, offset or ``is_meta`` / ``is_cpu`` (:func:`unfaithful`); it reached
  no real parameter, buffer or input through another path. Otherwise the
  snapshot is restored exactly and the real forward traces the model, as it
  always did.

What the checks cannot see: state outside the model that the forward writes
(a module-level cache keyed without the device would keep a meta tensor) and
code comparing ``x.device`` with a device of its own (``x.device.type ==
"cpu"``). No model of the zoo tests does either; ``DEPGRAPH_TRACE_ON_META=0``
is the way out for one that does.

Left alone by a meta trace: every real tensor (values and ``_version``
counters), every module attribute, the random number generators.
"""

from __future__ import annotations

import contextlib
import operator
import os
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn as nn
from torch.nn.modules import module as _torch_module

__all__ = ["ENV_VAR", "MIN_MEAN_WEIGHT", "mode", "refusal", "shadowed", "Shadow", "ModelSnapshot", "unfaithful",
           "draws_random", "NotOnMetaError"]

#: Environment variable: ``0`` (or ``false``, ``no``, ``off``) traces every model with a real forward.
ENV_VAR = "DEPGRAPH_TRACE_ON_META"

_PLAIN = (torch.Tensor, nn.Parameter)
_HOOK_TABLES = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks", "_global_forward_hooks_always_called")
_INPUT_LEAVES = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device, torch.Size,
                 slice, type(Ellipsis), torch.layout, torch.memory_format)


#: A model whose parametrized modules hold fewer weight elements than this on average is traced
#: with its real forward: its kernels are cheap, and a meta kernel (Python reference code for many
#: ops, ~0.1-3 ms a call) would cost more than the arithmetic it skips.
MIN_MEAN_WEIGHT = 1 << 17


def mode() -> str:
    """``"auto"`` (default), ``"always"`` (any model it is safe for) or ``"never"``, from :data:`ENV_VAR`.

    ``auto`` takes the meta path for models heavy enough to gain (:data:`MIN_MEAN_WEIGHT`).
    """
    value = os.environ.get(ENV_VAR, "auto").strip().lower()
    if value in ("0", "false", "no", "off", "never"):
        return "never"
    if value in ("1", "true", "yes", "on", "always"):
        return "always"
    return "auto"




class _Refused(Exception):  # noqa: N818 - internal signal, never leaves this module
    pass


def _plain_cpu(t: torch.Tensor, what: str) -> None:
    if type(t) not in _PLAIN:
        raise _Refused(f"{what} is a {type(t).__name__}")
    if t.layout != torch.strided:
        raise _Refused(f"{what} has layout {t.layout}")
    if t.device.type != "cpu":
        raise _Refused(f"{what} is on {t.device}")


def _check_inputs(obj: Any, where: str = "example_inputs", depth: int = 0) -> None:
    t = type(obj)
    if t in _PLAIN or isinstance(obj, torch.Tensor):
        _plain_cpu(obj, where)
    elif t in _INPUT_LEAVES:
        return
    elif depth > 16:
        raise _Refused(f"{where} is nested too deep")
    elif t in (tuple, list) or (isinstance(obj, tuple) and hasattr(obj, "_fields")):
        for i, v in enumerate(obj):
            _check_inputs(v, f"{where}[{i}]", depth + 1)
    elif t is dict or t is OrderedDict:
        for k, v in obj.items():
            _check_inputs(v, f"{where}[{k!r}]", depth + 1)
    else:
        raise _Refused(f"{where} is a {t.__name__} (only tensors in tuples, lists and dicts are copied)")


def refusal(model: nn.Module, example_inputs: Any) -> str | None:
    """Why ``model`` must be traced with a real forward, or None when a meta trace may be tried.

    Cheap (one walk over the modules and inputs), and decided before anything
    changes. A None here is not the last word: :class:`ModelSnapshot` and the
    recorder check the call itself.
    """
    how = mode()
    if how == "never":
        return f"{ENV_VAR}={os.environ.get(ENV_VAR)}"
    weights = [0, 0]  # parameter elements, modules holding parameters
    try:
        for name in _GLOBAL_HOOKS:
            if getattr(_torch_module, name, None):
                raise _Refused(f"a global module hook is registered (torch.nn.modules.module.{name})")
        for mname, m in model.named_modules():
            where = mname or type(m).__name__
            d = vars(m)
            for table in _HOOK_TABLES:
                if d.get(table):
                    raise _Refused(f"{where} has hooks ({table})")
            if "forward" in d:
                raise _Refused(f"{where} has its forward replaced on the instance")
            owned = set()
            for attr, t in m._parameters.items():
                if t is not None:
                    _plain_cpu(t, f"{where}.{attr}")
                    owned.add(id(t))
                    weights[0] += t.numel()
            weights[1] += bool(owned)
            for attr, t in m._buffers.items():
                if t is not None:
                    _plain_cpu(t, f"{where}.{attr}")
                    owned.add(id(t))
            for attr, v in d.items():
                if attr in _MODULE_OWN or type(v) in _SCALARS:
                    continue
                if _holds_foreign_tensor(v, owned):
                    raise _Refused(f"{where}.{attr} holds a tensor that is not a parameter or buffer")
        _check_inputs(example_inputs)
    except _Refused as e:
        return str(e)
    mean = weights[0] / max(weights[1], 1)
    if how == "auto" and mean < MIN_MEAN_WEIGHT:
        return (f"its modules hold {mean:.0f} weight elements on average, under {MIN_MEAN_WEIGHT}: the real "
                f"forward is the cheaper one ({ENV_VAR}=1 traces on meta all the same)")
    return None


# nn.Module's own bookkeeping (registries, hook tables, flags): holds no tensor of the forward's.
_MODULE_OWN = frozenset(vars(nn.Module())) - {"training"}
_SCALARS = frozenset({type(None), bool, int, float, str, torch.Size, torch.dtype, torch.device})


def _holds_foreign_tensor(v: Any, owned: set[int]) -> bool:
    """Whether ``v`` (or a dict/list/tuple/set in it, one level) is a tensor other than the module's own."""
    if isinstance(v, torch.Tensor):
        return id(v) not in owned and not _is_any_param(v)
    if isinstance(v, dict):
        v = v.values()
    elif not isinstance(v, (list, tuple, set, frozenset)):
        return False
    return any(isinstance(x, torch.Tensor) and id(x) not in owned and not _is_any_param(x) for x in v)


def _is_any_param(t: torch.Tensor) -> bool:
    # An attribute aliasing another module's parameter (``self.weight_ref = other.weight``) is
    # checked by the recorder: reached during the call, it is a real tensor among meta ones.
    return isinstance(t, nn.Parameter)


def _meta_like(t: torch.Tensor) -> torch.Tensor:
    m = torch.empty_strided(tuple(t.shape), t.stride(), dtype=t.dtype, device="meta")
    if type(t) is nn.Parameter:
        m = nn.Parameter(m, requires_grad=t.requires_grad)
    elif t.requires_grad:
        m.requires_grad_(True)
    if t.__dict__:  # attributes set on the tensor (``_is_hf_initialized``) the forward may read
        m.__dict__.update(t.__dict__)
    return m


class Shadow:
    """What a call on the shadow needs: the meta inputs and the meta-to-real parameter index.

    ``param_index`` maps ``id(meta tensor)`` to ``(qualified name, owner module,
    attribute, real tensor)`` in the order of ``named_modules()``, parameters
    before buffers, the first name of a shared tensor winning (as a real trace
    names them). ``real_ids`` holds the ids of every real parameter, buffer and
    input: one met during the call was reached around the shadow.
    """

    def __init__(self) -> None:
        self.inputs: Any = None
        self.param_index: dict[int, tuple[str, nn.Module, str, torch.Tensor]] = {}
        self.real_ids: set[int] = set()
        self.keep: list[torch.Tensor] = []  # the real tensors: their ids stay valid while the shadow lives
        self._meta: dict[int, torch.Tensor] = {}
        self._swapped: list[tuple[dict, str, torch.Tensor]] = []

    def meta_of(self, t: torch.Tensor) -> torch.Tensor:
        """The one meta tensor standing for real tensor ``t``."""
        m = self._meta.get(id(t))
        if m is None:
            m = self._meta[id(t)] = _meta_like(t)
            self.real_ids.add(id(t))
            self.keep.append(t)
        return m

    def map_inputs(self, obj: Any) -> Any:
        """``obj`` with every tensor replaced by its meta tensor (checked by :func:`refusal` first)."""
        if isinstance(obj, torch.Tensor):
            return self.meta_of(obj)
        if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a namedtuple
            return type(obj)(*(self.map_inputs(v) for v in obj))
        if isinstance(obj, (tuple, list)):
            return type(obj)(self.map_inputs(v) for v in obj)
        if isinstance(obj, dict):
            return type(obj)((k, self.map_inputs(v)) for k, v in obj.items())
        return obj


    def swap_in(self, model: nn.Module) -> None:
        """Put a meta tensor in every parameter and buffer entry of every module of ``model``."""
        for mname, mod in model.named_modules():
            for table in (mod._parameters, mod._buffers):
                for attr, t in table.items():
                    if t is None:
                        continue
                    meta = self.meta_of(t)
                    if id(meta) not in self.param_index:
                        self.param_index[id(meta)] = (f"{mname}.{attr}" if mname else attr, mod, attr, t)
                    self._swapped.append((table, attr, t))
        for table, attr, t in self._swapped:
            table[attr] = self.meta_of(t)

    def swap_out(self) -> None:
        """Put every real tensor :meth:`swap_in` replaced back in its entry."""
        for table, attr, t in self._swapped:
            table[attr] = t


@contextlib.contextmanager
def shadowed(model: nn.Module, example_inputs: Any) -> Iterator[Shadow]:
    """Swap ``model``'s parameters and buffers for meta tensors for the block; the real ones go back in ``finally``.

    Only for a model :func:`refusal` accepted.
    """
    shadow = Shadow()
    try:
        shadow.swap_in(model)
        shadow.inputs = shadow.map_inputs(example_inputs)
        yield shadow
    finally:
        shadow.swap_out()


class ModelSnapshot:
    """Every module's ``__dict__`` (and the containers in it) and the plain objects they hold, as taken.

    :meth:`changed` says what a call altered (identity of every attribute value,
    and of every entry of a dict, list or set attribute); :meth:`restore` puts it
    all back. Tensors are compared by identity: the shadow never hands a real
    tensor to the call, and the recorder refuses a trace that reached one.
    """

    def __init__(self, model: nn.Module) -> None:
        modules = list(model.named_modules())
        self.names = {id(m): n for n, m in modules}
        # (holder, its __dict__, a copy of it, {attribute: contents of a non-empty container, or None if empty})
        self.saved: list[tuple[Any, dict[str, Any], dict[str, Any], dict[str, Any]]] = []
        seen = set(self.names)
        extra: list[Any] = []
        for _, m in modules:
            self._save(m)
            for v in vars(m).values():
                if type(v) not in _NOT_HOLDERS and id(v) not in seen and _plain_object(v):
                    seen.add(id(v))
                    extra.append(v)
        for obj in extra:
            self._save(obj)

    def _save(self, holder: Any) -> None:
        d = vars(holder)
        contents = {k: (_contents(v) if v else None) for k, v in d.items() if isinstance(v, _CONTAINERS)}
        self.saved.append((holder, d, dict(d), contents))

    def changed(self) -> str | None:
        """What the call altered (``"blocks.0.attn.attention_bias_cache"``), or None."""
        for holder, d, attrs, contents in self.saved:
            if vars(holder) is not d or d.keys() != attrs.keys():
                return f"{self._where(holder)}: an attribute was added or removed"
            for k, v in attrs.items():
                if d[k] is not v:
                    return f"{self._where(holder)}.{k} was reassigned"
            for k, old in contents.items():
                if not _same_contents(old, attrs[k]):
                    return f"{self._where(holder)}.{k} changed"
        return None

    def _where(self, holder: Any) -> str:
        name = self.names.get(id(holder))
        return (name or "<model>") if name is not None else type(holder).__name__

    def restore(self) -> None:
        """Put every saved attribute and container back as it was."""
        for holder, d, attrs, contents in self.saved:
            d = vars(holder)
            for k in [k for k in d if k not in attrs]:
                del d[k]
            for k, v in attrs.items():
                if d.get(k, d) is not v:
                    d[k] = v
            for k, old in contents.items():
                obj = attrs[k]
                if _same_contents(old, obj):
                    continue
                obj.clear()
                if old is None:
                    continue
                if isinstance(obj, dict):
                    obj.update(zip(old[0], old[1], strict=True))
                elif isinstance(obj, list):
                    obj.extend(old[0])
                else:
                    obj.update(old[0])


_CONTAINERS = (dict, list, set)
# Attribute types that never hold attributes of their own worth saving.
_NOT_HOLDERS = frozenset({type(None), bool, int, float, str, tuple, list, dict, set, frozenset, torch.Size,
                          torch.dtype, torch.device, OrderedDict})


def _plain_object(v: Any) -> bool:
    """A non-module object whose attributes the forward may read or write (a Hugging Face ``config``)."""
    return (hasattr(v, "__dict__") and not callable(v)
            and not isinstance(v, (nn.Module, torch.Tensor, type, type(os), dict, list, tuple, set, frozenset)))


def _contents(v: Any) -> tuple:
    """A dict's keys and values, a list's items, a set's members: the objects themselves, in order."""
    if isinstance(v, dict):
        return tuple(v), tuple(v.values())
    if isinstance(v, list):
        return (tuple(v),)
    return (frozenset(v),)


def _same_contents(old: tuple | None, obj: Any) -> bool:
    """Whether container ``obj`` holds the same objects in the same places as ``old`` (None: empty)."""
    if old is None:
        return not obj
    if len(obj) != len(old[0]):
        return False
    if isinstance(obj, dict):
        return all(map(operator.is_, old[0], obj)) and all(map(operator.is_, old[1], obj.values()))
    if isinstance(obj, list):
        return all(map(operator.is_, old[0], obj))
    return old[0] == obj


# Calls that draw from a random number generator. On meta they draw nothing, so a trace that met
# one would leave the generators other than a real trace leaves them (a VAE's ``randn_like`` in eval).
_RANDOM = frozenset({
    "rand", "randn", "randint", "randperm", "rand_like", "randn_like", "randint_like", "bernoulli", "bernoulli_",
    "normal", "normal_", "uniform_", "random_", "exponential_", "geometric_", "cauchy_", "log_normal_",
    "multinomial", "poisson", "gumbel_softmax", "_standard_gamma", "_sample_dirichlet", "binomial",
})
_DROPOUT = frozenset({
    "dropout", "dropout_", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "alpha_dropout_",
    "feature_dropout", "feature_dropout_", "feature_alpha_dropout", "feature_alpha_dropout_", "native_dropout",
})


# Reads a meta tensor answers unlike the real one: storage addresses (0 for every meta tensor, so
# ``a.data_ptr() == b.data_ptr()`` would hold), offsets, and the device tests a forward branches on.
_UNFAITHFUL_READS = frozenset({"data_ptr", "untyped_storage", "storage", "_typed_storage", "storage_offset",
                               "is_meta", "is_cpu"})


def unfaithful(name: str, args: tuple, kwargs: dict) -> str | None:
    """Why the torch call (or Tensor property) ``name`` would not behave on meta as on the real tensors, or None."""
    if name in _UNFAITHFUL_READS:
        return f"the forward reads Tensor.{name}, which differs on meta"
    if draws_random(name, args, kwargs):
        return f"{name} draws random numbers"
    return None


def draws_random(name: str, args: tuple, kwargs: dict) -> bool:
    """Whether the torch call ``name(*args, **kwargs)`` draws random numbers (dropout only in training)."""
    if name in _RANDOM:
        return True
    if name in _DROPOUT:  # F.dropout(input, p, training=True), torch.dropout(input, p, train)
        train = args[2] if len(args) > 2 else kwargs.get("training", kwargs.get("train", True))
        p = args[1] if len(args) > 1 else kwargs.get("p", 0.5)
        return bool(train) and p != 0
    if name in ("rrelu", "rrelu_"):  # F.rrelu(input, lower, upper, training=False)
        return bool(args[3] if len(args) > 3 else kwargs.get("training", False))
    if name == "scaled_dot_product_attention":
        return (args[4] if len(args) > 4 else kwargs.get("dropout_p", 0.0)) != 0
    if name == "multi_head_attention_forward":
        p = args[10] if len(args) > 10 else kwargs.get("dropout_p", 0.0)
        return bool(kwargs.get("training", True)) and p != 0
    return False


class NotOnMetaError(Exception):
    """The call on the shadow met something a meta trace cannot stand for (a real tensor, a random draw).

    Never reaches a user: the recorder then traces with the real forward.
    """
