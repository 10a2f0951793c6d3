"""Training cases: where they come from (phantoms, a hospital's CSV) and their on-disk cache.

Each case is preprocessed once: the heart is located with the same transforms
as at inference (``pipeline.model.preprocess``) and a crop 1.3 times the network's
crop is cached as an ``.npz`` (HU as int16, labels as uint8).  The margin lets
the data module jitter scale and centre per sample without touching the full
volume again, so an epoch costs only the network.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from pydicom.dataset import Dataset

from pipeline.scoring.arteries import ARTERY_NAMES
from pipeline.model.heart import HeartLocation
from pipeline.model.preprocess import AIR_HU, CropAroundHeart, Preprocess, PreprocessConfig, extract
from pipeline.scoring.agatston import ScoringProfile, score_calcium
from training.families import Family, generate, revision, split_across

log = logging.getLogger(__name__)

CACHE_MARGIN = 1.3  # cached crop side / network crop side


@dataclass(frozen=True)
class TrainingCase:
    """A labelled volume before preprocessing."""

    key: str  # unique, file-name safe
    hu: np.ndarray
    labels: np.ndarray
    pixel_spacing_mm: tuple[float, float]
    increment_mm: float


@dataclass(frozen=True)
class PhantomSource:
    """A phantom of one family (``training.families``), generated when first needed."""

    seed: int
    shifted: bool = False  # family a only
    hard_ostia: bool = False  # family a only: extra aortic-wall calcifications beside the ostia
    family: Family = "a"

    @property
    def key(self) -> str:
        # The generator's revision: a cached case or candidate row of an older generator is not this phantom.
        # Family a keeps its historical key, so existing caches stay valid.
        family = "" if self.family == "a" else f"{self.family}-"
        variant = f"{'shifted-' if self.shifted else ''}{'hard-ostia-' if self.hard_ostia else ''}"
        return f"phantom-{family}r{revision(self.family)}-{variant}{self.seed}"

    def load(self) -> TrainingCase:
        case = generate(self.family, self.seed, shifted=self.shifted, hard_ostia=self.hard_ostia)
        spacing, increment = phantom_geometry(case.datasets)
        return TrainingCase(self.key, case.hu, case.labels, spacing, increment)


def phantoms(first_seed: int, n: int, hard_ostia: bool = False,
             families: tuple[Family, ...] = ("a",)) -> list[PhantomSource]:
    """``n`` phantoms from seed ``first_seed`` on, taken from ``families`` in turn (each counts its own seeds)."""
    return [PhantomSource(seed, hard_ostia=hard_ostia, family=family)
            for family, seed in split_across(families, first_seed, n)]


def phantom_geometry(datasets: Sequence[Dataset]) -> tuple[tuple[float, float], float]:
    """Pixel spacing and slice increment of a written phantom, from its headers (PS3.3 C.7.6.2).

    The increment is the median distance between adjacent Image Position
    (Patient) values along the slice normal, as the loader measures it.
    """
    first = datasets[0]
    row, col = np.asarray(first.ImageOrientationPatient[:3], float), np.asarray(first.ImageOrientationPatient[3:], float)
    normal = np.cross(row, col)
    along = np.sort([float(np.dot(normal, np.asarray(ds.ImagePositionPatient, float))) for ds in datasets])
    spacing = (float(first.PixelSpacing[0]), float(first.PixelSpacing[1]))
    return spacing, float(np.median(np.diff(along)))


@dataclass(frozen=True)
class HospitalSource:
    """A site's own series (DICOM folder) with its label file (DICOM SEG or NIfTI)."""

    series_dir: Path
    labels: Path

    @property
    def key(self) -> str:
        return "site-" + hashlib.sha1(str(self.series_dir.resolve()).encode()).hexdigest()[:12]

    def load(self) -> TrainingCase:
        from pipeline.reading.labels_io import read_labels
        from pipeline.reading.loader import load_series

        series = load_series(self.series_dir)
        labels = read_labels(self.labels, series)
        g = series.geometry
        return TrainingCase(self.key, series.hu, labels, tuple(g.pixel_spacing_mm), float(g.increment_mm))


