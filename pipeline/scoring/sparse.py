"""The nonzero elements of a mostly-zero array, found fast (pure numpy).

A label map holds a few hundred labelled voxels among millions, a candidate
map of a heart crop a few per cent: reading the array 8 bytes at a time and
looking closer only at the nonzero words is several times faster than
``np.flatnonzero`` over every element, and gives the same indices.
"""

from __future__ import annotations

import numpy as np


def flat_nonzero(a: np.ndarray) -> np.ndarray:
    """``np.flatnonzero(a)`` (ascending flat indices) for an integer or bool array, fast when it is mostly 0."""
    flat = a.reshape(-1)
    if flat.dtype.kind not in "biu" or flat.nbytes % 8 or not flat.flags.c_contiguous:
        return np.flatnonzero(flat)
    words = np.flatnonzero(flat.view(np.uint64))
    per_word = 8 // flat.itemsize
    candidates = (words[:, None] * per_word + np.arange(per_word)).reshape(-1)
    return candidates[flat[candidates] != 0]
