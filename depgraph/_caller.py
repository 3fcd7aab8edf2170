"""Where a warning should point: the first frame outside depgraph.

A fixed ``stacklevel`` counts frames from the ``warn`` call, so it breaks as soon
as the call path changes (a subclass's ``__init__`` calling ``super().__init__``,
a helper moved one level down) and the warning then names a depgraph file or
``sys:1`` instead of the user's line. Python 3.12's ``skip_file_prefixes`` does
this walk; 3.11 has no such option.
"""

from __future__ import annotations

import os
import sys

__all__ = ["user_stacklevel"]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def user_stacklevel() -> int:
    """The ``stacklevel`` for a ``warnings.warn`` made by this function's caller that names user code.

    Counts the caller's frames that belong to depgraph (contextlib and other
    standard-library frames in between count as depgraph's when a depgraph
    frame lies beyond them), so the warning lands on the first frame outside.
    """
    frame = sys._getframe(1)  # the function that is about to warn: stacklevel 1
    level, last_ours = 1, 1
    while frame is not None:
        if os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
            last_ours = level
        frame = frame.f_back
        level += 1
    return last_ours + 1
