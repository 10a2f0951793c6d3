"""From voxel predictions to a label map: the candidate-lesion majority rule.

``calcium-scoring.md`` ("From model output to labels") recommends, and cacnode
implements exactly:

1. candidates are the 2-D connected components (per slice, the scoring
   connectivity) of ``hu >= threshold``;
2. a candidate is kept when *most* of its voxels are predicted coronary, i.e.
   strictly more than half of them have a predicted class 1-4.  A tie (exactly
   half) is not a majority and the candidate is dropped;
3. the whole kept candidate gets the artery predicted for most of its coronary
   voxels; a tie between arteries goes to the lower label value
   (LM < LAD < LCX < RCA), which is deterministic and documented;
4. every other voxel is 0.

The label map therefore marks only voxels at or above the threshold; scoring
(``pipeline.scoring.agatston``) then applies the definition unchanged.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from pipeline.scoring.arteries import N_CLASSES
from pipeline.scoring.agatston import in_plane_structure


def labels_from_predictions(
    hu: np.ndarray,
    predicted: np.ndarray,
    threshold_hu: float,
    connectivity: int = 8,
) -> np.ndarray:
    """Apply the candidate majority rule.

    Parameters
    ----------
    hu
        (slices, rows, columns) Hounsfield units.
    predicted
        Same shape, the class predicted per voxel (0 background, 1-4 arteries).
    threshold_hu
        Candidate threshold (the scoring threshold, 130 HU by default).
    connectivity
        2-D connectivity of a candidate within a slice, 4 or 8.

    Returns
    -------
    numpy.ndarray
        uint8 label map of the same shape.
    """
    if hu.shape != predicted.shape:
        raise ValueError(f"hu {hu.shape} and predictions {predicted.shape} differ in shape")
    candidates, n = ndimage.label(hu >= threshold_hu, structure=in_plane_structure(connectivity))
    if n == 0:
        return np.zeros(hu.shape, dtype=np.uint8)
    return majority_classes(candidates, n, predicted)[candidates]


def majority_classes(candidates: np.ndarray, n: int, classes: np.ndarray) -> np.ndarray:
    """Rules 2-3 per candidate: uint8 (n + 1,), entry i the class of candidate i (entry 0, outside, is 0).

    ``candidates`` labels the candidates 1..n (0 elsewhere); ``classes`` is a
    class per voxel (0 background, 1-4 arteries) of the same shape -- the
    network's predictions, or a reference annotation for training truth.
    """
    inside = candidates > 0
    ids = candidates[inside].astype(np.int64)
    voxel_classes = np.clip(classes[inside].astype(np.int64), 0, N_CLASSES - 1)
    # counts[i, k]: voxels of candidate i of class k.
    counts = np.bincount(ids * N_CLASSES + voxel_classes, minlength=(n + 1) * N_CLASSES).reshape(n + 1, N_CLASSES)
    size = counts.sum(axis=1)
    coronary = counts[:, 1:].sum(axis=1)
    keep = 2 * coronary > size  # strict majority; a tie is dropped
    artery = np.argmax(counts[:, 1:], axis=1) + 1  # argmax takes the first (lowest label) on ties
    per_candidate = np.where(keep, artery, 0).astype(np.uint8)
    per_candidate[0] = 0
    return per_candidate
