"""Every structure of one case, placed: chest, heart, mediastinum, coronary tree, and the scan grid."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.phantom_b.arteries import LCX, RCA, Artery, coronary_tree
from training.phantom_b.chest import Chest, Domes, Ribs, build_chest, make_domes, make_ribs
from training.phantom_b.geometry import Grid, scan_grid
from training.phantom_b.heart import HeartModel, place_heart, shell_points
from training.phantom_b.params import CaseParams
from training.phantom_b.vessels import Mediastinum, TubeLayer, build_mediastinum, lung_vessels


@dataclass(frozen=True)
class Scene:
    params: CaseParams
    chest: Chest
    heart: HeartModel
    grid: Grid
    mediastinum: Mediastinum
    ribs: Ribs
    domes: Domes
    lung_vessels: TubeLayer
    arteries: tuple[Artery, ...]
    coronary_sleeve: float  # fat round every coronary lumen, even where it crosses a chamber's surface
    motion: dict[int, np.ndarray]  # label (LCX, RCA) -> displacement of that territory during the acquisition

    @property
    def artery_layers(self) -> tuple[TubeLayer, ...]:
        b = self.params.body
        return tuple(a.layer(b.blood_hu, b.fat_hu) for a in self.arteries)


def build_scene(params: CaseParams) -> Scene:
    """Place every structure of case ``params`` (pure: the same parameters give the same scene)."""
    rng = np.random.default_rng([params.seed, 0xB0B, 0x5CE])
    chest = build_chest(params.body)
    heart = place_heart(params.heart, chest)
    grid = scan_grid(params, chest, heart)
    z_low, z_high = float(grid.zs()[0]), float(grid.zs()[-1])
    med = build_mediastinum(chest, heart, params.heart, params.body, z_low, z_high, rng)
    ribs = make_ribs(params.body, z_low, z_high, rng)
    bottom = float(shell_points(heart, 4.0)[:, 2].min())
    domes = make_domes(chest, bottom, rng)
    lungs = lung_vessels(chest, med, params.body, rng)
    arteries = coronary_tree(params.tree, heart, med, np.random.default_rng([params.seed, 0xB0B, 0xC0A]))
    motion_rng = np.random.default_rng([params.seed, 0xB0B, 0x307])
    motion = {label: _motion(params.scan.motion_mm, motion_rng) for label in (LCX, RCA)}
    return Scene(params, chest, heart, grid, med, ribs, domes, lungs, arteries, float(rng.uniform(1.2, 2.5)), motion)


def _motion(amount: float, rng: np.random.Generator) -> np.ndarray:
    """A displacement of ``amount`` mm, mostly in-plane: the right and circumflex territories swing sideways."""
    angle = float(rng.uniform(0.0, 2.0 * np.pi))
    return amount * np.array([np.cos(angle), np.sin(angle), float(rng.uniform(-0.3, 0.3))])
