"""Datasets in their real on-disk formats, loaded once into uint8 tensors, and seeded augmentation.

Every dataset becomes three splits of (N, C, H, W) uint8 images and int64 labels: ``train`` and
``val`` (carved from the official training set with a seeded permutation) and ``test``. Augmentation
(random crop with zero padding, horizontal flip) runs on whole batches with tensor ops on the training
device, and the view of training image ``i`` in epoch ``e`` is a pure function of (seed, i, e): the
teacher's soft targets for a view can be computed once and reused by every trial.

Each source lives in its own private module (``_builtin``: Fashion-MNIST and CIFAR files; ``_folder``: image
folders; ``_torchvision_sets``: any torchvision dataset); ``load_data`` (``_load``) reads any of them.
"""

from kdnas.data._augment import AugmentedViews, normalize
from kdnas.data._builtin import read_idx
from kdnas.data._info import DATASETS, DatasetInfo
from kdnas.data._load import IMAGEFOLDER, ImageData, Split, check_dataset, load_data
from kdnas.data._selection import SoftTargetBytes

__all__ = [
    "DATASETS",
    "IMAGEFOLDER",
    "AugmentedViews",
    "DatasetInfo",
    "ImageData",
    "SoftTargetBytes",
    "Split",
    "check_dataset",
    "load_data",
    "normalize",
    "read_idx",
]
