"""``prune_model``: a loaded source -> calibrated criterion -> ratio or target -> verified prune -> saved file.

Order of work (every check that can fail fast runs before the first long step)::

    check    options, recipe, output path, report path, calibration data read and fitted to the model
    size     (language-model default) the Gram matrices reconstruction would hold, against the budget
    measure  params / MACs / latency of the unpruned model
    reach    (target) one prune at the largest ratio, magnitude-scored: an unreachable target fails here
    score    the criterion calibrated on the data (one pass; gradients for Taylor)
    prune    a copy at the ratio, or the ratio search over copies (the source model is never changed)
    verify   depgraph.verify against the unpruned model
    batchnorm  (with data, unless recalibrate_bn=False) BatchNorm statistics re-measured on the calibration data
    save     save_pretrained folder / tp.save file, and the report
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn as nn

from ..errors import OptionError
from .blockwise import cross_block_roots, prune_blockwise, search_stand_in
from .calibration_data import check_calibration, load_calibration
from .keep import HFPruneSettings, hf_prune_settings, named_layers
from .progress import Stages
from .recipes import Recipe, Scoring, build_scoring, choose_by_memory, resolve_recipe
from .report import PruneReport, check_report_path, layer_widths
from .save import check_output, default_format, save_pruned
from .sources import Source
from .targets import Target, TargetResult, measure, prune_to_target

__all__ = ["prune_model", "PruneResult"]


@dataclass
class PruneResult:
    """The pruned model, the report of the run, and where it was saved (None: not saved)."""

    model: nn.Module
    report: PruneReport
    output: Path | None


def prune_model(
    source: Source,
    *,
    ratio: float | None = None,
    target: Target | str | None = None,
    importance: str | None = None,
    compensation: str | None = None,
    global_pruning: bool | None = None,
    round_to: int | None = None,
    head_ratio: float = 0.0,
    prune_hidden: bool = False,
    blockwise: bool = False,
    ignore: Sequence[str] = (),
    calib: Any = None,
    num_samples: int = 32,
    calib_batch_size: int = 8,
    seq_len: int | None = None,
    calib_memory: int | str | None = None,
    recalibrate_bn: bool | None = None,
    output: str | os.PathLike | None = None,
    save_format: str = "auto",
    report: str | os.PathLike | None = None,
    latency: bool = True,
    search_steps: int = 8,
    progress: bool = False,
) -> PruneResult:
    """Prune ``source``'s model to a ratio or a target, verify it, save it in its family's form.

    Args:
        source: from :func:`~depgraph.workflow.load_source` (its model is left unchanged).
        ratio: fraction of channels removed per group (per pruner semantics); or give ``target``.
        target: ``"macs=0.5"`` / ``"params=0.7"`` / ``"latency=0.5"`` (fraction kept) or a :class:`Target`.
        importance: a criterion name (:data:`~depgraph.workflow.recipes.CRITERIA`; default: the family's;
            for a language model with data, reconstruction when it fits ``calib_memory``, else fluctuation).
        compensation: ``"none"``, ``"bias"`` or ``"lstsq"`` (default: the criterion's pairing).
        global_pruning: rank across groups; refused for a ``save_pretrained`` output (per-layer widths).
        round_to: keep channel counts multiples of it (every search trial too).
        head_ratio: (Hugging Face) fraction of attention heads removed per layer; 0 keeps attention.
        prune_hidden: (Hugging Face) also prune the hidden size (the residual stream: embedding, every
            norm, every projection's input or output on it) at ``ratio``, as one group; the vocabulary
            and the task head's outputs are kept. As ``prune_checkpoint(prune_hidden=True)``.
        blockwise: prune the model's stack of blocks (a transformer's layers) one block at a time,
            each calibrated on the outputs of the blocks already pruned
            (:mod:`depgraph.workflow.blockwise`): reconstruction + lstsq per group, holding one
            block's Gram matrices at a time instead of every layer's. Needs ``calib``; groups that
            run through several blocks (a residual stream) are kept whole. The language-model
            default chooses it by itself when one pass does not fit ``calib_memory`` but this does.
        ignore: qualified names of more layers whose outputs are kept.
        calib: calibration data (see :func:`~depgraph.workflow.load_calibration`).
        num_samples: calibration samples read at most.
        calib_batch_size: calibration batch size.
        seq_len: tokens per calibration window (default: the example input's).
        calib_memory: the most memory the calibration statistics may take when the language-model
            default is chosen (``"8GB"`` or bytes; default: half the free memory of the model's device):
            reconstruction + lstsq when its Gram matrices fit, fluctuation + bias otherwise. The
            report says which and why; a named ``importance`` or ``compensation`` is never replaced.
        recalibrate_bn: after the verified prune, re-measure every BatchNorm layer's running
            statistics on the calibration data (:func:`depgraph.utils.recalibrate_batchnorm`).
            Pruning a convolution's inputs makes the statistics of the BatchNorm after it stale,
            which in eval mode costs far more accuracy than the removed channels themselves.
            None (default): whenever ``calib`` is given and the model has BatchNorm layers;
            True: required (an error without data or BatchNorm layers); False: never. The
            outputs then no longer match the unpruned model's, so the verify line is the check
            made before it.
        output: where to save (None: not saved).
        save_format: ``auto`` (the family's), ``hf``, ``depgraph`` or ``pickle``.
        report: ``.md`` / ``.json`` / ``.png`` path of the report (None: not written).
        latency: measure latency before and after (always, for a latency target).
        search_steps: bisection steps of a target search.
        progress: show stages on stderr.

    Returns:
        A :class:`PruneResult`.

    Raises:
        OptionError: ratio and target both or neither, unknown criterion, a data-aware criterion
            without data, ``recalibrate_bn`` without data or BatchNorm layers, ``calib_memory`` not a memory size, global pruning into a ``save_pretrained`` folder, unknown ``ignore`` names,
            ``prune_hidden`` for a model that is not a Hugging Face one, ``blockwise`` with another
            recipe than reconstruction + lstsq per group, without data or with ``prune_hidden``.
        OutputError: the output or report path cannot be written.
        CalibrationDataError: the data cannot be read or does not fit the model.
        TargetUnreachableError: no ratio meets the target.
        DepgraphError: the prune failed (the source model is unchanged).

    Example:
        >>> src = load_source("resnet18", weights="resnet18.pth", input_size=64)
        >>> result = prune_model(src, target="macs=0.5", calib="val_images/", output="r18_pruned.pth")
        >>> print(result.report.result)
    """
    from .. import verify as verify_fn

    stages = Stages(progress)
    if (ratio is None) == (target is None):
        raise OptionError("give a pruning ratio or a target (e.g. target='macs=0.5'), exactly one of them")
    if ratio is not None and not 0.0 <= ratio < 1.0:
        raise OptionError(f"ratio must be in [0, 1), got {ratio}")
    goal = Target.parse(target) if isinstance(target, str) else target
    if not 0.0 <= head_ratio < 1.0:
        raise OptionError(f"head_ratio must be in [0, 1), got {head_ratio}")
    if prune_hidden and source.family != "hf":
        raise OptionError(f"prune_hidden prunes the hidden size of a Hugging Face model; {source.name} is a "
                          f"{source.family} model, whose widths every group already prunes")
    if round_to is not None and round_to < 1:
        raise OptionError(f"round_to must be a positive integer, got {round_to}")
    if blockwise and prune_hidden:
        raise OptionError("block-by-block pruning prunes each block's own groups; the hidden size runs through "
                          "every block: prune it in one pass (drop blockwise)")
    recipe = resolve_recipe(importance, compensation, global_pruning, language_model=source.is_language_model,
                            has_data=calib is not None, blockwise=blockwise)
    if recalibrate_bn:
        _check_recalibration(source, calib)
    elif recalibrate_bn is None:
        recalibrate_bn = calib is not None and _has_batchnorm(source)
    if calib_memory is not None:
        from ..streaming.memory import parse_size

        parse_size(calib_memory)  # a bad size fails here; the budget keeps the user's spelling
    fmt = default_format(source, save_format)
    if fmt == "hf" and recipe.global_pruning:
        raise OptionError("global pruning gives each layer its own width, which a Hugging Face config cannot "
                          "describe (save_pretrained would not reload it): prune per group (drop --global), or "
                          "save with the depgraph format (tp.save / tp.load)")
    out = check_output(output, fmt, source.folder) if output is not None else None
    if report is not None:
        check_report_path(report)
    model, example = source.model, source.example_inputs
    hf = hf_prune_settings(model, head_ratio=head_ratio, ignore=ignore, prune_hidden=prune_hidden) \
        if source.family == "hf" else None
    keep = list(hf.ignored_layers) if hf is not None else list(source.keep) + named_layers(model, ignore)

    batches, calibration = None, "none"
    if calib is not None:
        with stages.stage("calibration data"):
            batches = load_calibration(calib, source.spec, num_samples=num_samples, batch_size=calib_batch_size,
                                       seq_len=seq_len)
            batches = [_to_device(b, model) for b in batches]
            check_calibration(model, batches, source.spec)
        calibration = f"{sum(_count(b, source) for b in batches)} samples from {calib if isinstance(calib, (str, Path)) else type(calib).__name__}"

    consumers = None
    if recipe.sized:
        from .calib_memory import hidden_state_bytes, plan_reconstruction_memory

        with stages.stage("size", "memory of reconstruction + lstsq"):
            stream = None if prune_hidden or recipe.global_pruning else hidden_state_bytes(model, batches)
            memory, consumers = plan_reconstruction_memory(model, example, keep, calib_memory, _attention(hf),
                                                           stream)
            recipe = choose_by_memory(recipe, memory)
    spanning: list[nn.Module] = []
    if recipe.blockwise:
        spanning = cross_block_roots(model, keep, example, _attention(hf))
        keep = list(dict.fromkeys([*keep, *spanning]))

    with stages.stage("measure"):
        want_latency = latency or (goal is not None and goal.metric == "latency")
        before = measure(model, example, latency=want_latency)
    make_pruner = _pruner_factory(source, recipe, round_to, hf)
    notes = _notes(source, recipe)
    if recipe.blockwise and spanning:
        notes.append(f"block by block prunes the groups inside one block; {len(spanning)} group(s) across blocks "
                     f"(e.g. the residual stream) kept whole: {', '.join(_names(model, spanning)[:3])}")
    if calib is None and source.weights != "random" and _has_batchnorm(source):
        notes.append("BatchNorm statistics are the unpruned model's, stale after the prune (eval-mode quality "
                     "understated until recovery): give calibration data (--calib) to re-measure them")

    with _pruning_warnings_silenced():
        if goal is not None and goal.kept < 1.0:
            with stages.stage("reach", f"can {goal} be met?"):  # before the calibration pass
                from ..importance import GroupMagnitudeImportance

                plain = Scoring(GroupMagnitudeImportance(p=2), None)
                prune_to_target(model, plain, keep, make_pruner, example, goal, before, steps=0)
    scoring = None
    if not recipe.blockwise:  # block by block scores inside its prune
        with stages.stage("score", recipe.describe()):
            scoring = build_scoring(recipe, model, batches, example, keep, consumers, _attention(hf))
    found: TargetResult | None = None
    with _pruning_warnings_silenced():
        if goal is not None:
            searched, search_scoring, search_keep = search_stand_in(model, keep, example, _attention(hf)) \
                if recipe.blockwise else (model, scoring, keep)
            with stages.stage("search", str(goal)):
                pruned, _, found = prune_to_target(
                    searched, search_scoring, search_keep, make_pruner, example, goal, before, steps=search_steps,
                    on_trial=lambda r, k: stages.update(f"search {goal}: ratio {r:.3f} keeps {k:.3f}"))
            del searched
        if recipe.blockwise:
            pruned = None  # the stand-in's: only its ratio is used (and its memory is freed first)
            chosen = found.ratio if found is not None else float(ratio)  # type: ignore[arg-type]
            with stages.stage("score", f"{recipe.describe()}, ratio {chosen:.3f}"):
                pruned = prune_blockwise(model, keep, batches, example, make_pruner, chosen, _attention(hf),
                                         on_block=lambda i, n: stages.update(f"block by block: {i + 1} of {n}"))
        elif goal is None:
            with stages.stage("prune", f"ratio {ratio}"):
                pruned, s2, k2 = scoring.copy_with(model, keep)
                make_pruner(pruned, s2, k2, ratio).step()
    with stages.stage("verify"):
        checked = verify_fn(model, pruned, example)
        ok = bool(checked.ok) or (recipe.compensation != "none" and checked.shapes_match)
        after = measure(pruned, example, latency=want_latency)  # sizes and speed: the statistics change neither
    batchnorm = "unchanged"
    if recalibrate_bn:
        from ..utils.batchnorm import recalibrate_batchnorm

        with stages.stage("batchnorm", "re-estimating BatchNorm statistics"):
            count = recalibrate_batchnorm(pruned, batches)
        batchnorm = f"running statistics of {count} BatchNorm layers re-estimated on the calibration data"
    how, saved = "", None
    if out is not None:
        with stages.stage("save", os.fspath(out)):
            how = save_pruned(pruned, source, out, fmt)
            saved = out
    result_text = found.describe() if found is not None else f"ratio {ratio}"
    rep = PruneReport(
        model=source.name, family=source.family, task=source.task, weights=source.weights,
        criterion=recipe.describe(), why=recipe.why, target=str(goal) if goal is not None else f"ratio={ratio}",
        result=result_text, ratio=found.ratio if found is not None else float(ratio),  # type: ignore[arg-type]
        round_to=round_to, before=before, after=after, verify=_verify_line(checked, recipe), verified=ok,
        device=str(_device(model)), calibration=calibration, batchnorm=batchnorm, kept_layers=_names(model, keep), layers=layer_widths(model, pruned),
        seconds=stages.seconds, output=os.fspath(saved) if saved is not None else None, how_to_load=how, notes=notes)
    if report is not None:
        rep.save(report)
    return PruneResult(pruned, rep, saved)


def _has_batchnorm(source: Source) -> bool:
    from ..utils.batchnorm import batchnorm_layers

    return bool(batchnorm_layers(source.model))


def _check_recalibration(source: Source, calib: Any) -> None:
    """``recalibrate_bn`` needs data to measure on and BatchNorm layers to update."""
    if calib is None:
        raise OptionError("recalibrate_bn re-estimates BatchNorm statistics on calibration data: give calib= "
                          "(--calib) too")
    if not _has_batchnorm(source):
        raise OptionError(f"recalibrate_bn: {source.name} has no BatchNorm layer with running statistics "
                          f"to re-estimate")


def _pruner_factory(source: Source, recipe: Recipe, round_to: int | None, hf: HFPruneSettings | None) -> Any:
    from ..pruner import BasePruner

    extra = _attention(hf)

    def make(model: nn.Module, scoring: Scoring, keep: Sequence[nn.Module], ratio: float) -> Any:
        return BasePruner(model, source.example_inputs, scoring.importance, pruning_ratio=ratio,
                          global_pruning=recipe.global_pruning, round_to=round_to, ignored_layers=list(keep),
                          compensation=scoring.compensation, **extra)

    return make


def _attention(hf: HFPruneSettings | None) -> dict[str, Any]:
    """Hugging Face: the attention settings both checkpoint paths share (heads whole, head size kept)."""
    return {k: v for k, v in hf.pruner_kwargs().items() if k != "ignored_layers"} if hf is not None else {}


def _names(model: nn.Module, layers: Sequence[nn.Module]) -> list[str]:
    names = {m: n for n, m in model.named_modules()}
    return list(dict.fromkeys(names[m] for m in layers if m in names))


def _notes(source: Source, recipe: Recipe) -> list[str]:
    notes = []
    if source.weights == "random":
        notes.append("random weights: the figures show the architecture, not accuracy (give --weights / weights=)")
    if source.is_language_model and recipe.importance in ("l1", "l2", "lamp", "fpgm"):
        notes.append("weight magnitude measured far worse than data-aware criteria on language models "
                     "(benchmarks/quality: SmolLM2); give calibration text")
    return notes


def _verify_line(result: Any, recipe: Recipe) -> str:
    if recipe.compensation != "none" and result.shapes_match:
        return (f"verify: {recipe.compensation} compensation changes the kept weights, so exactness is not "
                f"expected; output shapes match, max diff {result.max_diff:.3g}")
    if result.applies or not result.shapes_match:
        return str(result)
    return (f"verify: exactness does not apply ({'; '.join(result.reasons[:2])}); output shapes match, "
            f"max diff {result.max_diff:.3g}")


@contextlib.contextmanager
def _pruning_warnings_silenced() -> Iterator[None]:
    """No UserWarnings from the pruning passes: frozen-op notes are summarised by verify, and a config that
    cannot hold per-layer widths is the save format's concern (``hf`` refuses it by name, ``depgraph`` stores
    them), so neither is news to a caller of prune_model."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def _device(model: nn.Module) -> Any:
    return next((p.device for p in model.parameters()), "cpu")


def _to_device(batch: Any, model: nn.Module) -> Any:
    device = _device(model)
    if isinstance(batch, dict):
        return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
    return batch.to(device) if hasattr(batch, "to") else batch


def _count(batch: Any, source: Source) -> int:
    x = source.spec.unwrap(batch)
    return int(x.shape[0]) if x is not None and x.dim() > 0 else 1
