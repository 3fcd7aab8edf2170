"""``prune_checkpoint``: prune a Hugging Face checkpoint folder into a new one, within a memory budget.

Stages of the streamed path (nothing is read before the plan checks pass)::

    plan    config -> model on meta -> graph and groups (no weight memory)
    score   per group: member layers rebuilt from the shards, scored, freed
    check   the pruned meta model's config describes it (check_config)
    write   per output shard: header from the meta shapes, then each tensor:
            unchanged -> its bytes copied from the source file
            pruned    -> its layer rebuilt, the logged prunes replayed, bytes written
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import DepgraphError, OptionError
from .calibrate import calibrate_streamed, materialize_on_use
from .compensate import StreamedCompensation, log_zero_biases
from .coverage import check_coverage
from .memory import available_memory, parse_size, peak_rss
from .options import DATA_AWARE, PruneOptions
from .plan import (
    Materializer,
    PruneLog,
    StreamedImportance,
    build_meta_model,
    example_inputs,
    run_pruner,
)
from .shards import INDEX_NAME, Checkpoint, CheckpointError, MemoryBudgetError, MemoryLedger, format_bytes
from .writer import MANIFEST_NAME, Entry, Manifest, write_shard

__all__ = ["prune_checkpoint", "StreamReport"]

_COPY_CHUNK = 1 << 24  # raw bytes copied per read for tensors that keep their shape


@dataclass
class StreamReport:
    """What a :func:`prune_checkpoint` run did and what it cost."""

    output: str
    mode: str  # "stream" or "memory"
    params_before: int = 0
    params_after: int = 0
    groups_pruned: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    checkpoint_bytes: int = 0
    budget: int | None = None
    peak_materialized: int = 0
    peak_rss: int | None = None
    shards_written: list[str] = field(default_factory=list)
    shards_reused: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    plan_hash: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The report as plain data, for JSON output of the command line and logs."""
        return asdict(self)

    def __str__(self) -> str:
        kept = self.params_after / self.params_before if self.params_before else float("nan")
        times = ", ".join(f"{k} {v:.2f} s" for k, v in self.seconds.items())
        return "\n".join([
            f"pruned checkpoint written to {self.output} ({self.mode})",
            f"parameters: {self.params_before:,} -> {self.params_after:,} ({kept:.1%} kept), "
            f"{self.groups_pruned} groups pruned",
            f"read {format_bytes(self.bytes_read)}, wrote {format_bytes(self.bytes_written)} "
            f"(checkpoint {format_bytes(self.checkpoint_bytes)})",
            f"peak weights held {format_bytes(self.peak_materialized)}"
            + (f" of a {format_bytes(self.budget)} budget" if self.budget else "")
            + (f"; peak RSS {format_bytes(self.peak_rss)}" if self.peak_rss else ""),
            f"shards: {len(self.shards_written)} written, {len(self.shards_reused)} kept from an earlier run",
            f"time: {times}",
        ])


