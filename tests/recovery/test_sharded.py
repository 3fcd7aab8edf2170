"""``depgraph recover`` under an FSDP launch configuration, two CPU processes (gloo).

accelerate 1.x runs FSDP only on accelerator devices: on CPU it turns an FSDP
launch into DDP (``MULTI_CPU``) and drops the plugin. Two kinds of run here:

- ``fsdp1`` / ``fsdp2``: ``cpu_fsdp/sitecustomize.py`` (see its docstring) lets
  accelerate select FSDP on the CPU processes, so the student really is sharded
  (FSDP1 ``FullyShardedDataParallel``, FSDP2 ``fully_shard`` DTensors), trained,
  gathered with ``accelerator.get_state_dict`` and saved from the main process;
- ``as-launched``: the same configuration without it, as a user's CPU machine runs
  it: DDP, with recover's warning that FSDP was asked for and not run.

Each run matches hidden states too (``--hidden-weight``), so the projections train
under the sharding. Slow: each launch takes 15-35 s (two processes starting
torch, accelerate and transformers).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import depgraph

from ._models import write_llama_folders, write_text

pytest.importorskip("accelerate")
pytest.importorskip("transformers")

ROOT = Path(depgraph.__file__).resolve().parents[1]
SHIM = Path(__file__).resolve().parent / "cpu_fsdp"

_V1 = """  fsdp_sharding_strategy: FULL_SHARD
  fsdp_use_orig_params: true
"""


def _config(version: int, port: int) -> str:
    """An ``accelerate config`` file for FSDP on one machine, two processes."""
    return f"""compute_environment: LOCAL_MACHINE
distributed_type: FSDP
fsdp_config:
  fsdp_version: {version}
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_transformer_layer_cls_to_wrap: LlamaDecoderLayer
  fsdp_state_dict_type: FULL_STATE_DICT
  fsdp_offload_params: false
  fsdp_sync_module_states: false
  fsdp_cpu_ram_efficient_loading: false
{_V1 if version == 1 else ""}machine_rank: 0
main_process_port: {port}
mixed_precision: 'no'
num_machines: 1
num_processes: 2
rdzv_backend: static
same_network: true
use_cpu: false
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# run in a fresh interpreter: the saved folder must load without anything of the training process
_INSPECT = """
import json, sys, torch
from transformers import AutoModelForCausalLM
out, student = (AutoModelForCausalLM.from_pretrained(p).eval() for p in sys.argv[1:3])
a, b = out.state_dict(), student.state_dict()
print(json.dumps({
    "keys_match": sorted(a) == sorted(b),
    "shapes_match": all(a[k].shape == b[k].shape for k in a if k in b),
    "finite": all(bool(torch.isfinite(v).all()) for v in a.values()),
    "max_change": max(float((a[k] - b[k]).abs().max()) for k in a if k in b),
    "hidden_size": out.config.hidden_size,
    "intermediate_size": out.config.intermediate_size,
}))
"""


