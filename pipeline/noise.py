"""The image noise of a series, estimated from its heart crop (pure numpy).

Noise specks and the faintest plaques look alike (``candidate_classifier.faint``);
which one a faint candidate is depends on how noisy the scan is: in a quiet
scan a 160 HU spot is unlikely to be noise, in a noisy one it often is.
"""

from __future__ import annotations

import numpy as np

_BLOCK_PX = 8  # side of the in-plane blocks
_FLAT_MEAN_HU = (-150.0, 100.0)  # fat, blood, muscle: no lung, no bone
_FLAT_RANGE_HU = (-400.0, 400.0)  # a block reaching outside holds an edge or calcium


def noise_sd_hu(hu_crop: np.ndarray) -> float:
    """Median standard deviation (HU) of the flat soft-tissue blocks of ``hu_crop`` (slices, rows, cols).

    Blocks are ``_BLOCK_PX`` pixels square on each slice; a block is flat when
    its mean is fat to muscle and no voxel of it is lung or bone.  On the
    phantoms the estimate is within about 3 HU of the true noise SD, a little
    under it for coarse-grained noise (model card).  0.0 when no block is flat.
    """
    z, rows, cols = hu_crop.shape
    r, c = rows // _BLOCK_PX * _BLOCK_PX, cols // _BLOCK_PX * _BLOCK_PX
    if not (z and r and c):
        return 0.0
    blocks = hu_crop[:, :r, :c].astype(np.float32, copy=False).reshape(
        z, r // _BLOCK_PX, _BLOCK_PX, c // _BLOCK_PX, _BLOCK_PX).transpose(0, 1, 3, 2, 4).reshape(-1, _BLOCK_PX**2)
    mean = blocks.mean(axis=1)
    flat = ((mean > _FLAT_MEAN_HU[0]) & (mean < _FLAT_MEAN_HU[1])
            & (blocks.min(axis=1) > _FLAT_RANGE_HU[0]) & (blocks.max(axis=1) < _FLAT_RANGE_HU[1]))
    if not flat.any():
        return 0.0
    return float(np.median(blocks[flat].std(axis=1)))
