"""The image noise of a series, estimated from its heart crop (pure numpy).

Noise specks and the faintest plaques look alike (``candidate_classifier.faint``);
which one a faint candidate is depends on how noisy the scan is: in a quiet
scan a 160 HU spot is unlikely to be noise, in a noisy one it often is.
"""

from __future__ import annotations

import numpy as np

_BLOCK_PX = 8  # side of the in-plane blocks (8: a block row of bools is one uint64, below)
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
    n_rows, n_cols = rows // _BLOCK_PX, cols // _BLOCK_PX
    if not (z and n_rows and n_cols):
        return 0.0
    grid = hu_crop[:, : n_rows * _BLOCK_PX, : n_cols * _BLOCK_PX].astype(np.float32, copy=False).reshape(
        z, n_rows, _BLOCK_PX, n_cols, _BLOCK_PX)
    # A block with a voxel out of range is never flat: only the others (about two in three) are
    # gathered.  A block row of 8 bools is read as one uint64, much faster than any() over it
    # (C order for that; a crop from ``extract`` is, so no copy).
    out_of_range = np.ascontiguousarray((grid <= _FLAT_RANGE_HU[0]) | (grid >= _FLAT_RANGE_HU[1]))
    in_range = np.flatnonzero(np.bitwise_or.reduce(out_of_range.view(np.uint64), axis=2) == 0)
    bz, br, bc = np.unravel_index(in_range, (z, n_rows, n_cols))
    blocks = grid[bz, br, :, bc, :].reshape(-1, _BLOCK_PX**2)  # each block's voxels row by row
    mean = blocks.mean(axis=1)
    flat = (mean > _FLAT_MEAN_HU[0]) & (mean < _FLAT_MEAN_HU[1])
    if not flat.any():
        return 0.0
    return float(np.median(blocks[flat].std(axis=1)))