def prune_checkpoint(
    src_dir: str | Path,
    out_dir: str | Path,
    *,
    ratio: float = 0.2,
    head_ratio: float | None = None,
    importance: str = "magnitude",
    global_pruning: bool = False,
    round_to: int | None = None,
    ignore: tuple[str, ...] = (),
    seed: int = 0,
    max_memory: int | str | None = None,
    mode: str = "auto",
    calib: Any = None,
    compensation: str | None = None,
    damping: float = 1e-4,
    prune_hidden: bool = False,
    calib_memory: int | str | None = None,
    resume: bool = True,
    progress: bool = True,
) -> StreamReport:
    """Prune the causal LM saved in ``src_dir`` and save the result to ``out_dir``.

    The same fraction of MLP channels and key/value heads goes from every layer (see
    :class:`~depgraph.streaming.options.PruneOptions`), decided exactly as an in-memory
    ``BasePruner`` step would decide it. The output folder loads with ``from_pretrained``
    and needs no depgraph.

    Args:
        src_dir: a ``save_pretrained`` folder with safetensors weights (one file or shards + index).
        out_dir: where the pruned checkpoint goes (created; must differ from ``src_dir``).
        ratio, head_ratio, importance, global_pruning, round_to, ignore, seed: the recipe,
            see :class:`~depgraph.streaming.options.PruneOptions`.
        max_memory: the most weight bytes held at once, e.g. ``"600MB"``; it must hold the
            biggest decoder layer. With a budget the checkpoint is always streamed.
        mode: ``"stream"``, ``"memory"`` (load it whole, prune, ``save_pretrained``) or
            ``"auto"``: stream when ``max_memory`` is given or the checkpoint is larger than
            the free memory.
        calib: calibration batches for the data-aware criteria and the compensations (token ids
            ``(B, T)``, a dict batch or a list of them); the streamed pass holds one layer's
            weights at a time.
        compensation: ``"bias"`` (each consumer's bias takes the mean of its removed inputs,
            as ``compensation=BiasMean(stats)`` in memory) or ``"lstsq"`` (its kept columns and
            bias are refit by least squares, as ``compensation=LeastSquares(cov, damping)``);
            calibrated on ``calib``. A created bias switches on the config's ``mlp_bias`` /
            ``attention_bias`` so ``from_pretrained`` keeps it.
        damping: the least-squares ridge term.
        calib_memory: the most memory the calibration statistics may take, as ``prune_model``'s
            (``"8GB"``, ``"1.5GiB"``, bytes; default: half the available memory). Least squares
            holds the float64 Gram matrices of every layer it refits at once, outside
            ``max_memory``, from the calibration pass to the last shard written; when they (plus
            one layer's working copies, :func:`~depgraph.workflow.calib_memory.reconstruction_memory`)
            exceed it, the prune is refused before any read. The other statistics are two
            numbers per channel and are not checked.
        prune_hidden: also prune the hidden size at ``ratio`` (one group across every layer;
            scored one member at a time, so the budget must hold the embedding).
        resume: keep the shards an interrupted run of the same plan already wrote (checked
            against their recorded sha256).
        progress: progress bars on stderr (needs ``tqdm``).

    Returns:
        A :class:`StreamReport` (sizes, bytes read and written, peak memory, times).

    Raises:
        OptionError: bad options, ``max_memory`` or ``calib_memory``; ``calib`` missing for a data-aware
            criterion or given to a data-free one.
        CheckpointError: ``src_dir`` is not a safetensors checkpoint of a model the config builds.
        MemoryBudgetError: ``max_memory`` cannot hold a decoder layer, or ``calib_memory`` the
            Gram matrices of ``compensation="lstsq"`` (raised before any read).
        DepgraphError: the pruned model cannot be described by its config.

    Example:
        >>> report = prune_checkpoint("llama-7b", "llama-7b-pruned", ratio=0.2, max_memory="2GB")
        >>> print(report)
    """
    options = PruneOptions(ratio=ratio, head_ratio=head_ratio, importance=importance,
                           global_pruning=global_pruning, round_to=round_to, ignore=tuple(ignore), seed=seed,
                           compensation=compensation, damping=damping, prune_hidden=prune_hidden)
    src, out = Path(src_dir), Path(out_dir)
    budget = parse_size(max_memory) if max_memory is not None else None
    if calib_memory is not None:
        parse_size(calib_memory)  # a bad size fails here; the budget keeps the user's spelling
    if mode not in ("auto", "stream", "memory"):
        raise OptionError(f"mode must be 'auto', 'stream' or 'memory', got {mode!r}")
    if options.needs_calib and calib is None:
        what = f"importance={importance!r}" if options.data_aware else f"compensation={compensation!r}"
        raise OptionError(f"{what} is calibrated on data: pass calib= (token ids, a dict batch or a list of "
                          "batches), or use a data-free criterion such as 'magnitude' without compensation")
    if calib is not None and not options.needs_calib:
        raise OptionError(f"calib= is only read by the data-aware criteria ({', '.join(DATA_AWARE)}) and by "
                          f"compensation=; importance={importance!r} without compensation would ignore it")
    if calib is not None:
        _check_token_ids(calib, src)
    if not (src / "config.json").is_file():
        raise CheckpointError(f"{src} has no config.json: give a folder written by save_pretrained")
    if out.resolve() == src.resolve():
        raise OptionError(f"out_dir must differ from src_dir ({src}): the source shards are read while writing")
    checkpoint = Checkpoint(src, MemoryLedger(budget))
    if mode == "auto":
        mode = "stream" if budget is not None or checkpoint.total_bytes > available_memory() else "memory"
    if mode == "memory":
        return _prune_in_memory(src, out, options, checkpoint.total_bytes, calib, calib_memory)
    return _prune_streamed(checkpoint, out, options, resume, progress, calib, calib_memory)


