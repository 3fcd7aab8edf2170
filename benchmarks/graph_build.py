"""How long depgraph takes to build a dependency graph and collect all its groups.

    python benchmarks/graph_build.py           # 224x224 inputs, best of 3
    python benchmarks/graph_build.py --quick   # small inputs, one run (a smoke test, ~1 minute)

Three tables:

1. ``build_dependency`` and ``list(get_all_groups())`` for resnet50,
   densenet121, torchvision's vit_b_16 and a 32-block GPT-style transformer
   (``gpt-32``: dim 128, 4 heads, 64 tokens).
2. The same transformer at 8/16/32/64 blocks, with the time per block: it
   should stay about flat (the cost is linear in the number of ops), because
   index sets are tensors, never one Python object per channel.
3. A Llama-7B-shaped model from transformers (hidden 4096, MLP 11008, 32
   heads, 8 key/value heads, vocabulary 32000) at 4/8/16/32 layers, built on
   the meta device: no weight memory, so the 32-layer model (6.7 G parameters)
   fits anywhere. Times the graph build, collecting the groups, and pruning one
   MLP group and one key/value head group (the prune's forward check runs on
   meta tensors: shapes only). Needs transformers; skipped without it.

Weights are random; only the architecture matters for these timings. Uses
``rich`` for the tables when it is installed.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import depgraph as tp
from depgraph.cli import Printer
from depgraph.pruner.options import DEFAULT_ROOT_TYPES


class Block(nn.Module):
    """A pre-norm transformer block: causal self-attention, then an MLP."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.fc, self.out = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        # (B, T, H*D) -> (B, H, T, D); channel index = h*D + d
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class TinyGPT(nn.Module):
    """Token and position embeddings, ``depth`` blocks, a final norm and an LM head."""

    def __init__(self, depth: int, dim: int = 128, heads: int = 4, vocab: int = 512, context: int = 64):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, dim), nn.Parameter(torch.zeros(context, dim))
        self.blocks = nn.Sequential(*(Block(dim, heads) for _ in range(depth)))
        self.ln, self.head = nn.LayerNorm(dim), nn.Linear(dim, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos[: idx.shape[1]]
        return self.head(self.ln(self.blocks(x)))


def build_and_group(model: nn.Module, inputs: Any) -> tuple[tp.DependencyGraph, list, float, float]:
    """The graph, its groups, and the seconds spent building it and collecting them."""
    t0 = time.perf_counter()
    with torch.no_grad():
        dg = tp.DependencyGraph().build_dependency(model, inputs, verbose=False)
    t1 = time.perf_counter()
    found = list(dg.get_all_groups(root_module_types=DEFAULT_ROOT_TYPES))
    return dg, found, t1 - t0, time.perf_counter() - t1


def time_graph(model: nn.Module, inputs: torch.Tensor, repeat: int) -> tuple[float, float, int, int]:
    """Best-of-``repeat`` seconds for build and for collecting groups, plus node and group counts."""
    build = groups = float("inf")
    for _ in range(repeat):
        dg, found, b, g = build_and_group(model, inputs)
        build, groups = min(build, b), min(groups, g)
    return build, groups, len(dg.module2node), len(found)


def tokens(context: int = 64) -> torch.Tensor:
    return torch.randint(0, 512, (1, context))


def models(size: int) -> list[tuple[str, Callable[[], nn.Module], torch.Tensor]]:
    image = torch.randn(1, 3, size, size)
    get = torchvision.models.get_model
    return [
        ("resnet50", lambda: get("resnet50", weights=None), image),
        ("densenet121", lambda: get("densenet121", weights=None), image),
        ("vit_b_16", lambda: get("vit_b_16", weights=None, image_size=size), image),
        ("gpt-32", lambda: TinyGPT(32), tokens()),
    ]


LLAMA_7B = dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=8,
                vocab_size=32000)


