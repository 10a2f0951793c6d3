"""From a CT series' HU volume to the network input: one composition for training and inference.

MONAI-style transforms: every parameter is fixed in ``__init__`` (from
:class:`PreprocessConfig`, which the weights file stores), ``__call__`` is pure.
:class:`Preprocess` chains them and is the only entry point that training
(``training.datamodule``) and inference (``pipeline.model.inference``) use, so the two
cannot drift:

1. HU volume (the loader has applied Rescale Slope/Intercept per slice, PS3.3 C.11.1.1.2);
2. :class:`LocateHeart`: slices outside the heart are removed and the heart centre
   found (``pipeline.model.heart``, a classical localiser);
3. :class:`CropAroundHeart`: a square of ``crop_mm`` centred on the heart, padded with air;
4. :class:`ToGrid`: the crop resampled in-plane to ``grid x grid`` cells (~1.4 mm),
   slices kept native; per cell the mean HU, the peak HU and whether any voxel is
   a calcium candidate (``hu >= candidate_hu``) -- a 1 mm^2 lesion survives as a
   candidate cell even though the mean blurs it;
5. :class:`NormaliseIntensity`: HU shifted so that the soft-tissue peak of the
   crop's histogram sits at 0, then scaled and clipped (scanner offsets and
   kernels move that peak by tens of HU; the candidate channel still uses the
   absolute threshold of the scoring definition);
6. position channels: millimetres from the heart centre (z, row, column) / 100.

The inverse direction (grid cell of each original voxel) is :func:`cell_index`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.model.heart import HeartLocation, HeartLocatorSettings, locate_heart
from pipeline.scoring.sparse import flat_nonzero

N_INPUT_CHANNELS = 6  # mean HU, peak HU, candidate, z, row, column
AIR_HU = -1000.0


@dataclass(frozen=True)
class PreprocessConfig:
    """Parameters of the preprocessing; saved in the weights file with the model."""

    grid: int = 112  # in-plane cells of the network input; 160 mm / 112 = 1.43 mm per cell
    crop_mm: float = 160.0  # side of the square crop centred on the heart
    candidate_hu: float = 130.0  # calcium candidate threshold (the Agatston threshold)
    tissue_window_hu: tuple[float, float] = (-100.0, 200.0)  # where the soft-tissue peak is searched
    scale_hu: float = 200.0  # normalised = (hu - tissue peak) / scale_hu
    clip: tuple[float, float] = (-5.0, 8.0)  # air at about -5, dense bone clipped at 8
    position_scale_mm: float = 100.0
    heart: HeartLocatorSettings = field(default_factory=HeartLocatorSettings)

    def __post_init__(self) -> None:
        if self.grid % 8:
            raise ValueError(f"preprocess.grid must be a multiple of 8 (three 2x poolings), got {self.grid}")
        if self.crop_mm <= 0 or self.scale_hu <= 0:
            raise ValueError("preprocess.crop_mm and scale_hu must be > 0")


@dataclass(frozen=True)
class CropBox:
    """A crop of the original volume: slices ``z0:z1``, rows/columns from ``row0``/``col0``.

    ``row0``/``col0`` may be negative and the box may run past the image: those
    voxels are padded with air.
    """

    z0: int
    z1: int
    row0: int
    col0: int
    rows: int
    cols: int
    centre_row: float  # heart centre, original pixels
    centre_col: float
    found: bool


@dataclass(frozen=True)
class Prepared:
    """The network input of one volume and where it came from."""

    image: np.ndarray  # float32 (N_INPUT_CHANNELS, z1 - z0, grid, grid)
    box: CropBox
    pixel_spacing_mm: tuple[float, float]
    increment_mm: float


class LocateHeart:
    """HU volume -> :class:`HeartLocation` (slices to keep and in-plane centre)."""

    def __init__(self, settings: HeartLocatorSettings) -> None:
        self.settings = settings

    def __call__(self, hu: np.ndarray, pixel_spacing_mm: tuple[float, float], increment_mm: float) -> HeartLocation:
        return locate_heart(hu, pixel_spacing_mm, increment_mm, self.settings)


class CropAroundHeart:
    """Heart location -> :class:`CropBox` of ``crop_mm`` x ``crop_mm`` (times ``scale``)."""

    def __init__(self, crop_mm: float) -> None:
        self.crop_mm = crop_mm

    def __call__(
        self,
        where: HeartLocation,
        pixel_spacing_mm: tuple[float, float],
        scale: float = 1.0,
        shift_mm: tuple[float, float] = (0.0, 0.0),
    ) -> CropBox:
        # ``scale`` and ``shift_mm`` are training augmentations (spacing jitter,
        # localisation error); inference uses the defaults.
        rows = int(round(self.crop_mm * scale / pixel_spacing_mm[0]))
        cols = int(round(self.crop_mm * scale / pixel_spacing_mm[1]))
        centre_row = where.centre_row + shift_mm[0] / pixel_spacing_mm[0]
        centre_col = where.centre_col + shift_mm[1] / pixel_spacing_mm[1]
        return CropBox(
            z0=where.z0,
            z1=where.z1,
            row0=int(round(centre_row - rows / 2.0)),
            col0=int(round(centre_col - cols / 2.0)),
            rows=rows,
            cols=cols,
            centre_row=centre_row,
            centre_col=centre_col,
            found=where.found,
        )


def extract(volume: np.ndarray, box: CropBox, fill: float) -> np.ndarray:
    """The voxels of ``box`` from ``volume``, padding outside the image with ``fill``."""
    out = np.full((box.z1 - box.z0, box.rows, box.cols), fill, dtype=volume.dtype)
    r0, c0 = max(box.row0, 0), max(box.col0, 0)
    r1, c1 = min(box.row0 + box.rows, volume.shape[1]), min(box.col0 + box.cols, volume.shape[2])
    if r1 > r0 and c1 > c0:
        out[:, r0 - box.row0 : r1 - box.row0, c0 - box.col0 : c1 - box.col0] = volume[box.z0 : box.z1, r0:r1, c0:c1]
    return out


def local_box(box: CropBox) -> CropBox:
    """The same box in the coordinates of its own extracted crop."""
    return CropBox(0, box.z1 - box.z0, 0, 0, box.rows, box.cols, box.centre_row - box.row0,
                   box.centre_col - box.col0, box.found)


def insert(volume: np.ndarray, crop: np.ndarray, box: CropBox) -> None:
    """Write ``crop`` (as :func:`extract` returned it) back into ``volume``; the padding is dropped."""
    r0, c0 = max(box.row0, 0), max(box.col0, 0)
    r1, c1 = min(box.row0 + box.rows, volume.shape[1]), min(box.col0 + box.cols, volume.shape[2])
    if r1 > r0 and c1 > c0:
        volume[box.z0 : box.z1, r0:r1, c0:c1] = crop[:, r0 - box.row0 : r1 - box.row0, c0 - box.col0 : c1 - box.col0]


class ToGrid:
    """HU crop (z, rows, cols) -> mean HU, peak HU, candidate, each (z, grid, grid).

    On the CPU the peak is pooled by numpy (``adaptive_max``, twice as fast as
    torch there); with a GPU ``device`` both poolings run on it (the crop goes
    over once), which leaves the CPU free for the rest of inference.
    """

    def __init__(self, grid: int, candidate_hu: float, device: torch.device = torch.device("cpu")) -> None:
        self.grid = grid
        self.candidate_hu = candidate_hu
        self.device = device

    def __call__(self, hu_crop: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        hu_crop = np.ascontiguousarray(hu_crop, dtype=np.float32)
        if self.device.type != "cpu":
            return pool_with_torch(hu_crop, self.grid, self.candidate_hu, self.device)
        mean = F.adaptive_avg_pool2d(torch.from_numpy(hu_crop)[:, None], (self.grid, self.grid))[:, 0].numpy()
        peak = adaptive_max(hu_crop, self.grid)
        return mean, peak, (peak >= self.candidate_hu).astype(np.float32)


def pool_with_torch(hu_crop: np.ndarray, grid: int, candidate_hu: float,
                    device: torch.device) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``ToGrid`` by torch on ``device``: mean HU, peak HU, candidate as numpy arrays."""
    t = torch.from_numpy(hu_crop).to(device)[:, None]
    mean = F.adaptive_avg_pool2d(t, (grid, grid))[:, 0]
    peak = F.adaptive_max_pool2d(t, (grid, grid))[:, 0]
    candidate = (peak >= candidate_hu).to(torch.float32)
    return mean.cpu().numpy(), peak.cpu().numpy(), candidate.cpu().numpy()


