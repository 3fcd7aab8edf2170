"""depgraph.recover on real architectures: a pruned tiny Llama and a pruned ResNet-18.

Each run is a few steps on CPU (accelerate picks the CPU here). What is
asserted: the training loss falls, the distillation gap (KL to the teacher,
measured in eval mode on fixed batches) shrinks, the trained student reloads
from what it saves, and every refusal is typed and leaves the student as it was.
"""

from __future__ import annotations

import copy

import pytest
import torch

import depgraph as tp
from depgraph.errors import OptionError, RecoveryError

from ._models import VOCAB, cnn_pair, image_data, llama_pair, token_data

pytest.importorskip("accelerate")
pytest.importorskip("transformers")
pytest.importorskip("torchvision")


def _mean(xs):
    return sum(xs) / len(xs)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_llama_distillation_closes_the_gap_and_reloads(tmp_path) -> None:
    teacher, student = llama_pair()
    teacher_before = copy.deepcopy(teacher)
    result = tp.recover(student, teacher, token_data(), steps=12, lr=1e-2, batch_size=4, task_weight=0.0,
                        progress=False)
    assert result.model is student and result.steps == 12 and len(result.losses) == 12
    assert result.kd_after < 0.7 * result.kd_before, (result.kd_before, result.kd_after)
    assert _mean(result.losses[-3:]) < _mean(result.losses[:3])
    assert result.task_before is not None  # a causal LM is its own label source
    assert _same_weights(teacher, teacher_before)  # the teacher is never trained

    from transformers import AutoModelForCausalLM

    student.save_pretrained(tmp_path / "out")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = torch.randint(0, VOCAB, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, student(input_ids=ids).logits)


def test_task_loss_only_fine_tune_runs_the_teacher_for_the_measures_alone() -> None:
    """``kd_weight=0``: the steps train on the next-token loss alone, so the teacher is only run for the
    probe that the data fits it and for the before/after measures of the gap, never in a training step."""
    teacher, student = llama_pair()
    calls: list[int] = []
    teacher.register_forward_hook(lambda m, a, o: calls.append(1))
    result = tp.recover(student, teacher, token_data(), steps=12, lr=1e-2, batch_size=4, kd_weight=0.0,
                        eval_batches=2, progress=False)
    assert len(calls) == 1 + 2 * 2  # the probe that the data fits both; before and after, two batches each
    assert result.task_after < result.task_before
    assert _mean(result.losses[-3:]) < _mean(result.losses[:3])


def test_no_teacher_fine_tunes_on_the_task_loss_and_refuses_distillation_before_any_change() -> None:
    """``teacher=None``: one model in memory; the measures carry no gap, and asking for distillation
    without a teacher is refused before the student changes."""
    _, student = llama_pair()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    for options in ({}, {"kd_weight": 0.0, "hidden_weight": 0.5}):  # kd_weight defaults to 1
        with pytest.raises(OptionError, match=r"needs a teacher: give the unpruned model \(--teacher\)"):
            tp.recover(student, None, token_data(), steps=2, progress=False, **options)
    assert all(torch.equal(v, before[k]) for k, v in student.state_dict().items())
    result = tp.recover(student, None, token_data(), steps=12, lr=1e-2, batch_size=4, kd_weight=0.0,
                        eval_batches=2, eval_every=6, progress=False)
    assert result.task_after < result.task_before
    assert result.kd_before is None and result.kd_after is None
    assert [e.kd for e in result.evaluations] == [None, None, None] and result.evaluations[-1].task is not None
    assert not all(torch.equal(v, before[k]) for k, v in student.state_dict().items())


def test_llama_task_loss_and_hidden_states_through_learned_projections() -> None:
    teacher, student = llama_pair()
    assert student.config.hidden_size < teacher.config.hidden_size  # widths differ: projections are learned
    result = tp.recover(student, teacher, token_data(), steps=12, lr=1e-2, batch_size=4, hidden_weight=1.0,
                        hidden_layers=[1, 2], progress=False)
    assert _mean(result.losses[-3:]) < _mean(result.losses[:3])
    assert result.task_after < result.task_before
    assert result.kd_after < result.kd_before


def test_cnn_classifier_with_labels_and_named_hidden_layers(tmp_path) -> None:
    teacher, student = cnn_pair()
    result = tp.recover(student, teacher, image_data(teacher), steps=10, lr=1e-3, batch_size=8, hidden_weight=0.5,
                        hidden_layers=["layer3", "layer4"], progress=False)
    # BatchNorm in train mode on batches of 8 makes single-step losses noisy: judge on the fixed eval batches
    assert result.kd_after < 0.7 * result.kd_before, (result.kd_before, result.kd_after)
    assert result.task_after < result.task_before, (result.task_before, result.task_after)
    assert not any(h for m in student.modules() for h in m._forward_hooks.values())  # taps removed

    import torchvision

    tp.save(student, tmp_path / "r.pth")
    reloaded = tp.load(torchvision.models.resnet18(num_classes=10), tmp_path / "r.pth").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), student.eval()(x))


