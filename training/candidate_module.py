"""LightningModule and fit for the lesion classifier (``pipeline.candidate_classifier``).

The rows are every candidate lesion of the fitting cases
(``training.candidate_data``): thousands of bone, distractor and noise
candidates per coronary one.  The loss is therefore balanced like the
network's: the mean cross-entropy over coronary candidates plus the mean over
the others.  Candidates smaller than the scoring minimum area count a tenth:
they never reach a score, whatever their label.
"""

from __future__ import annotations

import logging

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

from pipeline.candidate_classifier import CandidateClassifier, ClassifierConfig
from pipeline.weights import ClassifierWeights
from training.candidate_data import CandidateRows

log = logging.getLogger(__name__)

SMALL_CANDIDATE_WEIGHT = 0.1  # relative loss weight of candidates below the minimum scored area


class CandidateFitter(pl.LightningModule):
    """Training wrapper around the plain classifier."""

    def __init__(self, config: ClassifierConfig, learning_rate: float, weight_decay: float, max_epochs: int) -> None:
        super().__init__()
        self.model = CandidateClassifier(config)
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.max_epochs = max_epochs

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.model(features)

    def loss(self, logits: torch.Tensor, truth: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, truth, reduction="none") * weight
        coronary = (truth > 0).float()
        other = 1.0 - coronary
        return ((ce * other).sum() / (weight * other).sum().clamp(min=1e-6)
                + (ce * coronary).sum() / (weight * coronary).sum().clamp(min=1e-6))

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        features, truth, weight = batch
        loss = self.loss(self(features), truth, weight)
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=features.shape[0])
        return loss

    def configure_optimizers(self) -> dict[str, object]:
        optimiser = torch.optim.AdamW(self.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(1, self.max_epochs),
                                                              eta_min=self.learning_rate * 0.02)
        return {"optimizer": optimiser, "lr_scheduler": {"scheduler": schedule, "interval": "epoch"}}


def fit_classifier(rows: CandidateRows, *, min_area_mm2: float = 1.0, epochs: int = 60, batch_size: int = 1024,
                   learning_rate: float = 3e-3, weight_decay: float = 1e-4, seed: int = 0,
                   config: ClassifierConfig = ClassifierConfig(), accelerator: str = "cpu",
                   describe: dict[str, object] | None = None) -> ClassifierWeights:
    """Fit a classifier on ``rows`` and return it ready to store (background bias 0: calibrate after)."""
    if not np.any(rows.truth > 0):
        raise ValueError("the fitting cases hold no coronary candidate: nothing to learn an artery from")
    pl.seed_everything(seed, workers=True)
    features = torch.from_numpy(rows.features)
    truth = torch.from_numpy(rows.truth)
    weight = torch.from_numpy(np.where(rows.area_mm2 >= min_area_mm2, 1.0, SMALL_CANDIDATE_WEIGHT).astype(np.float32))
    module = CandidateFitter(config, learning_rate, weight_decay, epochs)
    module.model.set_standardisation(features)
    # Whole batches are indexed at once (a per-row __getitem__ costs minutes on 10^5 rows).
    batches = BatchSampler(RandomSampler(truth, generator=torch.Generator().manual_seed(seed)), batch_size,
                           drop_last=False)
    loader = DataLoader(TensorDataset(features, truth, weight), sampler=batches, batch_size=None)
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=1,
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, train_dataloaders=loader)
    log.info("lesion classifier fitted on %d candidates (%d coronary), %d epochs", len(truth),
             int((truth > 0).sum()), epochs)
    return ClassifierWeights(
        config=config,
        state_dict={k: v.detach().cpu() for k, v in module.model.state_dict().items()},
        background_bias=0.0,
        training={
            "candidates": int(len(truth)),
            "coronary_candidates": int((truth > 0).sum()),
            "cases": int(len(np.unique(rows.case))),
            "epochs": epochs,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            **(describe or {}),
        },
    )
