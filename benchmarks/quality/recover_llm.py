"""SmolLM2-135M through the command line: prune to 80% of the parameters, recover by distillation, perplexity.

    python benchmarks/quality/recover_llm.py             # the row in README (see --help for the sizes)
    python benchmarks/quality/recover_llm.py --quick     # a few steps on short windows: a smoke run

Every step that changes the model is the ``depgraph`` command a user would type,
run in a subprocess:

    depgraph prune  BASE --target params=0.8 --importance reconstruction --compensation lstsq \
        --ignore model.layers.0.mlp ... --calib train.txt --save-format depgraph --output PRUNED
    depgraph recover PRUNED --teacher BASE --data train.txt --lr-schedule cosine --save-every 10 \
        --output RECOVERED

The prune is the best recipe of ``results/llm_recipes.md`` (reconstruction +
least squares, MLP only, the same width in every layer but the first three and
last three, which are kept whole). Those per-layer widths are more than a Llama
config can describe, so PRUNED and RECOVERED are ``depgraph.save`` files
(``--save-format hf`` with ``--ignore`` given no layer gives ``save_pretrained``
folders instead). BASE is SmolLM2-135M-Instruct de-quantised from the gguf
(``llm.load_smollm2``) and written with ``save_pretrained``; ``train.txt`` is the
calibration half of the Wikipedia articles (``data.split_articles``). Perplexity is
measured here, in-process, on windows of the other half (never seen by calibration
or training), for BASE, PRUNED and RECOVERED (``from_pretrained``, then
``depgraph.load`` for a file). ``--time-limit`` stops the recover command and
measures its last checkpoint. Writes ``results/recover_llm.md`` and ``.json`` with
the wall time of every stage. Needs ``setup.sh``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import data  # noqa: E402
from llm import load_smollm2, n_params, perplexity  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[2]


def prepare(work: Path) -> tuple[Path, Path, str]:
    """BASE folder and train.txt in ``work`` (kept between runs), and the held-out text."""
    base, train = work / "base", work / "train.txt"
    calib_text, eval_text = data.split_articles(data.wiki_articles(data.read_wiki_xml()))
    if not (base / "model.safetensors").is_file():
        model, tokenizer = load_smollm2()
        model.save_pretrained(base)
        tokenizer.save_pretrained(base)
    if not train.is_file():
        train.write_text(calib_text, encoding="utf-8")
    return base, train, eval_text


def validation_text(eval_text: str, tokenizer: Any, measured_tokens: int) -> str:
    """The held-out text after the tokens the perplexity measures, from the next paragraph on: what
    ``--keep-best`` chooses the step on, so that the step is never chosen on the measured text."""
    offsets = tokenizer(eval_text, return_offsets_mapping=True)["offset_mapping"]
    if len(offsets) <= measured_tokens:
        raise ValueError(f"the held-out text has {len(offsets)} tokens: none left after the {measured_tokens} measured")
    start = eval_text.find("\n\n", offsets[measured_tokens][0])
    if start < 0:
        raise ValueError("no paragraph starts after the measured tokens")
    return eval_text[start:].strip()


def held_out_articles(eval_text: str, tokenizer: Any, measured_tokens: int, val_tokens: int) -> tuple[str, str]:
    """``(validation_text, extra_train_text)`` from the held-out articles, cut between whole articles.

    The articles that hold the ``measured_tokens`` the perplexity reads are left out of both. The next
    articles, up to at least ``val_tokens``, are what ``--keep-best`` chooses the step on; all the articles
    after them are more training text. No article is split, so no sentence, name or topic of the measured
    text reaches training or the step choice.
    """
    articles = eval_text.split("\n\n")  # split_articles joins whole articles with a blank line; none holds one
    counts = [len(tokenizer(a)["input_ids"]) for a in articles]
    first_val = _end_of_articles(counts, 0, measured_tokens)
    first_extra = _end_of_articles(counts, first_val, val_tokens)
    if first_extra >= len(articles):
        raise ValueError(f"the {len(articles)} held-out articles cannot hold {measured_tokens} measured tokens, "
                         f"{val_tokens} validation tokens and any training text after them")
    return "\n\n".join(articles[first_val:first_extra]), "\n\n".join(articles[first_extra:])


def _end_of_articles(counts: list[int], start: int, tokens: int) -> int:
    """The index after the articles from ``start`` on that together hold ``tokens`` (``len(counts)``: never)."""
    total = 0
    for i in range(start, len(counts)):
        total += counts[i]
        if total >= tokens:
            return i + 1
    return len(counts)


def depgraph(*args: str, time_limit: float | None = None,
             threads: int | None = None) -> tuple[float, str | None, list[str]]:
    """Run ``python -m depgraph ARGS`` (this checkout first on the path): its wall time in seconds, the
    last ``checkpoint: step N`` line it printed when ``time_limit`` (seconds) stopped it (None: it finished),
    and every line it printed."""
    cmd = [sys.executable, "-m", "depgraph", *args]
    print("$ depgraph " + shlex.join(args), flush=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    lines: list[str] = []
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) as proc:
        reader = threading.Thread(target=_echo, args=(proc.stdout, lines), daemon=True)
        reader.start()
        try:
            proc.wait(timeout=time_limit)
        except subprocess.TimeoutExpired:  # over the time limit: the last checkpoint is the result
            proc.kill()
            proc.wait()
            reader.join(10)
            last = next((x for x in reversed(lines) if x.startswith("checkpoint: step")), "no checkpoint")
            return time.perf_counter() - start, last, lines
        reader.join(10)
        if proc.returncode:
            raise subprocess.CalledProcessError(proc.returncode, cmd)
    return time.perf_counter() - start, None, lines


def _echo(stream: Any, lines: list[str]) -> None:
    """Print the child's output as it comes and keep its lines."""
    for line in stream:
        print(line, end="", flush=True)
        lines.append(line.rstrip("\n"))


