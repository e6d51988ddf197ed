"""Loaders on small files in the real formats, the seeded split, and the seeded augmentation."""

from __future__ import annotations

import gzip
import pickle
import socket

import numpy as np
import pytest
import torch

import kdnas.data._builtin
from kdnas.config import DataConfig
from kdnas.data import DATASETS, AugmentedViews, ImageData, load_data, normalize, read_idx
from kdnas.errors import KdnasError


@pytest.fixture
def no_system_fashion_mnist(monkeypatch, tmp_path):
    """Point the system-wide Fashion-MNIST folder at an empty place, so only the test's files are seen."""
    monkeypatch.setattr(kdnas.data._builtin, "SYSTEM_FASHION_MNIST", tmp_path / "no-system-copy")


def ids(split) -> np.ndarray:
    """The id each written image carries in its first value."""
    return split.images.reshape(len(split), -1)[:, 0].numpy().astype(np.int64)


def check_split_matches_source(split, source_x: np.ndarray, source_y: np.ndarray) -> None:
    """Every image of ``split`` is the source image its id names, with that image's label."""
    for row, i in enumerate(ids(split)):
        assert np.array_equal(split.images[row].numpy(), source_x[i])
        assert split.labels[row].item() == source_y[i]


# ---------------------------------------------------------------------------------------------------
# The formats
# ---------------------------------------------------------------------------------------------------


def test_idx_writer_uses_the_real_magic_numbers(tmp_path, fashion_mnist_writer):
    fashion_mnist_writer(tmp_path, n_train=3, n_test=2)
    images = gzip.decompress((tmp_path / "train-images-idx3-ubyte.gz").read_bytes())
    labels = gzip.decompress((tmp_path / "train-labels-idx1-ubyte.gz").read_bytes())
    assert images[:16] == bytes.fromhex("00000803000000030000001c0000001c")
    assert labels[:8] == bytes.fromhex("0000080100000003")


@pytest.mark.parametrize("gz", [pytest.param(True, id="gz"), pytest.param(False, id="plain")])
def test_read_idx_round_trips(tmp_path, idx_writer, gz):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = idx_writer(tmp_path / ("a.gz" if gz else "a"), array)
    got = read_idx(path)
    assert got.dtype == np.uint8
    assert np.array_equal(got, array)
    got[0, 0, 0] = 99  # writable, so torch.from_numpy does not warn


