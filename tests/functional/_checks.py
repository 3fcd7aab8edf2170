"""Checks shared by the handler tests.

Every handler test goes through the same three questions: does the pruned
layer compute what the original computes on the kept channels, did the
parameters keep their identity (with ``.grad`` pruned alike), and does a
refused call leave the layer exactly as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch
import torch.nn as nn


def keep_of(n: int, idxs: Sequence[int]) -> torch.Tensor:
    """The indices of ``range(n)`` not in ``idxs``, computed independently of depgraph."""
    gone = set(idxs)
    return torch.tensor([i for i in range(n) if i not in gone], dtype=torch.long)


def zero_along(x: torch.Tensor, dim: int, idxs: Sequence[int]) -> torch.Tensor:
    """A copy of ``x`` with positions ``idxs`` of ``dim`` set to zero."""
    x = x.clone()
    x.index_fill_(dim, torch.tensor(list(idxs), dtype=torch.long), 0.0)
    return x


def assert_restricts(
    original: nn.Module,
    pruned: nn.Module,
    x: torch.Tensor,
    *,
    in_dim: int | None = None,
    in_idxs: Sequence[int] = (),
    out_dim: int | None = None,
    out_idxs: Sequence[int] = (),
) -> None:
    """``pruned(x without in_idxs) == original(x with in_idxs zeroed) without out_idxs``.

    This is the exactness a channel-pruning handler promises when the removed
    inputs carry no signal and the removed outputs are dropped downstream.
    """
    x_full, x_kept = x, x
    if in_idxs:
        x_full = zero_along(x, in_dim, in_idxs)
        x_kept = x.index_select(in_dim, keep_of(x.shape[in_dim], in_idxs))
    with torch.no_grad():
        expected = original(x_full)
        actual = pruned(x_kept)
    if out_idxs:
        expected = expected.index_select(out_dim, keep_of(expected.shape[out_dim], out_idxs))
    torch.testing.assert_close(actual, expected)


def mark_grads(module: nn.Module) -> dict[str, nn.Parameter]:
    """Give every parameter a ``.grad`` derived from its data; return them by name.

    Since ``grad == 2 * data + 1`` elementwise, any selection applied to both
    keeps the relation, which :func:`assert_identity_and_grads` checks.
    """
    params = dict(module.named_parameters())
    for p in params.values():
        p.grad = p.detach() * 2 + 1
    return params


def assert_identity_and_grads(module: nn.Module, before: dict[str, nn.Parameter]) -> None:
    """Parameters are the same objects as before, and each ``.grad`` was pruned like its data."""
    after = dict(module.named_parameters())
    assert after.keys() == before.keys()
    for name, p in after.items():
        assert p is before[name], f"{name} was replaced instead of pruned in place"
        assert p.grad is not None and p.grad.shape == p.shape, name
        torch.testing.assert_close(p.grad, p.detach() * 2 + 1, msg=name)


def assert_refused(
    fn: Callable[..., object],
    module: nn.Module,
    idxs: object,
    exc: type[BaseException],
    match: str,
    **kwargs: object,
) -> None:
    """``fn(module, idxs)`` raises ``exc`` matching ``match`` and changes nothing at all."""
    state = {k: v.clone() for k, v in module.state_dict().items()}
    text = repr(module)
    attrs = {k: v for k, v in vars(module).items() if isinstance(v, (int, float, str, tuple, bool))}
    with pytest.raises(exc, match=match):
        fn(module, idxs, **kwargs)
    after = module.state_dict()
    assert after.keys() == state.keys()
    for k, v in state.items():
        assert after[k].shape == v.shape and torch.equal(after[k], v), f"{k} changed"
    assert repr(module) == text
    assert {k: v for k, v in vars(module).items() if k in attrs} == attrs