def load_measured(path: Path, base: Path) -> Any:
    """A save_pretrained folder, or a depgraph.save file of BASE, in float32 and eval mode."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path if path.is_dir() else base, dtype=torch.float32).eval()
    if not path.is_dir():
        import depgraph

        model = depgraph.load(model, path).eval()
    return model


def held_out_ppl(path: Path, rows: torch.Tensor, base: Path, device: str = "cpu") -> tuple[float, int]:
    """Perplexity (float32, on ``device``) and parameter count of a save_pretrained folder, or of a
    depgraph.save file of BASE."""
    model = load_measured(path, base)
    return perplexity(model.to(device), rows), n_params(model)


def measure_models(models: dict[str, Path], rows: torch.Tensor, base: Path, device: str = "cpu") -> dict[str, dict]:
    """Held-out perplexity, parameters and evaluation seconds of each named model, printed as they finish."""
    width = max(len(name) for name in models)
    measured = {}
    for name, path in models.items():
        start = time.perf_counter()
        ppl, params = held_out_ppl(path, rows, base, device)
        measured[name] = {"ppl": ppl, "params": params, "eval_seconds": time.perf_counter() - start}
        print(f"{name:{width}s} {params / 1e6:6.1f} M params  ppl {ppl:8.2f}", flush=True)
    return measured


def recover_stage(cmd: list[str], seconds: float, printed: list[str], threads: int | None) -> dict:
    """A recover command's entry in WORK/stages.json: the command, its wall time and threads, and the
    ``kept the weights of step`` line that ``--keep-best`` printed, if any."""
    stage = {"command": "depgraph " + shlex.join(cmd), "seconds": seconds, "threads": threads}
    kept = next((x for x in printed if x.startswith("kept the weights of step")), None)
    if kept is not None:
        stage["kept"] = kept
    return stage


def start_stages(stages: dict, made: dict) -> dict:
    """``stages`` with no recover stage of its own, and the recover commands of ``made`` (the stages of the
    run whose result is the start: the passes that made its start, then its own ``recover``) listed in order
    as the passes that made this run's start. Why: a continued run's results must say how its start was
    made, and a stale pass from another run must not stay listed. ``made`` empty: no pass is listed."""
    kept = {k: v for k, v in stages.items() if not k.startswith("recover")}
    passes = [v for k, v in made.items() if k.startswith("recover")]
    names = ["recover that made the start"] if len(passes) == 1 else \
        [f"recover that made the start (pass {i})" for i in range(1, len(passes) + 1)]
    return {**kept, **dict(zip(names, passes, strict=True))}


def remove_stale(path: Path) -> None:
    """Delete a stale output. A link (a WORK that shares another's teacher or model) is unlinked, never
    followed: the folder it points at belongs to the other WORK."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.is_symlink() or path.exists():
        path.unlink()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short windows, two steps: a smoke run")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "depgraph-recover-llm",
                   help="where BASE, PRUNED, RECOVERED and train.txt go (BASE and train.txt are reused)")
    p.add_argument("--importance", default="reconstruction", help="depgraph prune --importance")
    p.add_argument("--compensation", default="lstsq", help="depgraph prune --compensation")
    p.add_argument("--ignore", action="append", default=None, metavar="LAYER",
                   help="depgraph prune --ignore (repeatable): layers kept whole (default: the MLPs of the first "
                        "three and last three layers, the best recipe of results/llm_recipes.md)")
    p.add_argument("--save-format", choices=("hf", "depgraph"), default="depgraph",
                   help="depgraph prune --save-format (depgraph: needed when --ignore makes widths differ by layer)")
    p.add_argument("--calib-samples", type=int, default=64)
    p.add_argument("--calib-seq-len", type=int, default=512)
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--seq-len", type=int, default=128, help="tokens per training window")
    p.add_argument("--max-samples", type=int, default=None,
                   help="depgraph recover --max-samples (default: STEPS x BATCH_SIZE windows, each seen once)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup-steps", type=int, default=6)
    p.add_argument("--lr-schedule", default="cosine", help="depgraph recover --lr-schedule")
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--kd-weight", type=float, default=1.0, help="depgraph recover --kd-weight")
    p.add_argument("--task-weight", type=float, default=None, help="depgraph recover --task-weight (default: its own)")
    p.add_argument("--seed", type=int, default=None,
                   help="depgraph recover --seed: the data order (default: its own, 0). A run that continues another "
                        "with --start should change it, or it sees the same windows in the same order again")
    p.add_argument("--keep-best", type=int, default=0, metavar="N",
                   help="depgraph recover --eval-every N --keep-best --eval-data VAL, VAL being the held-out text "
                        "after the tokens the perplexity measures (0: off)")
    p.add_argument("--eval-batches", type=int, default=2, help="depgraph recover --eval-batches")
    p.add_argument("--train-held-out-rest", action="store_true",
                   help="train on the calibration half and the held-out articles after the measured ones and the "
                        "--keep-best ones (whole articles: none of them shares text with the measured tokens)")
    p.add_argument("--extra-text", default=None, metavar="FILE|foldoc",
                   help="plain text appended to the recovery's training text (not the teacher correction's, "
                        "not the calibration's): more text than the dump holds. 'foldoc': FOLDOC's prose "
                        "(data.foldoc_text, from setup.sh), written to WORK/foldoc.txt")
    p.add_argument("--extra-only", action="store_true",
                   help="the recovery trains on --extra-text alone, not on the training text too: new text for a "
                        "student that has learnt the training windows by heart (the teacher correction and the "
                        "calibration keep the training text)")
    p.add_argument("--ema-decay", type=float, default=0.0, help="depgraph recover --ema-decay (0: off)")
    p.add_argument("--compile", action="store_true", help="depgraph recover --compile")
    p.add_argument("--hidden-weight", type=float, default=0.0, help="depgraph recover --hidden-weight")
    p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no",
                   help="depgraph recover --mixed-precision")
    p.add_argument("--device", default="cpu",
                   help="where the prune and the perplexity run (depgraph prune --device); recover trains on the "
                        "accelerator when there is one")
    p.add_argument("--name", default="recover_llm", help="results/NAME.md and .json")
    p.add_argument("--context", type=int, default=512, help="tokens per perplexity window")
    p.add_argument("--eval-tokens", type=int, default=8192)
    p.add_argument("--threads", type=int, default=1,
                   help="OMP_NUM_THREADS of the recover command (1 is much faster on oversubscribed cores)")
    p.add_argument("--save-every", type=int, default=10, help="depgraph recover --save-every")
    p.add_argument("--time-limit", type=float, default=None,
                   help="minutes after which the recover command is stopped and its last checkpoint measured")
    p.add_argument("--start", type=Path, default=None,
                   help="the model the recover command trains instead of PRUNED: an earlier run's RECOVERED, "
                        "copied into WORK first (its perplexity gets a row of its own)")
    p.add_argument("--start-stages", type=Path, default=None, metavar="FILE",
                   help="the WORK/stages.json of the run whose result --start names, when that is not WORK's own "
                        "RECOVERED: its recover commands are listed as those that made the start")
    p.add_argument("--correct-teacher", type=int, default=0, metavar="STEPS",
                   help="first fine-tune BASE on the training text for STEPS steps (depgraph recover --kd-weight 0, "
                        "batches as below, --keep-best when given), then prune and distil from that corrected "
                        "teacher, WORK/corrected: the teacher correction of the Minitron recipe (0: off)")
    p.add_argument("--correct-lr", type=float, default=1e-4, help="learning rate of --correct-teacher")
    p.add_argument("--prune-only", action="store_true", help="stop after the prune (then --reuse-pruned)")
    p.add_argument("--reuse-pruned", action="store_true", help="keep an existing PRUNED folder (and its time in "
                   "WORK/stages.json) instead of pruning again, and the corrected teacher it came from")
    args = p.parse_args(argv)
    if args.extra_only and args.extra_text is None:
        p.error("--extra-only trains on --extra-text alone: give --extra-text")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.ignore is None:
        args.ignore = [f"model.layers.{i}.mlp" for i in (0, 1, 2, 27, 28, 29)]
    if args.quick:
        args.calib_samples, args.calib_seq_len, args.steps, args.seq_len = 4, 64, 2, 32
        args.context, args.eval_tokens, args.warmup_steps = 64, 256, 0
    args.work.mkdir(parents=True, exist_ok=True)
    stages_file = args.work / "stages.json"
    stages = json.loads(stages_file.read_text()) if stages_file.is_file() else {}

    base, train, eval_text = prepare(args.work)
    # a save_pretrained folder when every layer keeps one width; a depgraph.save file when --ignore
    # keeps some layers whole (per-layer MLP widths, which a transformers config cannot describe)
    ext = ".pth" if args.save_format == "depgraph" else ""
    pruned, recovered = args.work / f"pruned{ext}", args.work / f"recovered{ext}"
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)  # cuts the held-out text here, measures it at the end
    val_text = rest_text = None
    if args.train_held_out_rest:
        val_text, rest_text = held_out_articles(eval_text, tokenizer, args.eval_tokens,
                                                 args.eval_batches * args.batch_size * args.seq_len)
    elif args.keep_best:
        val_text = validation_text(eval_text, tokenizer, args.eval_tokens)
    data_file = train
    if rest_text is not None:
        data_file = args.work / "train_and_held_out_rest.txt"
        data_file.write_text(train.read_text(encoding="utf-8") + "\n\n" + rest_text, encoding="utf-8")
    extra_file = None if args.extra_text is None else \
        args.work / "foldoc.txt" if args.extra_text == "foldoc" else Path(args.extra_text)
    if args.extra_text == "foldoc":
        extra_file.write_text(data.foldoc_text(), encoding="utf-8")
    recover_data, extra = data_file, None  # the recovery's text: the training text, then --extra-text
    if extra_file is not None:
        extra = extra_file.read_text(encoding="utf-8")
        if args.extra_only:
            recover_data = extra_file
        else:
            recover_data = args.work / "training_text_plus_extra.txt"
            recover_data.write_text(data_file.read_text(encoding="utf-8") + "\n\n" + extra, encoding="utf-8")
    keep_best = []
    if args.keep_best:
        val = args.work / "val.txt"
        val.write_text(val_text, encoding="utf-8")
        keep_best = ["--eval-data", str(val), "--eval-every", str(args.keep_best), "--keep-best"]
    batches = ["--seq-len", str(args.seq_len), "--batch-size", str(args.batch_size),
               "--eval-batches", str(args.eval_batches), "--plain", "--save-every", str(args.save_every)]

    teacher = base
    if args.correct_teacher:
        teacher = args.work / "corrected"
        if not (args.reuse_pruned and teacher.is_dir() and "correct teacher" in stages):
            remove_stale(teacher)
            correct_cmd = ["recover", str(base), "--data", str(data_file), *batches, "--kd-weight", "0",
                           "--steps", str(args.correct_teacher),
                           "--max-samples", str(args.correct_teacher * args.batch_size), "--lr", str(args.correct_lr),
                           "--warmup-steps", str(max(args.correct_teacher // 20, 1)), "--lr-schedule", "cosine",
                           "--mixed-precision", args.mixed_precision, "--output", str(teacher), *keep_best]
            seconds, _, printed = depgraph(*correct_cmd, threads=args.threads)
            stages["correct teacher"] = recover_stage(correct_cmd, seconds, printed, args.threads)
            stages.pop("prune", None)  # a new teacher: prune it again
            stages_file.write_text(json.dumps(stages, indent=1))

    prune_cmd = ["prune", str(teacher), "--target", "params=0.8", "--importance", args.importance, "--compensation",
                 args.compensation, "--calib", str(train), "--calib-samples", str(args.calib_samples),
                 "--seq-len", str(args.calib_seq_len), "--calib-batch-size", "4", "--no-latency", "--plain",
                 "--device", args.device, "--output", str(pruned), "--report", str(args.work / "prune_report.json"),
                 "--save-format", args.save_format]
    prune_cmd += [a for layer in args.ignore for a in ("--ignore", layer)]
    if not (args.reuse_pruned and pruned.exists() and "prune" in stages):
        remove_stale(pruned)
        stages["prune"] = {"command": "depgraph " + shlex.join(prune_cmd), "seconds": depgraph(*prune_cmd)[0]}
        stages_file.write_text(json.dumps(stages, indent=1))
    if args.prune_only:
        return {"stages": stages}

    student = pruned
    if args.start is not None:  # copied first: the start may be WORK's RECOVERED, which this run replaces
        student = args.work / f"start{ext}"
        if args.start.resolve() != student.resolve():
            remove_stale(student)
            (shutil.copytree if args.start.is_dir() else shutil.copyfile)(args.start, student)
        made = stages if args.start.resolve() == recovered.resolve() else \
            json.loads(args.start_stages.read_text()) if args.start_stages is not None else {}
        stages = start_stages(stages, made)
    remove_stale(recovered)
    recover_cmd = ["recover", str(student), "--teacher", str(teacher), "--data", str(recover_data), *batches,
                   "--max-samples", str(args.max_samples or args.steps * args.batch_size), "--steps", str(args.steps),
                   "--lr", str(args.lr), "--warmup-steps", str(args.warmup_steps), "--lr-schedule", args.lr_schedule,
                   "--temperature", str(args.temperature), "--kd-weight", str(args.kd_weight),
                   "--hidden-weight", str(args.hidden_weight), "--mixed-precision", args.mixed_precision,
                   "--output", str(recovered)]
    if args.task_weight is not None:
        recover_cmd += ["--task-weight", str(args.task_weight)]
    if args.seed is not None:
        recover_cmd += ["--seed", str(args.seed)]
    if args.compile:
        recover_cmd.append("--compile")
    if args.ema_decay:
        recover_cmd += ["--ema-decay", str(args.ema_decay)]
    recover_cmd += keep_best
    seconds, stopped, printed = depgraph(*recover_cmd, time_limit=args.time_limit * 60 if args.time_limit else None,
                                threads=args.threads)
    stages["recover"] = recover_stage(recover_cmd, seconds, printed, args.threads)
    if stopped is not None:
        stages["recover"]["stopped"] = f"stopped by the {args.time_limit:g}-minute limit; {stopped}"
    stages_file.write_text(json.dumps(stages, indent=1))

    rows = data.chunk_tokens(tokenizer(eval_text, return_tensors="pt").input_ids, args.context, args.eval_tokens)
    models = {"unpruned": base}
    if teacher != base:
        models["unpruned, fine-tuned: the corrected teacher"] = teacher
    models["pruned"] = pruned
    if student != pruned:
        models["start of this recovery (an earlier run's result)"] = student
    measured = measure_models({**models, "pruned + recovered": recovered}, rows, base, args.device)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings["train_tokens"] = args.steps * args.batch_size * args.seq_len
    settings["data_tokens"] = len(tokenizer(data_file.read_text(encoding="utf-8"))["input_ids"])
    if extra is not None:
        settings["extra_text"], settings["extra_tokens"] = str(extra_file), len(tokenizer(extra)["input_ids"])
    settings["threads"] = torch.get_num_threads()
    settings["machine"] = machine()
    state = {"settings": settings, "stages": stages, "models": measured}
    out = RESULTS if not args.quick else Path(tempfile.gettempdir()) / "depgraph-quality-quick"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(state, indent=1))
    (out / f"{args.name}.md").write_text(markdown(state))
    print(markdown(state))
    return state


def machine() -> str:
    """What the stages ran on, for the results header."""
    if torch.cuda.is_available():
        return f"one {torch.cuda.get_device_name()} (recover; prune and perplexity on the device given)"
    return f"{os.cpu_count()} shared CPU cores"


def markdown(state: dict) -> str:
    s, st, m = state["settings"], state["stages"], state["models"]
    base = m["unpruned"]
    loss = f"distillation at T={s['temperature']:g}" if s.get("kd_weight", 1.0) else "no distillation"
    if s.get("kd_weight", 1.0) not in (0.0, 1.0):
        loss += f" (weight {s['kd_weight']:g})"
    if s.get("hidden_weight"):
        loss += f", hidden-state MSE (weight {s['hidden_weight']:g})"
    lines = [f"SmolLM2-135M-Instruct (float32 from the Q4_1 gguf) through the command line, "
             f"{s.get('machine', '2 shared CPU cores')}. "
             f"Perplexity on {s['eval_tokens']} held-out Wikipedia tokens in windows of {s['context']}. "
             f"Recovery: {s['steps']} AdamW steps of {s['batch_size']} x {s['seq_len']} tokens "
             f"({s['train_tokens']} tokens), lr {s['lr']:g} after {s['warmup_steps']} warm-up steps "
             f"({s.get('lr_schedule', 'constant')} schedule), {loss}"
             f"{'' if s.get('task_weight') == 0 else ' plus next-token loss'}"
             f"{'' if s.get('mixed_precision', 'no') == 'no' else ', ' + s['mixed_precision'] + ' mixed precision'}"
             f"{', ending on the moving average of the weights (decay ' + format(s['ema_decay'], 'g') + ')' if s.get('ema_decay') else ''}."
             f"{_header_notes(s)}",
             "",
             "| model | params | ppl | ppl / unpruned |", "| :--- | ---: | ---: | ---: |"]
    for name, r in m.items():
        lines.append(f"| {name} | {r['params'] / 1e6:.1f} M ({r['params'] / base['params']:.1%}) | {r['ppl']:.2f} | "
                     f"{r['ppl'] / base['ppl']:.2f}x |")
    lines += ["", "| stage | command | wall time |", "| :--- | :--- | ---: |"]
    for name, r in st.items():
        how = f" ({r['threads']} thread{'s' if r['threads'] > 1 else ''})" if r.get("threads") else ""
        lines.append(f"| {name} | `{r['command']}`{how} | {r['seconds'] / 60:.1f} min |")
    lines += [f"\n{name}: {r['stopped']}" for name, r in st.items() if r.get("stopped")]
    lines += [f"\n{name}: {r['kept']}" for name, r in st.items() if r.get("kept")]
    return "\n".join(lines) + "\n"


def _header_notes(settings: dict) -> str:
    """The header's sentences on what differs from a plain run: more training text, an earlier start."""
    notes = ""
    if settings.get("train_held_out_rest"):
        notes += (f" Training text: the calibration half plus the held-out articles after the measured and the "
                  f"--keep-best ones ({settings['data_tokens']} tokens in all, whole articles).")
    if settings.get("extra_tokens") and settings.get("extra_only"):
        notes += (f" The recovery (not the teacher correction) trains on {Path(settings['extra_text']).name} "
                  f"alone ({settings['extra_tokens']} tokens), not on that text.")
    elif settings.get("extra_tokens"):
        notes += (f" The recovery (not the teacher correction) also trains on {Path(settings['extra_text']).name} "
                  f"({settings['extra_tokens']} more tokens), appended to that text.")
    if settings.get("correct_teacher"):
        notes += (f" Teacher correction: BASE was first fine-tuned on the same training text for "
                  f"{settings['correct_teacher']} steps (lr {settings['correct_lr']:g}, cosine, next-token loss "
                  f"only); that model is what was pruned and what the student was distilled from (the row "
                  f"\"unpruned, fine-tuned\"). The ratios are to the unpruned BASE.")
    if settings.get("start"):
        notes += (" This recovery continues from an earlier one's result (the row \"start of this recovery\"; "
                  "the commands that made it, when it ran in the same WORK or --start-stages named its stages, "
                  "are the stages \"recover that made the start\").")
    return notes


if __name__ == "__main__":
    main()