def test_idx_with_missing_values_is_reported_as_truncated(tmp_path, idx_writer):
    path = idx_writer(tmp_path / "t10k-images-idx3-ubyte", np.zeros((4, 28, 28), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(KdnasError, match=r"t10k-images-idx3-ubyte is truncated: expected 3136 values, found 3036"):
        read_idx(path)


def test_cut_off_gz_download_is_reported(tmp_path, idx_writer):
    # What an interrupted download leaves: the gzip stream itself ends early.
    path = idx_writer(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((20, 28, 28), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(KdnasError, match="train-images-idx3-ubyte.gz"):
        read_idx(path)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        pytest.param("train-labels-idx1-ubyte", b"\x00\x00\x08\x01\x00\x00", id="cut-in-the-dims"),
        pytest.param("train-labels-idx1-ubyte", b"\x00\x00", id="cut-in-the-magic"),
        pytest.param("train-labels-idx1-ubyte", b"", id="empty"),
        pytest.param("train-labels-idx1-ubyte.gz", b"\x00\x00\x08\x01" + bytes(20), id="gz-name-not-gzip"),
    ],
)
def test_idx_with_a_broken_header_is_reported(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(KdnasError, match=name):
        read_idx(path)


def test_file_that_is_not_idx_is_reported(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(KdnasError, match="is not an idx file of unsigned bytes"):
        read_idx(path)


# ---------------------------------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layout", "gz"),
    [
        pytest.param("", True, id="data-dir-gz"),
        pytest.param("", False, id="data-dir-plain"),
        pytest.param("FashionMNIST/raw", True, id="torchvision-raw"),
        pytest.param("fashion-mnist", True, id="fashion-mnist-folder"),
    ],
)
def test_fashion_mnist_loads_from_each_layout(tmp_path, fashion_mnist_writer, no_system_fashion_mnist, layout, gz):
    train_x, train_y, test_x, test_y = fashion_mnist_writer(tmp_path / layout, n_train=50, n_test=12, gz=gz)
    data = load_data(DataConfig(dataset="fashion_mnist", val_fraction=0.2), tmp_path, download=False)
    assert data.info.name == "fashion_mnist"
    assert data.train.images.shape == (40, 1, 28, 28)
    assert data.val.images.shape == (10, 1, 28, 28)
    assert data.test.images.shape == (12, 1, 28, 28)
    for split in (data.train, data.val, data.test):
        assert split.images.dtype == torch.uint8
        assert split.labels.dtype == torch.int64
    check_split_matches_source(data.train, train_x[:, None], train_y)
    check_split_matches_source(data.val, train_x[:, None], train_y)
    assert np.array_equal(data.test.images.numpy(), test_x[:, None])  # the test split keeps its order
    assert np.array_equal(data.test.labels.numpy(), test_y)


def test_data_dir_is_preferred_over_the_system_copy(tmp_path, fashion_mnist_writer):
    fashion_mnist_writer(tmp_path, n_train=30, n_test=5)
    data = load_data(DataConfig(dataset="fashion_mnist"), tmp_path, download=False)
    assert len(data.train) + len(data.val) == 30


def test_cifar10_loads_all_five_batches(tmp_path, cifar10_writer):
    train_x, train_y, test_x, test_y = cifar10_writer(tmp_path, n_per_batch=8, n_test=10)
    data = load_data(DataConfig(dataset="cifar10", val_fraction=0.25), tmp_path, download=False)
    assert data.train.images.shape == (30, 3, 32, 32)
    assert data.val.images.shape == (10, 3, 32, 32)
    assert data.test.images.shape == (10, 3, 32, 32)
    assert data.train.images.dtype == torch.uint8 and data.train.labels.dtype == torch.int64
    assert sorted(np.concatenate([ids(data.train), ids(data.val)])) == list(range(40))
    check_split_matches_source(data.train, train_x, train_y)
    check_split_matches_source(data.val, train_x, train_y)
    assert np.array_equal(data.test.labels.numpy(), test_y)


def test_cifar_rows_are_read_as_red_green_blue_planes(tmp_path, cifar10_writer):
    cifar10_writer(tmp_path, n_per_batch=2, n_test=1)
    # Overwrite the test batch with one image whose planes are constant: 10 (red), 20 (green), 30 (blue).
    row = np.repeat(np.array([10, 20, 30], dtype=np.uint8), 1024)[None]
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"data": row, b"labels": [3]}, f, protocol=2)
    data = load_data(DataConfig(dataset="cifar10"), tmp_path, download=False)
    assert data.test.images[0, :, 5, 7].tolist() == [10, 20, 30]
    assert data.test.labels.tolist() == [3]


def test_cifar100_uses_the_fine_labels(tmp_path, cifar100_writer):
    train_x, train_y, test_x, test_y = cifar100_writer(tmp_path, n_train=30, n_test=10)
    data = load_data(DataConfig(dataset="cifar100", val_fraction=0.1), tmp_path, download=False)
    assert data.info.num_classes == 100
    assert (len(data.train), len(data.val), len(data.test)) == (27, 3, 10)
    check_split_matches_source(data.train, train_x, train_y)
    check_split_matches_source(data.val, train_x, train_y)
    assert np.array_equal(data.test.images.numpy(), test_x)
    assert np.array_equal(data.test.labels.numpy(), test_y)


@pytest.mark.parametrize(
    ("val_fraction", "limit_train", "limit_val", "sizes"),
    [
        pytest.param(0.1, None, None, (45, 5), id="tenth"),
        pytest.param(0.5, None, None, (25, 25), id="half"),
        pytest.param(0.001, None, None, (49, 1), id="at-least-one-val"),
        pytest.param(0.1, 20, None, (20, 5), id="limit-train-keeps-val-whole"),
        pytest.param(0.5, 10, None, (10, 25), id="limit-train-below-val"),
        pytest.param(0.4, None, 10, (30, 10), id="limit-val"),
        pytest.param(0.4, 12, 10, (12, 10), id="both-limits"),
        pytest.param(0.1, 500, 500, (45, 5), id="limits-above-size"),
    ],
)
def test_split_sizes(
    tmp_path, fashion_mnist_writer, no_system_fashion_mnist, val_fraction, limit_train, limit_val, sizes
):
    fashion_mnist_writer(tmp_path, n_train=50, n_test=4)
    cfg = DataConfig(dataset="fashion_mnist", val_fraction=val_fraction, limit_train=limit_train, limit_val=limit_val)
    data = load_data(cfg, tmp_path, download=False)
    assert (len(data.train), len(data.val)) == sizes
    assert len(set(ids(data.train)) | set(ids(data.val))) == sum(sizes)  # disjoint


def test_limits_shorten_the_splits_without_changing_which_images_they_start_with(
    tmp_path, fashion_mnist_writer, no_system_fashion_mnist
):
    # The validation set is carved from the whole training set first: limit_train takes a prefix of the
    # same training order and never moves an image into or out of validation; limit_val a prefix of it.
    fashion_mnist_writer(tmp_path, n_train=100, n_test=4)
    whole = load_data(DataConfig(dataset="fashion_mnist", val_fraction=0.3), tmp_path, download=False)
    cfg = DataConfig(dataset="fashion_mnist", val_fraction=0.3, limit_train=20, limit_val=10)
    limited = load_data(cfg, tmp_path, download=False)
    assert list(ids(limited.train)) == list(ids(whole.train))[:20]
    assert list(ids(limited.val)) == list(ids(whole.val))[:10]
    assert limited.fingerprint != whole.fingerprint


def test_split_that_leaves_no_training_image_is_a_user_error(tmp_path, cifar10_writer):
    # 20 images with val_fraction 0.99: round(19.8) = 20 go to validation and nothing is left to train on.
    cifar10_writer(tmp_path, n_per_batch=4, n_test=1)
    with pytest.raises(KdnasError, match="val_fraction=0.99 of 20 images leaves no training image; lower val_fraction"):
        load_data(DataConfig(dataset="cifar10", val_fraction=0.99), tmp_path, download=False)


def test_same_seed_gives_the_same_split(tmp_path, cifar100_writer):
    cifar100_writer(tmp_path, n_train=30, n_test=2)
    a = load_data(DataConfig(dataset="cifar100", seed=7, val_fraction=0.3), tmp_path, download=False)
    b = load_data(DataConfig(dataset="cifar100", seed=7, val_fraction=0.3), tmp_path, download=False)
    assert torch.equal(a.val.images, b.val.images) and torch.equal(a.train.labels, b.train.labels)
    assert a.fingerprint == b.fingerprint


def test_different_seed_gives_a_different_split(tmp_path, cifar100_writer):
    cifar100_writer(tmp_path, n_train=30, n_test=2)
    a = load_data(DataConfig(dataset="cifar100", seed=7, val_fraction=0.3), tmp_path, download=False)
    b = load_data(DataConfig(dataset="cifar100", seed=8, val_fraction=0.3), tmp_path, download=False)
    assert set(ids(a.val)) != set(ids(b.val))
    assert a.fingerprint != b.fingerprint


def test_data_settings_default_to_the_dataset_and_can_be_overridden(tmp_path, cifar10_writer):
    cifar10_writer(tmp_path, n_per_batch=2, n_test=1)
    default = load_data(DataConfig(dataset="cifar10"), tmp_path, download=False)
    custom = load_data(DataConfig(dataset="cifar10", crop_padding=0, flip=False), tmp_path, download=False)
    assert (default.crop_padding, default.flip) == (4, True)
    assert (custom.crop_padding, custom.flip) == (0, False)
    assert default.fingerprint != custom.fingerprint


@pytest.mark.parametrize(
    ("dataset", "expected"),
    [
        pytest.param("cifar10", "cifar-10-batches-py", id="cifar10"),
        pytest.param("cifar100", "cifar-100-python", id="cifar100"),
    ],
)
def test_missing_cifar_says_where_and_how(tmp_path, dataset, expected):
    with pytest.raises(KdnasError) as info:
        load_data(DataConfig(dataset=dataset), tmp_path, download=False)
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / expected) in message
    assert "download" in message and "--data-dir" in message