def _lstsq_layers(options: PruneOptions, pruner: Any, calib_memory: int | str | None) -> list[nn.Module]:
    """The layers least squares measures (those the in-memory path measures: asked of ``pruner``),
    after checking their Gram matrices against the calibration budget; [] without ``lstsq``.

    Raises:
        MemoryBudgetError: the Gram matrices, all held at once, do not fit ``calib_memory``.
    """
    from ..workflow.calib_memory import reconstruction_memory
    from ..workflow.recipes import shrinkable_linears

    if options.compensation != "lstsq":
        return []
    layers = shrinkable_linears(pruner)
    memory = reconstruction_memory(layers, "cpu", calib_memory)  # both checkpoint paths calibrate on the CPU
    if not memory.fits:
        raise MemoryBudgetError(memory.refusal("compensation='lstsq'", "use compensation='bias' "
                                               "(--compensation bias), which keeps two numbers per channel"))
    return layers


def _compensation_source(options: PruneOptions, model: nn.Module, layers: list[nn.Module], criterion: Any,
                         calib: Any) -> Any:
    """The statistics the compensation reads, collected on ``model`` (materialised layer by layer when
    it is the meta model: the caller wraps this in ``materialize_on_use``); ``layers``: from
    :func:`_lstsq_layers`."""
    from ..importance import collect_activation_stats, collect_input_covariance

    if options.compensation == "bias":
        # a calibrated criterion's statistics serve, as BiasMean() reads them in memory
        return criterion.stats if options.data_aware else collect_activation_stats(model, calib)
    return collect_input_covariance(model, calib, layers=layers)


def _check_token_ids(calib: Any, src: Path) -> None:
    """Token ids outside the vocabulary would fail deep inside the calibration pass: refuse them first."""
    config = src / "config.json"
    vocab = json.loads(config.read_text()).get("vocab_size") if config.is_file() else None
    batches = calib if isinstance(calib, (list, tuple)) else [calib]
    for b in batches:
        ids = b.get("input_ids") if isinstance(b, dict) else b
        if isinstance(ids, torch.Tensor) and ids.numel() and vocab is not None \
                and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
            raise OptionError(f"calib holds token ids in [{int(ids.min())}, {int(ids.max())}], outside the "
                              f"vocabulary of {src} (0 to {vocab - 1})")


