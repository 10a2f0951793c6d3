"""One phantom case from a seed: HU volume, true labels, DICOM series, label SEG and truth scores.

``generate_case(seed)`` is a pure function of ``(seed, shifted)``: the same
arguments give the same bytes (UIDs are derived from the seed, dates are
fixed).  ``write_case`` lays a case out as::

    <out>/case-<seed>/dicom/<random names>   the CT series (instance order as written)
    <out>/case-<seed>/labels.seg.dcm         true labels as a DICOM SEG (absent when no calcium:
                                             a SEG needs at least one segment, PS3.3 C.8.20.4)
    <out>/case-<seed>/labels.npy             true labels, uint8, ascending z (slices, rows, cols)
    <out>/case-<seed>/truth.json             ``cacnode score --json`` of the series with the true labels

The true labels are the voxels each plaque raises by at least
``physics.LABEL_MIN_CONTRIBUTION_HU`` (15 HU) after partial volume and blur:
the whole bright spot a reader would outline.  Scoring with them counts, per
calcium-scoring.md, those of these voxels at or above 130 HU once noise is
added.  Voxels raised by a distractor (aortic wall, aortic valve, mitral
annulus, noise spike) are never labelled, and neither is bone.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from pipeline.scoring.result import score_series, to_json
from pipeline.scoring.agatston import ScoringProfile
from pipeline.reading.series import CTSeries
from training.phantom import anatomy, coronary, physics
from training.phantom.ct_writer import build_ct_datasets, write_datasets
from training.phantom.dicom import case_header, file_names, truth_seg
from training.phantom.params import PhantomParams, draw_params
from training.phantom.shapes import Capsule, slice_views

LABELS_SOURCE = "labels:labels.seg.dcm"


@dataclass(frozen=True)
class PhantomCase:
    """A generated case; arrays are in ascending-z slice order, ``datasets`` as written."""

    seed: int
    shifted: bool
    params: PhantomParams
    datasets: list[Dataset] = field(repr=False)
    file_names: list[str] = field(repr=False)
    hu: np.ndarray = field(repr=False)  # float32, exactly the HU the files encode
    labels: np.ndarray = field(repr=False)  # uint8 0-4
    distractors: np.ndarray = field(repr=False)  # bool: voxels raised by a distractor (never labelled)
    truth: dict[str, Any] = field(repr=False)
    plaques: tuple[coronary.Blob, ...] = field(repr=False)
    distractor_blobs: tuple[coronary.Blob, ...] = field(repr=False)

    @property
    def pixel_spacing_mm(self) -> tuple[float, float]:
        return (self.params.grid.spacing_mm, self.params.grid.spacing_mm)

    @property
    def increment_mm(self) -> float:
        return self.params.grid.increment_mm

    @property
    def slice_thickness_mm(self) -> float:
        return self.params.grid.thickness_mm


def render_volume(
    params: PhantomParams,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[coronary.Blob], list[coronary.Blob]]:
    """HU (before quantisation), labels and distractor mask of a case, plus its plaques and distractors."""
    g, scan = params.grid, params.scan
    thorax = anatomy.build_thorax(params)
    vessels = coronary.coronary_tree(params, thorax)
    capsules = []
    for v in vessels:
        for a, b, ra, rb in zip(v.points[:-1], v.points[1:], v.radii[:-1], v.radii[1:]):
            capsules.append(Capsule(a, b, float(0.5 * (ra + rb))))
    views = slice_views(g, scan.psf_sigma_mm)
    template = anatomy.template_slice(params, thorax, views[0])
    hu = np.empty((g.n_slices, g.rows, g.cols), np.float32)
    ops = anatomy.paint_ops(params, thorax, tuple(capsules))
    for k, view in enumerate(views):
        hu[k] = template.img
        anatomy.paint_slice(hu[k], template, params, thorax, ops, view)
    labels = np.zeros(hu.shape, np.uint8)
    distractor = np.zeros(hu.shape, bool)
    plaque_blobs = coronary.plaques(params, vessels, thorax)
    other = coronary.distractors(params, thorax, plaque_blobs, vessels)
    physics.render_blobs(hu, labels, distractor, g, other, scan.psf_sigma_mm)
    physics.render_blobs(hu, labels, distractor, g, plaque_blobs, scan.psf_sigma_mm)
    labels[distractor] = 0  # a voxel raised by a distractor is never coronary calcium
    rng = np.random.default_rng([params.seed, 1 if params.shifted else 0, 0x0153])
    z_corr = max(0.0, g.thickness_mm / g.increment_mm - 1.0) * 0.8
    hu += physics.correlated_noise(hu.shape, scan.noise_hu, scan.noise_grain_px, z_corr, rng)
    spikes = _spike_positions(params, thorax, rng)
    physics.add_spikes(hu, labels, distractor, spikes, rng)
    if scan.fov_padding_hu is not None:
        yy, xx = np.mgrid[: g.rows, : g.cols]
        r = 0.5 * g.cols
        outside = (yy + 0.5 - r) ** 2 + (xx + 0.5 - r) ** 2 > r * r
        hu[:, outside] = scan.fov_padding_hu
    return hu, labels, distractor, plaque_blobs, other


def _spike_positions(params: PhantomParams, thorax: anatomy.Thorax,
                     rng: np.random.Generator) -> list[tuple[int, int, int]]:
    """Voxel indices of noise spikes: in the heart region, about half of them next to the ostia."""
    g = params.grid
    out = []
    for n in range(params.calcium.n_spikes):
        base = thorax.frame.root if n % 2 == 0 else thorax.frame.center
        p = base + rng.normal(scale=[15.0, 15.0, 10.0])
        i = int(round((p[0] - g.origin_mm[0]) / g.spacing_mm))
        j = int(round((p[1] - g.origin_mm[1]) / g.spacing_mm))
        k = int(round((p[2] - g.origin_mm[2]) / g.increment_mm))
        out.append((k, j, i))
    return out


def quantise(hu: np.ndarray, stored: str, intercept: float) -> np.ndarray:
    """The HU a reader gets back from the stored integers (slope 1), in place on float32 ``hu``."""
    info = np.iinfo(np.int16 if stored == "int16" else np.uint16)
    hu -= np.float32(intercept)
    np.rint(hu, out=hu)
    np.clip(hu, info.min, info.max, out=hu)
    hu += np.float32(intercept)
    return hu


def case_uid(params: PhantomParams, *parts: object) -> str:
    """A UID fixed by the seed (and ``parts``), so the same seed gives the same bytes."""
    variant = ["hard-ostia"] if params.calcium.n_ostial_wall else []  # not the plain seed's UIDs
    return generate_uid(entropy_srcs=["cacnode-phantom", str(params.seed), str(params.shifted), *variant,
                                      *map(str, parts)])


def generate_case(seed: int, shifted: bool = False, hard_ostia: bool = False) -> PhantomCase:
    """Generate phantom case ``seed`` (from the shifted ranges when ``shifted``).

    ``hard_ostia``: the same case with extra aortic-wall calcifications beside
    the coronary ostia (``draw_params``), for training the lesion classifier.
    """
    params = draw_params(seed, shifted, hard_ostia)
    g, scan = params.grid, params.scan
    raw, labels, distractor, plaque_blobs, other = render_volume(params)
    hu = quantise(raw, scan.stored, scan.intercept)
    header = case_header(params, case_uid)
    datasets = build_ct_datasets(
        hu,
        pixel_spacing_mm=(g.spacing_mm, g.spacing_mm),
        slice_thickness_mm=g.thickness_mm,
        increment_mm=g.increment_mm,
        origin_mm=g.origin_mm,
        header=header,
        stored=scan.stored,
        intercept=scan.intercept,
        descending=scan.descending,
        instance_uids=[case_uid(params, "instance", k) for k in range(g.n_slices)],
    )
    names = file_names(params, datasets)
    ascending = sorted(datasets, key=lambda ds: float(ds.ImagePositionPatient[2]))
    truth = truth_scores(hu, labels, ascending)
    return PhantomCase(seed, shifted, params, datasets, names, hu, labels, distractor, truth,
                       tuple(plaque_blobs), tuple(other))


def truth_scores(hu: np.ndarray, labels: np.ndarray, ascending: list[Dataset]) -> dict[str, Any]:
    """``cacnode score --json`` of the series with the true labels.

    The series goes through the node's own loader, so geometry, acquisition
    facts and flags are exactly what ``cacnode score`` reports.  The score is
    computed on the rows and columns that hold labels: by its definition
    (calcium-scoring.md) it depends only on labelled voxels, and the crop saves
    most of the connected-component labelling time on a 512x512 volume.
    """
    series = _series(hu, ascending)
    rows = np.flatnonzero(labels.any(axis=(0, 2)))
    cols = np.flatnonzero(labels.any(axis=(0, 1)))
    if rows.size:
        box = (slice(None), slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    else:
        box = (slice(None), slice(0, 1), slice(0, 1))
    cropped = dataclasses.replace(series, hu=series.hu[box])
    # Through JSON and back, so the dict equals what truth.json holds (tuples become lists).
    return json.loads(json.dumps(to_json(score_series(cropped, labels[box], ScoringProfile(), LABELS_SOURCE))))


def case_seg(case: PhantomCase) -> Dataset | None:
    """The true labels as a DICOM SEG on the case's series, or None when nothing is labelled.

    Built on demand (highdicom needs about half a second), not by ``generate_case``.
    """
    if not case.labels.any():
        return None
    ascending = sorted(case.datasets, key=lambda ds: float(ds.ImagePositionPatient[2]))
    return truth_seg(case.labels, ascending, case.params, case_uid)


def _series(hu: np.ndarray, ascending: list[Dataset]) -> CTSeries:
    """The series as the node sees it: through ``pipeline.reading.loader`` when it exists."""
    try:
        from pipeline.reading.loader import load_series
    except ImportError:
        from training.phantom.dicom import series_from_datasets

        return series_from_datasets(hu, ascending)
    return load_series(ascending)


def write_case(case: PhantomCase, out_dir: Path) -> Path:
    """Write ``case`` under ``out_dir/case-<seed>`` (see the module docstring) and return that folder."""
    return write_layout(case, case_seg(case), out_dir)


def write_layout(case: Any, seg: Dataset | None, out_dir: Path) -> Path:
    """The case layout every phantom family writes (module docstring) for ``case`` (its ``seed``,
    ``datasets``, ``file_names``, ``labels`` and ``truth``) and its truth SEG; returns the case folder."""
    folder = Path(out_dir) / f"case-{case.seed:04d}"
    write_datasets(case.datasets, folder / "dicom", case.file_names)
    if seg is not None:
        seg.save_as(folder / "labels.seg.dcm", enforce_file_format=True)
    np.save(folder / "labels.npy", case.labels)
    (folder / "truth.json").write_text(json.dumps(case.truth, indent=2, sort_keys=True) + "\n")
    return folder
