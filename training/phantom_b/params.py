"""Everything random about one family-B case, drawn once from its seed into frozen dataclasses.

The renderers are pure functions of these parameters.  Ranges (lengths in mm,
angles in degrees, densities in HU at 120 kVp):

* body: half-width 128-213 (thin to obese), a superellipse cross-section
  (exponent 2.0-3.2: round to boxy chests), off the scanner's centre by up to
  35 mm, subcutaneous fat 4-45;
* heart: long axis azimuth 25-68 and elevation 10-58 (horizontal to vertical
  hearts), scale 0.82-1.22, chamber proportions, the aortic root 4 mm right to
  16 mm left of the midline and 15 % of hearts displaced a further 15-35 mm to
  the left, epicardial fat 1-14;
* coronary tree: right (65 %), co- (20 %) or left (15 %) dominance, left main
  0 (separate ostia, 12 %) or 3-20 long, ramus intermedius in 25 %, RCA high
  or low in its groove, tortuosity;
* calcium: a risk category first (0 in 40 %, 1-10 in 13 %, 11-100 in 19 %,
  101-400 in 15 %, >400 in 13 %, spread evenly over consecutive seeds), then a
  target score inside it that ``lesions`` renders lesions up to;
* distractors: aortic root and wall, aortic valve, mitral annulus, pericardium,
  costal cartilage, lymph nodes, lung granulomas;
* scan: thickness/increment mostly 3.0/3.0 and 2.5/2.5, some 2.0 and overlapping
  reconstructions (3.0/1.5, 2.5/1.25, 3.0/2.5, 2.0/1.25), a few 1.5; z coverage
  from above the carina or tight to the heart (``geometry``); field of view
  180-400 on 512x512, centred between body and heart or on the heart; 120 kVp
  (80 %), 100 or 135; smooth, standard or sharp kernels; noise 10-60 HU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeVar

import numpy as np

T = TypeVar("T")

CATEGORIES = ("0", "1-10", "11-100", "101-400", ">400")
# Target total Agatston drawn log-uniformly inside each category, away from its bounds: noise adds
# 10-30 % to the noise-free score that ``lesions`` aims with, so few cases cross a boundary.
CATEGORY_TARGETS = {"1-10": (2.5, 7.5), "11-100": (14.0, 75.0), "101-400": (120.0, 320.0), ">400": (480.0, 2200.0)}
CATEGORY_SHARE = (0.40, 0.13, 0.19, 0.15, 0.13)
_GOLDEN = (5.0**0.5 - 1.0) / 2.0


@dataclass(frozen=True)
class Body:
    """The trunk, bones and tissue densities."""

    centre_x: float  # body centre in patient x (the patient lies off the scanner's centre)
    centre_y: float
    half_width: float
    half_depth: float
    exponent: float  # superellipse exponent of the cross-section (2 ellipse, larger boxier)
    fat_mm: float  # subcutaneous fat
    muscle_mm: float
    wall_mm: float  # the rib layer inside the muscle
    fat_hu: float
    muscle_hu: float
    lung_hu: float
    blood_hu: float
    myocardium_hu: float
    liver_hu: float
    cortex_hu: float
    marrow_hu: float
    cartilage_hu: float
    carina_z: float  # table position: where the trachea divides
    spine_radius: float
    disc_spacing: float
    disc_phase: float
    rib_spacing: float  # vertical distance between ribs at a fixed angle round the chest
    rib_drop: float  # how far a rib falls from its head to its anterior end
    rib_phase: float
    table_gap: float


@dataclass(frozen=True)
class Heart:
    """Pose, size and proportions of the heart and great vessels."""

    azimuth: float  # long axis from anterior towards the patient's left, in the axial plane
    elevation: float  # long axis below the axial plane
    roll: float  # about the long axis
    scale: float
    lv_length: float  # base (valve plane) to apex, before ``scale``
    lv_radius: float
    lv_wall: float
    taper: float  # how pointed the ventricles are
    rv_scale: float
    la_scale: float
    ra_scale: float
    shift_x: float  # aortic root centre relative to the body's midline
    root_below_carina: float
    epicardial_fat: float
    fat_blend: float  # smooth-union width of the fat envelope (plus the fat thickness): how much fills the grooves
    pericardium_mm: float
    pericardium_hu: float
    root_radius: float
    asc_radius: float
    desc_radius: float
    pa_radius: float
    svc_radius: float
    arch_rise: float  # top of the aortic arch above the root


@dataclass(frozen=True)
class Tree:
    """Coronary anatomy."""

    dominance: Literal["right", "left", "co"]
    lm_length: float  # 0: the LAD and LCX leave the left sinus through separate ostia
    ramus: bool
    n_diagonals: int
    n_marginals: int
    lad_wrap: bool  # the LAD turns round the apex onto the inferior wall
    rca_takeoff: float  # RCA ostium height above the sinus centre (high take-off when large)
    rca_groove: float  # RCA position across the right AV groove: negative atrial, positive ventricular
    av_level: float  # the AV groove's height along the long axis above the valve plane
    lumen_scale: float
    tortuosity: float  # 0 straight ... 1 tortuous


@dataclass(frozen=True)
class Burden:
    """Coronary calcium: the risk category and the score that ``lesions`` aims at."""

    category: Literal["0", "1-10", "11-100", "101-400", ">400"]
    target: float  # total Agatston aimed at (0 for category "0")
    n_faint: int  # spots that stay below 130 HU (labelled, not scored)
    artery_weights: tuple[float, float, float, float]  # LM, LAD, LCX, RCA share of the lesions
    density_bias: float  # -1 soft ... +1 dense lesions


@dataclass(frozen=True)
class Clutter:
    """How many of each kind of non-coronary calcification (never labelled)."""

    aortic_root: int  # on the sinus wall beside the coronary ostia
    aortic_wall: int  # ascending aorta, arch, descending aorta
    aortic_valve: int
    mitral: int
    pericardial: int
    cartilage: int  # costal cartilage
    lymph: int  # calcified mediastinal and hilar lymph nodes
    granuloma: int  # calcified lung nodules

    @property
    def total(self) -> int:
        return (self.aortic_root + self.aortic_wall + self.aortic_valve + self.mitral + self.pericardial
                + self.cartilage + self.lymph + self.granuloma)


@dataclass(frozen=True)
class Scan:
    """Acquisition, reconstruction and encoding."""

    thickness_mm: float
    increment_mm: float
    fov_mm: float
    tight: bool  # z coverage tight to the heart (otherwise from above the carina)
    top_margin: float
    bottom_margin: float
    centre_jitter: tuple[float, float]  # reconstruction centre offset (mm)
    kvp: float
    kernel: Literal["smooth", "standard", "sharp"]
    psf_sigma_mm: float
    edge_gain: float  # overshoot of sharp kernels: PSF = (1 + g) G(sigma) - g G(2.5 sigma)
    noise_hu: float  # standard deviation in the mediastinum
    nps_exponent: float  # low-frequency slope of the noise power: 1 filtered back projection, lower iterative
    streak_hu: float
    motion_mm: float  # RCA and LCX displacement during the acquisition window (0: still)
    calcium_gain: float  # calcium and bone HU relative to 120 kVp
    stored: Literal["int16", "uint16"]
    intercept: float
    padding_hu: float | None  # value outside the reconstruction circle; None: the image fills the square
    descending: bool  # instance numbers head to feet


@dataclass(frozen=True)
class CaseParams:
    seed: int
    body: Body
    heart: Heart
    tree: Tree
    burden: Burden
    clutter: Clutter
    scan: Scan


def _pick(rng: np.random.Generator, options: list[T] | tuple[T, ...], weights: tuple[float, ...]) -> T:
    """One of ``options`` with the given relative weights."""
    p = np.asarray(weights, float)
    return options[int(rng.choice(len(options), p=p / p.sum()))]


def _maybe(rng: np.random.Generator, p: float, low: int, high: int) -> int:
    """With probability ``p`` an integer in [low, high], else 0."""
    return int(rng.integers(low, high + 1)) if rng.random() < p else 0


def draw_params(seed: int) -> CaseParams:
    """All parameters of case ``seed`` (ranges in the module docstring).

    Each group draws from its own stream, so a change to one group's draws
    leaves the others' as they were.
    """
    def stream(tag: int) -> np.random.Generator:
        return np.random.default_rng([seed, 0xB0B, tag])

    body = _draw_body(stream(1))
    size = float(np.clip((body.half_width - 128.0) / 85.0, 0.0, 1.0))
    return CaseParams(
        seed=seed,
        body=body,
        heart=_draw_heart(stream(2), size),
        tree=_draw_tree(stream(3)),
        burden=_draw_burden(stream(4), seed),
        clutter=_draw_clutter(stream(5)),
        scan=_draw_scan(stream(6), size),
    )


def _draw_body(rng: np.random.Generator) -> Body:
    size = float(rng.beta(2.0, 2.0))
    half_width = 128.0 + 85.0 * size
    return Body(
        centre_x=float(np.clip(rng.normal(0.0, 12.0), -35.0, 35.0)),
        centre_y=float(rng.uniform(-30.0, 20.0)),
        half_width=half_width,
        half_depth=half_width * float(rng.uniform(0.68, 0.84)),
        exponent=float(rng.uniform(2.0, 3.2)),
        fat_mm=4.0 + 35.0 * size**1.5 + float(rng.uniform(0.0, 6.0)),
        muscle_mm=float(rng.uniform(6.0, 16.0)),
        wall_mm=float(rng.uniform(9.0, 14.0)),
        fat_hu=float(rng.uniform(-120.0, -85.0)),
        muscle_hu=float(rng.uniform(35.0, 60.0)),
        lung_hu=float(rng.uniform(-880.0, -780.0)),
        blood_hu=float(rng.uniform(30.0, 50.0)),
        myocardium_hu=float(rng.uniform(35.0, 58.0)),
        liver_hu=float(rng.uniform(45.0, 70.0)),
        cortex_hu=float(rng.uniform(600.0, 1150.0)),
        marrow_hu=float(rng.uniform(120.0, 300.0)),
        cartilage_hu=float(rng.uniform(70.0, 140.0)),
        carina_z=float(rng.uniform(-260.0, 40.0)),
        spine_radius=float(rng.uniform(14.0, 21.0)),
        disc_spacing=float(rng.uniform(24.0, 31.0)),
        disc_phase=float(rng.uniform(0.0, 31.0)),
        rib_spacing=float(rng.uniform(21.0, 30.0)),
        rib_drop=float(rng.uniform(60.0, 110.0)),
        rib_phase=float(rng.uniform(0.0, 30.0)),
        table_gap=float(rng.uniform(0.0, 20.0)),
    )


def _draw_heart(rng: np.random.Generator, size: float) -> Heart:
    pose = _pick(rng, ("horizontal", "oblique", "vertical"), (0.25, 0.55, 0.20))
    elevation = {"horizontal": (10.0, 22.0), "oblique": (22.0, 42.0), "vertical": (42.0, 58.0)}[pose]
    displaced = rng.random() < 0.15
    fat_class = _pick(rng, ("thin", "medium", "thick"), (0.3, 0.45, 0.25))
    fat = float(rng.uniform(*{"thin": (1.0, 3.0), "medium": (3.0, 7.0), "thick": (7.0, 14.0)}[fat_class]))
    return Heart(
        azimuth=float(rng.uniform(25.0, 68.0)),
        elevation=float(rng.uniform(*elevation)),
        roll=float(rng.uniform(-20.0, 20.0)),
        scale=float(np.clip(rng.uniform(0.82, 1.1) + 0.12 * size, 0.82, 1.22)),
        lv_length=float(rng.uniform(82.0, 100.0)),
        lv_radius=float(rng.uniform(28.0, 34.0)),
        lv_wall=float(rng.uniform(8.0, 14.0)),
        taper=float(rng.uniform(0.25, 0.5)),
        rv_scale=float(rng.uniform(0.8, 1.25)),
        la_scale=float(rng.uniform(0.9, 1.4)),
        ra_scale=float(rng.uniform(0.9, 1.35)),
        shift_x=float(rng.uniform(-4.0, 16.0) + (rng.uniform(15.0, 35.0) if displaced else 0.0)),
        root_below_carina=float(rng.uniform(35.0, 60.0)),
        epicardial_fat=fat,
        fat_blend=float(rng.uniform(14.0, 28.0)),
        pericardium_mm=float(rng.uniform(1.0, 2.5)),
        pericardium_hu=float(rng.uniform(15.0, 45.0)),
        root_radius=float(rng.uniform(13.0, 17.0)),
        asc_radius=float(rng.uniform(13.0, 20.0)),
        desc_radius=float(rng.uniform(10.0, 14.0)),
        pa_radius=float(rng.uniform(11.0, 16.0)),
        svc_radius=float(rng.uniform(8.0, 11.0)),
        arch_rise=float(rng.uniform(50.0, 75.0)),
    )


def _draw_tree(rng: np.random.Generator) -> Tree:
    high = rng.random() < 0.1
    return Tree(
        dominance=_pick(rng, ("right", "co", "left"), (0.65, 0.20, 0.15)),
        lm_length=0.0 if rng.random() < 0.12 else float(rng.uniform(3.0, 20.0)),
        ramus=bool(rng.random() < 0.25),
        n_diagonals=int(rng.integers(1, 4)),
        n_marginals=int(rng.integers(1, 4)),
        lad_wrap=bool(rng.random() < 0.4),
        rca_takeoff=float(rng.uniform(6.0, 12.0) if high else rng.uniform(-3.0, 4.0)),
        rca_groove=float(rng.uniform(-4.0, 4.0)),
        av_level=float(rng.uniform(-3.0, 3.0)),
        lumen_scale=float(rng.uniform(0.8, 1.25)),
        tortuosity=float(rng.beta(1.5, 2.5)),
    )


def _draw_burden(rng: np.random.Generator, seed: int) -> Burden:
    # The category follows a golden-ratio sequence over the seeds (a low-discrepancy draw): any run of
    # consecutive seeds holds every category close to its share, however short the run.
    u = (seed * _GOLDEN + 0.31) % 1.0
    category = CATEGORIES[int(np.searchsorted(np.cumsum(CATEGORY_SHARE), u, side="right"))]
    if category == "0":
        target, faint = 0.0, 0
    else:
        lo, hi = CATEGORY_TARGETS[category]
        target = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        faint = _maybe(rng, 0.4, 1, 3)
    # Most trees calcify in the LAD first; some cases are single-vessel.
    weights = rng.dirichlet([0.6, 2.0, 1.0, 1.4])
    if rng.random() < 0.25:
        only = int(rng.choice(4, p=[0.05, 0.5, 0.2, 0.25]))
        weights = np.eye(4)[only] * 0.97 + 0.01
    return Burden(category=category, target=target, n_faint=faint,
                  artery_weights=tuple(float(w) for w in weights),  # type: ignore[arg-type]
                  density_bias=float(rng.uniform(-1.0, 1.0)))


def _draw_clutter(rng: np.random.Generator) -> Clutter:
    return Clutter(
        aortic_root=_maybe(rng, 0.5, 1, 3),
        aortic_wall=_maybe(rng, 0.6, 1, 6),
        aortic_valve=_maybe(rng, 0.3, 1, 3),
        mitral=_maybe(rng, 0.25, 1, 2),
        pericardial=_maybe(rng, 0.15, 1, 2),
        cartilage=_maybe(rng, 0.6, 1, 6),
        lymph=_maybe(rng, 0.3, 1, 3),
        granuloma=_maybe(rng, 0.25, 1, 2),
    )


def _draw_scan(rng: np.random.Generator, size: float) -> Scan:
    thickness, increment = _pick(
        rng,
        ((3.0, 3.0), (2.5, 2.5), (2.0, 2.0), (3.0, 1.5), (2.5, 1.25), (3.0, 2.5), (2.0, 1.25), (1.5, 1.5), (1.5, 1.25)),
        (0.30, 0.24, 0.12, 0.08, 0.05, 0.05, 0.05, 0.06, 0.05),
    )
    fov_class = _pick(rng, ("cardiac", "chest", "wide"), (0.35, 0.45, 0.20))
    fov = float(rng.uniform(*{"cardiac": (180.0, 260.0), "chest": (260.0, 360.0), "wide": (360.0, 400.0)}[fov_class]))
    kvp = _pick(rng, (120.0, 100.0, 135.0), (0.80, 0.12, 0.08))
    kernel = _pick(rng, ("smooth", "standard", "sharp"), (0.35, 0.45, 0.20))
    psf = float(rng.uniform(*{"smooth": (0.55, 0.8), "standard": (0.4, 0.55), "sharp": (0.28, 0.4)}[kernel]))
    edge = float(rng.uniform(*{"smooth": (0.0, 0.02), "standard": (0.0, 0.1), "sharp": (0.15, 0.35)}[kernel]))
    noise = 12.0 + 30.0 * size + float(rng.normal(0.0, 8.0))
    noise *= {120.0: 1.0, 100.0: 1.15, 135.0: 0.92}[kvp] * {"smooth": 0.85, "standard": 1.0, "sharp": 1.3}[kernel]
    stored, intercept = _pick(rng, (("int16", -1024.0), ("int16", 0.0), ("uint16", -1024.0), ("uint16", -8192.0)),
                              (0.30, 0.25, 0.38, 0.07))
    padding = None
    if stored == "int16" and rng.random() < 0.45:
        padding = _pick(rng, (-2000.0, -3024.0, -2048.0), (0.4, 0.4, 0.2))
    elif stored == "uint16" and intercept == -1024.0 and rng.random() < 0.3:
        padding = -1024.0
    return Scan(
        thickness_mm=thickness,
        increment_mm=increment,
        fov_mm=fov,
        tight=bool(rng.random() < 0.45),
        top_margin=float(rng.uniform(5.0, 30.0)),
        bottom_margin=float(rng.uniform(3.0, 25.0)),
        centre_jitter=(float(rng.normal(0.0, 6.0)), float(rng.normal(0.0, 6.0))),
        kvp=kvp,
        kernel=kernel,
        psf_sigma_mm=psf,
        edge_gain=edge,
        noise_hu=float(np.clip(noise, 10.0, 60.0)),
        nps_exponent=float(rng.uniform(0.4, 1.2)),
        streak_hu=float(rng.uniform(0.0, 25.0)),
        motion_mm=0.0 if rng.random() < 0.45 else float(rng.uniform(0.3, 3.0)),
        calcium_gain={120.0: 1.0, 100.0: 1.12, 135.0: 0.95}[kvp],
        stored=stored,
        intercept=intercept,
        padding_hu=padding,
        descending=bool(rng.random() < 0.5),
    )
