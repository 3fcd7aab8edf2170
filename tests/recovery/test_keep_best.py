"""Held-out measures during recovery (``eval_every``) and ending on the best of them (``keep_best``).

The scenario that needs it: a pruned tiny Llama trained on eight random token sequences
memorises them, so its held-out next-token loss falls at first and then rises. What is
asserted: the measures are taken at the right steps, the step kept is the arg-min of the
held-out loss, the returned weights are exactly that step's, a run that keeps improving
ends on its last step, and every misuse is refused before the student changes.
"""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch

import depgraph as tp
from depgraph.errors import OptionError, RecoveryError

from ._models import llama_pair, token_data, write_llama_folders, write_text
from .test_recover import _same_weights

pytest.importorskip("accelerate")
pytest.importorskip("transformers")

_MEMORISE = dict(steps=40, lr=3e-2, batch_size=4, kd_weight=0.0, eval_every=5, eval_batches=4, shuffle=False,
                 progress=False)


def _held_out_task_loss(model: torch.nn.Module, data: list[dict]) -> float:
    """The mean next-token loss over ``data`` in batches of 4, as recover's evaluation measures it."""
    from depgraph.recovery.losses import task_loss

    model.eval()
    with torch.no_grad():
        losses = [task_loss(model(input_ids=ids).logits, ids, causal_lm=True)
                  for ids in torch.stack([d["input_ids"] for d in data]).split(4)]
    return float(torch.stack(losses).mean())


def test_keep_best_ends_on_the_lowest_held_out_loss_with_that_steps_weights() -> None:
    teacher, student = llama_pair()
    train, held = token_data(8), token_data(16, seed=7)
    seen = {}
    result = tp.recover(student, teacher, train, eval_data=held, keep_best=True,
                        on_step=lambda step, m: seen.__setitem__(step, copy.deepcopy(m.state_dict())), **_MEMORISE)
    steps = [e.step for e in result.evaluations]
    assert steps == [0, 5, 10, 15, 20, 25, 30, 35, 40]
    losses = [e.task for e in result.evaluations]
    best = min(range(len(losses)), key=lambda i: (losses[i], i))
    assert 0 < result.best_step < 40 and result.best_step == steps[best]  # it memorised: the end is worse
    assert losses[-1] > losses[best] + 0.05, losses
    kept = student.state_dict()  # the student is trained in place: it now holds the kept weights
    assert all(torch.equal(kept[k], seen[result.best_step][k]) for k in kept)
    assert result.task_after == pytest.approx(losses[best]) and result.kd_after == result.evaluations[best].kd
    assert _held_out_task_loss(result.model, held) == pytest.approx(losses[best], rel=1e-5)


def test_a_run_that_keeps_improving_ends_on_its_last_step_and_eval_every_alone_changes_nothing() -> None:
    teacher, student = llama_pair()
    train, held = token_data(32), token_data(16, seed=7)
    opts = dict(steps=12, lr=1e-2, batch_size=4, eval_batches=2, shuffle=False, progress=False)
    plain = tp.recover(copy.deepcopy(student), teacher, train, eval_data=held, **opts)
    measured = tp.recover(copy.deepcopy(student), teacher, train, eval_data=held, eval_every=4, **opts)
    best = tp.recover(copy.deepcopy(student), teacher, train, eval_data=held, eval_every=4, keep_best=True, **opts)
    assert [e.step for e in measured.evaluations] == [0, 4, 8, 12] and measured.best_step is None
    assert len(plain.evaluations) == 2  # before and after
    assert measured.losses == plain.losses and _same_weights(measured.model, plain.model)  # measuring is passive
    assert [e.task for e in measured.evaluations] == sorted([e.task for e in measured.evaluations], reverse=True)
    assert best.best_step == 12 and _same_weights(best.model, plain.model)


def test_without_labels_the_distillation_gap_decides() -> None:
    from ._models import cnn_pair, image_data

    teacher, student = cnn_pair()
    unlabelled = torch.utils.data.TensorDataset(image_data(teacher).tensors[0])
    held = torch.utils.data.TensorDataset(image_data(teacher, n=16).tensors[0])
    result = tp.recover(student, teacher, unlabelled, eval_data=held, steps=6, lr=1e-3, batch_size=8, eval_every=2,
                        keep_best=True, eval_batches=1, progress=False)
    assert all(e.task is None for e in result.evaluations) and result.task_after is None
    gaps = [e.kd for e in result.evaluations]
    assert result.kd_after == min(gaps) and result.best_step == result.evaluations[gaps.index(min(gaps))].step