def test_timm_vit_distillation() -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    teacher = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=10).eval()
    with torch.no_grad():
        teacher.head.weight.mul_(20.0)
    student = copy.deepcopy(teacher)
    tp.pruner.BasePruner(student, torch.randn(1, 3, 32, 32), tp.importance.GroupMagnitudeImportance(),
                         pruning_ratio=0.5, ignored_layers=[student.head]).step()
    result = tp.recover(student, teacher, image_data(teacher, n=16), steps=8, lr=1e-3, batch_size=8, task_weight=0.0,
                        progress=False)
    assert result.kd_after < result.kd_before


# -- refusals: typed, before training, the student unchanged ------------------------------------------
def test_student_with_other_outputs_is_refused_unchanged() -> None:
    teacher, _ = cnn_pair(num_classes=10)
    _, other = cnn_pair(num_classes=5)
    before = copy.deepcopy(other)
    with pytest.raises(RecoveryError, match=r"student logits \(8, 5\) and teacher logits \(8, 10\) differ"):
        tp.recover(other, teacher, image_data(), steps=2, progress=False)
    assert _same_weights(other, before)


def test_labels_that_do_not_fit_are_refused() -> None:
    teacher, student = cnn_pair()
    bad = torch.utils.data.TensorDataset(torch.randn(8, 3, 32, 32), torch.rand(8, 3))
    with pytest.raises(RecoveryError, match=r"labels \(8, 3\) .* do not fit logits \(8, 10\)"):
        tp.recover(student, teacher, bad, steps=2, batch_size=8, progress=False)


def test_data_the_model_cannot_run_is_refused() -> None:
    teacher, student = cnn_pair()
    wrong = torch.utils.data.TensorDataset(torch.randn(8, 5, 32, 32), torch.randint(0, 10, (8,)))
    with pytest.raises(RecoveryError, match="cannot run a batch of the data"):
        tp.recover(student, teacher, wrong, steps=2, batch_size=8, progress=False)


def test_eval_data_is_what_before_and_after_are_measured_on() -> None:
    """Held-out ``eval_data``: the gap is measured there (the teacher's own images give other numbers than
    the training data), on unlabelled data too; eval data that the model cannot run, or that differs from
    the training data in carrying labels, is refused before training with the student unchanged."""
    teacher, student = cnn_pair()
    train, held = image_data(teacher), image_data(teacher, n=16, size=32)
    held = torch.utils.data.TensorDataset(held.tensors[0] * 3.0, held.tensors[1])  # another distribution
    first = tp.recover(copy.deepcopy(student), teacher, train, steps=2, lr=1e-3, batch_size=8, eval_batches=1,
                       shuffle=False, progress=False)
    other = tp.recover(copy.deepcopy(student), teacher, train, eval_data=held, steps=2, lr=1e-3, batch_size=8,
                       eval_batches=1, shuffle=False, progress=False)
    assert other.kd_before != first.kd_before and other.losses == first.losses  # same training, other measure
    before = copy.deepcopy(student)
    with pytest.raises(RecoveryError, match="eval_data and data differ in whether they carry labels"):
        tp.recover(student, teacher, train, eval_data=torch.utils.data.TensorDataset(held.tensors[0]), steps=2,
                   batch_size=8, progress=False)
    with pytest.raises(RecoveryError, match="cannot run a batch of the data"):
        tp.recover(student, teacher, train, eval_data=torch.utils.data.TensorDataset(
            torch.randn(8, 5, 32, 32), torch.randint(0, 10, (8,))), steps=2, batch_size=8, progress=False)
    with pytest.raises(RecoveryError, match="eval_data must be a torch Dataset or DataLoader"):
        tp.recover(student, teacher, train, eval_data=3, steps=2, progress=False)
    assert _same_weights(student, before)


def test_hidden_layers_are_checked() -> None:
    teacher, student = cnn_pair()
    with pytest.raises(RecoveryError, match=r"no module named 'layer9'"):
        tp.recover(student, teacher, image_data(), hidden_weight=1.0, hidden_layers=["layer9"], progress=False)
    with pytest.raises(RecoveryError, match="name the layers to match"):
        tp.recover(student, teacher, image_data(), hidden_weight=1.0, progress=False)


def test_options_are_validated_all_at_once() -> None:
    teacher, student = cnn_pair()
    with pytest.raises(OptionError, match=r"steps must be a positive integer.*lr must be a finite number > 0"):
        tp.recover(student, teacher, image_data(), steps=0, lr=-1.0)
    with pytest.raises(OptionError, match="hidden_layers must be a sequence of module names or indices"):
        tp.recover(student, teacher, image_data(), hidden_weight=1.0, hidden_layers="layer1")
    with pytest.raises(OptionError, match=r"lr_schedule must be one of .*got 'step'"):
        tp.recover(student, teacher, image_data(), lr_schedule="step")
    with pytest.raises(OptionError, match=r"unknown option\(s\) \['epochs'\]"):
        tp.recover(student, teacher, image_data(), epochs=3)
    with pytest.raises(RecoveryError, match="same object"):
        tp.recover(student, student, image_data())
    with pytest.raises(RecoveryError, match="task_weight > 0 but the data has no labels"):
        tp.recover(student, teacher, torch.utils.data.TensorDataset(torch.randn(8, 3, 32, 32)), task_weight=1.0,
                   progress=False)


