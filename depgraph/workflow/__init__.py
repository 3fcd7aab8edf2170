"""From a real checkpoint to a smaller model: sources, calibration data, targets, saving, reports.

The library side of ``depgraph prune``: each module does one step, and the
command line is a thin layer over them.

    inputs             InputSpec: what a model reads (images, token ids), shared by the steps
    calibration_data   load_calibration: batches from an image folder, text, .jsonl or Python
"""

from .calibration_data import check_calibration, load_calibration
from .inputs import InputSpec, input_spec_for_checkpoint

__all__ = ["InputSpec", "input_spec_for_checkpoint", "load_calibration", "check_calibration"]
