"""Prune a causal language model's attention heads and MLP channels by a ratio, then save it.

    python examples/prune_llm.py --model PATH_OR_NAME --ratio 0.25 --save pruned/

The same fraction of key/value heads (with the query heads that share them, under
GQA) and of MLP channels goes from every layer, ranked by a criterion (by default
activation fluctuation calibrated on the text; ``--criterion magnitude`` needs no
data), so the pruned model still has one head count and one MLP width for all
layers: its config can describe it, and ``from_pretrained`` on the saved folder
rebuilds it. Prints parameters, MACs and perplexity on a text before and after.
(The text serves as calibration and evaluation here; for a fair number, calibrate
and evaluate on different text, as benchmarks/quality/llm.py does.)
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from pathlib import Path

import torch

import depgraph as tp
from depgraph.integrations.transformers import check_config

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


CRITERIA = {
    "magnitude": tp.importance.GroupMagnitudeImportance,
    "activation": tp.importance.ActivationWeightImportance,
    "fluctuation": tp.importance.FluctuationImportance,
}


def importance(name: str, model, ids: torch.Tensor):
    """The criterion ``name``; the data-aware ones are calibrated on ``ids`` first."""
    imp = CRITERIA[name]()
    return imp.calibrate(model, {"input_ids": ids}) if hasattr(imp, "calibrate") else imp


def prune(model, ids: torch.Tensor, ratio: float, head_ratio: float, criterion: str = "fluctuation",
          bias_compensation: bool = False) -> None:
    """``head_ratio`` of the key/value heads and ``ratio`` of the MLP channels of every layer.

    Local pruning (one ratio per layer) keeps one head count and one MLP width for all
    layers, which is what a transformers config can describe. The embedding and the LM head
    are ignored, so the hidden size stays; head dims stay too (a config cannot describe
    RoPE frequencies with arbitrary pairs removed).
    """
    imp = importance(criterion, model, ids)
    ignored = [model.get_input_embeddings(), model.get_output_embeddings()]
    if head_ratio <= 0:  # leave attention alone: no head and no head dim goes
        ignored += [m for name, m in model.named_modules() if name.endswith(("attn", "attention"))]
    pruner = tp.pruner.BasePruner(
        model, {"input_ids": ids[:, :32]}, imp, pruning_ratio=ratio, ignored_layers=ignored,
        prune_num_heads=head_ratio > 0, head_pruning_ratio=head_ratio, prune_head_dims=False,
        bias_compensation=bias_compensation,
    )
    pruner.step()


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a checkpoint folder or a hub name")
    parser.add_argument("--ratio", type=float, default=0.25, help="fraction of heads and MLP channels to remove")
    parser.add_argument("--head-ratio", type=float, help="fraction of key/value heads (default: --ratio); "
                        "0 for models whose config derives the head size from the hidden size (GPT-2, OPT)")
    parser.add_argument("--criterion", default="fluctuation", choices=sorted(CRITERIA),
                        help="channel ranking; activation and fluctuation are calibrated on the text")
    parser.add_argument("--bias-compensation", action="store_true",
                        help="fold the mean of removed MLP/head inputs into the next layer's bias")
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
        prune(model, ids, args.ratio, head_ratio, args.criterion, args.bias_compensation)
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
