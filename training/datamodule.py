"""LightningDataModule: phantoms (generated and cached once) and a site's own labelled series.

``prepare_data`` generates or loads every case once and caches its heart crop
(``training.cases``); training then draws ``samples_per_epoch`` augmented
patches per epoch from the cache (``training.augment``), and validation runs
on whole heart crops so the scored metrics see what inference sees.
"""

from __future__ import annotations

import dataclasses
import logging
from concurrent.futures import ProcessPoolExecutor, as_completed
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from pipeline.model.preprocess import Preprocess
from training.augment import Augmentation, FullCase, full_case, training_sample
from training.cases import (CachedCase, CaseSource, HospitalSource, PhantomSource, cache_case, load_cached,
                            phantoms, read_hospital_csv)
from training.config import TrainingConfig

log = logging.getLogger(__name__)


def phantom_sources(config: TrainingConfig) -> tuple[list[PhantomSource], list[PhantomSource]]:
    """Training and validation phantoms from the configured families; a share of family a's from its
    shifted ranges."""
    train = phantoms(config.train_seed, config.phantom_train, families=config.families)
    n_a = sum(s.family == "a" for s in train)
    first_plain = config.train_seed + int(round(config.shifted_fraction * n_a))  # family a's first seeds are shifted
    train = [dataclasses.replace(s, shifted=s.family == "a" and s.seed < first_plain) for s in train]
    return train, phantoms(config.val_seed, config.phantom_val, families=config.families)


def classifier_phantom_sources(config: TrainingConfig) -> list[PhantomSource]:
    """The lesion classifier's phantoms: the plain ones of every family, then family a's hard-ostia ones."""
    hard = config.classifier_hard_ostia_phantoms if "a" in config.families else 0
    return [*phantoms(config.classifier_seed, config.classifier_phantoms, families=config.families),
            *phantoms(config.classifier_hard_ostia_seed, hard, hard_ostia=True)]


class PatchDataset(Dataset):
    """``length`` random augmented patches drawn from cached cases (kept in memory)."""

    def __init__(self, cases: list[CachedCase], preprocess: Preprocess, aug: Augmentation,
                 patch: tuple[int, int], length: int, seed: int) -> None:
        self.cases = cases
        self.preprocess = preprocess
        self.aug = aug
        self.patch = patch
        self.length = length
        self.seed = seed
        self.epoch = 0  # advanced by the data module so every epoch draws new patches

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        case = self.cases[int(rng.integers(len(self.cases)))]
        image, target, valid = training_sample(case, self.preprocess, self.aug, self.patch, rng)
        return {"image": torch.from_numpy(image), "target": torch.from_numpy(target),
                "valid": torch.from_numpy(valid)}


class FullDataset(Dataset):
    """Whole heart crops of the validation cases (prepared once)."""

    def __init__(self, cases: list[CachedCase], preprocess: Preprocess) -> None:
        self.items = [full_case(c, preprocess) for c in cases]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> FullCase:
        return self.items[index]


def _first(batch: list[FullCase]) -> FullCase:
    return batch[0]


class CalciumDataModule(pl.LightningDataModule):
    """Phantom and site data for :class:`training.module.CalciumSegmenter`."""

    def __init__(self, config: TrainingConfig, preprocess: Preprocess, cache_dir: Path,
                 sources: tuple[Sequence[CaseSource], Sequence[CaseSource]] | None = None) -> None:
        super().__init__()
        self.config = config
        self.preprocess = preprocess
        self.cache_dir = cache_dir
        # ``sources`` replaces the phantoms of ``config`` (tests, custom data sets).
        train, val = phantom_sources(config) if sources is None else (list(sources[0]), list(sources[1]))
        self.train_sources: list[CaseSource] = list(train)
        self.val_sources: list[CaseSource] = list(val)
        if config.hospital_csv is not None:
            site_train, site_val = read_hospital_csv(config.hospital_csv)
            self.train_sources += site_train
            self.val_sources += site_val
        self.train_set: PatchDataset | None = None
        self.val_set: FullDataset | None = None

    def describe(self) -> dict[str, object]:
        """What the model is trained on, for the weights file."""
        c = self.config
        n_shifted = sum(1 for s in self.train_sources if isinstance(s, PhantomSource) and s.shifted)
        return {
            "phantom_train": c.phantom_train,
            "phantom_train_shifted": n_shifted,
            "phantom_train_seeds": [c.train_seed, c.train_seed + c.phantom_train - 1],
            "phantom_val": c.phantom_val,
            "phantom_val_seeds": [c.val_seed, c.val_seed + c.phantom_val - 1],
            "site_train": sum(1 for s in self.train_sources if isinstance(s, HospitalSource)),
            "site_val": sum(1 for s in self.val_sources if isinstance(s, HospitalSource)),
            "families": {f: sum(1 for s in self.train_sources if isinstance(s, PhantomSource) and s.family == f)
                         for f in c.families},
            "generator": "training.families (cacnode synthetic calcium-scoring CT, families "
                         + ", ".join(c.families) + ")",
        }

    def prepare_data(self) -> None:
        sources = self.train_sources + self.val_sources
        workers = min(self.config.prepare_workers, len(sources))
        if workers <= 1:
            for source in sources:
                cache_case(source, self.preprocess, self.cache_dir)
            return
        # Generating a phantom costs seconds of numpy; a process pool uses the cores once.
        with ProcessPoolExecutor(workers) as pool:
            jobs = [pool.submit(cache_case, s, self.preprocess, self.cache_dir) for s in sources]
            for i, job in enumerate(as_completed(jobs), start=1):
                job.result()
                if i % 10 == 0 or i == len(jobs):
                    log.info("cached %d/%d cases", i, len(jobs))

    def setup(self, stage: str) -> None:
        load = lambda sources: [load_cached(cache_case(s, self.preprocess, self.cache_dir)) for s in sources]
        if self.train_set is None and stage == "fit":
            c = self.config
            self.train_set = PatchDataset(load(self.train_sources), self.preprocess, Augmentation(),
                                          (c.patch_slices, c.patch_cells), c.samples_per_epoch, c.seed)
        if self.val_set is None and stage in ("fit", "validate"):
            self.val_set = FullDataset(load(self.val_sources), self.preprocess)

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None
        self.train_set.epoch = self.trainer.current_epoch if self.trainer is not None else 0
        return DataLoader(self.train_set, batch_size=self.config.batch_size, shuffle=False,
                          num_workers=self.config.num_workers, persistent_workers=False)

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None
        return DataLoader(self.val_set, batch_size=1, shuffle=False, collate_fn=_first,
                          num_workers=0)
