"""Image folders and torchvision datasets: real PNG/JPEG files written with PIL (and real CIFAR-10 JPEGs from
the shared data folder), the decoded-array cache, the memory check and every bad input."""

from __future__ import annotations

import json
import logging
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kdnas.config import DataConfig
from kdnas.data import DATASETS, DatasetInfo, load_data
from kdnas.errors import KdnasError

SHARED_DATA = Path(__file__).parents[2] / "shared" / "data"  # ../shared beside the repository, as in CI


def write_image(path: Path, array: np.ndarray, fmt: str = "PNG") -> Path:
    """``array`` (H, W) grey or (H, W, 3) RGB uint8 as a real image file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)
    return path


def write_folder(root: Path, counts: dict[str, int], *, size: int = 12, grey: bool = False, seed: int = 0) -> dict:
    """PNG files ``root/<class>/<i>.png`` of random pixels; returns {relative path: (H, W[, 3]) array}."""
    rng = np.random.default_rng(seed)
    written = {}
    for name, count in counts.items():
        for i in range(count):
            array = rng.integers(0, 256, size=(size, size) if grey else (size, size, 3), dtype=np.uint8)
            write_image(root / name / f"{i:03d}.png", array)
            written[f"{name}/{i:03d}.png"] = array
    return written


def as_chw(array: np.ndarray) -> np.ndarray:
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def folder_cfg(path: Path, **settings) -> DataConfig:
    return DataConfig(dataset="imagefolder", path=str(path), **settings)


def one_line_error(cfg: DataConfig, data_dir: Path, **kwargs) -> str:
    with pytest.raises(KdnasError) as info:
        load_data(cfg, data_dir, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------------------------------
# Layouts, labels, pixels, statistics
# ---------------------------------------------------------------------------------------------------


def test_folder_of_class_folders_is_read_pixel_for_pixel(tmp_path):
    written = write_folder(tmp_path / "pets", {"dog": 6, "cat": 8, "bird": 6})
    data = load_data(folder_cfg("pets", val_fraction=0.25), tmp_path)
    assert data.info.classes == ("bird", "cat", "dog")  # sorted folder names give the labels, as ImageFolder
    assert (data.info.in_channels, data.info.num_classes, data.info.image_size) == (3, 3, 12)
    assert (len(data.train), len(data.val), len(data.test)) == (15, 5, 0)  # no test/ folder: no test split
    decoded = {
        img.numpy().tobytes(): label
        for split in (data.train, data.val)
        for img, label in zip(split.images, split.labels, strict=True)
    }
    expected = {as_chw(a).tobytes(): ("bird", "cat", "dog").index(p.split("/")[0]) for p, a in written.items()}
    assert decoded == expected  # every image once, with its class's label


def test_mean_and_std_are_those_of_the_training_split(tmp_path):
    write_folder(tmp_path / "f", {"a": 10, "b": 10})
    data = load_data(folder_cfg(tmp_path / "f"), tmp_path)
    pixels = data.train.images.double() / 255
    np.testing.assert_allclose(data.info.mean, pixels.mean(dim=(0, 2, 3)).numpy(), atol=6e-5)
    np.testing.assert_allclose(data.info.std, pixels.std(dim=(0, 2, 3), unbiased=False).numpy(), atol=6e-5)
    assert (data.crop_padding, data.flip) == (1, True)  # 12 // 8, and flips


def test_train_val_test_folders_are_the_splits(tmp_path):
    for split, n in (("train", 5), ("val", 6), ("test", 2)):
        write_folder(tmp_path / split, {"x": n, "y": n}, seed=len(split))
    data = load_data(folder_cfg(tmp_path, limit_val=10), tmp_path)
    assert (len(data.train), len(data.val), len(data.test)) == (10, 10, 4)
    assert data.test.labels.tolist() == [0, 0, 1, 1]  # the test split keeps the folders' order


def test_grey_images_give_one_channel_and_a_colour_one_makes_three(tmp_path):
    write_folder(tmp_path / "grey", {"a": 3, "b": 3}, grey=True)
    assert load_data(folder_cfg(tmp_path / "grey"), tmp_path).train.images.shape[1] == 1
    grey = np.full((12, 12), 77, dtype=np.uint8)
    write_image(tmp_path / "grey" / "a" / "zz.png", np.zeros((12, 12, 3), dtype=np.uint8))
    write_image(tmp_path / "grey" / "b" / "zz.png", grey)
    data = load_data(folder_cfg(tmp_path / "grey", val_fraction=0.01), tmp_path)
    assert data.info.in_channels == 3
    images = np.concatenate([data.train.images.numpy(), data.val.images.numpy()])
    assert any((img == 77).all() for img in images)  # the grey image, repeated in all three channels


def test_image_size_resizes_every_image_to_a_square(tmp_path):
    write_image(tmp_path / "f" / "a" / "wide.png", np.zeros((20, 40, 3), dtype=np.uint8))
    write_image(tmp_path / "f" / "b" / "small.jpg", np.full((10, 10, 3), 200, dtype=np.uint8), "JPEG")
    write_image(tmp_path / "f" / "b" / "other.png", np.full((30, 30, 3), 100, dtype=np.uint8))
    data = load_data(folder_cfg(tmp_path / "f", image_size=16, val_fraction=0.3), tmp_path)
    assert data.train.images.shape[1:] == (3, 16, 16) and data.info.image_size == 16
    assert data.crop_padding == 2


def test_fingerprint_follows_the_image_size(tmp_path):
    write_folder(tmp_path / "f", {"a": 4, "b": 4}, size=16)
    native = load_data(folder_cfg(tmp_path / "f"), tmp_path)
    same = load_data(folder_cfg(tmp_path / "f", image_size=16), tmp_path)
    smaller = load_data(folder_cfg(tmp_path / "f", image_size=8), tmp_path)
    assert native.fingerprint == same.fingerprint != smaller.fingerprint
    assert native.info.mean != smaller.info.mean  # resizing averages pixels: the statistics move


def test_relative_path_starts_at_the_data_dir_and_absolute_is_kept(tmp_path):
    write_folder(tmp_path / "data" / "f", {"a": 4, "b": 4})
    by_relative = load_data(folder_cfg("f"), tmp_path / "data")
    by_absolute = load_data(folder_cfg(tmp_path / "data" / "f"), tmp_path / "elsewhere")
    assert by_relative.fingerprint == by_absolute.fingerprint


# ---------------------------------------------------------------------------------------------------
# The decoded-array cache
# ---------------------------------------------------------------------------------------------------


def test_second_start_reads_the_decoded_arrays(tmp_path, caplog):
    write_folder(tmp_path / "f", {"a": 5, "b": 5})
    cache_dir = tmp_path / "run"
    first = load_data(folder_cfg(tmp_path / "f"), tmp_path, cache_dir=cache_dir)
    (cache,) = cache_dir.glob("decoded-*.npz")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="kdnas.data"):
        second = load_data(folder_cfg(tmp_path / "f"), tmp_path, cache_dir=cache_dir)
    assert f"decoded images read from {cache}" in caplog.text and "decoding" not in caplog.text
    assert second.fingerprint == first.fingerprint and second.info == first.info
    assert list(cache_dir.iterdir()) == [cache]  # no temporary left behind


def test_a_changed_file_is_decoded_again_and_the_stale_arrays_removed(tmp_path, caplog):
    write_folder(tmp_path / "f", {"a": 5, "b": 5})
    cache_dir = tmp_path / "run"
    first = load_data(folder_cfg(tmp_path / "f"), tmp_path, cache_dir=cache_dir)
    (old,) = cache_dir.glob("decoded-*.npz")
    write_image(tmp_path / "f" / "a" / "000.png", np.zeros((12, 12, 3), dtype=np.uint8))
    os.utime(tmp_path / "f" / "a" / "000.png", ns=(1, 1))  # a new mtime even on a coarse clock
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="kdnas.data"):
        second = load_data(folder_cfg(tmp_path / "f"), tmp_path, cache_dir=cache_dir)
    assert "decoding 10 images" in caplog.text
    assert second.fingerprint != first.fingerprint
    (new,) = cache_dir.glob("decoded-*.npz")
    assert new != old


def test_decoding_reports_its_progress_to_the_last_image(tmp_path):
    write_folder(tmp_path / "f", {"a": 300, "b": 300}, size=8)
    steps = []
    load_data(folder_cfg(tmp_path / "f"), tmp_path, on_step=lambda step, total: steps.append((step, total)))
    assert steps[-1] == (600, 600) and len(steps) >= 3  # in chunks, train and validation
    assert steps == sorted(steps)


def test_split_settings_key_the_decoded_arrays(tmp_path):
    write_folder(tmp_path / "f", {"a": 10, "b": 10})
    cache_dir = tmp_path / "run"
    a = load_data(folder_cfg(tmp_path / "f", seed=1), tmp_path, cache_dir=cache_dir)
    b = load_data(folder_cfg(tmp_path / "f", seed=2), tmp_path, cache_dir=cache_dir)
    assert not np.array_equal(a.val.images.numpy(), b.val.images.numpy())


# ---------------------------------------------------------------------------------------------------
# Bad input: one line, nothing written
# ---------------------------------------------------------------------------------------------------


def test_missing_folder(tmp_path):
    message = one_line_error(folder_cfg("nowhere"), tmp_path, cache_dir=tmp_path / "run")
    assert f"[data] path {tmp_path / 'nowhere'} does not exist" in message and "--data-dir" in message
    assert not (tmp_path / "run").exists()


def test_empty_class_folder(tmp_path):
    write_folder(tmp_path / "f", {"a": 3})
    (tmp_path / "f" / "b").mkdir()
    message = one_line_error(folder_cfg(tmp_path / "f"), tmp_path, cache_dir=tmp_path / "run")
    assert message == f"class folder {tmp_path / 'f' / 'b'} is empty; add its images or remove it"
    assert not (tmp_path / "run").exists()


def test_folder_without_class_folders(tmp_path):
    write_image(tmp_path / "f" / "loose.png", np.zeros((8, 8), dtype=np.uint8))
    assert "no class folders in" in one_line_error(folder_cfg(tmp_path / "f"), tmp_path)


def test_val_folder_with_a_class_train_lacks(tmp_path):
    write_folder(tmp_path / "train", {"a": 3, "b": 3})
    write_folder(tmp_path / "val", {"a": 1, "c": 1})
    message = one_line_error(folder_cfg(tmp_path), tmp_path)
    assert f"{tmp_path / 'val' / 'c'} is not a class of {tmp_path / 'train'} (a, b)" in message


@pytest.mark.parametrize(
    ("name", "content"),
    [
        pytest.param("notes.txt", b"not an image at all", id="text"),
        pytest.param("cut.png", None, id="truncated-png"),
    ],
)
def test_file_that_is_not_an_image_is_named(tmp_path, name, content):
    write_folder(tmp_path / "f", {"a": 4, "b": 4})
    bad = tmp_path / "f" / "b" / name
    if content is None:  # a real PNG cut short: the header reads, the pixels do not
        write_image(bad, np.random.default_rng(0).integers(0, 256, (12, 12, 3), dtype=np.uint8))
        content = bad.read_bytes()[:250]
    bad.write_bytes(content)
    message = one_line_error(folder_cfg(tmp_path / "f", val_fraction=0.2), tmp_path, cache_dir=tmp_path / "run")
    assert message.startswith(f"{bad} is not an image kdnas can read (")
    assert "skip_unreadable = true" in message
    assert not (tmp_path / "run").exists()


def test_skip_unreadable_skips_and_counts(tmp_path, caplog):
    write_folder(tmp_path / "f", {"a": 4, "b": 4})
    (tmp_path / "f" / "a" / "x.txt").write_text("hello")
    (tmp_path / "f" / "b" / "y.jpg").write_bytes(b"\xff\xd8 broken")
    with caplog.at_level(logging.WARNING, logger="kdnas.data"):
        data = load_data(folder_cfg(tmp_path / "f", skip_unreadable=True, val_fraction=0.2), tmp_path)
    assert len(data.train) + len(data.val) == 8
    assert "skipped 2 unreadable file(s)" in caplog.text


def test_mixed_sizes_without_image_size_name_two_files(tmp_path):
    write_image(tmp_path / "f" / "a" / "big.png", np.zeros((32, 32, 3), dtype=np.uint8))
    write_image(tmp_path / "f" / "b" / "small.png", np.zeros((28, 28, 3), dtype=np.uint8))
    message = one_line_error(folder_cfg(tmp_path / "f", val_fraction=0.5), tmp_path)
    assert "images differ in size:" in message and "set [data] image_size" in message
    assert str(tmp_path / "f" / "a" / "big.png") in message and str(tmp_path / "f" / "b" / "small.png") in message


def test_images_that_are_not_square_need_image_size(tmp_path):
    for name in ("a", "b"):
        write_image(tmp_path / "f" / name / "0.png", np.zeros((20, 30), dtype=np.uint8))
    assert "is 30x20, not square; set [data] image_size" in one_line_error(folder_cfg(tmp_path / "f"), tmp_path)


def test_data_larger_than_memory_is_refused_before_decoding(tmp_path):
    write_folder(tmp_path / "f", {"a": 3, "b": 3})
    message = one_line_error(folder_cfg(tmp_path / "f", image_size=200_000), tmp_path, cache_dir=tmp_path / "run")
    assert message.startswith("the data needs ") and "(6 images x 3 x 200000 x 200000 bytes)" in message
    assert message.endswith("GiB is available; set a smaller [data] image_size or limit_train")
    assert not (tmp_path / "run").exists()


def test_soft_target_bytes_count_in_the_memory_check(tmp_path):
    write_folder(tmp_path / "f", {"a": 3, "b": 3})
    seen = []

    def huge(images: int, classes: int) -> int:
        seen.append((images, classes))
        return 2**60

    message = one_line_error(folder_cfg(tmp_path / "f", val_fraction=0.5), tmp_path, soft_target_bytes=huge)
    assert seen == [(3, 2)] and "GiB of soft targets" in message


# ---------------------------------------------------------------------------------------------------
# Real CIFAR-10 JPEGs
# ---------------------------------------------------------------------------------------------------


def extract_cifar_subset(target: Path, classes: tuple[str, ...], per_class: int) -> None:
    """``per_class`` JPEGs of each of ``classes`` from the shared CIFAR-10 training archive."""
    archive = SHARED_DATA / "cifar10-train.tar"
    if not archive.is_file():
        pytest.skip(f"the shared CIFAR-10 archive is not at {archive} (../shared/data beside the repository)")
    wanted = {name: 0 for name in classes}
    with tarfile.open(archive) as tar:
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 3 and wanted.get(parts[1], per_class) < per_class:
                wanted[parts[1]] += 1
                tar.extract(member, target, filter="data")
            if all(n == per_class for n in wanted.values()):
                break


def test_real_cifar10_jpegs(tmp_path):
    extract_cifar_subset(tmp_path, ("airplane", "automobile", "bird"), per_class=20)
    data = load_data(folder_cfg(tmp_path, val_fraction=0.25), tmp_path, cache_dir=tmp_path / "run")
    assert data.info.classes == ("airplane", "automobile", "bird")  # CIFAR-10's label order
    assert data.info.in_channels == 3 and data.train.images.shape[1:] == (3, 32, 32)
    assert (len(data.train), len(data.val), len(data.test)) == (45, 15, 0)
    assert all(0.2 < m < 0.7 for m in data.info.mean) and all(0.1 < s < 0.4 for s in data.info.std)
    with Image.open(tmp_path / "train" / "bird" / "0000.jpg") as image:
        bird = np.asarray(image.convert("RGB")).transpose(2, 0, 1)
    rows = [(i, s) for s in (data.train, data.val) for i in range(len(s)) if np.array_equal(s.images[i], bird)]
    assert len(rows) == 1 and rows[0][1].labels[rows[0][0]].item() == 2


# ---------------------------------------------------------------------------------------------------
# torchvision datasets by class name
# ---------------------------------------------------------------------------------------------------


def test_torchvision_mnist_from_its_real_files(tmp_path, fashion_mnist_writer):
    # MNIST's raw files have Fashion-MNIST's names and format; torchvision reads them from MNIST/raw.
    train_x, train_y, test_x, test_y = fashion_mnist_writer(tmp_path / "MNIST" / "raw", n_train=40, n_test=6, gz=False)
    data = load_data(DataConfig(dataset="torchvision:MNIST", val_fraction=0.25), tmp_path, download=False)
    assert data.info.name == "torchvision:MNIST" and data.info.in_channels == 1 and data.info.image_size == 28
    assert data.info.num_classes == 10 and data.info.classes[0] == "0 - zero"
    assert (len(data.train), len(data.val), len(data.test)) == (30, 10, 6)
    np.testing.assert_array_equal(data.test.images.numpy()[:, 0], test_x)
    np.testing.assert_array_equal(data.test.labels.numpy(), test_y)
    for split in (data.train, data.val):
        for image, label in zip(split.images, split.labels, strict=True):
            i = int(image[0, 0, 0])  # the writer tags image i with i in its first pixel
            np.testing.assert_array_equal(image[0].numpy(), train_x[i])
            assert label.item() == train_y[i]


def test_torchvision_dataset_resized(tmp_path, fashion_mnist_writer):
    fashion_mnist_writer(tmp_path / "MNIST" / "raw", n_train=20, n_test=2, gz=False)
    data = load_data(DataConfig(dataset="torchvision:MNIST", image_size=16), tmp_path, download=False)
    assert data.train.images.shape[1:] == (1, 16, 16) and data.crop_padding == 2


def test_torchvision_dataset_missing_is_one_line(tmp_path):
    message = one_line_error(DataConfig(dataset="torchvision:KMNIST"), tmp_path, download=False)
    assert message.startswith(f"torchvision:KMNIST(train=True) cannot be read from {tmp_path} (")
    assert message.endswith("put its files there (kdnas downloads them when online) or point --data-dir at them")


def test_unknown_torchvision_class_suggests_one():
    with pytest.raises(KdnasError, match=r"unknown torchvision dataset 'SVNH' \(did you mean 'SVHN'\?\)"):
        DataConfig(dataset="torchvision:SVNH")


# ---------------------------------------------------------------------------------------------------
# DatasetInfo without the data
# ---------------------------------------------------------------------------------------------------


def test_summary_rebuilds_the_info_through_json(tmp_path):
    write_folder(tmp_path / "f", {"a": 4, "b": 4})
    info = load_data(folder_cfg(tmp_path / "f"), tmp_path).info
    summary = json.loads(json.dumps(info.summary()))
    assert "read" not in summary and summary["classes"] == ["a", "b"]
    assert DatasetInfo.from_summary(summary) == info


def test_summary_of_a_builtin_dataset_has_no_reader():
    info = DATASETS.get("cifar10")
    rebuilt = DatasetInfo.from_summary(json.loads(json.dumps(info.summary())))
    assert rebuilt.read is None and rebuilt.summary() == info.summary()
