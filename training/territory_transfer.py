"""How far artery territories carry from one phantom family to the other, by position alone.

A study for whoever changes how the model places calcium in an artery.  Every
true lesion (3-D component of one artery's truth label) of phantoms of both
families is placed by its centroid, in millimetres, from two origins:

- ``centre``: the heart centre the classical localiser finds
  (``pipeline.model.heart``), the origin of the model's position features;
- ``root``: the generator's own aortic root, the landmark an anatomical frame
  would aim for (the coronary ostia sit on it), found here without error.

A k-nearest-neighbour vote over the lesions of one family then names the
artery of each lesion of the other.  The share of lesion volume named right
says how far a territory learnt in that frame carries to the other family.
If it stays far below what one family gives on its own lesions even from the
true root, no positional frame will carry the territories: the two generators
lay the arteries out differently round the same landmark.  The vote is a
few lines of numpy rather than a scikit-learn dependency for one study.

Usage::

    python -m training.territory_transfer --first-seed 60000 --n 60 --workers 2
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pipeline.model.heart import HeartLocatorSettings, locate_heart
from pipeline.scoring.arteries import ARTERY_NAMES
from training.families import FAMILIES, Family, generate

ORIGINS = ("centre", "root")


@dataclass(frozen=True)
class LesionPositions:
    """The true lesions of one or more phantoms."""

    artery: np.ndarray  # int64 (n,): 1 LM, 2 LAD, 3 LCX, 4 RCA
    voxels: np.ndarray  # int64 (n,): size, the weight of each lesion
    from_centre: np.ndarray  # float64 (n, 3): centroid minus the localiser's heart centre, patient (x, y, z) mm
    from_root: np.ndarray  # float64 (n, 3): centroid minus the true aortic root centre

    def offsets(self, origin: str) -> np.ndarray:
        return self.from_centre if origin == "centre" else self.from_root

    @staticmethod
    def joined(parts: Sequence[LesionPositions]) -> LesionPositions:
        return LesionPositions(*(np.concatenate([getattr(p, f) for p in parts])
                                 for f in ("artery", "voxels", "from_centre", "from_root")))


def aortic_root_mm(family: Family, seed: int) -> np.ndarray:
    """The centre of the aortic root of phantom ``seed``, patient (x, y, z) mm, from the generator itself."""
    if family == "a":
        from training.phantom.anatomy import build_thorax
        from training.phantom.params import draw_params

        return np.asarray(build_thorax(draw_params(seed, False, False)).frame.root, dtype=np.float64)
    from training.phantom_b.params import draw_params as draw_b
    from training.phantom_b.scene import build_scene

    return np.asarray(build_scene(draw_b(seed)).heart.root.center, dtype=np.float64)


def lesion_positions(family: Family, seed: int) -> LesionPositions:
    """Where the true lesions of phantom ``seed`` of ``family`` lie, from both origins."""
    case = generate(family, seed)
    lowest = min(case.datasets, key=lambda ds: float(ds.ImagePositionPatient[2]))
    if [round(float(v)) for v in lowest.ImageOrientationPatient] != [1, 0, 0, 0, 1, 0]:
        raise ValueError(f"phantom {family}{seed}: not an axial series in standard orientation")
    origin = np.array([float(v) for v in lowest.ImagePositionPatient])
    pixel = float(lowest.PixelSpacing[0])
    z = np.sort([float(ds.ImagePositionPatient[2]) for ds in case.datasets])
    increment = float(np.median(np.diff(z)))

    def to_mm(k: float, row: float, col: float) -> np.ndarray:
        return origin + np.array([col * pixel, row * pixel, k * increment])

    where = locate_heart(case.hu, (pixel, pixel), increment, HeartLocatorSettings())
    centre = to_mm(0.5 * (where.z0 + where.z1 - 1), where.centre_row, where.centre_col)
    root = aortic_root_mm(family, seed)
    artery, voxels, points = [], [], []
    for index in range(1, len(ARTERY_NAMES) + 1):
        components, n = ndimage.label(case.labels == index)
        if not n:
            continue
        inside = components > 0  # every voxel weighs the same
        sizes = ndimage.sum_labels(inside, components, np.arange(1, n + 1))
        centroids = ndimage.center_of_mass(inside, components, np.arange(1, n + 1))
        artery += [index] * n
        voxels += list(sizes)
        points += [to_mm(*c) for c in centroids]
    at = np.array(points).reshape(-1, 3)
    return LesionPositions(np.array(artery, np.int64), np.array(voxels, np.int64), at - centre, at - root)


def nearest_artery(known: np.ndarray, known_artery: np.ndarray, asked: np.ndarray, k: int = 7) -> np.ndarray:
    """The artery most of the ``k`` nearest known lesions belong to, for every asked position (ties: the
    nearest's)."""
    if not len(asked):
        return np.zeros(0, np.int64)
    distance = np.linalg.norm(asked[:, None, :] - known[None, :, :], axis=2)
    nearest = np.argsort(distance, axis=1)[:, :k]
    votes = known_artery[nearest]
    counts = np.stack([(votes == a).sum(axis=1) for a in range(len(ARTERY_NAMES) + 1)], axis=1)
    best = counts.max(axis=1, keepdims=True)
    # Among the arteries with the most votes, the one met first in distance order.
    first = np.argmax(np.take_along_axis(counts, votes, axis=1) == best, axis=1)
    return votes[np.arange(len(votes)), first]


def share_right(predicted: np.ndarray, truth: np.ndarray, weights: np.ndarray) -> float:
    """The weighted share of lesions given their true artery."""
    return float(np.sum(weights * (predicted == truth)) / np.sum(weights)) if np.sum(weights) else float("nan")


def transfer_table(by_family: dict[Family, LesionPositions], k: int = 7) -> dict[tuple[str, str, str], float]:
    """Volume-weighted share right for every (origin, trained on, tested on); a family tested on itself
    is split in halves in phantom order (the lesions of the first half name those of the second)."""
    out = {}
    for origin in ORIGINS:
        for source, known in by_family.items():
            for target, asked in by_family.items():
                if source == target:
                    half = len(known.artery) // 2
                    fit, test = slice(0, half), slice(half, None)
                    predicted = nearest_artery(known.offsets(origin)[fit], known.artery[fit],
                                               known.offsets(origin)[test], k)
                    out[(origin, source, target)] = share_right(predicted, known.artery[test], known.voxels[test])
                else:
                    predicted = nearest_artery(known.offsets(origin), known.artery, asked.offsets(origin), k)
                    out[(origin, source, target)] = share_right(predicted, asked.artery, asked.voxels)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.territory_transfer", description=__doc__.split("\n")[0])
    parser.add_argument("--first-seed", type=int, default=60000, help="first phantom seed of each family")
    parser.add_argument("--n", type=int, default=60, help="phantoms per family")
    parser.add_argument("--k", type=int, default=7, help="neighbours that vote")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    if args.n < 2:
        parser.error("--n must be at least 2")
    jobs = [(family, seed) for family in FAMILIES for seed in range(args.first_seed, args.first_seed + args.n)]
    with ProcessPoolExecutor(max(1, args.workers)) as pool:
        found = list(pool.map(lesion_positions, *zip(*jobs)))
    by_family = {f: LesionPositions.joined([p for (g, _), p in zip(jobs, found) if g == f]) for f in FAMILIES}
    print(f"seeds {args.first_seed}-{args.first_seed + args.n - 1} of each family, k = {args.k}")
    for family, positions in by_family.items():
        print(f"family {family}: {len(positions.artery)} lesions; median mm from the aortic root, per artery:",
              ", ".join(f"{name} {np.median(positions.offsets('root')[positions.artery == i + 1], axis=0).round()}"
                        for i, name in enumerate(ARTERY_NAMES)))
    print("origin  trained on -> tested on: share of lesion volume in the right artery")
    for (origin, source, target), share in transfer_table(by_family, args.k).items():
        print(f"{origin:7s} {source} -> {target}: {share:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