def test_missing_fashion_mnist_says_where_and_how(tmp_path, no_system_fashion_mnist):
    with pytest.raises(KdnasError) as info:
        load_data(DataConfig(dataset="fashion_mnist"), tmp_path, download=False)
    message = str(info.value)
    assert "\n" not in message
    assert f"looked in {tmp_path}, {tmp_path / 'FashionMNIST' / 'raw'}" in message
    assert "apt-get install dataset-fashion-mnist" in message and "--data-dir" in message


def test_failed_download_is_one_line_that_says_why_and_what_to_install(tmp_path, monkeypatch, no_system_fashion_mnist):
    import torchvision

    with socket.socket() as s:  # a port nothing listens on once closed: the download fails as offline
        s.bind(("127.0.0.1", 0))
        monkeypatch.setattr(torchvision.datasets.FashionMNIST, "mirrors", [f"http://127.0.0.1:{s.getsockname()[1]}/"])
    data_dir = tmp_path / "data"
    with pytest.raises(KdnasError) as info:
        load_data(DataConfig(dataset="fashion_mnist"), data_dir, download=True)
    message = str(info.value)
    assert "\n" not in message and "downloading it failed: <urlopen error" in message and "refused" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert not data_dir.exists()  # the folder the download created is not left behind, empty


