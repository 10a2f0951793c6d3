"""One family-B case from a seed: HU volume, true labels, CT series, truth SEG and truth scores.

``generate_case(seed)`` is a pure function of the seed (same seed, same
bytes).  ``write_case`` lays a case out as family A does::

    <out>/case-<seed>/dicom/<file names>   the CT series
    <out>/case-<seed>/labels.seg.dcm       true labels as a DICOM SEG (absent without calcium)
    <out>/case-<seed>/labels.npy           true labels, uint8, ascending z (slices, rows, cols)
    <out>/case-<seed>/truth.json           ``cacnode score --json`` of the series with the true labels

The pipeline: parameters -> placed anatomy (``scene``) -> anatomy volume
(``render``) -> plaques rendered until the drawn score is reached
(``lesions``) -> distractors (``distractors``) -> kernel blur and noise
(``physics.reconstruct``) -> streaks -> reconstruction circle -> stored
integers.  True labels are the voxels a plaque raises by at least 15 HU after
the kernel's blur, less any voxel a distractor raises as much.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from training.phantom.ct_writer import build_ct_datasets
from training.phantom.generate import quantise, truth_scores, write_layout
from training.phantom_b import dicom, physics
from training.phantom_b.calcium import Calcification, Marks, deposit
from training.phantom_b.distractors import place_distractors
from training.phantom_b.geometry import Grid
from training.phantom_b.lesions import place_plaques
from training.phantom_b.params import CaseParams, draw_params
from training.phantom_b.render import render_anatomy
from training.phantom_b.scene import Scene, build_scene


@dataclass(frozen=True)
class PhantomBCase:
    """A generated case; arrays are in ascending-z slice order, ``datasets`` in the order written."""

    seed: int
    params: CaseParams
    grid: Grid
    datasets: list[Dataset] = field(repr=False)
    file_names: list[str] = field(repr=False)
    hu: np.ndarray = field(repr=False)  # float32, exactly the HU the files encode
    labels: np.ndarray = field(repr=False)  # uint8 0-4
    raised_by_plaque: np.ndarray = field(repr=False)  # bool: voxels a plaque raised by >= 15 HU
    raised_by_distractor: np.ndarray = field(repr=False)  # bool: never labelled
    truth: dict[str, Any] = field(repr=False)
    plaques: tuple[Calcification, ...] = field(repr=False)
    distractors: tuple[Calcification, ...] = field(repr=False)
    artery_names: tuple[str, ...] = ()

    @property
    def pixel_spacing_mm(self) -> tuple[float, float]:
        return (self.grid.pixel_mm, self.grid.pixel_mm)

    @property
    def increment_mm(self) -> float:
        return self.grid.increment_mm

    @property
    def slice_thickness_mm(self) -> float:
        return self.grid.thickness_mm


def _streaks(scene: Scene, calcs: list[Calcification], rng: np.random.Generator) -> list[physics.Streak]:
    """Weak streaks from dense calcifications and from the vertebral body."""
    amp = scene.params.scan.streak_hu
    if amp <= 0.5:
        return []
    out = []
    for calc in calcs:
        if calc.hu < 500.0 or calc.volume_mm3 < 4.0:
            continue
        lo, hi = calc.bounds()
        out.append(physics.Streak(0.5 * (lo + hi), 0.5 * float(hi[2] - lo[2]),
                                  tuple(rng.uniform(0.0, np.pi, int(rng.integers(2, 5)))),
                                  amp * min(1.0, calc.hu / 1000.0), float(rng.uniform(12.0, 35.0))))
    sx, sy, sr = scene.chest.spine
    grid = scene.grid
    for z in grid.zs()[:: max(1, int(round(15.0 / grid.increment_mm)))]:
        out.append(physics.Streak(np.array([sx, sy, z]), 0.5 * grid.thickness_mm,
                                  tuple(rng.uniform(0.0, np.pi, 2)), 0.4 * amp, float(rng.uniform(20.0, 40.0))))
    return out


def generate_case(seed: int) -> PhantomBCase:
    """Generate family-B case ``seed``."""
    params = draw_params(seed)
    scene = build_scene(params)
    grid, scan = scene.grid, params.scan
    volume = render_anatomy(scene, grid)
    kernel = physics.make_kernel(scan.psf_sigma_mm, scan.edge_gain, grid.pixel_mm)
    marks = Marks.empty(volume.shape)
    plaques = place_plaques(scene, volume, grid, kernel, marks)
    distractors = place_distractors(scene, grid, plaques)
    for calc in distractors:
        dep = deposit(calc, volume, grid, kernel)
        if dep is not None:
            marks.commit(dep, volume, 0)
    labels = marks.labels
    labels[marks.by_distractor] = 0  # a voxel a distractor raised is never coronary calcium

    rng = np.random.default_rng([seed, 0xB0B, 0x0153])
    b = params.body
    depth = -scene.chest.signed(grid.xs()[None, :], grid.ys()[:, None], 0.0)
    heart_depth = float(-scene.chest.signed(np.array([scene.heart.base[0]]), np.array([scene.heart.base[1]]), 0.0)[0])
    noise_map = physics.noise_map(np.clip(depth, 0.0, None), b.half_depth, heart_depth)
    overlap = max(0.0, 1.0 - grid.increment_mm / grid.thickness_mm)
    physics.reconstruct(volume, kernel, scan.noise_hu, noise_map, scan.nps_exponent, grid.pixel_mm, 0.9 * overlap, rng)
    physics.add_streaks(volume, grid.origin_mm, grid.pixel_mm, grid.increment_mm, grid.thickness_mm,
                        _streaks(scene, [*plaques, *distractors], rng))
    if scan.padding_hu is not None:
        r = 0.5 * grid.matrix
        yy, xx = np.mgrid[: grid.matrix, : grid.matrix]
        volume[:, (yy + 0.5 - r) ** 2 + (xx + 0.5 - r) ** 2 > r * r] = scan.padding_hu
    hu = quantise(volume, scan.stored, scan.intercept)

    datasets = build_ct_datasets(
        hu,
        pixel_spacing_mm=(grid.pixel_mm, grid.pixel_mm),
        slice_thickness_mm=grid.thickness_mm,
        increment_mm=grid.increment_mm,
        origin_mm=grid.origin_mm,
        header=dicom.header(params, grid),
        stored=scan.stored,
        intercept=scan.intercept,
        descending=scan.descending,
        instance_uids=[dicom.uid(seed, "instance", k) for k in range(grid.n_slices)],
    )
    names = dicom.file_names(seed, datasets)
    ascending = sorted(datasets, key=lambda ds: float(ds.ImagePositionPatient[2]))
    truth = truth_scores(hu, labels, ascending)
    return PhantomBCase(seed, params, grid, datasets, names, hu, labels, marks.by_plaque, marks.by_distractor,
                        truth, tuple(plaques), tuple(distractors), tuple(a.name for a in scene.arteries))


def case_seg(case: PhantomBCase) -> Dataset | None:
    """The true labels as a DICOM SEG, or None when nothing is labelled (a SEG needs a segment, PS3.3 C.8.20.4)."""
    if not case.labels.any():
        return None
    ascending = sorted(case.datasets, key=lambda ds: float(ds.ImagePositionPatient[2]))
    return dicom.truth_seg(case.labels, ascending, case.seed)


def write_case(case: PhantomBCase, out_dir: Path) -> Path:
    """Write ``case`` under ``out_dir/case-<seed>`` (see the module docstring) and return that folder."""
    return write_layout(case, case_seg(case), out_dir)