def test_misuse_is_refused_before_the_student_changes() -> None:
    teacher, student = llama_pair()
    before = copy.deepcopy(student)
    train, held = token_data(8), token_data(8, seed=7)
    with pytest.raises(OptionError, match="keep_best chooses on held-out data: give eval_data"):
        tp.recover(student, teacher, train, eval_every=2, keep_best=True, progress=False)
    with pytest.raises(OptionError, match="set eval_every > 0"):
        tp.recover(student, teacher, train, eval_data=held, keep_best=True, progress=False)
    with pytest.raises(OptionError, match=r"eval_every must be an integer >= 0, got -1"):
        tp.recover(student, teacher, train, eval_every=-1, progress=False)
    with pytest.raises(OptionError, match="keep_best must be True or False, got 'yes'"):
        tp.recover(student, teacher, train, eval_data=held, eval_every=2, keep_best="yes", progress=False)
    assert _same_weights(student, before)
    assert RecoveryError is not OptionError  # the sharded refusal is a RecoveryError (tests/recovery/test_sharded.py)


def test_cli_prints_the_measures_and_refuses_keep_best_without_eval_data_before_loading(tmp_path) -> None:
    teacher, pruned = write_llama_folders(tmp_path)
    write_text(tmp_path / "train.txt", 600)
    write_text(tmp_path / "held.txt", 200, seed=8)
    base = [sys.executable, "-m", "depgraph", "recover", str(pruned), "--data", str(tmp_path / "train.txt"),
            "--seq-len", "8", "--batch-size", "2", "--steps", "6", "--lr", "1e-2", "--eval-batches", "2",
            "--no-progress", "--plain"]
    refused = subprocess.run([*base, "--teacher", str(tmp_path / "no-such-teacher"), "--keep-best", "--eval-every",
                              "2", "--output", str(tmp_path / "x")], capture_output=True, text=True, timeout=300)
    assert refused.returncode == 1 and "keep_best chooses on held-out data" in refused.stderr, refused.stderr
    assert not (tmp_path / "x").exists()
    out = tmp_path / "recovered"
    run = subprocess.run([*base, "--teacher", str(teacher), "--eval-data", str(tmp_path / "held.txt"),
                          "--eval-every", "2", "--keep-best", "--output", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    table = run.stdout.split("held-out measures during training", 1)[1]
    assert [line.split()[0] for line in table.strip().splitlines()[2:6]] == ["0", "2", "4", "6"], run.stdout
    assert table.count("kept") == 2 and "kept the weights of step" in run.stdout, run.stdout
    assert (out / "config.json").is_file()


def test_compile_option_is_checked() -> None:
    teacher, student = llama_pair()
    with pytest.raises(OptionError, match="compile must be True or False, got 'inductor'"):
        tp.recover(student, teacher, token_data(8), compile="inductor", progress=False)


@pytest.mark.slow
def test_compiled_steps_train_as_eager_ones_and_leave_the_models_plain() -> None:
    """``compile=True`` on a pruned tiny Llama (inductor on the CPU): the same losses and measures as eager
    to rounding, with keep_best, held-out measures and the moving average on (its swaps in and out between
    compiled calls); the caller's student and teacher come back as the plain modules they were, the student
    trained."""
    teacher, student = llama_pair()
    train, held = token_data(32), token_data(8, seed=7)
    opts = dict(steps=6, lr=1e-2, batch_size=4, eval_batches=2, eval_every=3, keep_best=True, ema_decay=0.5,
                shuffle=False, progress=False)
    eager = tp.recover(copy.deepcopy(student), teacher, train, eval_data=held, **opts)
    compiled = tp.recover(student, teacher, train, eval_data=held, compile=True, **opts)
    assert compiled.losses == pytest.approx(eager.losses, rel=1e-4)
    assert [e.task for e in compiled.evaluations] == pytest.approx([e.task for e in eager.evaluations], rel=1e-4)
    assert compiled.best_step == eager.best_step
    assert compiled.model is student and type(student).__name__ == "LlamaForCausalLM"
    assert not hasattr(teacher, "_orig_mod") and not any(k.startswith("_orig_mod") for k in student.state_dict())
    for a, b in zip(compiled.model.parameters(), eager.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
