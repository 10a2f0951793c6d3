"""The outline of a lesion on one slice, as DICOM SCOORD pixel coordinates.

SCOORD Graphic Data (PS3.3 C.18.6.1.2) are (column, row) pairs with sub-pixel
resolution: 0.0\\0.0 is the top left corner of the top left pixel, so pixel
(r, c) is the square from (c, r) to (c + 1, r + 1).  The outline traced here
follows the edges of the lesion's pixels: the polygon it gives encloses
exactly those pixels, and every vertex lies on the image.
"""

from __future__ import annotations

import numpy as np

MAX_POINTS = 64  # a closed POLYLINE of at most this many points, the first repeated last

# Unit steps along pixel edges, clockwise on screen (rows grow downwards): right, down, left, up.
_STEPS = ((1, 0), (0, 1), (-1, 0), (0, -1))


def outline(mask: np.ndarray, row: int = 0, col: int = 0, max_points: int = MAX_POINTS) -> np.ndarray:
    """The closed outer outline of a connected 2-D mask, as float (column, row) vertices.

    Parameters
    ----------
    mask
        2-D bool, one 8-connected component (a lesion on its slice).
    row, col
        Where ``mask[0, 0]`` lies in the image.
    max_points
        At most this many vertices, the first repeated as the last.

    Returns
    -------
    numpy.ndarray
        (n, 2) vertices at pixel corners, first == last, clockwise on screen;
        only corners where the outline turns are kept, and if more remain an
        even selection of them.
    """
    if mask.ndim != 2 or not mask.any():
        raise ValueError("an outline needs a 2-D mask with at least one pixel")
    padded = np.pad(mask.astype(bool), 1)
    # Each pixel edge between the mask and the background, directed so the mask
    # is on its right when walking it (the outer boundary then runs clockwise).
    edges: dict[tuple[int, int], list[tuple[int, int]]] = {}
    rows, cols = np.nonzero(padded)
    for r, c in zip(rows.tolist(), cols.tolist()):
        x, y = c - 1, r - 1  # the pixel's top left corner, in mask coordinates
        if not padded[r - 1, c]:
            edges.setdefault((x, y), []).append((x + 1, y))
        if not padded[r, c + 1]:
            edges.setdefault((x + 1, y), []).append((x + 1, y + 1))
        if not padded[r + 1, c]:
            edges.setdefault((x + 1, y + 1), []).append((x, y + 1))
        if not padded[r, c - 1]:
            edges.setdefault((x, y + 1), []).append((x, y))
    # Start at the top edge of the first pixel in raster order: it is on the outer boundary.
    first = (int(cols[0]) - 1, int(rows[0]) - 1)
    points = [first]
    heading = 0
    here = first
    while True:
        nexts = edges[here]
        if len(nexts) == 1:
            target = nexts[0]
        else:
            # Two pixels touching only at this corner: turn left first so that
            # diagonal neighbours stay on one outline (8-connectivity).
            options = {_STEPS.index((t[0] - here[0], t[1] - here[1])): t for t in nexts}
            target = next(options[h] for h in ((heading - 1) % 4, heading, (heading + 1) % 4) if h in options)
        nexts.remove(target)
        heading = _STEPS.index((target[0] - here[0], target[1] - here[1]))
        here = target
        if here == first:
            break
        points.append(here)
    vertices = _corners(np.asarray(points, dtype=float))
    if len(vertices) > max_points - 1:
        vertices = vertices[np.linspace(0, len(vertices), max_points - 1, endpoint=False).astype(int)]
    vertices = np.vstack([vertices, vertices[:1]])
    return vertices + np.array([col, row], dtype=float)


def _corners(points: np.ndarray) -> np.ndarray:
    """The points of a closed path (without the repeated first point) where its direction changes."""
    before = points - np.roll(points, 1, axis=0)
    after = np.roll(points, -1, axis=0) - points
    turns = (before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]) != 0
    return points[turns]
