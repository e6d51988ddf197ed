"""Normalisation and seeded, batched augmentation of the training split."""

from __future__ import annotations

import torch

from kdnas.data._info import DatasetInfo
from kdnas.data._load import ImageData


def normalize(images: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    """uint8 (N, C, H, W) -> normalised float32, channels_last (faster convolutions on CPU and GPU)."""
    mean = torch.tensor(info.mean, device=images.device).view(1, -1, 1, 1) * 255
    std = torch.tensor(info.std, device=images.device).view(1, -1, 1, 1) * 255
    out = (images.float() - mean) / std
    return out.contiguous(memory_format=torch.channels_last)


class AugmentedViews:
    """Seeded, batched random crop + flip of the training split, on the split's device.

    The crop offset and flip of image ``i`` in epoch ``e`` depend only on (seed, i, e), so a view can
    be recomputed anywhere (and the teacher's output for it cached).
    """

    def __init__(self, data: ImageData) -> None:
        self.data = data
        p = data.crop_padding
        self._padded = torch.nn.functional.pad(data.train.images, (p, p, p, p))  # zero padding, uint8
        h, w = data.train.images.shape[-2:]
        device = data.train.images.device
        self._rows = torch.arange(h, device=device)
        self._cols = torch.arange(w, device=device)
        self._channels = torch.arange(data.train.images.shape[1], device=device)

    def __len__(self) -> int:
        return len(self.data.train)

    def _generator(self, epoch: int, stream: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.data.seed * 1_000_003 + epoch * 7 + stream)

    def order(self, epoch: int) -> torch.Tensor:
        """The batch order of ``epoch``: a seeded permutation of the training indices."""
        return torch.randperm(len(self), generator=self._generator(epoch, 0)).to(self._padded.device)

    def epoch_params(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Row offset, column offset (N,) and flip flag (N,) of every training image in ``epoch``."""
        n, p = len(self), self.data.crop_padding
        gen = self._generator(epoch, 1)
        dy = torch.randint(0, 2 * p + 1, (n,), generator=gen)
        dx = torch.randint(0, 2 * p + 1, (n,), generator=gen)
        flip = torch.rand(n, generator=gen) < 0.5 if self.data.flip else torch.zeros(n, dtype=torch.bool)
        device = self._padded.device
        return dy.to(device), dx.to(device), flip.to(device)

    def batch(self, indices: torch.Tensor, params: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The augmented, normalised views (B, C, H, W) of training images ``indices``."""
        dy, dx, flip = (t[indices] for t in params)
        width = len(self._cols)
        rows = dy[:, None] + self._rows  # (B, H)
        cols = torch.where(flip[:, None], width - 1 - self._cols, self._cols) + dx[:, None]  # (B, W)
        crops = self._padded[
            indices[:, None, None, None],
            self._channels[None, :, None, None],
            rows[:, None, :, None],
            cols[:, None, None, :],
        ]
        return normalize(crops, self.data.info)
