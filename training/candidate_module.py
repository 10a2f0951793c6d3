"""LightningModule and fit for the lesion classifier (``pipeline.model.candidate_classifier``).

The rows are every candidate lesion of the fitting cases
(``training.candidate_data``): thousands of bone, distractor and noise
candidates per coronary one.  The loss is therefore balanced like the
network's: the mean (focal) cross-entropy over coronary candidates plus the
mean over the others.  Candidates smaller than the scoring minimum area count a tenth:
they never reach a score, whatever their label.
"""

from __future__ import annotations

import logging

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

from pipeline.model.candidate_classifier import CandidateClassifier, ClassifierConfig
from pipeline.model.candidate_features import FEATURE_NAMES
from pipeline.model.object_consensus import ConsensusRule
from pipeline.model.weights import ClassifierWeights
from training.candidate_data import CandidateRows

log = logging.getLogger(__name__)

SMALL_CANDIDATE_WEIGHT = 0.1  # relative loss weight of candidates below the minimum scored area
EASY_PROBABILITY = 0.5  # background candidates the network gives less coronary probability than this are "easy"


class CandidateFitter(pl.LightningModule):
    """Training wrapper around the plain classifier."""

    def __init__(self, config: ClassifierConfig, learning_rate: float, weight_decay: float, max_epochs: int,
                 focal_gamma: float = 2.0) -> None:
        super().__init__()
        self.focal_gamma = focal_gamma
        self.model = CandidateClassifier(config)
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.max_epochs = max_epochs

    def forward(self, features: torch.Tensor, patches: torch.Tensor, wide: torch.Tensor) -> torch.Tensor:
        return self.model(features, patches, wide)

    def loss(self, logits: torch.Tensor, truth: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, truth, reduction="none")
        # Focal weighting (Lin et al. 2017): the many easy bone candidates fade, the few
        # hard ones (an aortic-wall calcification beside the left main) keep their weight.
        ce = ce * (1.0 - torch.exp(-ce)) ** self.focal_gamma * weight
        coronary = (truth > 0).float()
        other = 1.0 - coronary
        return ((ce * other).sum() / (weight * other).sum().clamp(min=1e-6)
                + (ce * coronary).sum() / (weight * coronary).sum().clamp(min=1e-6))

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        features, patches, wide, truth, weight = batch
        loss = self.loss(self(features, patches.float(), wide.float()), truth, weight)
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=features.shape[0])
        return loss

    def configure_optimizers(self) -> dict[str, object]:
        optimiser = torch.optim.AdamW(self.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(1, self.max_epochs),
                                                              eta_min=self.learning_rate * 0.02)
        return {"optimizer": optimiser, "lr_scheduler": {"scheduler": schedule, "interval": "epoch"}}


def subsample_easy(rows: CandidateRows, keep: float, seed: int) -> tuple[CandidateRows, np.ndarray]:
    """Keep a share ``keep`` of the easy background rows (bone, mostly), each then weighted 1 / keep.

    Returns the rows and their weight factors.  An epoch then costs a fraction of
    the full set while the loss still sees every hard candidate each time.
    """
    p_coronary = rows.features[:, FEATURE_NAMES.index("p_coronary_max")]
    easy = (rows.truth == 0) & (p_coronary < EASY_PROBABILITY)
    rng = np.random.default_rng(seed)
    chosen = ~easy | (rng.random(len(easy)) < keep)
    factor = np.where(easy, 1.0 / keep, 1.0)[chosen].astype(np.float32)
    return rows.take(chosen), factor


def fit_classifier(rows: CandidateRows, *, min_area_mm2: float = 1.0, epochs: int = 30, batch_size: int = 256,
                   easy_keep: float = 0.25,
                   learning_rate: float = 3e-3, weight_decay: float = 1e-4, seed: int = 0,
                   config: ClassifierConfig = ClassifierConfig(), accelerator: str = "cpu", focal_gamma: float = 2.0,
                   describe: dict[str, object] | None = None, max_minutes: float | None = None) -> ClassifierWeights:
    """Fit a classifier on ``rows`` and return it ready to store (background bias 0: calibrate after).

    ``max_minutes`` stops the fit early (after fewer than ``epochs`` epochs; the record says how many ran).
    """
    if not np.any(rows.truth > 0):
        raise ValueError("the fitting cases hold no coronary candidate: nothing to learn an artery from")
    pl.seed_everything(seed, workers=True)
    all_rows = rows
    rows, factor = subsample_easy(rows, easy_keep, seed)
    features = torch.from_numpy(rows.features)
    truth = torch.from_numpy(rows.truth)
    weight = torch.from_numpy(factor * np.where(rows.area_mm2 >= min_area_mm2, 1.0, SMALL_CANDIDATE_WEIGHT)
                              .astype(np.float32))
    module = CandidateFitter(config, learning_rate, weight_decay, epochs, focal_gamma)
    module.model.set_standardisation(torch.from_numpy(all_rows.features))
    # Whole batches are indexed at once (a per-row __getitem__ costs minutes on 10^5 rows).
    batches = BatchSampler(RandomSampler(truth, generator=torch.Generator().manual_seed(seed)), batch_size,
                           drop_last=False)
    # Patches stay float16 in memory, float32 per batch.
    data = TensorDataset(features, torch.from_numpy(rows.patches), torch.from_numpy(rows.wide), truth, weight)
    loader = DataLoader(data, sampler=batches, batch_size=None)
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=1,
        max_epochs=epochs,
        max_time=None if max_minutes is None else {"minutes": max_minutes},
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, train_dataloaders=loader)
    epochs_run = int(trainer.current_epoch)
    log.info("lesion classifier fitted on %d of %d candidates (%d coronary), %d of %d epochs", len(truth),
             len(all_rows.truth), int((truth > 0).sum()), epochs_run, epochs)
    return ClassifierWeights(
        config=config,
        state_dict={k: v.detach().cpu() for k, v in module.model.state_dict().items()},
        background_bias=0.0,
        object_consensus=ConsensusRule(),  # the vote within calcified objects follows the classifier
        training={
            "candidates": int(len(all_rows.truth)),
            "candidates_per_epoch": int(len(truth)),
            "coronary_candidates": int((truth > 0).sum()),
            "cases": int(len(np.unique(rows.case))),
            "epochs": epochs_run,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "focal_gamma": focal_gamma,
            **(describe or {}),
        },
    )
