"""Record one forward pass with a ``TorchFunctionMode`` plus module hooks.

Why not autograd's ``grad_fn`` chain: it needs gradients, hides op arguments
and forces guessing index maps from shapes. The function mode sees every torch
function and Tensor method with its exact arguments, under ``no_grad`` and
``inference_mode`` alike.

Leaf modules (those with a pruning handler, e.g. Conv2d) become one node each;
the ops inside them are executed but not recorded.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

from ..errors import TraceError
from . import memo, meta_shadow
from .gc_pause import gc_paused
from .graph import OpNode, Trace, Value
from .kept import find_kept, mark_rewritten, pop_cached, restore_cached
from .outputs import primary_outputs
from .shape_int import AttrExpr, AttrInt, ShapeInt, attributes_tagged, size_reads_recorded, tag_shape

__all__ = ["record", "flatten_tensors", "call_model"]

# Calls that only read metadata (or print); they never produce a tensor worth tracking.
_IGNORED_NAMES = frozenset(
    {
        "size", "dim", "numel", "__len__", "__repr__", "__format__", "__bool__", "__index__",
        "__int__", "__float__", "is_floating_point", "is_complex", "element_size", "stride",
        "data_ptr", "is_contiguous", "get_device", "__hash__", "nelement", "__reduce_ex__",
        "__deepcopy__", "ndimension", "has_names", "untyped_storage", "storage_offset", "_is_view",
        "is_shared", "is_signed", "is_pinned", "is_inference", "is_same_size", "is_set_to",
        "dim_order", "storage", "_typed_storage", "__dlpack_device__", "register_hook", "retain_grad",
    }
)
# Non-tensor results that carry no tensor data.
_METADATA = (torch.Size, torch.dtype, torch.device, torch.layout, torch.memory_format, str, type(None))


# Argument types that are pytree leaves holding no tensor: ``map_tensors`` returns them as they are.
_LEAVES = frozenset({
    int, float, bool, complex, str, bytes, type(None), type(Ellipsis), slice, torch.dtype, torch.device,
    torch.layout, torch.memory_format, ShapeInt, AttrInt, AttrExpr,
})
_PLAIN_TENSORS = frozenset({torch.Tensor, nn.Parameter})


def map_tensors(obj: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """``tree_map`` of ``fn`` over the tensors of ``obj`` (every other leaf kept), in the same leaf order.

    Op arguments are nearly always tensors, numbers and plain tuples/lists/dicts
    of them; those are walked here directly. Any other type (a namedtuple, a
    ``torch.Size``, a registered pytree node) is handed to ``tree_map`` itself,
    so the result is exactly ``tree_map``'s while the per-op cost of building
    a tree spec is paid only where one is needed.
    """
    t = type(obj)
    if t in _PLAIN_TENSORS:
        return fn(obj)
    if t in _LEAVES:
        return obj
    if t is tuple:
        return tuple([map_tensors(v, fn) for v in obj])
    if t is list:
        return [map_tensors(v, fn) for v in obj]
    if t is dict:
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    return tree_map(lambda x: fn(x) if isinstance(x, torch.Tensor) else x, obj)


def flatten_tensors(obj: Any) -> list[torch.Tensor]:
    """All tensors inside nested tuples/lists/dicts/dataclasses/ModelOutputs, in order."""
    out: list[torch.Tensor] = []
    _collect(obj, out, set())
    return out


def _collect(obj: Any, out: list[torch.Tensor], seen: set[int]) -> None:
    if isinstance(obj, torch.Tensor):
        out.append(obj)
        return
    if id(obj) in seen:
        return
    if isinstance(obj, dict):  # also HF ModelOutput (an OrderedDict subclass)
        seen.add(id(obj))
        for v in obj.values():
            _collect(v, out, seen)
    elif isinstance(obj, (list, tuple)):
        seen.add(id(obj))
        for v in obj:
            _collect(v, out, seen)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        seen.add(id(obj))
        for f in dataclasses.fields(obj):
            _collect(getattr(obj, f.name), out, seen)


def _has_channels(obj: Any) -> bool:
    """Whether some tensor in ``obj`` has a dim of size > 1 (something that could be pruned)."""
    leaves, _ = tree_flatten(obj)
    return any(isinstance(t, torch.Tensor) and any(n > 1 for n in t.shape) for t in leaves)


def call_model(model: nn.Module, example_inputs: Any, forward_fn: Callable | None = None, *,
               as_one: bool | None = None) -> Any:
    """Call ``model`` the documented way: dict -> kwargs, tuple/list -> positional, else one arg.

    A tuple/list the model refuses as positional arguments is then passed as one
    argument, as Torch-Pruning does (torchvision's detection models take a list of
    images). ``as_one`` picks one form and skips the other: a traced call must not
    record a failed first attempt.
    """
    if forward_fn is not None:
        return forward_fn(model, example_inputs)
    if isinstance(example_inputs, dict):
        return model(**example_inputs)
    if not isinstance(example_inputs, (tuple, list)):
        return model(example_inputs)
    if as_one is not None:
        return model(example_inputs) if as_one else model(*example_inputs)
    try:
        return model(*example_inputs)
    except Exception as positional:  # noqa: BLE001 - the one-argument form decides
        try:
            return model(example_inputs)
        except Exception:  # noqa: BLE001 - report the documented (positional) form's failure
            raise positional from None


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the block; every module's own training flag is restored after.

    Torch-Pruning traces in eval mode, so a model left in training mode traces
    with a batch of one (BatchNorm refuses a single value per channel in training),
    and dropout does not make the recorded call random.
    """
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield
    finally:
        for m, was_training in flags:
            m.training = was_training


