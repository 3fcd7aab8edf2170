"""``num_workers="auto"``: DataLoader workers on the cores the training step leaves idle, none for data in memory."""

from __future__ import annotations

import copy

import pytest
import torch

import depgraph as tp
from depgraph.errors import OptionError
from depgraph.recovery import workers as workers_module
from depgraph.recovery.data import open_dataset
from depgraph.recovery.workers import MAX_AUTO_WORKERS, auto_workers, in_memory, resolve_workers
from depgraph.workflow import InputSpec

from ._models import cnn_pair, image_data

pytest.importorskip("accelerate")
pytest.importorskip("PIL")


class _OnDisk(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.zeros(3)


class _Cached(_OnDisk):
    in_memory = True


def test_auto_counts_idle_cores_per_process_and_skips_data_in_memory() -> None:
    disk = _OnDisk()
    assert auto_workers(disk, on_accelerator=False, cores=8, threads=2) == 6  # CPU: the step's threads are busy
    assert auto_workers(disk, on_accelerator=False, cores=2, threads=2) == 0
    assert auto_workers(disk, on_accelerator=True, cores=16, processes=2) == 7  # a GPU: one core feeds it
    assert auto_workers(disk, on_accelerator=True, cores=96) == MAX_AUTO_WORKERS
    assert auto_workers(image_data(), on_accelerator=True, cores=16) == 0  # a TensorDataset
    assert in_memory(_Cached()) and auto_workers(_Cached(), on_accelerator=True, cores=16) == 0
    assert resolve_workers(3, disk, on_accelerator=False, processes=1) == 3


def test_a_launcher_local_world_size_divides_the_cores(monkeypatch) -> None:
    monkeypatch.setattr(workers_module, "usable_cores", lambda: 16)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert resolve_workers("auto", _OnDisk(), on_accelerator=True, processes=8) == 3  # 16 // 4 - 1
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert resolve_workers("auto", _OnDisk(), on_accelerator=True, processes=2) == 7


def test_bad_worker_count_is_refused() -> None:
    teacher, student = cnn_pair()
    with pytest.raises(OptionError, match="num_workers must be an integer >= 0 or 'auto', got 'many'"):
        tp.recover(student, teacher, image_data(), num_workers="many")


def _class_folder(root):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for c in range(2):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(8):
            pixels = torch.randint(0, 256, (32, 32, 3), generator=g, dtype=torch.uint8)
            Image.fromarray(pixels.numpy(), "RGB").save(root / f"c{c}" / f"{i}.png")
    return root


def test_auto_workers_decode_an_image_folder_and_train_exactly_as_in_process(tmp_path, monkeypatch) -> None:
    data = open_dataset(_class_folder(tmp_path / "imgs"), InputSpec("image", (3, 32, 32)))
    teacher, student = cnn_pair(num_classes=2)
    monkeypatch.setattr(workers_module, "usable_cores", lambda: 3)
    kwargs = dict(steps=3, batch_size=4, eval_batches=1, progress=False, threads=1)
    inline = tp.recover(copy.deepcopy(student), teacher, data, num_workers=0, **kwargs)
    parallel = tp.recover(copy.deepcopy(student), teacher, data, num_workers="auto", **kwargs)
    assert inline.num_workers == 0 and parallel.num_workers == 2  # 3 cores, 1 thread for the step
    assert parallel.losses == inline.losses  # the same batches in the same order, decoded elsewhere
    for a, b in zip(inline.model.state_dict().values(), parallel.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    in_ram = tp.recover(copy.deepcopy(student), teacher, image_data(n=8, classes=2), num_workers="auto", **kwargs)
    assert in_ram.num_workers == 0
    given = torch.utils.data.DataLoader(data, batch_size=4, num_workers=1)  # the caller's loader keeps its own
    assert tp.recover(copy.deepcopy(student), teacher, given, num_workers="auto", **kwargs).num_workers == 1
