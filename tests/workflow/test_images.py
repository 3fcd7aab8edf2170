"""Image folders read per sample (depgraph/workflow/images.py), and recovery on them.

The reference is the reader recovery used before: every image decoded up front
with Pillow (convert, bilinear resize, bytes -> float / 255), stacked, then
normalised over the whole stack. The per-sample reader must give the same
batches bit for bit, in the same shuffled order with the same labels, and
recovery on it must train to the same weights.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import depgraph as tp
from depgraph.errors import CalibrationDataError
from depgraph.recovery.data import open_dataset
from depgraph.workflow import InputSpec, load_calibration
from depgraph.workflow.calibration_data import mixed, spread
from depgraph.workflow.images import ImageFiles, list_images

PIL = pytest.importorskip("PIL")

MODES = ("RGB", "L", "RGBA", "P", "LA")  # the file modes the folder mixes; every one converted to the model's


def _write_folder(root: Path, classes: int = 3, per_class: int = 7) -> Path:
    """Class folders of PNGs in several modes and sizes (some already the model's size, some not)."""
    from PIL import Image

    g = torch.Generator().manual_seed(5)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            w, h = (20, 20) if i % 2 else (23 + i, 17 + c)
            pixels = torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy()
            Image.fromarray(pixels).convert(MODES[(i + c) % len(MODES)]).save(root / f"c{c}" / f"{i:02d}.png")
    return root


def _decoded_up_front(root: Path, spec: InputSpec) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The former reader: every image of every class folder decoded first, normalised as one stack."""
    from PIL import Image

    channels, height, width = spec.shape
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[channels]
    samples, labels = [], []
    for label, folder in enumerate(sorted(d for d in root.iterdir() if d.is_dir())):
        for f in sorted(p for p in folder.rglob("*") if p.is_file()):
            with Image.open(f) as im:
                im = im.convert(mode).resize((width, height), Image.Resampling.BILINEAR)
                raw = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
            samples.append(raw.view(height, width, channels).permute(2, 0, 1).float() / 255.0)
            labels.append(label)
    x = torch.stack(samples)
    if spec.mean is not None:
        x = (x - torch.tensor(spec.mean).view(1, -1, 1, 1)) / torch.tensor(spec.std).view(1, -1, 1, 1)
    return [(x[i], torch.tensor(labels[i])) for i in range(len(labels))]


def _batches(data, workers: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader = torch.utils.data.DataLoader(data, batch_size=4, shuffle=True, num_workers=workers,
                                         generator=torch.Generator().manual_seed(3))
    return list(loader)


@pytest.mark.parametrize(("channels", "normalised"), [(3, True), (1, False), (4, False)])
def test_batches_are_bit_identical_to_decoding_everything_first(tmp_path, channels, normalised) -> None:
    root = _write_folder(tmp_path / "data")
    spec = InputSpec("image", (channels, 20, 20), mean=(0.4,) * channels if normalised else None,
                     std=(0.3,) * channels if normalised else None)
    new, old = _batches(open_dataset(root, spec)), _batches(_decoded_up_front(root, spec))
    assert len(new) == len(old) == 6  # 21 images, batches of 4
    for (x_new, y_new), (x_old, y_old) in zip(new, old, strict=True):
        assert x_new.dtype == x_old.dtype == torch.float32 and torch.equal(x_new, x_old)
        assert y_new.dtype == torch.int64 and torch.equal(y_new, y_old)
    # calibration reads through the same per-file decoder: 5 of the first class's 7 images, spread and mixed
    calib = load_calibration(root / "c0", spec, num_samples=5, batch_size=2)
    first_class = [x for x, _ in _decoded_up_front(root, spec)[:7]]
    picked = mixed(spread(list(range(7)), 5))
    assert sorted(picked) == [0, 1, 2, 4, 5]
    torch.testing.assert_close(torch.cat(calib), torch.stack([first_class[i] for i in picked]), rtol=0, atol=0)


def test_dataloader_workers_give_the_same_batches(tmp_path) -> None:
    root = _write_folder(tmp_path / "data", classes=2, per_class=4)
    spec = InputSpec("image", (3, 20, 20))
    one = _batches(open_dataset(root, spec), workers=1)
    for (x, y), (x_ref, y_ref) in zip(one, _batches(_decoded_up_front(root, spec)), strict=True):
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref)


def test_nothing_is_decoded_until_a_sample_is_drawn(tmp_path, monkeypatch) -> None:
    import depgraph.workflow.images as images

    root = _write_folder(tmp_path / "data")
    read: list[str] = []
    real_read = images.read_image
    monkeypatch.setattr(images, "read_image", lambda f, *a: read.append(Path(f).name) or real_read(f, *a))
    data = open_dataset(root, InputSpec("image", (3, 20, 20)), max_samples=9)  # 3 per class
    assert len(data) == 9 and read == []
    loader = torch.utils.data.DataLoader(data, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))
    next(iter(loader))
    assert len(read) == 4  # one batch: four images decoded, the rest never
    flat = open_dataset(root / "c1", InputSpec("image", (3, 20, 20), key="pixel_values"))
    assert set(flat[0]) == {"pixel_values"} and flat[0]["pixel_values"].shape == (3, 20, 20)  # unlabelled, keyed


def test_max_samples_takes_files_spread_over_each_class_folder(tmp_path) -> None:
    """A class folder's files are often sorted by source or date: its first files are one corner of it."""
    root = _write_folder(tmp_path / "data", classes=2, per_class=6)
    data = open_dataset(root, InputSpec("image", (3, 20, 20)), max_samples=4)  # 2 a class: the 1st and 4th
    assert [f.relative_to(root).as_posix() for f in data.files] == ["c0/00.png", "c0/03.png", "c1/00.png", "c1/03.png"]
    assert data.labels.tolist() == [0, 0, 1, 1]
    flat = open_dataset(root / "c1", InputSpec("image", (3, 20, 20)), max_samples=3)
    assert [f.name for f in flat.files] == ["00.png", "02.png", "04.png"]


def test_unreadable_images_and_wrong_specs_are_refused(tmp_path) -> None:
    root = _write_folder(tmp_path / "data", classes=2, per_class=2)
    with pytest.raises(CalibrationDataError, match="the model takes 2-channel images"):
        open_dataset(root, InputSpec("image", (2, 20, 20)))
    with pytest.raises(CalibrationDataError, match="holds images, but the model takes"):
        ImageFiles(list_images(root), InputSpec("text", (8,)))
    with pytest.raises(CalibrationDataError, match="3 labels for 4 files"):
        ImageFiles(list_images(root), InputSpec("image", (3, 20, 20)), labels=[0, 1, 2])
    (root / "c1" / "zz.png").write_bytes(b"not a png")
    data = open_dataset(root, InputSpec("image", (3, 20, 20)))
    assert len(data) == 5 and data[0][0].shape == (3, 20, 20)  # listing reads nothing
    with pytest.raises(CalibrationDataError, match=r"cannot read image .*zz\.png"):
        data[4]


def test_recovery_on_the_folder_trains_to_the_same_weights_and_restores_on_a_bad_file(tmp_path) -> None:
    pytest.importorskip("accelerate")
    from ..recovery._models import cnn_pair

    root = _write_folder(tmp_path / "data", classes=2, per_class=6)
    spec = InputSpec("image", (3, 20, 20), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    teacher, student = cnn_pair(num_classes=2)
    other = copy.deepcopy(student)
    options = {"steps": 4, "batch_size": 4, "lr": 1e-2, "eval_batches": 1, "progress": False, "seed": 1}
    tp.recover(student, teacher, open_dataset(root, spec), **options)
    tp.recover(other, teacher, _decoded_up_front(root, spec), **options)
    a, b = student.state_dict(), other.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

    (root / "c0" / "zz.png").write_bytes(b"not a png")  # index 6: the second batch, after a step changed the student
    before = copy.deepcopy(student)
    with pytest.raises(CalibrationDataError, match=r"cannot read image .*zz\.png"):
        tp.recover(student, teacher, open_dataset(root, spec), **{**options, "steps": 20, "shuffle": False})
    b = before.state_dict()
    assert all(torch.equal(v, b[k]) for k, v in student.state_dict().items())
