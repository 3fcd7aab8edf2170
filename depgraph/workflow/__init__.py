"""From a real checkpoint to a smaller model: sources, calibration data, targets, saving, reports.

The library side of ``depgraph prune``: each module does one step, and the
command line is a thin layer over them.

    inputs             InputSpec: what a model reads (images, token ids), shared by the steps
    sources            load_source: torchvision/timm + weights, Hugging Face folders, saved modules
    calibration_data   load_calibration: batches from an image folder, text, .jsonl or Python
    recipes            criterion + compensation by name, per-family defaults, calibrated
    calib_memory       whether reconstruction's Gram matrices fit: sizes the language-model default
    keep               hf_prune_settings: layers kept whole + attention settings (shared with streaming)
    search, targets    the ratio that meets macs= / params= / latency= (fraction kept)
    save               save_pretrained folder or tp.save file, with how to load it back
    report, progress   the before/after report (table, .md, .json, .png) and stage progress
    prune              prune_model: the steps in order, every check before the long work

Example:
    >>> from depgraph.workflow import load_source, prune_model
    >>> src = load_source("resnet18", weights="resnet18.pth")
    >>> result = prune_model(src, target="macs=0.5", calib="val_images/", output="r18_pruned.pth")
"""

from .calibration_data import check_calibration, load_calibration
from .inputs import InputSpec, input_spec_for_checkpoint
from .keep import HFPruneSettings, hf_prune_settings
from .prune import PruneResult, prune_model
from .recipes import COMPENSATIONS, CRITERIA, Recipe, resolve_recipe
from .report import PruneReport
from .save import check_output, save_pruned
from .search import SearchResult, search_ratio
from .sources import Source, find_classifier, load_source
from .targets import Target, TargetResult, measure, prune_to_target

__all__ = [
    # what a model reads, and calibration data for it
    "InputSpec",
    "input_spec_for_checkpoint",
    "load_calibration",
    "check_calibration",
    # sources
    "Source",
    "load_source",
    "find_classifier",
    # recipes and targets
    "Recipe",
    "resolve_recipe",
    "CRITERIA",
    "COMPENSATIONS",
    "HFPruneSettings",
    "hf_prune_settings",
    "Target",
    "TargetResult",
    "measure",
    "prune_to_target",
    "SearchResult",
    "search_ratio",
    # the whole prune, its output and report
    "prune_model",
    "PruneResult",
    "PruneReport",
    "check_output",
    "save_pruned",
]
