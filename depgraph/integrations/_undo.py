"""A log of attribute and tensor changes that can be undone, newest first."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["UndoLog"]

_MISSING = object()


class UndoLog:
    """Records every change made through it; :meth:`undo` restores them all."""

    def __init__(self) -> None:
        self._entries: list[tuple[str, Any, Any, Any]] = []

    def __len__(self) -> int:
        return len(self._entries)

    def setattr(self, obj: Any, name: str, value: Any) -> None:
        """``obj.name = value`` (bypassing ``nn.Module.__setattr__`` for plain attributes)."""
        old = vars(obj).get(name, _MISSING)
        if old is not _MISSING and type(old) is type(value) and old == value:
            return
        self._entries.append(("attr", obj, name, old))
        vars(obj)[name] = value

    def setconfig(self, config: Any, name: str, value: Any) -> None:
        """``config.name = value`` through the config's own ``__setattr__`` (aliases such as ``n_embd``)."""
        old = getattr(config, name, _MISSING)
        if old is not _MISSING and type(old) is type(value) and old == value:
            return
        self._entries.append(("config", config, name, old))
        setattr(config, name, value)

    def setdata(self, t: torch.Tensor, data: torch.Tensor) -> None:
        """Replace ``t.data`` (the old tensor is kept, not written into)."""
        self._entries.append(("data", t, None, t.data))
        t.data = data

    def setbuffer(self, module: torch.nn.Module, name: str, value: torch.Tensor) -> None:
        self._entries.append(("buffer", module, name, module._buffers[name]))
        module._buffers[name] = value

    def undo(self) -> None:
        for kind, obj, name, old in reversed(self._entries):
            if kind == "attr":
                if old is _MISSING:
                    vars(obj).pop(name, None)
                else:
                    vars(obj)[name] = old
            elif kind == "config":
                if old is _MISSING:
                    delattr(obj, name)
                else:
                    setattr(obj, name, old)
            elif kind == "data":
                obj.data = old
            else:
                obj._buffers[name] = old
        self._entries.clear()
