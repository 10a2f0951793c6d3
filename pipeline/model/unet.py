"""The network: a compact 3-D U-Net giving a class per grid cell (0 background, 1-4 arteries).

A plain ``nn.Module`` and its frozen config, importable without Lightning
(``training.module`` wraps it).  The input is the output of
``pipeline.model.preprocess`` (z, grid, grid) with native slices: the first pooling
is in-plane only because slices (2.5-3 mm) are about twice as thick as the
1.4 mm cells, so the first level works on roughly isotropic context.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pipeline.scoring.arteries import N_CLASSES
from pipeline.model.preprocess import N_INPUT_CHANNELS


@dataclass(frozen=True)
class UNetConfig:
    """Architecture arguments; saved in the weights file so loading needs nothing else."""

    in_channels: int = N_INPUT_CHANNELS
    n_classes: int = N_CLASSES
    # Channels per level; 4 levels -> 3 poolings: (1,2,2), (2,2,2), (2,2,2).
    channels: tuple[int, ...] = (12, 24, 48, 64)
    dropout: float = 0.1  # at the bottleneck only

    @property
    def z_multiple(self) -> int:
        """Slices must be a multiple of this (product of the z poolings)."""
        return 2 ** max(0, len(self.channels) - 2)

    @property
    def grid_multiple(self) -> int:
        return 2 ** (len(self.channels) - 1)


def _pool_kernel(level: int) -> tuple[int, int, int]:
    return (1, 2, 2) if level == 0 else (2, 2, 2)


class ConvBlock(nn.Sequential):
    """Two 3x3x3 convolutions, each with instance norm and leaky ReLU.

    Instance norm rather than batch norm: batches are 1-4 volumes on CPU.
    """

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(
            nn.Conv3d(c_in, c_out, 3, padding=1, bias=False),
            nn.InstanceNorm3d(c_out, affine=True),
            nn.LeakyReLU(0.01, inplace=True),
            nn.Conv3d(c_out, c_out, 3, padding=1, bias=False),
            nn.InstanceNorm3d(c_out, affine=True),
            nn.LeakyReLU(0.01, inplace=True),
        )


class UNet3D(nn.Module):
    """3-D U-Net: (batch, in_channels, z, grid, grid) -> logits (batch, n_classes, z, grid, grid)."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        ch = config.channels
        self.down = nn.ModuleList()
        c_prev = config.in_channels
        for c in ch:
            self.down.append(ConvBlock(c_prev, c))
            c_prev = c
        self.pools = nn.ModuleList(nn.MaxPool3d(_pool_kernel(i)) for i in range(len(ch) - 1))
        self.ups = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for i in reversed(range(len(ch) - 1)):
            k = _pool_kernel(i)
            self.ups.append(nn.ConvTranspose3d(ch[i + 1], ch[i], kernel_size=k, stride=k))
            self.up_blocks.append(ConvBlock(2 * ch[i], ch[i]))
        self.dropout = nn.Dropout3d(config.dropout)
        self.head = nn.Conv3d(ch[0], config.n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < len(self.pools):
                skips.append(x)
                x = self.pools[i](x)
        x = self.dropout(x)
        for up, block in zip(self.ups, self.up_blocks):
            x = up(x)
            x = block(torch.cat([x, skips.pop()], dim=1))
        return self.head(x)