def test_fashion_mnist_with_one_file_missing_is_not_found(tmp_path, fashion_mnist_writer, no_system_fashion_mnist):
    fashion_mnist_writer(tmp_path, n_train=10, n_test=2)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(KdnasError, match="Fashion-MNIST not found"):
        load_data(DataConfig(dataset="fashion_mnist"), tmp_path, download=False)


def test_truncated_fashion_mnist_file_is_reported(tmp_path, fashion_mnist_writer, no_system_fashion_mnist):
    fashion_mnist_writer(tmp_path, n_train=20, n_test=4, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(KdnasError, match="train-images-idx3-ubyte is truncated"):
        load_data(DataConfig(dataset="fashion_mnist"), tmp_path, download=False)


def test_corrupted_cifar_batch_is_reported(tmp_path, cifar10_writer):
    cifar10_writer(tmp_path, n_per_batch=2, n_test=1)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:50])
    with pytest.raises(KdnasError, match=r"data_batch_3 is not a readable CIFAR-10 batch .*re-download it"):
        load_data(DataConfig(dataset="cifar10"), tmp_path, download=False)


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(KdnasError) as info:
        DataConfig(dataset="cifar11")
    assert str(info.value) == (
        "dataset: unknown dataset 'cifar11' (did you mean 'cifar10'?); "
        "known: cifar10, cifar100, fashion_mnist, imagefolder, or torchvision:<Class>"
    )


def test_a_torchvision_class_named_alone_is_suggested_with_its_prefix():
    with pytest.raises(KdnasError, match=r"unknown dataset 'mnist' \(did you mean 'torchvision:MNIST'\?\)"):
        DataConfig(dataset="mnist")


def test_normalize_uses_the_dataset_statistics():
    info = DATASETS.get("cifar10")
    images = torch.full((1, 3, 2, 2), 128, dtype=torch.uint8)
    out = normalize(images, info)
    expected = [(128 / 255 - m) / s for m, s in zip(info.mean, info.std, strict=True)]
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor(expected), rtol=1e-5, atol=1e-6)
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)


# ---------------------------------------------------------------------------------------------------
# AugmentedViews
# ---------------------------------------------------------------------------------------------------


def reference_view(image: torch.Tensor, dy: int, dx: int, flip: bool, padding: int) -> torch.Tensor:
    """Zero-pad, slice the crop, then mirror it: one image (C, H, W) uint8, done the plain way."""
    c, h, w = image.shape
    padded = np.zeros((c, h + 2 * padding, w + 2 * padding), dtype=np.uint8)
    padded[:, padding : padding + h, padding : padding + w] = image.numpy()
    crop = padded[:, dy : dy + h, dx : dx + w]
    if flip:
        crop = crop[:, :, ::-1]
    return torch.from_numpy(crop.copy())


