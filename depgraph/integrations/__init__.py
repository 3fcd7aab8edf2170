"""Integrations with other libraries; each is imported only when used.

``depgraph.integrations.transformers`` keeps a Hugging Face model's ``config``
and size attributes in step with its pruned layers, so ``save_pretrained`` then
``from_pretrained`` rebuilds the pruned model. ``DependencyGraph`` attaches it by
itself to models whose class comes from ``transformers``; importing depgraph
never imports transformers.
"""

__all__: list[str] = []
