"""Memory sizes: parse ``"600MB"``, read the free memory, read the peak RSS."""

from __future__ import annotations

import re

from ..errors import OptionError

__all__ = ["parse_size", "available_memory", "peak_rss"]

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(size: int | str) -> int:
    """Bytes of ``size``: an int, or a string such as ``"600MB"``, ``"1.5 GiB"``, ``"4096"``.

    Raises:
        OptionError: not a positive size with a known unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB).
    """
    if isinstance(size, int) and not isinstance(size, bool):
        value = size
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(size))
        unit = m.group(2).lower() if m else None
        if m is None or unit not in _UNITS:
            raise OptionError(f"{size!r} is not a memory size; write e.g. 600MB, 1.5GiB or a number of bytes")
        value = int(float(m.group(1)) * _UNITS[unit])
    if value <= 0:
        raise OptionError(f"a memory size must be positive, got {size!r}")
    return value


def available_memory() -> int:
    """Bytes the system can give without swapping (psutil, else ``/proc/meminfo`` MemAvailable)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 2**63 - 1  # unknown: never force streaming on that ground


def peak_rss() -> int | None:
    """The process's peak resident set size in bytes (None where the OS does not say)."""
    try:
        import resource
    except ImportError:
        return None
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss) if sys.platform == "darwin" else int(rss) * 1024
