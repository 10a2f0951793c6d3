"""LightningModule: trains ``pipeline.model.unet.UNet3D`` and validates on scored results.

The loss copes with a few calcified cells among millions: the network only
has to decide *which candidate cells are coronary calcium of which artery*
(the labels come from candidates at inference, ``pipeline.model.candidates``), so
a class-balanced cross-entropy is taken over candidate cells (any voxel >= 130 HU),
coronary and other candidates averaged separately, plus a small-weight term over all cells
that keeps the output calm elsewhere.

Validation runs the full inference path on whole heart crops, scores the
labels with the Agatston definition and logs the figures of
``evaluation.metrics`` every validation epoch.
"""

from __future__ import annotations

import math

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from evaluation.metrics import CaseOutcome, case_outcome, summarise
from pipeline.model.inference import grid_to_labels
from pipeline.model.unet import UNet3D, UNetConfig
from pipeline.scoring.agatston import ScoringProfile
from training.augment import FullCase

_OUTCOME_FIELDS = ("true_total", "pred_total", "right_artery", "detected", "lesions", "lesions_found",
                   "false_positives")


class CalciumSegmenter(pl.LightningModule):
    """Training wrapper around the plain network."""

    def __init__(
        self,
        model_config: UNetConfig,
        learning_rate: float,
        weight_decay: float,
        artery_weight: float,
        context_weight: float,
        max_epochs: int,
        candidate_hu: float = 130.0,
    ) -> None:
        super().__init__()
        self.model_config = model_config
        self.model = UNet3D(model_config)
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.context_weight = context_weight
        self.max_epochs = max_epochs
        self.candidate_hu = candidate_hu
        self.artery_weight = artery_weight
        self.profile = ScoringProfile()
        self._outcomes: list[CaseOutcome] = []
        self.last_validation: dict[str, float] = {}

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image)

    def transfer_batch_to_device(self, batch: object, device: torch.device, dataloader_idx: int) -> object:
        # A validation case holds numpy arrays (moved in ``validation_step``); Lightning
        # cannot rebuild frozen dataclasses, so it is passed through as it is.
        if isinstance(batch, FullCase):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def loss(self, logits: torch.Tensor, target: torch.Tensor, candidate: torch.Tensor,
             valid: torch.Tensor) -> torch.Tensor:
        """Class-balanced cross-entropy over candidate cells + ``context_weight`` x over all valid cells.

        Bone, distractors and noise make far more candidate cells than coronary
        calcium does (often 100:1), so a plain mean teaches "never coronary"
        first.  The mean over coronary candidate cells and the mean over the
        other candidate cells are therefore taken separately and added, the
        coronary one times ``artery_weight``.
        """
        ce = F.cross_entropy(logits.float(), target, reduction="none")
        cand = candidate & valid
        coronary = cand & (target > 0)
        other = cand & (target == 0)
        loss = (ce * other).sum() / other.sum().clamp(min=1)
        loss = loss + self.artery_weight * (ce * coronary).sum() / coronary.sum().clamp(min=1)
        everywhere = (ce * valid).sum() / valid.sum().clamp(min=1)
        return loss + self.context_weight * everywhere

    def shared_step(self, image: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                    stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The one step of train and validation: forward, loss, log."""
        logits = self(image)
        candidate = image[:, 2] > 0.5
        loss = self.loss(logits, target, candidate, valid)
        self.log(f"{stage}/loss", loss, prog_bar=stage == "train", batch_size=image.shape[0],
                 on_step=False, on_epoch=True, sync_dist=stage != "train")
        return loss, logits

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, _ = self.shared_step(batch["image"], batch["target"], batch["valid"], "train")
        return loss

    def validation_step(self, case: FullCase, batch_idx: int) -> None:
        p = case.prepared
        image = torch.from_numpy(p.image[None]).to(self.device)
        target = torch.from_numpy(case.target[None].astype(np.int64)).to(self.device)
        n = image.shape[2]
        m = self.model_config.z_multiple
        pad = (-n) % m
        if pad:  # the network needs a multiple of m slices; padded slices are not scored
            image = torch.cat([image, image[:, :, -1:].expand(-1, -1, pad, -1, -1)], dim=2)
            target = torch.cat([target, torch.zeros_like(target[:, :1]).expand(-1, pad, -1, -1)], dim=1)
        valid = torch.ones_like(target, dtype=torch.bool)
        valid[:, n:] = False
        _, logits = self.shared_step(image, target, valid, "val")
        grid_classes = logits[0, :, :n].argmax(dim=0).to(torch.uint8).cpu().numpy()
        labels = grid_to_labels(case.hu, p.box, grid_classes, self.candidate_hu, self.profile.connectivity)
        self._outcomes.append(
            case_outcome(case.hu, case.labels, labels, p.pixel_spacing_mm, p.increment_mm, self.profile,
                         true_total=case.truth_total)
        )

    def on_validation_epoch_end(self) -> None:
        rows = torch.tensor([[getattr(o, f) for f in _OUTCOME_FIELDS] for o in self._outcomes],
                            dtype=torch.float64, device=self.device).reshape(-1, len(_OUTCOME_FIELDS))
        self._outcomes = []
        gathered = self.all_gather(rows).reshape(-1, len(_OUTCOME_FIELDS)).cpu().numpy()
        outcomes = [CaseOutcome(*[float(v) for v in row]) for row in gathered]
        figures = summarise(outcomes)
        self.last_validation = figures
        for name, value in figures.items():
            if not math.isnan(value):
                self.log(f"val/{name}", value, sync_dist=False, rank_zero_only=True)
        # One number to pick the checkpoint by: agreement of the total plus detection, minus noise.
        self.log("val/selection", selection(figures), rank_zero_only=True)

    def configure_optimizers(self) -> dict[str, object]:
        optimiser = torch.optim.AdamW(self.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(1, self.max_epochs),
                                                              eta_min=self.learning_rate * 0.05)
        return {"optimizer": optimiser, "lr_scheduler": {"scheduler": schedule, "interval": "epoch"}}


def selection(f: dict[str, float]) -> float:
    """One number to pick a checkpoint or a bias by (higher is better)."""
    value = lambda k, default: default if math.isnan(f.get(k, math.nan)) else f[k]
    return (value("icc", 0.0) + value("kappa", 0.0) + value("right_artery", 0.0) + value("lesion_sensitivity", 0.0)
            + value("zero_to_zero", 1.0) - 0.05 * value("fp_per_scan", 0.0))