class CaseSource(Protocol):
    """Anything that yields one labelled volume: phantoms, a site's series, test volumes."""

    @property
    def key(self) -> str: ...

    def load(self) -> TrainingCase: ...


def read_hospital_csv(path: Path) -> tuple[list[HospitalSource], list[HospitalSource]]:
    """Rows ``series_dir,labels[,split]`` (header required; split ``train`` or ``val``, default train).

    Paths are relative to the CSV's folder.
    """
    train, val = [], []
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"series_dir", "labels"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        for i, row in enumerate(reader, start=2):
            source = HospitalSource(path.parent / row["series_dir"], path.parent / row["labels"])
            split = (row.get("split") or "train").strip()
            if split not in ("train", "val"):
                raise ValueError(f"{path}:{i}: split must be train or val, got {split!r}")
            (train if split == "train" else val).append(source)
    return train, val


@dataclass(frozen=True)
class CachedCase:
    """A preprocessed case: the enlarged heart crop and its facts."""

    key: str
    hu: np.ndarray  # float32 (slices, rows, cols) of the enlarged crop
    labels: np.ndarray  # uint8, same shape
    where: HeartLocation  # heart location in the crop's own coordinates
    pixel_spacing_mm: tuple[float, float]
    increment_mm: float
    truth_agatston: dict[str, float]  # per artery and "total", scored on the whole volume
    labelled_outside: int  # labelled voxels the crop lost (should be 0)


def preprocess_tag(config: PreprocessConfig) -> str:
    """A short digest of the preprocessing settings (the heart localiser's among them), for cache names:
    what was cached with other settings is not reused."""
    return hashlib.sha1(json.dumps(dataclasses.asdict(config), sort_keys=True).encode()).hexdigest()[:8]


def cache_case(source: CaseSource, preprocess: Preprocess, cache_dir: Path) -> Path:
    """Preprocess ``source`` once; returns the cache file (reused when present)."""
    path = cache_dir / f"{source.key}-{preprocess_tag(preprocess.config)}.npz"
    if path.is_file():
        return path
    case = source.load()
    spacing, inc = case.pixel_spacing_mm, case.increment_mm
    where = preprocess.locate(case.hu, spacing, inc)
    big = CropAroundHeart(preprocess.config.crop_mm * CACHE_MARGIN)(where, spacing)
    hu = extract(case.hu, big, AIR_HU)
    labels = extract(case.labels, big, 0)
    score = score_calcium(case.hu, case.labels, spacing, inc, ScoringProfile())
    truth = {name: score.arteries[name].agatston for name in ARTERY_NAMES} | {"total": score.total.agatston}
    outside = int(np.count_nonzero(case.labels)) - int(np.count_nonzero(labels))
    if outside:
        log.warning("%s: %d labelled voxels outside the cached heart crop", source.key, outside)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(
        tmp,
        hu=np.clip(np.round(hu), -32768, 32767).astype(np.int16),
        labels=labels.astype(np.uint8),
        where=np.array([0, big.z1 - big.z0, where.centre_row - big.row0, where.centre_col - big.col0,
                        float(where.found)]),
        spacing=np.array([spacing[0], spacing[1], inc]),
        truth=np.array([truth[n] for n in (*ARTERY_NAMES, "total")]),
        outside=np.array(outside),
    )
    tmp.replace(path)
    return path


def load_cached(path: Path) -> CachedCase:
    """Read a cache file written by :func:`cache_case`."""
    with np.load(path) as z:
        w, s, t = z["where"], z["spacing"], z["truth"]
        return CachedCase(
            key=path.stem,
            hu=z["hu"].astype(np.float32),
            labels=z["labels"],
            where=HeartLocation(z0=int(w[0]), z1=int(w[1]), centre_row=float(w[2]), centre_col=float(w[3]),
                                found=bool(w[4])),
            pixel_spacing_mm=(float(s[0]), float(s[1])),
            increment_mm=float(s[2]),
            truth_agatston=dict(zip((*ARTERY_NAMES, "total"), map(float, t))),
            labelled_outside=int(z["outside"]),
        )
