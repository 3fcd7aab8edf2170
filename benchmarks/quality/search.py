"""Find the pruning ratio that reaches a target (MACs speed-up, parameters removed) by bisection.

The search lives in the library (:mod:`depgraph.workflow.search`, also behind
``depgraph prune --target``); the benchmarks import it from here.
"""

from __future__ import annotations

from depgraph.workflow.search import SearchResult, search_ratio

__all__ = ["SearchResult", "search_ratio"]
