"""Text sampled from a causal LM, continuing the starts of a training text: more text of its kind.

    python benchmarks/quality/sample_text.py --model /tmp/llmtc/corrected \\
        --prompts /tmp/llmtc/train_and_held_out_rest.txt --tokens 300000 --output /tmp/llmtc/sampled.txt
    python benchmarks/quality/recover_llm.py ... --extra-text /tmp/llmtc/sampled.txt

Why: a distillation that passes over a small corpus again and again learns its windows by heart
(the SmolLM2 passes in README reached a KL to the teacher of about 0.1 on their training
windows against 0.3 on held-out text). Continuations the teacher samples from the starts of the
training articles are new text of the same kind, as much as one asks for, on which the student
can be distilled from the same teacher (sequence-level distillation, Kim & Rush 2016). The
prompts come only from the training text, so nothing measured or used to choose a step leaks in.

Each document is a window start of ``--prompt-tokens`` from the prompt text, spread evenly over
it, continued by ``--new-tokens`` sampled tokens (``--top-p``, temperature 1). The file grows a
batch at a time, and ``OUTPUT.progress.json`` records how many batches are in it, so a run that
is stopped resumes where it was and gives the same text (each batch draws from its own seed; a
batch written after the last record is cut off and drawn again).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from depgraph.workflow.calibration_data import spread

SEPARATOR = "\n\n"


def prompt_starts(ids: torch.Tensor, prompt_tokens: int, count: int) -> torch.Tensor:
    """``count`` prompts of ``prompt_tokens`` each, their starts spread evenly over ``ids`` (1-D) as the
    library spreads ``--max-samples`` (:func:`depgraph.workflow.calibration_data.spread`), so the samples
    continue every part of the text and not only its first articles."""
    positions = ids.numel() - prompt_tokens + 1
    if count < 1 or positions < count:
        raise ValueError(f"cannot take {count} distinct prompts of {prompt_tokens} tokens from {ids.numel()} tokens")
    return torch.stack([ids[s:s + prompt_tokens] for s in spread(range(positions), count)])


def sample_batch(model: Any, prompts: torch.Tensor, new_tokens: int, top_p: float, seed: int) -> torch.Tensor:
    """``prompts`` continued by exactly ``new_tokens`` sampled tokens each (no early stop: the text is
    training windows, not answers)."""
    torch.manual_seed(seed)
    with torch.inference_mode():
        return model.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=True, top_p=top_p,
                              temperature=1.0, top_k=0, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                              pad_token_id=model.config.eos_token_id)


def sample_text(model: Any, tokenizer: Any, prompt_text: str, output: Path, *, tokens: int, prompt_tokens: int = 32,
                new_tokens: int = 480, batch_size: int = 32, top_p: float = 0.95, seed: int = 0,
                log: Any = print) -> int:
    """Append sampled documents to ``output`` until it holds about ``tokens`` sampled tokens; return the
    number of batches in it. Resumes from ``output``'s progress file; a finished file is left as it is.

    Raises:
        ValueError: the progress file records other settings or another prompt text (a resume would
            mix two texts), or the text is too short for the prompts.
    """
    batches = -(-tokens // (new_tokens * batch_size))
    ids = tokenizer(prompt_text, return_tensors="pt").input_ids[0]
    prompts = prompt_starts(ids, prompt_tokens, batches * batch_size)
    progress = output.with_name(output.name + ".progress.json")
    settings = {"tokens": tokens, "prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
                "batch_size": batch_size, "top_p": top_p, "seed": seed, "prompt_tokens_in_text": ids.numel()}
    done = 0
    if progress.exists() and output.exists():
        state = json.loads(progress.read_text())
        if state.get("settings") != settings:  # other prompts or draws: the file would mix two texts
            raise ValueError(f"{output} was sampled with {state.get('settings')}, not {settings}: "
                             "resume with the same settings and prompt text, or remove it and its progress file")
        done = state["batches"]
        with output.open("r+b") as f:  # a batch written after the last progress record is dropped, not doubled
            f.truncate(state["bytes"])
    if done == 0:
        output.write_text("", encoding="utf-8")
    for b in range(done, batches):
        t0 = time.perf_counter()
        out = sample_batch(model, prompts[b * batch_size:(b + 1) * batch_size], new_tokens, top_p, seed + b)
        texts = tokenizer.batch_decode(out, skip_special_tokens=True)
        with output.open("a", encoding="utf-8") as f:
            f.write("".join(t.strip() + SEPARATOR for t in texts))
        progress.write_text(json.dumps({"batches": b + 1, "of": batches, "bytes": output.stat().st_size,
                                        "settings": settings}))
        log(f"batch {b + 1}/{batches}: {out.shape[0] * new_tokens / (time.perf_counter() - t0):.0f} sampled tokens/s")
    return batches


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="a save_pretrained causal LM folder (the teacher)")
    p.add_argument("--prompts", type=Path, required=True, help="the training text whose window starts are continued")
    p.add_argument("--tokens", type=int, required=True, help="sampled tokens to write (rounded up to whole batches)")
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=480, help="prompt + new: one window of --seq-len 512")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    return sample_text(model, tokenizer, args.prompts.read_text(encoding="utf-8"), args.output, tokens=args.tokens,
                       prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens, batch_size=args.batch_size,
                       top_p=args.top_p, seed=args.seed)


if __name__ == "__main__":
    main()
