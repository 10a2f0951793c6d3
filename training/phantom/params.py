"""The random parameters of one phantom case, drawn from a seed.

Everything that varies between cases is drawn here, once, into frozen
dataclasses; the renderers are pure functions of these parameters.  Two
parameter families exist:

``shifted=False`` (training / validation distribution)
    pixel spacing 0.50-0.90 mm (DFOV 256-460 mm on 512x512); thickness/increment
    3.0/3.0 (45 %), 2.5/2.5 (35 %), 3.0/2.5 (10 %) or 3.0/1.5 (10 %, overlapping);
    noise 10-40 HU rising with body size; kVp 120 (85 %), 100 (10 %), 140 (5 %);
    in-plane PSF sigma 0.35-0.65 mm; body half-width 135-205 mm (small to obese);
    no coronary calcium in 27 % of cases, otherwise mild (1-2 plaques), moderate
    (3-8) or severe (8-24) calcification in proportions 45:35:20.  With the
    faint plaques that stay below 130 HU about a third of the cases score 0;
    the others range from about 2 to over 3000 Agatston.

``shifted=True`` (a generalisation test set: keep it out of training to use it so)
    pixel spacing 0.40-0.50 or 0.90-0.98 mm; thickness/increment 2.0/2.0
    or 3.0/2.0 (thickness 2.0 mm is flagged by the report but eligible);
    noise 35-55 HU; kVp 100 (50 %), 140 (30 %), 120 (20 %); sharper or smoother
    kernels (PSF sigma 0.25-0.35 or 0.65-0.85 mm); bodies at the extremes
    (half-width 125-140 or 205-225 mm); heart axis rotated further
    (azimuth 20-30 or 60-70 degrees); other manufacturers and kernels in the
    headers (``dicom.py``); no calcium in 20 %, and lesions drawn smaller and
    fainter (more of them straddle the 130 HU threshold).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, TypeVar

import numpy as np

from training.phantom.ct_writer import _ds


@dataclass(frozen=True)
class Grid:
    """The voxel grid of the reconstructed series (ascending z)."""

    n_slices: int
    rows: int
    cols: int
    spacing_mm: float  # square pixels, exactly the value written as Pixel Spacing
    thickness_mm: float
    increment_mm: float
    origin_mm: tuple[float, float, float]  # centre of the first pixel of the lowest slice

    def xs(self) -> np.ndarray:
        """Patient x (right->left) of each column."""
        return (self.origin_mm[0] + self.spacing_mm * np.arange(self.cols)).astype(np.float32)

    def ys(self) -> np.ndarray:
        """Patient y (anterior->posterior) of each row."""
        return (self.origin_mm[1] + self.spacing_mm * np.arange(self.rows)).astype(np.float32)

    def zs(self) -> np.ndarray:
        """Patient z (feet->head) of each slice centre."""
        return self.origin_mm[2] + self.increment_mm * np.arange(self.n_slices)


@dataclass(frozen=True)
class BodyParams:
    """Trunk cross-section and tissue densities (mm, HU)."""

    half_width: float  # body half-width (x)
    half_depth: float  # body half-depth (y)
    fat_thickness: float  # subcutaneous fat
    muscle_thickness: float
    rib_layer: float  # chest wall between muscle and pleura
    fat_hu: float
    muscle_hu: float
    lung_hu: float
    blood_hu: float
    myocardium_hu: float
    liver_hu: float
    bone_cortex_hu: float
    bone_marrow_hu: float
    rib_spacing: float  # vertical distance between ribs
    rib_phase: float
    spine_radius: float
    disc_phase: float
    dome_right_z: float  # top of the right hemidiaphragm (liver dome)
    table_gap: float  # distance from the posterior skin to the table


@dataclass(frozen=True)
class HeartParams:
    """Heart position, orientation and size; angles in degrees, lengths in mm."""

    azimuth: float  # long axis angle from anterior towards patient left, in the axial plane
    elevation: float  # long axis angle below the axial plane
    roll: float  # rotation about the long axis
    length: float  # base (AV ring) to apex
    radius_p: float  # ventricle semi-axis towards anterior
    radius_q: float  # ventricle semi-axis towards left-lateral
    root_x: float  # aortic sinus centre (z = -5, the ostia at z = 0)
    root_y: float
    root_radius: float
    asc_radius: float
    pa_radius: float
    desc_radius: float
    epicardial_fat: float  # epicardial fat thickness
    groove_fat: float  # fat radius around coronary vessels beyond the lumen
    ant_groove_angle: float  # anterior interventricular groove, degrees around the long axis
    lm_length: float
    lcx_end_angle: float
    pda_fraction: float  # how far the posterior descending artery runs towards the apex
    lumen_scale: float  # multiplies all coronary lumen radii
    blood_offset: float  # LV cavity blood minus myocardium HU


@dataclass(frozen=True)
class ScanParams:
    """Acquisition, reconstruction and encoding."""

    kvp: float
    psf_sigma_mm: float
    noise_hu: float
    noise_grain_px: float  # correlation length of the noise texture
    stored: Literal["int16", "uint16"]
    intercept: float
    fov_padding_hu: float | None  # value outside the reconstruction circle, None for none
    descending: bool
    calcium_gain: float  # HU of calcium relative to 120 kVp


@dataclass(frozen=True)
class CalciumParams:
    """How much coronary calcium and how many distractors."""

    severity: Literal["none", "mild", "moderate", "severe"]
    n_plaques: int
    size_scale: float  # multiplies drawn plaque sizes
    density_scale: float  # multiplies drawn plaque densities
    n_aortic_wall: int
    n_aortic_valve: int
    n_mitral: int
    n_spikes: int
    # Extra aortic-wall calcifications at the level of the coronary ostia, next to them
    # (``draw_params(..., hard_ostia=True)``, classifier training only; 0 in every standard or shifted case).
    n_ostial_wall: int = 0


@dataclass(frozen=True)
class PhantomParams:
    """Everything random about one case."""

    seed: int
    shifted: bool
    grid: Grid
    body: BodyParams
    heart: HeartParams
    scan: ScanParams
    calcium: CalciumParams


T = TypeVar("T")


def _choice(rng: np.random.Generator, options: list[T], weights: list[float]) -> T:
    """One of ``options`` drawn with the given relative weights."""
    return options[int(rng.choice(len(options), p=np.asarray(weights) / np.sum(weights)))]


def _either(rng: np.random.Generator, low: tuple[float, float], high: tuple[float, float]) -> float:
    """Uniform draw from one of two intervals (the shifted extremes)."""
    a, b = low if rng.random() < 0.5 else high
    return float(rng.uniform(a, b))


def draw_params(seed: int, shifted: bool = False, hard_ostia: bool = False) -> PhantomParams:
    """Draw all parameters of case ``seed`` (see the module docstring for the ranges).

    ``hard_ostia`` adds 2-4 aortic-wall calcifications beside the coronary
    ostia (``CalciumParams.n_ostial_wall``) and changes nothing else: the
    hardest false positives of the lesion classifier, made common for
    training it.
    """
    rng = np.random.default_rng([seed, 1 if shifted else 0, 0x9A17])
    size = float(rng.beta(2.0, 2.0))  # 0 small ... 1 obese
    if shifted:
        half_width = _either(rng, (125.0, 140.0), (205.0, 225.0))
        size = float(np.clip((half_width - 135.0) / 70.0, 0.0, 1.0))
    else:
        half_width = 135.0 + 70.0 * size
    body = BodyParams(
        half_width=half_width,
        half_depth=half_width * rng.uniform(0.62, 0.75),
        fat_thickness=6.0 + 40.0 * size**1.5 + rng.uniform(0, 6),
        muscle_thickness=rng.uniform(7.0, 16.0),
        rib_layer=rng.uniform(9.0, 13.0),
        fat_hu=rng.uniform(-115.0, -85.0),
        muscle_hu=rng.uniform(40.0, 60.0),
        lung_hu=rng.uniform(-900.0, -780.0),
        blood_hu=rng.uniform(32.0, 55.0),
        myocardium_hu=rng.uniform(35.0, 55.0),
        liver_hu=rng.uniform(50.0, 70.0),
        bone_cortex_hu=rng.uniform(550.0, 1000.0),
        bone_marrow_hu=rng.uniform(130.0, 280.0),
        rib_spacing=rng.uniform(24.0, 32.0),
        rib_phase=rng.uniform(0.0, 100.0),
        spine_radius=rng.uniform(15.0, 21.0),
        disc_phase=rng.uniform(0.0, 30.0),
        dome_right_z=0.0,  # set below once the heart is known
        table_gap=rng.uniform(2.0, 25.0),
    )
    if shifted:
        azimuth = _either(rng, (20.0, 30.0), (60.0, 70.0))
    else:
        azimuth = rng.uniform(30.0, 60.0)
    heart = HeartParams(
        azimuth=azimuth,
        elevation=rng.uniform(22.0, 45.0),
        roll=rng.uniform(-15.0, 15.0),
        length=rng.uniform(82.0, 105.0) * (0.95 + 0.1 * size),
        radius_p=rng.uniform(40.0, 50.0),
        radius_q=rng.uniform(42.0, 54.0),
        root_x=rng.uniform(-8.0, 10.0),
        root_y=rng.uniform(-12.0, 8.0) + (body.half_depth - 110.0) * 0.3,
        root_radius=rng.uniform(12.0, 16.0),
        asc_radius=rng.uniform(13.0, 19.0),
        pa_radius=rng.uniform(11.0, 15.0),
        desc_radius=rng.uniform(10.0, 14.0),
        epicardial_fat=rng.uniform(1.0, 4.0) + 6.0 * size * rng.random(),
        groove_fat=rng.uniform(2.0, 4.5),
        ant_groove_angle=rng.uniform(25.0, 50.0),
        lm_length=rng.uniform(5.0, 15.0),
        lcx_end_angle=rng.uniform(120.0, 190.0),
        pda_fraction=rng.uniform(0.2, 0.7),
        lumen_scale=rng.uniform(0.85, 1.2),
        blood_offset=rng.uniform(-10.0, 6.0),
    )
    # Coverage: from 8-25 mm above the ostia to 5-20 mm below the apex.
    apex_depth = heart.length * np.sin(np.radians(heart.elevation)) + 0.5 * heart.radius_p + 20.0
    top = rng.uniform(8.0, 25.0)
    bottom = -apex_depth - rng.uniform(5.0, 20.0)
    body = _with_dome(body, -apex_depth + rng.uniform(15.0, 40.0))

    if shifted:
        thickness, increment = _choice(rng, [(2.0, 2.0), (3.0, 2.0)], [0.5, 0.5])
        spacing = _either(rng, (0.40, 0.50), (0.90, 0.98))
    else:
        thickness, increment = _choice(
            rng, [(3.0, 3.0), (2.5, 2.5), (3.0, 2.5), (3.0, 1.5)], [0.45, 0.35, 0.10, 0.10]
        )
        spacing = rng.uniform(0.50, 0.90)
    spacing = float(_ds(round(spacing * 512.0) / 512.0))  # DFOV in whole mm, as scanners do
    n_slices = int(np.floor((top - bottom) / increment)) + 1
    if increment >= 2.5:
        n_slices = int(np.clip(n_slices, 40, 70))
    middle = 0.5 * (top + bottom)
    z0 = float(np.round((middle - 0.5 * (n_slices - 1) * increment) * 4.0) / 4.0)  # exact in binary and DS
    # Reconstruction centre: between the body centre and the heart, as cardiac DFOVs are.
    fov = 512 * spacing
    cx = rng.uniform(0.0, 25.0) * min(1.0, max(0.0, (2 * body.half_width - fov) / 120.0 + 0.3))
    cy = rng.uniform(-25.0, 5.0) * min(1.0, max(0.0, (2 * body.half_depth - fov) / 100.0 + 0.3))
    x0 = float(_ds(round(cx - 0.5 * fov + 0.5 * spacing, 2)))
    y0 = float(_ds(round(cy - 0.5 * fov + 0.5 * spacing, 2)))
    grid = Grid(n_slices, 512, 512, spacing, thickness, increment, (x0, y0, z0))

    if shifted:
        kvp = _choice(rng, [100.0, 140.0, 120.0], [0.5, 0.3, 0.2])
        psf = _either(rng, (0.25, 0.35), (0.65, 0.85))
        noise = rng.uniform(35.0, 55.0)
    else:
        kvp = _choice(rng, [120.0, 100.0, 140.0], [0.85, 0.10, 0.05])
        psf = rng.uniform(0.35, 0.65)
        noise = float(np.clip(10.0 + 24.0 * size + rng.uniform(-4.0, 10.0), 10.0, 40.0))
    stored, intercept = _choice(
        rng,
        [("int16", -1024.0), ("int16", 0.0), ("int16", -1000.0), ("uint16", -1024.0), ("uint16", -8192.0)],
        [0.35, 0.2, 0.1, 0.25, 0.1],
    )
    padding = None
    if stored == "int16" and rng.random() < 0.4:
        padding = _choice(rng, [-2000.0, -3024.0, -2048.0], [0.4, 0.4, 0.2])
    scan = ScanParams(
        kvp=kvp,
        psf_sigma_mm=psf,
        noise_hu=noise,
        noise_grain_px=rng.uniform(0.6, 1.1) * 0.7 / spacing,
        stored=stored,
        intercept=intercept,
        fov_padding_hu=padding,
        descending=bool(rng.random() < 0.5),
        calcium_gain={100.0: 1.12, 120.0: 1.0, 140.0: 0.93}[kvp],
    )
    calcium = _draw_calcium(rng, shifted)
    if hard_ostia:  # its own stream: the rest of the case stays that of the plain seed
        extra = int(np.random.default_rng([seed, 1 if shifted else 0, 0x0571]).integers(2, 5))
        calcium = dataclasses.replace(calcium, n_ostial_wall=extra)
    return PhantomParams(seed, shifted, grid, body, heart, scan, calcium)


def _with_dome(body: BodyParams, dome_z: float) -> BodyParams:
    values = {f: getattr(body, f) for f in body.__dataclass_fields__}
    values["dome_right_z"] = float(dome_z)
    return BodyParams(**values)


def _draw_calcium(rng: np.random.Generator, shifted: bool) -> CalciumParams:
    none_share = 0.2 if shifted else 0.26
    severity = _choice(rng, ["none", "mild", "moderate", "severe"], [none_share, 0.7 * 0.45, 0.7 * 0.35, 0.7 * 0.2])
    n = {"none": 0, "mild": int(rng.integers(1, 3)), "moderate": int(rng.integers(3, 9))}.get(
        severity, int(rng.integers(8, 25))
    )
    return CalciumParams(
        severity=severity,
        n_plaques=n,
        size_scale=float(rng.uniform(0.75, 0.95) if shifted else rng.uniform(0.85, 1.2)),
        density_scale=float(rng.uniform(0.75, 0.95) if shifted else rng.uniform(0.85, 1.15)),
        n_aortic_wall=int(rng.integers(0, 6)),
        n_aortic_valve=int(rng.integers(0, 4)) if rng.random() < 0.4 else 0,
        n_mitral=int(rng.integers(1, 5)) if rng.random() < 0.3 else 0,
        n_spikes=int(rng.integers(0, 6)),
    )
