"""The moving average of the weights during a recovery (``ema_decay`` / ``--ema-decay``).

What is asserted: the decay's ramp; the average itself (trainable weights and floating-point
buffers, not frozen weights or integer buffers) and its swap in and out, which keeps the
same ``Parameter`` objects and undoes itself on error; that a recovery with it trains
exactly as one without it (the same losses) and ends on, measures, keeps and checkpoints the
average of those very steps, computed here by hand; the option's checks, before the student
changes; and the command line.
"""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

import depgraph as tp
from depgraph.errors import OptionError
from depgraph.recovery.ema import WeightAverage, ema_factor

from ._models import llama_pair, token_data, write_llama_folders, write_text
from .test_keep_best import _held_out_task_loss
from .test_recover import _same_weights

pytest.importorskip("accelerate")
pytest.importorskip("transformers")


def test_the_decay_ramps_up_from_a_tenth_to_the_one_asked_for() -> None:
    assert ema_factor(0.99, 0) == pytest.approx(0.1)
    assert ema_factor(0.99, 10) == pytest.approx(11 / 20)
    assert ema_factor(0.99, 890) == 0.99 and ema_factor(0.5, 0) == pytest.approx(0.1) and ema_factor(0.5, 10) == 0.5


def test_the_average_follows_the_weights_and_swaps_in_and_out_without_copying() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    model[2].weight.requires_grad_(False)  # frozen: not averaged
    start = copy.deepcopy(model.state_dict())
    average = WeightAverage(model, 0.5)
    assert len(average.tensors) == 2 + 1 + 2 + 2  # weights and biases trained, running mean / var; no count
    expected = {k: v.clone() for k, v in start.items()}
    for step in range(3):
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(1.0 + step)
            model[1].running_mean.add_(2.0)
            model[1].num_batches_tracked.add_(1)
        average.update()
        f = ema_factor(0.5, step)
        current = model.state_dict()
        for k in expected:
            if k in ("2.weight", "1.num_batches_tracked"):
                continue
            expected[k] = f * expected[k] + (1 - f) * current[k]
    trained = copy.deepcopy(model.state_dict())
    objects = [*model.parameters()]
    with average.applied():
        held = model.state_dict()
        for k, v in expected.items():
            want = trained[k] if k in ("2.weight", "1.num_batches_tracked") else v
            torch.testing.assert_close(held[k], want, rtol=0, atol=1e-6, msg=k)
        with pytest.raises(RuntimeError, match="swapped in"):
            average.update()
    assert _same_state(model.state_dict(), trained) and all(a is b for a, b in zip(objects, model.parameters(), strict=True))
    with pytest.raises(KeyError), average.applied():
        raise KeyError("a failure while the average is in")
    assert _same_state(model.state_dict(), trained)  # swapped back out
    average.apply()
    assert all(a is b for a, b in zip(objects, model.parameters(), strict=True))
    torch.testing.assert_close(model[0].weight, expected["0.weight"], rtol=0, atol=1e-6)
    with pytest.raises(OptionError, match=r"WeightAverage: decay must be in \(0, 1\)"):
        WeightAverage(model, 1.0)


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_recovery_trains_as_without_it_and_ends_on_measures_and_keeps_the_average_of_its_steps() -> None:
    teacher, student = llama_pair()
    train, held = token_data(16), token_data(8, seed=7)
    opts = dict(steps=8, lr=1e-2, batch_size=4, eval_batches=2, eval_every=2, shuffle=False, progress=False)
    raw = {}
    plain = tp.recover(copy.deepcopy(student), teacher, train, eval_data=held,
                       on_step=lambda s, m: raw.__setitem__(s, copy.deepcopy(m)), **opts)
    # the average of the plain run's steps, computed here with the documented rule
    average = copy.deepcopy(student)
    by_step = {0: copy.deepcopy(average)}
    for step in range(1, 9):
        w = 1.0 - ema_factor(0.8, step - 1)
        with torch.no_grad():
            for a, r in zip(average.parameters(), raw[step].parameters(), strict=True):
                a.lerp_(r, w)
        by_step[step] = copy.deepcopy(average)
    seen = {}
    ema = tp.recover(student, teacher, train, eval_data=held, ema_decay=0.8,
                     on_step=lambda s, m: seen.__setitem__(s, copy.deepcopy(m)), **opts)
    assert ema.losses == plain.losses  # the average is passive: training is the same
    assert _same_weights(ema.model, by_step[8]) and not _same_weights(ema.model, plain.model)
    assert ema.model is student
    assert all(_same_weights(seen[s], by_step[s]) for s in range(1, 8))  # checkpoints hold the average too
    assert [e.step for e in ema.evaluations] == [0, 2, 4, 6, 8]
    for e in ema.evaluations:
        assert e.task == pytest.approx(_held_out_task_loss(by_step[e.step], held), rel=1e-5), e
    assert ema.evaluations[0].task == plain.evaluations[0].task and ema.task_after == ema.evaluations[-1].task

    best = tp.recover(copy.deepcopy(by_step[0]), teacher, train, eval_data=held, ema_decay=0.8, keep_best=True,
                      **opts)
    losses = [e.task for e in best.evaluations]
    assert losses == pytest.approx([e.task for e in ema.evaluations], rel=1e-6)
    kept = min(range(len(losses)), key=lambda i: (losses[i], i))
    assert best.best_step == best.evaluations[kept].step
    assert _same_weights(best.model, by_step[best.best_step])


def test_the_option_is_checked_before_the_student_changes() -> None:
    teacher, student = llama_pair()
    before = copy.deepcopy(student)
    for bad in (1.0, -0.1, float("nan"), "0.9"):
        with pytest.raises(OptionError, match=r"ema_decay must be a number in \[0, 1\) \(0: off\)"):
            tp.recover(student, teacher, token_data(8), ema_decay=bad, progress=False)
    assert _same_weights(student, before)


def test_cli_writes_the_average_and_refuses_a_bad_decay_before_loading(tmp_path) -> None:
    teacher, pruned = write_llama_folders(tmp_path)
    write_text(tmp_path / "train.txt", 400)
    base = [sys.executable, "-m", "depgraph", "recover", str(pruned), "--data", str(tmp_path / "train.txt"),
            "--seq-len", "8", "--batch-size", "2", "--steps", "4", "--lr", "1e-2", "--no-progress", "--plain"]
    refused = subprocess.run([*base, "--teacher", str(tmp_path / "no-such-teacher"), "--ema-decay", "1",
                              "--output", str(tmp_path / "x")], capture_output=True, text=True, timeout=300)
    assert refused.returncode == 1 and "ema_decay must be a number in [0, 1)" in refused.stderr, refused.stderr
    assert not (tmp_path / "x").exists()
    out = tmp_path / "recovered"
    run = subprocess.run([*base, "--teacher", str(teacher), "--ema-decay", "0.9", "--output", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "weights: moving average, decay 0.9" in run.stdout, run.stdout
    assert (out / "config.json").is_file()