# -- streamed ---------------------------------------------------------------------------------------
def _prune_streamed(checkpoint: Checkpoint, out: Path, options: PruneOptions, resume: bool,
                    progress: bool, calib: Any, calib_memory: int | str | None) -> StreamReport:
    from transformers import AutoConfig

    from ..integrations.hf_bias import attach_bias_flags
    from ..integrations.transformers import check_config

    report = StreamReport(output=str(out), mode="stream", budget=checkpoint.ledger.budget,
                          checkpoint_bytes=checkpoint.total_bytes)
    t0 = time.perf_counter()
    config = AutoConfig.from_pretrained(checkpoint.folder)
    model = build_meta_model(config)
    pristine = copy.deepcopy(model)
    log = PruneLog()
    materializer = Materializer(checkpoint, pristine, log)
    _check_budget(pristine, materializer, checkpoint.ledger, options)
    report.params_before = sum(t.numel() for t in _stored(pristine, materializer).values())

    criterion = options.make_importance()
    with _bar(progress, "score groups", None, "group") as bar:
        wrapped = StreamedImportance(criterion, materializer, needs_weights=options.importance != "random",
                                     on_group=lambda: bar.update(1) if bar is not None else None)
        pruner = options.make_pruner(model, example_inputs("meta"), wrapped)
        check_coverage(pruner, model, options.ratio, options.ignored_layers(model))  # before any read
        lstsq_layers = _lstsq_layers(options, pruner, calib_memory)  # before any read too
        with _bar(progress and options.needs_calib, "calibrate", None, "layer") as cbar:
            def on_layer(_: str) -> None:
                if cbar is not None:
                    cbar.update(1)

            if options.data_aware:  # one forward over the meta model, each layer real only while it runs
                tc = time.perf_counter()
                calibrate_streamed(criterion, model, materializer, calib, on_layer)
                report.seconds["calibrate"] = time.perf_counter() - tc
                t0 += report.seconds["calibrate"]  # "plan" counts the graph and the pruner only
            source = None
            if options.compensation is not None:
                tc = time.perf_counter()
                with torch.no_grad(), materialize_on_use(model, materializer, on_layer):
                    source = _compensation_source(options, model, lstsq_layers, criterion, calib)
                report.seconds["calibrate"] = report.seconds.get("calibrate", 0.0) + time.perf_counter() - tc
                t0 += time.perf_counter() - tc
        if options.compensation is not None:
            StreamedCompensation(options.compensation, lambda: source, log, options.damping).attach(pruner.DG)
            attach_bias_flags(pruner.DG)  # mlp_bias / attention_bias follow the new biases, as in memory
        report.seconds["plan"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        groups = []
        run_pruner(pruner, log, on_group=groups.append)
    log_zero_biases(model, pristine, log)
    report.groups_pruned = len(groups)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_config(model)
    report.seconds["score"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    layout = _layout(checkpoint, model, materializer, log)
    report.params_after = sum(_numel(e.shape) for entries in layout.values() for e in entries)
    report.plan_hash = _plan_hash(checkpoint, layout, log, options, model.config, calib)
    out.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(out, report.plan_hash, resume)
    total = sum(e.nbytes for entries in layout.values() for e in entries)
    with _bar(progress, "write shards", total, "B") as bar:
        for file, entries in layout.items():
            if manifest.is_done(file):
                report.shards_reused.append(file)
                if bar is not None:
                    bar.update(sum(e.nbytes for e in entries))
                continue
            size, sha = write_shard(out / file, _counted(entries, bar), checkpoint.file_metadata.get(file, {}))
            manifest.add(file, size, sha)
            report.shards_written.append(file)
            report.bytes_written += size
    _write_metadata(checkpoint, out, model, layout)
    report.seconds["write"] = time.perf_counter() - t2
    report.bytes_read = checkpoint.bytes_read
    report.peak_materialized = checkpoint.ledger.peak
    report.peak_rss = peak_rss()
    return report


def _stored(model: nn.Module, materializer: Materializer) -> dict[str, torch.Tensor]:
    """The model's tensors under the names the checkpoint stores them (each stored tensor once)."""
    state = model.state_dict(keep_vars=True)
    return {c: state[n] for n, c in materializer.aliases.items() if n == c}


def _check_budget(pristine: nn.Module, materializer: Materializer, ledger: MemoryLedger,
                  options: PruneOptions) -> None:
    """Refuse before any read when the budget cannot hold the biggest repeated block (a decoder layer),
    or, when the hidden size is pruned, the embedding or LM head (each is rebuilt whole)."""
    if ledger.budget is None:
        return
    blocks = [(f"{name}.{i}", "one decoder layer") for name, m in pristine.named_modules()
              if isinstance(m, nn.ModuleList) for i, _ in enumerate(m)]
    if options.prune_hidden:
        names = {m: n for n, m in pristine.named_modules()}
        blocks += [(names[m], "the embedding or LM head it prunes")
                   for m in (pristine.get_input_embeddings(), pristine.get_output_embeddings())
                   if m is not None and names[m] in materializer.modules and materializer.keys(names[m])]
    if not blocks:
        return
    name, what = max(blocks, key=lambda b: materializer.nbytes([b[0]]))
    need = materializer.nbytes([name])
    if need > ledger.budget:
        raise MemoryBudgetError(
            f"max_memory={format_bytes(ledger.budget)} cannot hold {what} ({name} is {format_bytes(need)} in the "
            "checkpoint); streaming materialises up to one layer at a time: raise max_memory")


def _owner(name: str, materializer: Materializer, log: PruneLog) -> tuple[str, str] | None:
    """``(member, local key)`` whose logged prunes shape checkpoint tensor ``name``; None if none do."""
    for state_name, stored in materializer.aliases.items():
        if stored != name:
            continue
        if state_name in log.steps:
            return state_name, ""
        module, _, local = state_name.rpartition(".")
        if module in log.steps:
            return module, local
    return None


def _layout(checkpoint: Checkpoint, model: nn.Module, materializer: Materializer,
            log: PruneLog) -> dict[str, list[Entry]]:
    """Every output shard's entries, in the source's files and order, shaped as the pruned meta model.

    A tensor the source lacks (a bias compensation created) goes right after its layer's weight,
    in the weight's file and dtype.
    """
    state = model.state_dict(keep_vars=True)
    created: dict[str, list[str]] = {}
    for name in state:
        if name not in materializer.aliases:
            module = name.rpartition(".")[0]
            weight = materializer.aliases.get(f"{module}.weight")
            if module not in log.steps or weight is None:
                raise DepgraphError(f"the pruned model has {name}, which neither the checkpoint nor a logged "
                                    "change of its layer provides")
            created.setdefault(weight, []).append(name)
    layout: dict[str, list[Entry]] = {}
    for file in checkpoint.files:
        entries = []
        for name in checkpoint.names_in(file):
            info = checkpoint.tensors[name]
            shape = tuple(state[name].shape)
            owner = _owner(name, materializer, log)
            nbytes = _numel(shape) * info.torch_dtype.itemsize
            if owner is None:
                if shape != info.shape:
                    raise DepgraphError(f"{name} changed shape {info.shape} -> {shape} without a logged prune")
                entries.append(Entry(name, info.dtype, shape, nbytes,
                                     lambda n=name: checkpoint.raw_chunks(n, _COPY_CHUNK)))
            else:
                entries.append(Entry(name, info.dtype, shape, nbytes,
                                     lambda o=owner, n=name: _pruned_bytes(materializer, o, n)))
            for new in created.get(name, ()):
                module, _, local = new.rpartition(".")
                shape = tuple(state[new].shape)
                entries.append(Entry(new, info.dtype, shape, _numel(shape) * info.torch_dtype.itemsize,
                                     lambda o=(module, local), n=new: _pruned_bytes(materializer, o, n)))
        layout[file] = entries
    return layout


def _pruned_bytes(materializer: Materializer, owner: tuple[str, str], name: str) -> Iterator[memoryview]:
    member, local = owner
    with materializer.materialized([member], f"writing {name}") as real:
        target = real[member]
        t = target if local == "" else target.state_dict()[local]
        yield memoryview(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy())


def _counted(entries: list[Entry], bar: Any) -> list[Entry]:
    if bar is None:
        return entries

    def wrap(e: Entry) -> Entry:
        def chunks() -> Iterator[Any]:
            for piece in e.chunks():
                yield piece
                bar.update(len(piece) if isinstance(piece, bytes) else piece.nbytes)
        return Entry(e.name, e.dtype, e.shape, e.nbytes, chunks)

    return [wrap(e) for e in entries]


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _plan_hash(checkpoint: Checkpoint, layout: dict[str, list[Entry]], log: PruneLog,
               options: PruneOptions, config: Any, calib: Any = None) -> str:
    """Hash of everything the output bytes depend on: source headers, prunes, layout, config."""
    data = {
        "source": {n: [t.file, t.dtype, list(t.shape), t.begin, t.end] for n, t in sorted(checkpoint.tensors.items())},
        "source_files": {f: (checkpoint.folder / f).stat().st_size for f in checkpoint.files},
        "prunes": log.digest(),
        "layout": {f: [[e.name, e.dtype, list(e.shape)] for e in es] for f, es in layout.items()},
        "options": options.describe(),
        "config": config.to_json_string(use_diff=False),
        "calib": _calib_digest(calib),  # compensated values depend on the data, not only on the positions
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _calib_digest(calib: Any) -> str | None:
    if calib is None:
        return None
    digest = hashlib.sha256()
    for batch in calib if isinstance(calib, (list, tuple)) else [calib]:
        items = sorted(batch.items()) if isinstance(batch, dict) else [("", batch)]
        for key, t in items:
            digest.update(key.encode())
            if isinstance(t, torch.Tensor):
                digest.update(str((t.dtype, tuple(t.shape))).encode())
                digest.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
            else:
                digest.update(repr(t).encode())
    return digest.hexdigest()


def _write_metadata(checkpoint: Checkpoint, out: Path, model: nn.Module, layout: dict[str, list[Entry]]) -> None:
    """config.json (synced to the pruned sizes), the shard index, and the source's other files."""
    model.config.save_pretrained(out)
    if checkpoint.sharded:
        total = sum(e.nbytes for es in layout.values() for e in es)
        index = {"metadata": {**checkpoint.index_metadata, "total_size": total},
                 "weight_map": {e.name: f for f, es in layout.items() for e in es}}
        (out / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    for path in checkpoint.folder.iterdir():
        if path.is_file() and path.name not in ("config.json", INDEX_NAME, MANIFEST_NAME) \
                and not path.name.endswith((".safetensors", ".partial")):
            shutil.copy2(path, out / path.name)


# -- in memory --------------------------------------------------------------------------------------
def _prune_in_memory(src: Path, out: Path, options: PruneOptions, total: int, calib: Any,
                     calib_memory: int | str | None) -> StreamReport:
    from transformers import AutoModelForCausalLM

    from ..integrations.transformers import check_config

    report = StreamReport(output=str(out), mode="memory", checkpoint_bytes=total, bytes_read=total)
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(src, dtype="auto").eval()
    report.params_before = sum(p.numel() for p in model.parameters())
    criterion = options.make_importance()
    if options.data_aware:
        with torch.no_grad():
            criterion.calibrate(model, calib)
    pruner = options.make_pruner(model, example_inputs("cpu"), criterion)
    check_coverage(pruner, model, options.ratio, options.ignored_layers(model))
    lstsq_layers = _lstsq_layers(options, pruner, calib_memory)
    if options.compensation is not None:
        from ..importance import BiasMean, LeastSquares

        with torch.no_grad():
            source = _compensation_source(options, model, lstsq_layers, criterion, calib)
        mode = BiasMean(source) if options.compensation == "bias" else LeastSquares(source, options.damping)
        mode.enable(pruner.DG, lambda: None)
    report.seconds["plan"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner.step()
        check_config(model)
    report.groups_pruned = len(pruner.pruning_history())
    report.seconds["score"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    model.save_pretrained(out)
    report.params_after = sum(p.numel() for p in model.parameters())
    report.bytes_written = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    report.peak_materialized = total
    report.peak_rss = peak_rss()
    report.seconds["write"] = time.perf_counter() - t2
    return report


def _bar(enabled: bool, desc: str, total: int | None, unit: str) -> Any:
    """A tqdm bar as a context manager, or a do-nothing one (progress off, or tqdm not installed)."""
    import contextlib

    if enabled:
        try:
            from tqdm.auto import tqdm

            return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "B", leave=False)
        except ImportError:
            pass
    return contextlib.nullcontext(None)
