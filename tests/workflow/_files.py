"""Files the workflow tests write themselves: images, text, a tokenizer, tiny checkpoints (all offline)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

WORDS = ("the cat sat on a mat while small dogs ran past green trees and old men read long "
         "books about rivers mountains cities ships").split()


def write_images(folder: Path, n: int = 6, size: tuple[int, int] = (40, 30), mode: str = "RGB") -> Path:
    """``n`` random PNG images of ``size`` (width, height) in ``folder`` (and one in a sub-folder)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    channels = {"RGB": 3, "L": 1}[mode]
    for i in range(n):
        sub = folder / "sub" if i == n - 1 else folder
        sub.mkdir(exist_ok=True)
        pixels = torch.randint(0, 256, (size[1], size[0], channels), generator=g, dtype=torch.uint8)
        Image.fromarray(pixels.squeeze(-1).numpy() if channels == 1 else pixels.numpy(), mode).save(sub / f"{i}.png")
    return folder


def corpus(n_words: int = 400, seed: int = 0) -> str:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(WORDS), (n_words,), generator=g).tolist()
    lines = [" ".join(WORDS[i] for i in idx[k:k + 12]) for k in range(0, n_words, 12)]
    return "\n".join(lines) + "\n"


def write_text(path: Path, n_words: int = 400) -> Path:
    path.write_text(corpus(n_words))
    return path


def write_jsonl(path: Path, n_docs: int = 8, field: str = "text") -> Path:
    path.write_text("".join(json.dumps({field: corpus(40, seed=i), "id": i}) + "\n" for i in range(n_docs)))
    return path


def write_tokenizer(folder: Path) -> int:
    """A word-level tokenizer over :data:`WORDS` saved with ``save_pretrained``; returns its vocabulary size."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<eos>": 1, **{w: i + 2 for i, w in enumerate(dict.fromkeys(WORDS))}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")
    fast.save_pretrained(folder)
    return len(vocab)


def write_tiny_llama(folder: Path, vocab_size: int = 64, tokenizer: bool = True, **overrides) -> Path:
    """A two-layer random Llama (GQA) saved with ``save_pretrained``, plus a tokenizer."""
    import transformers

    cfg = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    cfg.update(overrides)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg)).eval()
    model.save_pretrained(folder)
    if tokenizer:
        write_tokenizer(folder)
    return folder