class _Recorder(TorchFunctionMode):
    def __init__(self, trace: Trace, param_index: dict[int, tuple[str, nn.Module, str, Any]],
                 shadow: meta_shadow.Shadow | None = None):
        super().__init__()
        self.trace = trace
        self.param_index = param_index  # id(tensor) -> (qualname, owner, attr, tensor)
        self.shadow = shadow  # on a meta shadow: real tensors and random draws end the call
        self.live: dict[int, tuple[torch.Tensor, Value]] = {}
        self.keepalive: list[torch.Tensor] = []  # ids stay unique while we record
        self.leaf_depth = 0
        self.scope: list[str] = []

    # -- values -------------------------------------------------------------
    def new_value(self, t: torch.Tensor, kind: str, producer: OpNode | None = None) -> Value:
        v = Value(len(self.trace.values), tuple(t.shape), kind, producer)
        self.trace.values.append(v)
        self.live[id(t)] = (t, v)
        self.keepalive.append(t)
        return v

    def value_of(self, t: torch.Tensor) -> Value:
        hit = self.live.get(id(t))
        if hit is not None and hit[0] is t:
            return hit[1]
        info = self.param_index.get(id(t))
        if info is not None:
            v = self.new_value(t, "param")
            v.qualname, v.owner, v.attr, v.tensor_ref = info
            self.trace.params[id(t)] = v
            return v
        if self.shadow is not None and id(t) in self.shadow.real_ids:
            raise meta_shadow.NotOnMetaError("a real parameter, buffer or input was reached around the shadow")
        return self.new_value(t, "const")

    # -- ops ----------------------------------------------------------------
    def add_op(self, target: Any, args: tuple, kwargs: dict, result: Any, mutated: list | None = None) -> None:
        inputs: list[Value] = []  # every tensor argument's value, in argument order (repeats included)

        def arg_value(t: torch.Tensor) -> Value:
            v = self.value_of(t)
            inputs.append(v)
            return v

        s_args, s_kwargs = map_tensors(args, arg_value), map_tensors(kwargs, arg_value)
        op = OpNode(len(self.trace.ops), target, s_args, s_kwargs, inputs, [], self.scope[-1] if self.scope else "")
        if not mutated and type(result) in _PLAIN_TENSORS:  # the usual case: one fresh tensor
            op.output_struct = self.new_value(result, "op", op)
            op.outputs.append(op.output_struct)
            self.trace.ops.append(op)
            return
        out_tensors = flatten_tensors(result) + list(mutated or [])
        seen: set[int] = set()
        for t in out_tensors:
            if id(t) in seen:
                continue
            seen.add(id(t))
            # A returned input (in-place op, or a no-op like .contiguous()) gets a
            # new version; anything else is a fresh value.
            op.outputs.append(self.new_value(t, "op", op))
        if not mutated:
            op.output_struct = map_tensors(
                result if isinstance(result, (tuple, list, dict, torch.Tensor)) else None,
                lambda x: self.live[id(x)][1],
            )
        self.trace.ops.append(op)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.shadow is not None:
            name = getattr(func, "__name__", "")
            if name == "__get__":  # a Tensor property: its descriptor's name
                name = getattr(getattr(func, "__self__", None), "__name__", "")
            why = meta_shadow.unfaithful(name, args, kwargs)
            if why is not None:
                raise meta_shadow.NotOnMetaError(why)
        out = func(*args, **kwargs)
        if self.leaf_depth:
            return out
        name = getattr(func, "__name__", "")
        is_property = name == "__get__"
        if is_property:
            # Properties arrive as the descriptor's __get__: use the descriptor
            # (``torch.Tensor.T``) as the op's identity.
            func = getattr(func, "__self__", func)
            name = getattr(func, "__name__", "")
        if name in ("shape", "size"):
            if not args or not isinstance(args[0], torch.Tensor) or self.leaf_depth:
                return tag_shape(out)
            hit = self.live.get(id(args[0]))  # never create a value here: the recorder itself reads .shape
            if hit is None or hit[0] is not args[0]:
                return tag_shape(out)
            vid = hit[1].id
            dim = args[1] if len(args) > 1 else kwargs.get("dim")
            return tag_shape(out, vid, None if dim is None else dim % max(args[0].ndim, 1))
        if name in _IGNORED_NAMES:
            return out
        if name == "__setitem__":
            # x[idx] = y mutates x: record it as producing a new version of x.
            self.add_op(func, args, kwargs, None, mutated=[args[0]])
            return out
        if type(out) not in _PLAIN_TENSORS and not flatten_tensors(out):
            if not is_property and not isinstance(out, _METADATA) and _has_channels((args, kwargs)):
                # The data leaves torch (``numpy()``, ``tolist()``, ``equal``): what is done
                # with it is invisible, so record a sink with no outputs. It has no rule,
                # so the dims of its inputs freeze (and the builder warns).
                self.add_op(func, args, kwargs, None)
            return out
        self.add_op(func, args, kwargs, out)
        return out