def _launch(tmp_path: Path, version: int, shimmed: bool, *extra: str) -> tuple[subprocess.CompletedProcess, str]:
    """``depgraph recover`` on two CPU processes under an FSDP configuration (the shim: really sharded; else
    accelerate runs it as DDP); the finished run and its output for failure messages."""
    teacher, pruned = write_llama_folders(tmp_path)
    write_text(tmp_path / "train.txt")
    config = tmp_path / "fsdp.yaml"
    config.write_text(_config(version, _free_port()), encoding="utf-8")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "-m", "depgraph",
           "recover", str(pruned), "--teacher", str(teacher), "--data", str(tmp_path / "train.txt"),
           "--seq-len", "16", "--batch-size", "2", "--steps", "8", "--lr", "1e-2",
           "--eval-batches", "2", "--output", str(tmp_path / "recovered"), "--no-progress", "--plain", *extra]
    paths = [str(SHIM)] if shimmed else []
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
           "DEPGRAPH_TEST_CPU_FSDP": "1" if shimmed else "0",
           "PYTHONPATH": os.pathsep.join([*paths, str(ROOT), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    return run, f"stdout:\n{run.stdout[-3000:]}\nstderr:\n{run.stderr[-3000:]}"  # every failure shows both


@pytest.mark.slow
@pytest.mark.parametrize(("case", "version"), [("fsdp1", 1), ("fsdp2", 2), ("as-launched", 2)])
def test_recover_under_an_fsdp_launch_on_two_cpu_processes(tmp_path, case, version) -> None:
    shimmed = case != "as-launched"
    run, printed = _launch(tmp_path, version, shimmed, "--hidden-weight", "1")
    out, pruned = tmp_path / "recovered", tmp_path / "pruned"
    assert run.returncode == 0, printed
    if shimmed:  # both processes wrapped the student: FSDP1's wrapper class, or FSDP2's FSDP<class>
        wrapper = "FullyShardedDataParallel" if version == 1 else "FSDP_Student"
        assert run.stderr.count(f"cpu-fsdp: prepared {wrapper}") == 2, printed
        assert "on 2 processes (FSDP, 1 CPU thread each)" in run.stdout, printed
    else:
        assert "on 2 processes (DDP, 1 CPU thread each)" in run.stdout, printed
        assert run.stderr.count("the launch configuration asks for FSDP, but accelerate runs MULTI_CPU") == 1, printed
    assert run.stdout.count("distillation gap") == 1, printed  # one table: the main process reports and saves

    rows = {m.group(1).strip(): (float(m.group(2)), float(m.group(3)))
            for m in re.finditer(r"^(.+?)\s+(\d+\.\d+)\s+(\d+\.\d+)\s*$", run.stdout, flags=re.M)}
    kd_before, kd_after = rows["distillation gap (KL to teacher)"]
    first, last = rows["training loss (first / last step)"]
    assert kd_after < kd_before and last < first, printed

    inspect = subprocess.run([sys.executable, "-c", _INSPECT, str(out), str(pruned)], capture_output=True,
                             text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert inspect.returncode == 0, inspect.stderr[-3000:]
    got = json.loads(inspect.stdout.strip().splitlines()[-1])
    assert got["keys_match"] and got["shapes_match"] and got["finite"], got
    assert got["max_change"] > 1e-4, got  # it trained
    assert got["hidden_size"] == 16 and got["intermediate_size"] == 32, got  # the pruned widths (teacher: 32 / 64)


@pytest.mark.slow
def test_keep_best_and_compile_on_two_ddp_processes_and_their_refusals_under_fsdp(tmp_path) -> None:
    """Both processes measure the same reduced held-out loss, so they keep the same step, with compiled
    steps under DDP; under real sharding the weights cannot be copied whole, nor averaged, nor the student
    compiled: refused before training."""
    for sub in ("ddp", "fsdp", "compiled", "ema"):
        (tmp_path / sub).mkdir()
    write_text(tmp_path / "held.txt", 200, seed=8)
    held = ("--eval-data", str(tmp_path / "held.txt"), "--eval-every", "2", "--keep-best")
    run, printed = _launch(tmp_path / "ddp", 2, False, *held, "--compile")
    assert run.returncode == 0, printed
    assert "on 2 processes (DDP, 1 CPU thread each, compiled)" in run.stdout, printed
    assert run.stdout.count("held-out measures during training") == 1, printed
    assert run.stdout.count("kept the weights of step") == 1, printed
    run, printed = _launch(tmp_path / "fsdp", 2, True, *held)
    assert run.returncode == 1 and "keep_best copies the student's weights, which FSDP / DeepSpeed shard" in run.stderr, printed
    run, printed = _launch(tmp_path / "compiled", 2, True, "--compile")
    assert run.returncode == 1 and "compile is for one process or DDP" in run.stderr, printed
    run, printed = _launch(tmp_path / "ema", 2, True, "--ema-decay", "0.9")
    assert run.returncode == 1 and "ema_decay averages the student's whole weights" in run.stderr, printed
