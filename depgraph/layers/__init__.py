"""Layer specs: one registry of everything depgraph knows about each layer type (see :mod:`.spec`).

``import depgraph`` registers the built-in specs (:mod:`.builtin`).
"""

from .spec import (
    LayerSpec,
    find_layer_part,
    get_layer_spec,
    register_layer,
    registered_layers,
    restoring_layers,
)

__all__ = ["LayerSpec", "register_layer", "get_layer_spec", "find_layer_part", "registered_layers", "restoring_layers"]