@contextlib.contextmanager
def _hooks(model: nn.Module, rec: _Recorder, leaves: dict[nn.Module, bool]) -> Iterator[None]:
    handles = []
    names = {m: n for n, m in model.named_modules(remove_duplicate=False)}
    rec.trace.module_names = {m: n for n, m in model.named_modules()}
    is_leaf = leaves.__getitem__  # asked twice per call of every module: decided once, by record()

    def pre(mod, args, kwargs):
        if rec.leaf_depth:
            if is_leaf(mod):
                rec.leaf_depth += 1
            return None
        if is_leaf(mod):
            # Resolve input values now: inside the leaf, ops are not recorded.
            mod.__dict__["_depgraph_pending"] = (args, kwargs)  # popped by post(); cleared in finally
            rec.leaf_depth += 1
        else:
            rec.scope.append(names.get(mod, type(mod).__name__))
        return None

    def post(mod, args, kwargs, output):
        if is_leaf(mod):
            rec.leaf_depth -= 1
            if rec.leaf_depth:
                return None
            args, kwargs = mod.__dict__.pop("_depgraph_pending")
            rec.add_op(mod, args, kwargs, output)
            rec.trace.module_calls.setdefault(mod, []).append(rec.trace.ops[-1])
            rec.trace.ops[-1].scope = names.get(mod, "")
        elif not rec.leaf_depth and rec.scope:
            rec.scope.pop()
        return None

    try:
        for m in model.modules():
            handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(m.register_forward_hook(post, with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()
        for m in model.modules():
            m.__dict__.pop("_depgraph_pending", None)


@contextlib.contextmanager
def _buffers_restored(model: nn.Module) -> Iterator[None]:
    """Tracing must not change the model: undo buffer updates (BatchNorm running stats in train mode)."""
    with torch.no_grad():
        saved = [(b, b.detach().clone(), memo.tensor_version(b)) for b in model.buffers() if b is not None]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, old, version in saved:
                # Only what the call wrote: a copy would bump the version counter of every buffer,
                # and the trace memo (depgraph.trace.memo) reads an unchanged counter as unchanged.
                if b.shape == old.shape and (version is None or memo.tensor_version(b) != version):
                    b.copy_(old)


def _trace_once(model: nn.Module, example_inputs: Any, leaves: dict[nn.Module, bool],
                forward_fn: Callable | None, param_index: dict,
                as_one: bool | None = None, shadow: meta_shadow.Shadow | None = None) -> tuple[Trace, _Recorder, Any]:
    trace = Trace()
    rec = _Recorder(trace, param_index, shadow)
    for t in flatten_tensors(example_inputs):
        trace.inputs.append(rec.new_value(t, "input"))
    with (_hooks(model, rec, leaves), _buffers_restored(model), attributes_tagged(model.modules()),
          size_reads_recorded() as reads, rec):
        out = call_model(model, example_inputs, forward_fn, as_one=as_one)
    trace.size_reads = reads
    return trace, rec, out


def _trace_call(model: nn.Module, example_inputs: Any, leaves: dict[nn.Module, bool],
                forward_fn: Callable | None, param_index: dict) -> tuple[Trace, _Recorder, Any]:
    """One clean trace: a tuple/list refused as positional arguments is traced afresh as one argument."""
    several = forward_fn is None and isinstance(example_inputs, (tuple, list))
    try:
        return _trace_once(model, example_inputs, leaves, forward_fn, param_index, False if several else None)
    except Exception as positional:
        if not several:
            raise
        try:
            return _trace_once(model, example_inputs, leaves, forward_fn, param_index, True)
        except Exception:  # noqa: BLE001 - report the documented (positional) form's failure
            raise positional from None


def record(
    model: nn.Module,
    example_inputs: Any,
    is_leaf: Callable[[nn.Module], bool],
    forward_fn: Callable | None = None,
    output_transform: Callable | None = None,
) -> Trace:
    """Run ``model`` once on ``example_inputs`` and return what it did.

    Tracing the same, unchanged model on the same inputs again returns a copy of
    the last trace without running the model (see :mod:`depgraph.trace.memo`
    for what "unchanged" covers). The cyclic garbage collector is paused
    meanwhile (:class:`~depgraph.trace.gc_pause.gc_paused`).

    Raises:
        TraceError: the model failed on the example inputs (the original error
            is chained), or it produced no tensor output.
    """
    with gc_paused():
        leaves = {m: bool(is_leaf(m)) for m in model.modules()}
        key = memo.fingerprint(model, example_inputs, leaves, forward_fn, output_transform)
        trace = memo.recall(model, key)
        if trace is None:
            trace = _record(model, example_inputs, leaves, forward_fn, output_transform)
            memo.remember(model, key, trace)
        return trace


def _record(model: nn.Module, example_inputs: Any, leaves: dict[nn.Module, bool], forward_fn: Callable | None,
            output_transform: Callable | None) -> Trace:
    trace, why_real = _record_on_meta(model, example_inputs, leaves, forward_fn, output_transform)
    if trace is None:
        trace = _record_real(model, example_inputs, leaves, forward_fn, output_transform)
        trace.why_real = why_real
    return trace


def _record_on_meta(model: nn.Module, example_inputs: Any, leaves: dict[nn.Module, bool],
                    forward_fn: Callable | None, output_transform: Callable | None) -> tuple[Trace | None, str]:
    """The trace of one call on a meta shadow of ``model`` (see :mod:`depgraph.trace.meta_shadow`).

    Returns ``(None, why)`` and leaves the model exactly as it was whenever
    the shadow might record something a real forward would not.
    """
    why = meta_shadow.refusal(model, example_inputs)
    if why is not None:
        return None, why
    snapshot = meta_shadow.ModelSnapshot(model)
    try:
        with meta_shadow.shadowed(model, example_inputs) as shadow:
            with eval_mode(model):
                # Positional arguments only: a form refused on meta is decided by the real call.
                as_one = False if forward_fn is None and isinstance(example_inputs, (tuple, list)) else None
                trace, rec, out = _trace_once(model, shadow.inputs, leaves, forward_fn, shadow.param_index,
                                              as_one, shadow)
            out = output_transform(out) if output_transform is not None else primary_outputs(model, out)
            outs = flatten_tensors(out)
            if not outs:
                raise meta_shadow.NotOnMetaError("no tensor output")
            trace.outputs = [rec.value_of(t) for t in outs]
            del rec, out, outs
    except Exception as e:  # noqa: BLE001 - whatever failed on meta is decided by the real call
        snapshot.restore()
        return None, f"the call on meta tensors failed ({type(e).__name__}: {e})"
    except BaseException:
        snapshot.restore()
        raise
    changed = snapshot.changed()
    if changed is not None:
        snapshot.restore()
        return None, f"the call on meta tensors changed the model ({changed})"
    trace.params = {id(v.tensor_ref): v for v in trace.params.values()}  # keyed by the real tensors
    for op in trace.ops:  # ``torch.arange(n, device=x.device)`` names the device the real call would
        op.args, op.kwargs = _on_cpu(op.args), _on_cpu(op.kwargs)
    trace.on_meta = True
    return trace, ""


_META, _CPU = torch.device("meta"), torch.device("cpu")


def _on_cpu(obj: Any) -> Any:
    """``obj`` with the meta device replaced by the CPU (the only device a shadowed model's tensors had)."""
    t = type(obj)
    if t is torch.device:
        return _CPU if obj == _META else obj
    if t is tuple or t is list:
        return t(_on_cpu(v) for v in obj) if any(type(v) in _CONTAINERS for v in obj) else obj
    if t is dict:
        return {k: _on_cpu(v) for k, v in obj.items()} if any(type(v) in _CONTAINERS for v in obj.values()) else obj
    return obj


_CONTAINERS = frozenset({torch.device, tuple, list, dict})


def _record_real(model: nn.Module, example_inputs: Any, leaves: dict[nn.Module, bool], forward_fn: Callable | None,
                 output_transform: Callable | None) -> Trace:
    param_index: dict[int, tuple[str, nn.Module, str, Any]] = {}
    for mname, mod in model.named_modules():
        for attr, t in list(mod._parameters.items()) + list(mod._buffers.items()):
            if t is not None and id(t) not in param_index:
                param_index[id(t)] = (f"{mname}.{attr}" if mname else attr, mod, attr, t)
    # Tensors an earlier call left in dict caches (LeViT's attention biases) would enter the
    # trace as constants of unknown origin: empty the caches so the traced call recomputes
    # them; if the model cannot do without, put them back and trace once more.
    cached = pop_cached(model)
    try:
        with eval_mode(model):
            try:
                trace, rec, out = _trace_call(model, example_inputs, leaves, forward_fn, param_index)
            except Exception:
                if not cached:
                    raise
                restore_cached(cached)
                cached = []
                trace, rec, out = _trace_call(model, example_inputs, leaves, forward_fn, param_index)
    except Exception as e:  # noqa: BLE001 - re-raised with context
        raise TraceError(
            f"the model failed on the example inputs ({type(e).__name__}: {e}); "
            "check that example_inputs match model.forward (a dict is passed as keyword "
            "arguments, a tuple/list as positional arguments or else as one argument) or pass forward_fn="
        ) from e
    trace.kept = find_kept(model, rec.live)
    mark_rewritten(trace.kept, lambda: _call_eval(model, example_inputs, forward_fn))
    out = output_transform(out) if output_transform is not None else primary_outputs(model, out)
    outs = flatten_tensors(out)
    if not outs:
        raise TraceError("the model returned no tensor; pass output_transform= to select outputs")
    trace.outputs = [rec.value_of(t) for t in outs]
    return trace


def _call_eval(model: nn.Module, example_inputs: Any, forward_fn: Callable | None) -> Any:
    """One call in eval mode without gradients; every module's mode is restored."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            return call_model(model, example_inputs, forward_fn)
    finally:
        for m, training in modes:
            m.training = training