class _BreaksLater(torch.utils.data.Dataset):
    """Good samples first, then one the collate cannot stack: the failure comes mid-training."""

    def __len__(self) -> int:
        return 24

    def __getitem__(self, i: int):
        size = 32 if i < 8 else 30 + (i % 2)
        return torch.randn(3, size, size), torch.tensor(i % 10)


def test_failure_mid_training_restores_the_student() -> None:
    teacher, student = cnn_pair()
    before = copy.deepcopy(student)
    with pytest.raises(RuntimeError):
        tp.recover(student, teacher, _BreaksLater(), steps=5, batch_size=8, shuffle=False, lr=1e-2, eval_batches=1,
                   progress=False)
    assert _same_weights(student, before)


def test_lr_schedules_warm_up_then_hold_or_decay_to_zero() -> None:
    from depgraph.recovery.options import RecoverOptions
    from depgraph.recovery.steps import lr_factor

    def factors(schedule: str) -> list[float]:
        opts = RecoverOptions(steps=10, warmup_steps=2, lr_schedule=schedule)
        return [lr_factor(step, opts) for step in range(10)]

    assert factors("constant") == [0.5] + [1.0] * 9
    cosine, linear = factors("cosine"), factors("linear")
    assert cosine[:3] == [0.5, 1.0, 1.0] and linear[:3] == [0.5, 1.0, 1.0]
    assert linear[3:] == pytest.approx([1 - k / 8 for k in range(1, 8)])
    assert cosine[6] == pytest.approx(0.5)  # half-way through the decay
    assert all(a > b for a, b in zip(cosine[2:], cosine[3:], strict=False)) and 0 < cosine[-1] < 0.05


def test_the_optimizer_is_fused_adamw_on_cpu_and_follows_the_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fused kernel (16x faster than the per-tensor loop for a 100M-parameter student on CPU) and the
    cosine decay are what training really uses: the recorded learning rates of every step."""
    made: list[torch.optim.Optimizer] = []
    lrs: list[float] = []

    class Recording(torch.optim.AdamW):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

        def step(self, closure=None):
            lrs.append(self.param_groups[0]["lr"])
            return super().step(closure)

    monkeypatch.setattr(torch.optim, "AdamW", Recording)
    teacher, student = llama_pair()
    tp.recover(student, teacher, token_data(), steps=6, lr=1e-2, batch_size=4, warmup_steps=1,
               lr_schedule="cosine", eval_batches=1, progress=False)
    assert len(made) == 1 and made[0].defaults["fused"] is True
    assert lrs[:2] == pytest.approx([1e-2, 1e-2]) and lrs == sorted(lrs, reverse=True) and lrs[-1] < 1e-3


def test_on_step_sees_every_step_of_the_student_being_trained() -> None:
    teacher, student = llama_pair()
    seen: list[tuple[int, torch.Tensor]] = []
    result = tp.recover(student, teacher, token_data(), steps=3, lr=1e-2, batch_size=4, eval_batches=1,
                        progress=False, on_step=lambda step, m: seen.append((step, m.lm_head.weight.detach().clone())))
    assert [s for s, _ in seen] == [1, 2, 3]
    assert not torch.equal(seen[0][1], seen[1][1])
    torch.testing.assert_close(seen[-1][1], result.model.lm_head.weight)


def test_threads_are_set_for_the_call_and_restored_after_also_on_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """``threads=`` means what ``--threads`` means (N, or "auto": the idle cores); the caller's count comes
    back after the call and after a failure; the default leaves the process's setting alone."""
    import depgraph.workflow.threads as threads_module

    teacher, student = llama_pair()
    torch.set_num_threads(2)  # conftest restores the suite's count after the test
    seen: list[int] = []

    def record(step: int, model: torch.nn.Module) -> None:
        seen.append(torch.get_num_threads())

    def run(**kwargs) -> None:
        tp.recover(student, teacher, token_data(8), steps=1, batch_size=4, eval_batches=1, progress=False,
                   on_step=record, **kwargs)

    run()
    run(threads=1)
    monkeypatch.setattr(threads_module, "auto_threads", lambda: 1)  # "auto" on a machine with one idle core
    run(threads="auto")
    assert seen == [2, 1, 1] and torch.get_num_threads() == 2

    def fail(step: int, model: torch.nn.Module) -> None:
        seen.append(torch.get_num_threads())
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tp.recover(student, teacher, token_data(8), steps=2, batch_size=4, eval_batches=1, progress=False,
                   on_step=fail, threads=1)
    assert seen[-1] == 1 and torch.get_num_threads() == 2

    before = copy.deepcopy(student)
    with pytest.raises(OptionError, match=r"threads must be 'auto' or a positive integer, got 0"):
        tp.recover(student, teacher, token_data(8), steps=1, progress=False, threads=0)
    assert torch.get_num_threads() == 2 and _same_weights(student, before)
