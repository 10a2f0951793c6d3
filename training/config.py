"""Config section ``[training]``: data, network size, optimisation and the Lightning Trainer.

The defaults are the CPU configuration that trains the bundled weights on a
2-core machine in under an hour; ``training-gpu.toml`` holds the GPU one.  Every
Trainer setting is an explicit field here (no pass-through of Trainer flags).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from training.families import FAMILIES, Family


@dataclass(frozen=True)
class TrainingConfig:
    """Config section ``[training]``."""

    output: Path = Path("models/cacnode-v1.pt")  # the exported weights file
    work_dir: Path = Path("var/training")  # crop cache, checkpoints and CSV logs
    name: str = "cacnode-unet"  # algorithm name written into reports
    version: str = "1.0.0"
    seed: int = 0
    # Start from this weights file (its architecture and preprocessing) instead of a
    # random initialisation: continuing a run or fine-tuning on a site's data.
    init_weights: Path | None = None

    # --- data -------------------------------------------------------------
    # Phantom families (training.families) the phantoms below are taken from, in turn; each family
    # counts its own seeds.  ["a"] or ["b"] alone trains for a leave-one-family-out test.
    families: tuple[Family, ...] = FAMILIES
    # Phantom seeds: training uses [train_seed, train_seed + phantom_train),
    # validation [val_seed, val_seed + phantom_val).  benchmarks/evaluate_model.py
    # uses seeds from 900000 on, never used here.
    phantom_train: int = 64
    phantom_val: int = 10
    train_seed: int = 10000
    val_seed: int = 20000
    # Share of family a's training phantoms drawn from its shifted ranges; 0 keeps those a held-out test.
    shifted_fraction: float = 0.0
    hospital_csv: Path | None = None  # CSV of series_dir,labels[,split] rows (paths relative to the CSV)
    prepare_workers: int = 2  # processes generating and caching cases before training (once)
    # The lesion classifier (second stage) is fitted after the network on phantoms
    # [classifier_seed, classifier_seed + classifier_phantoms) that the network never saw;
    # 0 phantoms: no classifier, inference uses the plain majority rule.
    classifier_phantoms: int = 0
    classifier_seed: int = 60000
    classifier_epochs: int = 30
    classifier_max_minutes: float | None = None  # stops the classifier's fit sooner (fewer epochs): a time box
    # Hard examples for the classifier: family a phantoms [classifier_hard_ostia_seed, + classifier_hard_ostia_phantoms)
    # with 2-4 extra aortic-wall calcifications beside the coronary ostia (only when "a" is among the families).
    classifier_hard_ostia_phantoms: int = 0
    classifier_hard_ostia_seed: int = 70000
    # The classifier's background bias is then chosen on validation phantoms
    # [val_seed, val_seed + calibration_phantoms) plus the site's validation series (training.calibrate),
    # among the biases of at least calibration_min_background_bias when it is set.
    calibration_phantoms: int = 40
    calibration_min_background_bias: float | None = None

    # --- network and preprocessing ---------------------------------------
    # U-Net channels per level.  Small on purpose: the net only decides which candidate
    # cells are coronary and of which artery; the position channels carry the global context.
    channels: tuple[int, ...] = (8, 16, 32, 48)
    grid: int = 112  # in-plane cells of the heart crop (160 mm / 112 = 1.43 mm)
    crop_mm: float = 160.0

    # --- optimisation ------------------------------------------------------
    max_epochs: int = 22
    max_minutes: float = 35.0  # the Trainer stops after this wall time whatever the epoch
    samples_per_epoch: int = 128  # random patches drawn per training epoch
    batch_size: int = 4
    patch_slices: int = 16  # patch size on the grid (slices, cells, cells): 40-48 mm x 92 mm x 92 mm
    patch_cells: int = 64
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    artery_weight: float = 1.0  # mean loss on coronary candidate cells relative to the other candidates
    context_weight: float = 0.05  # weight of the loss on non-candidate cells
    num_workers: int = 0  # DataLoader worker processes (0 on a 2-core CPU)
    cpu_threads: int = 2  # torch intra-op threads when training on CPU

    # --- Lightning Trainer (explicit settings) -------------------------
    accelerator: Literal["cpu", "gpu", "auto"] = "cpu"
    devices: int = 1  # GPUs (or CPU processes) used
    strategy: Literal["auto", "ddp", "ddp_spawn"] = "auto"  # "ddp" for several GPUs
    precision: Literal["32", "16-mixed", "bf16-mixed"] = "32"  # mixed precision on GPU only
    check_val_every_n_epoch: int = 3

    def __post_init__(self) -> None:
        if not self.families or len(set(self.families)) != len(self.families):
            raise ValueError(f"training.families must name each of {', '.join(FAMILIES)} at most once, at least one")
        if self.phantom_train < 0 or self.phantom_val < 0:
            raise ValueError("training.phantom_train and phantom_val must be >= 0")
        if self.patch_cells % 8 or self.patch_cells > self.grid:
            raise ValueError(f"training.patch_cells must be a multiple of 8 and <= grid, got {self.patch_cells}")
        if self.patch_slices % 4:
            raise ValueError(f"training.patch_slices must be a multiple of 4, got {self.patch_slices}")
        if not 0.0 <= self.shifted_fraction <= 1.0:
            raise ValueError("training.shifted_fraction must be within 0-1")
        if self.accelerator == "cpu" and self.precision != "32":
            raise ValueError("training.precision: mixed precision needs a GPU; use \"32\" on CPU")
        if (self.classifier_phantoms < 0 or self.classifier_hard_ostia_phantoms < 0 or self.classifier_epochs < 1
                or self.calibration_phantoms < 0
                or (self.classifier_max_minutes is not None and self.classifier_max_minutes <= 0)):
            raise ValueError("training.classifier_phantoms, classifier_hard_ostia_phantoms and calibration_phantoms "
                             "must be >= 0, classifier_epochs >= 1, classifier_max_minutes > 0")
        if self.prepare_workers < 1:
            raise ValueError("training.prepare_workers must be >= 1")
        if self.batch_size < 1 or self.samples_per_epoch < 1 or self.max_epochs < 1:
            raise ValueError("training.batch_size, samples_per_epoch and max_epochs must be >= 1")
