"""``--threads``: the commands compute on the cores the load leaves idle, and put the count back after."""

from __future__ import annotations

import pytest
import torch

from depgraph import cli
from depgraph.errors import OptionError
from depgraph.workflow.threads import auto_threads, cpu_threads, resolve_threads


@pytest.fixture(autouse=True)
def _no_omp_env(monkeypatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


@pytest.mark.parametrize(
    ("cores", "load", "host", "current", "expected"),
    [
        (2, 5.0, 2, 2, 1),  # the shared 2-core machine at load 5: one thread, not two spinning ones
        (2, 0.1, 2, 2, 2),  # idle: every core
        (2, 1.0, 2, 2, 1),  # one core busy elsewhere
        (8, 48.0, 96, 8, 4),  # a container with 8 of 96 cores at half load: half of its 8
        (16, 0.0, 16, 4, 4),  # never more than PyTorch's own count
        (4, 400.0, 4, 4, 1),  # never fewer than one
    ],
)
def test_auto_threads_takes_the_idle_cores(cores, load, host, current, expected) -> None:
    assert auto_threads(cores=cores, load=load, host_cores=host, current=current) == expected


def test_auto_threads_keeps_an_explicit_omp_num_threads(monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert auto_threads(cores=2, load=9.0, host_cores=2, current=2) == 2


def test_auto_threads_without_a_load_average(monkeypatch) -> None:
    def no_load() -> tuple[float, float, float]:
        raise OSError("no load average here")

    monkeypatch.setattr("os.getloadavg", no_load)
    assert auto_threads(cores=2, host_cores=2, current=2) == 2


def test_resolve_threads() -> None:
    assert resolve_threads(None) is None
    assert resolve_threads(3) == 3 and resolve_threads("3") == 3
    assert 1 <= resolve_threads("auto") <= torch.get_num_threads()
    for bad in ("0", "-1", "two", 1.5, True):
        with pytest.raises(OptionError, match="threads must be 'auto' or a positive integer"):
            resolve_threads(bad)


def test_cpu_threads_restores_the_count_also_on_error() -> None:
    torch.set_num_threads(1)
    with cpu_threads(2) as n:
        assert n == 2 and torch.get_num_threads() == 2
    assert torch.get_num_threads() == 1
    with pytest.raises(RuntimeError, match="boom"), cpu_threads(2):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == 1
    with cpu_threads(None) as n:
        assert n == 1


@pytest.mark.parametrize("command", ["prune", "groups", "recover", "export"])
def test_every_command_takes_threads(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "resnet18", "--threads", "0"])
    assert exc.value.code == 2
    assert "argument --threads: must be a positive integer, got '0'" in capsys.readouterr().err


def test_main_runs_the_command_on_the_threads_asked_and_restores_them(monkeypatch, capsys) -> None:
    seen: list[int] = []

    def fake_groups(args, out) -> int:
        seen.append(torch.get_num_threads())
        return 0

    monkeypatch.setattr(cli, "_groups", fake_groups)
    torch.set_num_threads(1)
    assert cli.main(["groups", "resnet18", "--threads", "2"]) == 0
    assert cli.main(["groups", "resnet18"]) == 0  # auto: never more than the count before (1 here)
    assert seen == [2, 1]
    assert torch.get_num_threads() == 1