def meta_llama(depth: int, **sizes: int) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A Llama-style causal LM with ``depth`` layers and its inputs, all on the meta device (no data)."""
    import transformers

    cfg = transformers.LlamaConfig(**{**LLAMA_7B, **sizes}, num_hidden_layers=depth)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(cfg).eval()
    return model, {"input_ids": torch.zeros(1, 16, dtype=torch.long, device="meta")}


def time_llama_prune(depth: int) -> tuple[int, int, float, float, float, float]:
    """Nodes, groups, and seconds for build, groups, one MLP prune and one key/value-head prune."""
    model, inputs = meta_llama(depth)
    dg, found, build, groups = build_and_group(model, inputs)
    t2 = time.perf_counter()
    layer = model.model.layers[depth // 2]
    with warnings.catch_warnings():  # one layer pruned: the config-sync warning (sizes differ per layer)
        warnings.simplefilter("ignore")
        dg.get_pruning_group(layer.mlp.down_proj, tp.prune_linear_in_channels, list(range(256))).prune()
        t3 = time.perf_counter()
        head_dim = layer.self_attn.head_dim  # key/value head 0 and the 4 query heads that share it
        dg.get_pruning_group(layer.self_attn.k_proj, tp.prune_linear_out_channels, list(range(head_dim))).prune()
        t4 = time.perf_counter()
    return len(dg.module2node), len(found), build, groups, t3 - t2, t4 - t3


def llama_rows(repeat: int) -> list[tuple[str, ...]]:
    rows, first = [], None
    for depth in (4, 8, 16, 32):
        runs = [time_llama_prune(depth) for _ in range(repeat)]
        nodes, groups = runs[0][:2]
        b, g, mlp, attn = (min(r[i] for r in runs) for i in range(2, 6))
        per_layer = (b + g + mlp + attn) / depth
        first = first or per_layer
        rows.append((str(depth), str(nodes), str(groups), f"{b:.3f}", f"{g:.3f}", f"{mlp:.3f}", f"{attn:.3f}",
                     f"{1000 * per_layer:.1f}", f"{per_layer / first:.2f}x"))
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64x64 images, one run each")
    parser.add_argument("--plain", action="store_true", help="plain-text tables even when rich is installed")
    parser.add_argument("--repeat", type=int, default=None, help="runs per model, best taken (default 3; 1 with --quick)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: graph building is mostly Python, and extra threads only "
                             "contend with other work on a loaded machine)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    repeat = args.repeat or (1 if args.quick else 3)
    size = 64 if args.quick else 224
    out = Printer(args.plain)
    torch.manual_seed(0)
    time_graph(TinyGPT(2).eval(), tokens(), 1)  # warm-up: first-call costs of torch and the recorder

    rows = []
    for name, build, inputs in models(size):
        model = build().eval()
        b, g, nodes, groups = time_graph(model, inputs, repeat)
        rows.append((name, "x".join(map(str, inputs.shape)), str(nodes), str(groups), f"{b:.3f}", f"{g:.3f}", f"{b + g:.3f}"))
    out.table(f"graph build, best of {repeat} (torch {torch.__version__}, {torch.get_num_threads()} threads)",
              ("model", "input", "nodes", "groups", "build s", "groups s", "total s"), rows)

    rows, first = [], None
    for depth in (8, 16, 32, 64):
        b, g, nodes, groups = time_graph(TinyGPT(depth).eval(), tokens(), repeat)
        per_block = (b + g) / depth
        first = first or per_block
        rows.append((str(depth), str(nodes), str(groups), f"{b:.3f}", f"{g:.3f}",
                     f"{1000 * per_block:.1f}", f"{per_block / first:.2f}x"))
    out.table("scaling with depth (GPT blocks; linear cost means a flat time per block)",
              ("blocks", "nodes", "groups", "build s", "groups s", "ms / block", "vs 8 blocks"), rows)

    try:
        import transformers  # noqa: F401
    except ImportError:
        out.line("Llama-7B-style scaling skipped: transformers is not installed")
        return
    rows = llama_rows(repeat)
    out.table("Llama-7B-style model on the meta device (hidden 4096, MLP 11008, 32 heads, 8 kv heads)",
              ("layers", "nodes", "groups", "build s", "groups s", "prune MLP s", "prune kv head s",
               "ms / layer", "vs 4 layers"), rows)


if __name__ == "__main__":
    main()
