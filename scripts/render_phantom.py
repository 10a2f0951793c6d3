"""Render axial slices of a phantom case to PNG (window 40/400) with the true lesions outlined.

Usage::

    python scripts/render_phantom.py SEED OUT_DIR [--shifted] [--slices K ...]

Without ``--slices`` it renders the slice with the most labelled voxels, the
slice of the coronary ostia (z = 0) and two slices through the ventricles.
Outline colours: LM yellow, LAD red, LCX green, RCA blue; distractors magenta.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from training.phantom.generate import PhantomCase, generate_case

COLOURS = {1: (255, 230, 0), 2: (255, 40, 40), 3: (40, 220, 40), 4: (60, 120, 255)}
DISTRACTOR = (255, 0, 255)


def window(hu: np.ndarray, centre: float = 40.0, width: float = 400.0) -> np.ndarray:
    """8-bit grey levels of ``hu`` under the given window."""
    lo = centre - width / 2
    return (np.clip((hu - lo) / width, 0.0, 1.0) * 255).astype(np.uint8)


def render_slice(case: PhantomCase, k: int) -> Image.Image:
    """Slice ``k`` (ascending z) as RGB with lesion and distractor outlines."""
    grey = window(case.hu[k])
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    for value, colour in COLOURS.items():
        mask = case.labels[k] == value
        if mask.any():
            edge = ndimage.binary_dilation(mask, iterations=2) & ~mask
            rgb[edge] = colour
    mask = case.distractors[k]
    if mask.any():
        edge = ndimage.binary_dilation(mask, iterations=2) & ~mask
        rgb[edge] = DISTRACTOR
    return Image.fromarray(rgb)


def default_slices(case: PhantomCase) -> list[int]:
    """The most calcified slice, the ostia slice and two ventricle slices."""
    g = case.params.grid
    zs = g.origin_mm[2] + g.increment_mm * np.arange(g.n_slices)
    ostia = int(np.argmin(np.abs(zs)))
    counts = case.labels.reshape(g.n_slices, -1).astype(bool).sum(axis=1)
    picks = [ostia, int(np.argmin(np.abs(zs + 35.0))), int(np.argmin(np.abs(zs + 70.0)))]
    if counts.any():
        picks.insert(0, int(np.argmax(counts)))
    return list(dict.fromkeys(picks))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("seed", type=int)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--shifted", action="store_true")
    parser.add_argument("--slices", type=int, nargs="*")
    args = parser.parse_args()
    case = generate_case(args.seed, shifted=args.shifted)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    g = case.params.grid
    for k in args.slices or default_slices(case):
        z = g.origin_mm[2] + g.increment_mm * k
        path = args.out_dir / f"case-{args.seed:04d}-k{k:03d}.png"
        render_slice(case, k).save(path)
        print(f"{path}  z={z:.1f} mm  labelled voxels {int(np.count_nonzero(case.labels[k]))}")
    print(f"total Agatston {case.truth['total']['agatston']:.1f}  severity {case.params.calcium.severity}")


if __name__ == "__main__":
    main()
