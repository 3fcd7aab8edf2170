"""Export of pruned models to deployable programs (ONNX, ``torch.export``), each checked against eager.

``onnx`` / ``onnxruntime`` are imported only when an ONNX export runs (the ``export`` extra).
"""

from __future__ import annotations

from .check import ExportResult
from .profile import onnx_session, profile_onnx
from .to_onnx import export_onnx
from .to_program import export_program

__all__ = ["export_onnx", "export_program", "ExportResult", "profile_onnx", "onnx_session"]
