"""Prune a causal language model's attention heads and MLP channels by a ratio, then save it.

    python examples/prune_llm.py --model PATH_OR_NAME --ratio 0.25 --save pruned/

The same fraction of key/value heads (with the query heads that share them, under
GQA) and of MLP channels goes from every layer, chosen by group weight magnitude,
so the pruned model still has one head count and one MLP width for all layers:
its config can describe it, and ``from_pretrained`` on the saved folder rebuilds it.
Prints parameters, MACs and perplexity on a text before and after.
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from pathlib import Path

import torch

import depgraph as tp
from depgraph.integrations.transformers import attention_layers, check_config, mlp_layers

TEXT = (
    "Structural pruning removes whole channels, attention heads and hidden dimensions from a network, "
    "so that the weights become smaller and the model runs faster on ordinary hardware. Unlike sparse "
    "masks, the pruned model is a dense model of a smaller shape, and every layer that reads a pruned "
    "tensor must lose the same positions. The dependency graph finds those layers by itself."
)


def load(model_id: str, dtype: torch.dtype):
    """The model and, when the checkpoint has one, its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_id, dtype=dtype).eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_id)
    except (OSError, ValueError, TypeError):  # a bare checkpoint: no tokenizer files
        tokenizer = None
    return model, tokenizer


def encode(text: str, tokenizer, vocab_size: int, max_len: int) -> torch.Tensor:
    """Token ids of ``text`` (1, T); without a tokenizer, its bytes folded into the vocabulary."""
    ids = tokenizer(text, return_tensors="pt").input_ids if tokenizer is not None else None
    if ids is None or ids.numel() == 0:  # no tokenizer, or an empty one built for a bare checkpoint
        ids = torch.tensor([list(text.encode())]) % vocab_size
    return ids[:, :max_len]


@torch.no_grad()
def perplexity(model, ids: torch.Tensor) -> float:
    return math.exp(float(model(input_ids=ids, labels=ids).loss))


def measure(model, ids: torch.Tensor) -> dict[str, float]:
    try:
        macs, params = tp.utils.count_ops_and_params(model, {"input_ids": ids})
    except Exception as e:  # noqa: BLE001 - MACs are a report, not a requirement
        print(f"  (MACs not counted: {type(e).__name__}: {e})")
        macs, params = float("nan"), sum(p.numel() for p in model.parameters())
    return {"params": params, "macs": macs, "ppl": perplexity(model, ids)}


def _prune_lowest(DG, root, fn, width: int, n_remove: int, block: int = 1) -> None:
    """Remove the ``n_remove`` blocks of ``block`` root channels with the lowest group magnitude."""
    if n_remove <= 0:
        return
    group = DG.get_pruning_group(root, fn, list(range(width)))  # every channel: scored, never pruned
    scores = tp.importance.GroupMagnitudeImportance()(group).view(-1, block).sum(1)
    worst = torch.argsort(scores)[:n_remove]
    idxs = (worst[:, None] * block + torch.arange(block)).flatten().tolist()
    DG.get_pruning_group(root, fn, idxs).prune()


def prune(model, ids: torch.Tensor, ratio: float, head_ratio: float) -> None:
    """``head_ratio`` of the key/value heads and ``ratio`` of the MLP channels of every layer."""
    DG = tp.DependencyGraph().build_dependency(model, {"input_ids": ids}, output_transform=lambda o: o.logits)
    for a in attention_layers(model):
        n_remove = min(int(a.kv_heads * head_ratio), a.kv_heads - 1)
        if a.fused:  # GPT-2 style: a head is a block of the output projection's input
            # (GPT-2's Conv1D acts as a Linear: the Linear pruning functions accept it)
            out_proj = getattr(a.module, "c_proj", None) or a.module.o_proj
            _prune_lowest(DG, out_proj, tp.prune_linear_in_channels, a.q_width,
                          min(int(a.heads * head_ratio), a.heads - 1), a.head_dim)
        else:  # a key head: its query heads and output columns follow
            _prune_lowest(DG, a.k, tp.prune_linear_out_channels, a.kv_width, n_remove, a.head_dim)
    for m in mlp_layers(model):
        _prune_lowest(DG, m.down, tp.prune_linear_in_channels, m.width, int(m.width * ratio))


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a checkpoint folder or a hub name")
    parser.add_argument("--ratio", type=float, default=0.25, help="fraction of heads and MLP channels to remove")
    parser.add_argument("--head-ratio", type=float, help="fraction of key/value heads (default: --ratio); "
                        "0 for models whose config derives the head size from the hidden size (GPT-2, OPT)")
    parser.add_argument("--text-file", type=Path, help="text for perplexity (default: a built-in paragraph)")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens of the text to use")
    parser.add_argument("--save", type=Path, help="folder for save_pretrained of the pruned model")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args(argv)
    head_ratio = args.ratio if args.head_ratio is None else args.head_ratio
    if not (0.0 <= args.ratio < 1.0 and 0.0 <= head_ratio < 1.0):
        parser.error("--ratio and --head-ratio must be in [0, 1)")

    model, tokenizer = load(args.model, getattr(torch, args.dtype))
    text = args.text_file.read_text() if args.text_file else TEXT
    max_len = min(args.seq_len, getattr(model.config, "max_position_embeddings", None) or args.seq_len)
    ids = encode(text, tokenizer, model.config.vocab_size, max_len)
    before = measure(model, ids)
    start = time.perf_counter()
    with torch.no_grad(), warnings.catch_warnings():
        # Layer by layer, the layers differ until the last one is pruned; check_config below
        # tells whether the end result can be saved.
        warnings.filterwarnings("ignore", message="depgraph: after this prune")
        prune(model, ids[:, :32], args.ratio, head_ratio)
    seconds = time.perf_counter() - start
    after = measure(model, ids)

    print(f"{'':12s}{'before':>16s}{'after':>16s}")
    for key in ("params", "macs", "ppl"):
        print(f"{key:12s}{before[key]:16,.2f}{after[key]:16,.2f}")
    print(f"pruned in {seconds:.1f} s; {after['params'] / before['params']:.1%} of the parameters left")
    if args.save is not None:
        check_config(model)  # raises unless from_pretrained on the saved folder rebuilds this model
        model.save_pretrained(args.save)
        if tokenizer is not None:
            tokenizer.save_pretrained(args.save)
        print(f"saved to {args.save}")
    return {"before": before, "after": after}


if __name__ == "__main__":
    main()
