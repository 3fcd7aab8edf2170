"""Tiny teachers and their pruned students, and files that the recovery / export tests load.

The teachers are random, but not flat: a random network at the default
initialisation gives near-uniform logits, against which any student has a
tiny distillation gap. A larger initialisation (Llama) and a sharpened
classifier (CNNs) give peaked teacher distributions, so pruning opens a real
gap that recovery must close.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn as nn

import depgraph as tp

VOCAB = 64
WORDS = "the a cat dog sat on mat ran to house big small red blue green tree bird sky".split()


def tiny_llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      initializer_range=0.3)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def prune(model: nn.Module, example_inputs, ratio: float = 0.5) -> nn.Module:
    """A pruned copy (the classifier / LM head kept): magnitude criterion, one step."""
    student = copy.deepcopy(model)
    from depgraph.cli import find_classifier

    head = getattr(student, "lm_head", None) or find_classifier(student)
    tp.pruner.BasePruner(student, example_inputs, tp.importance.GroupMagnitudeImportance(),
                         pruning_ratio=ratio, ignored_layers=[head]).step()
    return student.eval()


def llama_pair() -> tuple[nn.Module, nn.Module]:
    teacher = tiny_llama()
    return teacher, prune(teacher, {"input_ids": torch.randint(0, VOCAB, (1, 8))})


def token_data(n: int = 32, seq: int = 16, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, VOCAB, (seq,), generator=g)} for _ in range(n)]


def small_cnn(num_classes: int = 10) -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=num_classes)
    with torch.no_grad():
        model.fc.weight.mul_(5.0)  # peaked teacher distributions (see the module docstring)
    return model.eval()


def cnn_pair(num_classes: int = 10) -> tuple[nn.Module, nn.Module]:
    teacher = small_cnn(num_classes)
    return teacher, prune(teacher, torch.randn(1, 3, 32, 32))


def image_data(teacher: nn.Module | None = None, n: int = 32, classes: int = 10,
               size: int = 32) -> torch.utils.data.TensorDataset:
    """Random images; labelled with the teacher's predictions (a task the teacher solves), else at random."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(n, 3, size, size, generator=g)
    if teacher is None:
        return torch.utils.data.TensorDataset(x, torch.randint(0, classes, (n,), generator=g))
    with torch.no_grad():
        return torch.utils.data.TensorDataset(x, teacher.eval()(x).argmax(-1))


def write_tokenizer(folder: Path) -> None:
    """A word-level tokenizer over :data:`WORDS`, saved so that ``AutoTokenizer.from_pretrained`` reads it."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(folder)


def write_text(path: Path, words: int = 600, seed: int = 3) -> Path:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(WORDS), (words,), generator=g).tolist()
    path.write_text(" ".join(WORDS[i] for i in idx), encoding="utf-8")
    return path


def write_llama_folders(root: Path) -> tuple[Path, Path]:
    """``teacher/`` and ``pruned/`` save_pretrained folders (with a tokenizer) under ``root``."""
    teacher, student = llama_pair()
    t_dir, s_dir = root / "teacher", root / "pruned"
    teacher.save_pretrained(t_dir)
    student.save_pretrained(s_dir)
    write_tokenizer(t_dir)
    write_tokenizer(s_dir)
    return t_dir, s_dir


def write_image_folder(root: Path, classes: int = 2, per_class: int = 6, size: int = 32) -> Path:
    from PIL import Image

    g = torch.Generator().manual_seed(4)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8).numpy()
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")
    return root
