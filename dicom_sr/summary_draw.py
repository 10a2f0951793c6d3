"""Drawing helpers of the summary image: key-slice choice, CT tiles with lesion outlines, fonts.

Pure functions on arrays and Pillow images; nothing here knows DICOM.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from pipeline.scoring.arteries import ARTERIES

# One colour per artery, from the Okabe-Ito palette (distinguishable with the
# common colour-vision deficiencies), bright enough on a grey CT background.
ARTERY_COLOURS: dict[str, tuple[int, int, int]] = {
    "LM": (240, 228, 66),  # yellow
    "LAD": (86, 180, 233),  # sky blue
    "LCX": (0, 200, 140),  # bluish green
    "RCA": (230, 97, 0),  # vermillion
}

# Calcium that no artery counts (``pipeline.scoring.uncounted``): light grey, apart from every
# artery colour, and lighter than the soft tissue it is drawn on.
UNCOUNTED_COLOUR: tuple[int, int, int] = (200, 200, 200)

# Mediastinal window: calcium (>= 130 HU) shows near white, soft tissue grey.
WINDOW_CENTRE_HU = 40.0
WINDOW_WIDTH_HU = 400.0

_DEJAVU = Path("/usr/share/fonts/truetype/dejavu")


@lru_cache(maxsize=16)
def font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans when installed, else Pillow's bundled default font, at ``size`` pixels."""
    path = _DEJAVU / ("DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf")
    if path.is_file():
        return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size)


def text_width(draw: ImageDraw.ImageDraw, text: str, face: ImageFont.ImageFont) -> int:
    """Width in pixels of ``text`` drawn in ``face``."""
    left, _, right, _ = draw.textbbox((0, 0), text, font=face)
    return int(right - left)


def wrap(draw: ImageDraw.ImageDraw, text: str, face: ImageFont.ImageFont, width: int) -> list[str]:
    """Greedy word wrap of ``text`` into lines no wider than ``width`` pixels."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if line and text_width(draw, candidate, face) > width:
            lines.append(line)
            line = word
        else:
            line = candidate
    if line:
        lines.append(line)
    return lines


def calcium_per_slice(hu: np.ndarray, labels: np.ndarray, threshold_hu: float) -> np.ndarray:
    """Labelled voxels at or above the calcium threshold, per artery and slice: (4, slices)."""
    calcium = np.where(hu >= threshold_hu, labels, 0)
    return np.stack([np.count_nonzero(calcium == a.label, axis=(1, 2)) for a in ARTERIES])


def key_slices(per_slice: np.ndarray, n: int, min_gap: int = 2) -> list[int]:
    """Up to ``n`` slice indices to show, in index order.

    ``per_slice`` is :func:`calcium_per_slice` (arteries x slices).  First the
    slice with the most calcium of each artery (arteries with more calcium
    first), so every artery with calcium is seen; then the slices with the
    most calcium overall.  Chosen slices are at least ``min_gap`` apart, as
    adjacent slices usually show the same lesion.  A series without calcium
    gets its middle slice, so the image still shows what was scored.
    """
    total = per_slice.sum(axis=0)
    chosen: list[int] = []

    def take(k: int) -> None:
        if len(chosen) < n and total[k] > 0 and all(abs(k - c) >= min_gap for c in chosen):
            chosen.append(k)

    for artery in np.argsort(-per_slice.max(axis=1), kind="stable"):
        take(int(np.argmax(per_slice[artery])))
    for k in np.argsort(-total, kind="stable"):
        take(int(k))
    return sorted(chosen) if chosen else [per_slice.shape[1] // 2]


def crop_box(
    labels: np.ndarray, pixel_spacing_mm: tuple[float, float], margin_mm: float = 15.0, min_side_mm: float = 80.0
) -> tuple[int, int, int, int]:
    """A square (row0, row1, col0, col1) around all labelled voxels, so lesions are large on the tiles.

    Without labels the whole slice is shown.
    """
    rows, cols = labels.shape[1:]
    where = np.nonzero(labels.any(axis=0))
    if where[0].size == 0:
        return 0, rows, 0, cols
    spacing = min(pixel_spacing_mm)
    centre = ((where[0].min() + where[0].max()) / 2, (where[1].min() + where[1].max()) / 2)
    extent = max(where[0].max() - where[0].min(), where[1].max() - where[1].min()) + 1
    side = int(round(max(extent + 2 * margin_mm / spacing, min_side_mm / spacing)))
    side = min(side, rows, cols)
    r0 = int(np.clip(round(centre[0] - side / 2), 0, rows - side))
    c0 = int(np.clip(round(centre[1] - side / 2), 0, cols - side))
    return r0, r0 + side, c0, c0 + side


def render_tile(
    hu_slice: np.ndarray,
    label_slice: np.ndarray,
    threshold_hu: float,
    box: tuple[int, int, int, int],
    size: int,
    uncounted_slice: np.ndarray | None = None,
) -> Image.Image:
    """One CT slice, windowed, cropped to ``box``, scaled to ``size`` pixels, calcium outlined per artery.

    Only labelled voxels at or above ``threshold_hu`` are outlined: that is the
    calcium the score counts, not the whole labelled region.  ``uncounted_slice``
    (boolean, the slice of ``UncountedCalcium.mask()``) is outlined in
    :data:`UNCOUNTED_COLOUR`: calcium of the heart crop that no artery counts.
    """
    r0, r1, c0, c1 = box
    low = WINDOW_CENTRE_HU - WINDOW_WIDTH_HU / 2
    grey = np.clip((hu_slice[r0:r1, c0:c1] - low) * (255.0 / WINDOW_WIDTH_HU), 0, 255).astype(np.uint8)
    tile = Image.fromarray(grey, mode="L").resize((size, size), Image.Resampling.BILINEAR).convert("RGB")
    pixels = np.array(tile)
    crop = np.where(hu_slice[r0:r1, c0:c1] >= threshold_hu, label_slice[r0:r1, c0:c1], 0)
    thickness = max(2, size // 200)
    masks = [(crop == a.label, ARTERY_COLOURS[a.name]) for a in ARTERIES]
    if uncounted_slice is not None:
        masks.append((uncounted_slice[r0:r1, c0:c1], UNCOUNTED_COLOUR))
    for mask, colour in masks:
        if not mask.any():
            continue
        big = np.array(Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.Resampling.NEAREST)) > 0
        # Outline drawn just outside the lesion so the calcium itself stays visible.
        grown = ndimage.binary_dilation(big, iterations=thickness)
        if colour == UNCOUNTED_COLOUR:
            # Grey next to white calcium and grey tissue needs a dark edge to be seen.
            pixels[ndimage.binary_dilation(grown, iterations=max(1, thickness // 2)) & ~grown] = (0, 0, 0)
        pixels[grown & ~big] = colour
    return Image.fromarray(pixels)