def _pooling_windows(n_in: int, n_out: int) -> np.ndarray:
    """Indices (n_out, k) of the input cells each output cell pools, as adaptive pooling takes them
    (cell i: ``floor(i n_in / n_out)`` to ``ceil((i + 1) n_in / n_out)``); a shorter window repeats its last."""
    i = np.arange(n_out)
    start = (i * n_in) // n_out
    end = -((-(i + 1) * n_in) // n_out)
    return np.minimum(start[:, None] + np.arange(int((end - start).max())), end[:, None] - 1)


def adaptive_max(volume: np.ndarray, grid: int) -> np.ndarray:
    """``torch.nn.functional.adaptive_max_pool2d`` of each slice to (grid, grid), as two 1-D maxima
    (rows, then columns): the same numbers, about twice as fast on the CPU."""
    rows, cols = _pooling_windows(volume.shape[1], grid), _pooling_windows(volume.shape[2], grid)
    by_rows = volume[:, rows[:, 0]]
    for k in range(1, rows.shape[1]):
        np.maximum(by_rows, volume[:, rows[:, k]], out=by_rows)
    peak = by_rows[:, :, cols[:, 0]]
    for k in range(1, cols.shape[1]):
        np.maximum(peak, by_rows[:, :, cols[:, k]], out=peak)
    return peak


class NormaliseIntensity:
    """HU -> (HU - soft-tissue histogram peak) / scale, clipped."""

    def __init__(self, tissue_window_hu: tuple[float, float], scale_hu: float, clip: tuple[float, float]) -> None:
        self.window = tissue_window_hu
        self.scale = scale_hu
        self.clip = clip

    def tissue_peak(self, hu: np.ndarray) -> float:
        """Mode of the HU histogram inside the soft-tissue window (10 HU bins, smoothed)."""
        lo, hi = self.window
        values = hu[(hu >= lo) & (hu < hi)]
        if values.size < 100:
            return 40.0  # too little tissue to measure: nominal myocardium/blood
        counts, edges = np.histogram(values, bins=int((hi - lo) // 10), range=(lo, hi))
        counts = np.convolve(counts, np.ones(3) / 3.0, mode="same")
        i = int(np.argmax(counts))
        return float((edges[i] + edges[i + 1]) / 2.0)

    def __call__(self, hu: np.ndarray, peak: float) -> np.ndarray:
        return np.clip((hu - peak) / self.scale, *self.clip).astype(np.float32)


def position_channels(box: CropBox, n_slices: int, grid: int, pixel_spacing_mm: tuple[float, float],
                      increment_mm: float, scale_mm: float) -> np.ndarray:
    """Millimetres from the heart centre of every grid cell, divided by ``scale_mm``: (3, z, grid, grid)."""
    cell_r = box.rows * pixel_spacing_mm[0] / grid
    cell_c = box.cols * pixel_spacing_mm[1] / grid
    offset_r = (box.row0 - box.centre_row) * pixel_spacing_mm[0]
    offset_c = (box.col0 - box.centre_col) * pixel_spacing_mm[1]
    r = (offset_r + (np.arange(grid) + 0.5) * cell_r) / scale_mm
    c = (offset_c + (np.arange(grid) + 0.5) * cell_c) / scale_mm
    z = (np.arange(n_slices) - (n_slices - 1) / 2.0) * increment_mm / scale_mm
    out = np.empty((3, n_slices, grid, grid), dtype=np.float32)
    out[0], out[1], out[2] = z[:, None, None], r[None, :, None], c[None, None, :]
    return out


class Preprocess:
    """The whole composition: HU volume -> :class:`Prepared` network input."""

    def __init__(self, config: PreprocessConfig, device: torch.device = torch.device("cpu")) -> None:
        self.config = config
        self.locate = LocateHeart(config.heart)
        self.crop = CropAroundHeart(config.crop_mm)
        self.to_grid = ToGrid(config.grid, config.candidate_hu, device)  # pools on the GPU when given one
        self.normalise = NormaliseIntensity(config.tissue_window_hu, config.scale_hu, config.clip)

    def __call__(self, hu: np.ndarray, pixel_spacing_mm: tuple[float, float], increment_mm: float) -> Prepared:
        box = self.crop_box(hu, pixel_spacing_mm, increment_mm)
        return self.from_crop(extract(hu, box, AIR_HU), box, pixel_spacing_mm, increment_mm)

    def crop_box(self, hu: np.ndarray, pixel_spacing_mm: tuple[float, float], increment_mm: float) -> CropBox:
        """Steps 2-3: where the heart crop lies in the volume."""
        return self.crop(self.locate(hu, pixel_spacing_mm, increment_mm), pixel_spacing_mm)

    def from_crop(self, hu_crop: np.ndarray, box: CropBox, pixel_spacing_mm: tuple[float, float],
                  increment_mm: float) -> Prepared:
        """Steps 4-6 on an already extracted crop (training augments between the two halves)."""
        mean, peak, candidate = self.to_grid(hu_crop)
        tissue = self.normalise.tissue_peak(hu_crop[:, :: 4, :: 4])
        positions = position_channels(box, hu_crop.shape[0], self.config.grid, pixel_spacing_mm, increment_mm,
                                      self.config.position_scale_mm)
        image = np.concatenate(
            [self.normalise(mean, tissue)[None], self.normalise(peak, tissue)[None], candidate[None], positions]
        )
        return Prepared(image=image, box=box, pixel_spacing_mm=pixel_spacing_mm, increment_mm=increment_mm)


def labels_to_grid(labels_crop: np.ndarray, grid: int, n_classes: int) -> np.ndarray:
    """Training target on the grid: a cell takes the artery with most voxels in it, else 0.

    Any labelled voxel marks its cell (ties between arteries go to the lower
    label), matching the candidate channel (any voxel over the threshold), so a
    tiny lesion is a target cell wherever it is a candidate cell.  Voxels map to
    cells as in :func:`cell_index`, the inverse used at inference; each such
    cell lies inside the pooling window of the same cell, so a labelled
    candidate voxel always falls in a candidate cell.  Labels are sparse, so
    only the labelled voxels are visited.
    """
    n_slices, n_rows, n_cols = labels_crop.shape
    out = np.zeros((n_slices, grid, grid), dtype=np.uint8)
    z, r, c = np.unravel_index(flat_nonzero(labels_crop), labels_crop.shape)  # labels are sparse
    if z.size == 0:
        return out
    cls = labels_crop[z, r, c].astype(np.int64)
    cell = (z * grid + (r * grid) // n_rows) * grid + (c * grid) // n_cols
    keys, counts = np.unique(cell * n_classes + cls, return_counts=True)
    cells, classes = keys // n_classes, keys % n_classes
    # Per cell the most frequent class, the lowest label on ties: sort by cell, count desc, class asc.
    order = np.lexsort((classes, -counts, cells))
    first = np.ones(order.size, dtype=bool)
    first[1:] = cells[order][1:] != cells[order][:-1]
    best = order[first]
    out.reshape(-1)[cells[best]] = classes[best]
    return out


def cell_index(box: CropBox, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """For each row / column of the crop, the grid cell whose pooling window holds it."""
    rows = (np.arange(box.rows) * grid) // box.rows
    cols = (np.arange(box.cols) * grid) // box.cols
    return rows, cols