@pytest.mark.parametrize(
    ("padding", "flip"),
    [
        pytest.param(2, True, id="pad2-flip"),
        pytest.param(1, False, id="pad1-noflip"),
        pytest.param(3, True, id="pad3-flip"),
    ],
)
def test_views_match_a_per_image_reference(image_data_factory, padding, flip):
    data = image_data_factory(n_train=24, crop_padding=padding, flip=flip)
    views = AugmentedViews(data)
    for epoch in (0, 3):
        dy, dx, flips = views.epoch_params(epoch)
        assert dy.min() >= 0 and dy.max() <= 2 * padding and dx.min() >= 0 and dx.max() <= 2 * padding
        indices = torch.arange(len(views))
        got = views.batch(indices, (dy, dx, flips))
        for i in range(len(views)):
            expected = reference_view(data.train.images[i], int(dy[i]), int(dx[i]), bool(flips[i]), padding)
            assert torch.equal(got[i], normalize(expected[None], data.info)[0]), (epoch, i)


def test_offsets_and_flips_cover_their_range(image_data_factory):
    views = AugmentedViews(image_data_factory(n_train=200, crop_padding=2, flip=True))
    dy, dx, flips = views.epoch_params(0)
    assert set(dy.tolist()) == set(range(5)) and set(dx.tolist()) == set(range(5))
    assert 0 < flips.sum().item() < 200


def test_no_flip_when_flip_is_off(image_data_factory):
    data = image_data_factory(n_train=64, crop_padding=0, flip=False)
    views = AugmentedViews(data)
    for epoch in range(3):
        params = views.epoch_params(epoch)
        assert not params[2].any()
        # No padding and no flip: every view is the image itself.
        assert torch.equal(views.batch(torch.arange(64), params), normalize(data.train.images, data.info))


def test_view_does_not_depend_on_batch_grouping(image_data_factory):
    views = AugmentedViews(image_data_factory(n_train=20, crop_padding=2, flip=True, seed=5))
    params = views.epoch_params(2)
    whole = views.batch(torch.arange(20), params)
    order = torch.tensor([7, 3, 19, 0, 12, 5, 1, 2, 4, 6, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18])
    pieces = [order[:1], order[1:6], order[6:]]
    for piece in pieces:
        assert torch.equal(views.batch(piece, params), whole[piece])


def test_view_is_a_function_of_seed_image_and_epoch(image_data_factory):
    # Two separately built views of the same data agree, whatever epochs were visited before.
    a = AugmentedViews(image_data_factory(n_train=20, crop_padding=2, flip=True, seed=5))
    b = AugmentedViews(image_data_factory(n_train=20, crop_padding=2, flip=True, seed=5))
    a.epoch_params(0), a.epoch_params(1)
    indices = torch.tensor([4, 9, 11])
    assert torch.equal(a.batch(indices, a.epoch_params(3)), b.batch(indices, b.epoch_params(3)))
    assert torch.equal(a.order(3), b.order(3))


def test_different_epochs_give_different_views(image_data_factory):
    views = AugmentedViews(image_data_factory(n_train=32, crop_padding=2, flip=True))
    indices = torch.arange(32)
    assert not torch.equal(views.batch(indices, views.epoch_params(0)), views.batch(indices, views.epoch_params(1)))
    assert not torch.equal(views.order(0), views.order(1))


def test_different_seeds_give_different_views(image_data_factory):
    a = AugmentedViews(image_data_factory(n_train=32, crop_padding=2, flip=True, seed=1))
    b = AugmentedViews(image_data_factory(n_train=32, crop_padding=2, flip=True, seed=2))
    assert not all(torch.equal(x, y) for x, y in zip(a.epoch_params(0), b.epoch_params(0), strict=True))


def test_order_is_a_permutation(image_data_factory):
    views = AugmentedViews(image_data_factory(n_train=50))
    assert sorted(views.order(4).tolist()) == list(range(50))


def test_views_of_image_data_built_by_load_data(tmp_path, cifar10_writer):
    cifar10_writer(tmp_path, n_per_batch=4, n_test=2)
    data: ImageData = load_data(DataConfig(dataset="cifar10"), tmp_path, download=False)
    views = AugmentedViews(data)
    out = views.batch(torch.arange(len(views)), views.epoch_params(0))
    assert out.shape == (len(data.train), 3, 32, 32) and out.dtype == torch.float32
