"""``cacnode train``: fit the model with Lightning and export the self-describing weights file.

Every Trainer setting comes from ``[training]`` (``training.config``); there is
no pass-through of Trainer flags.  The best checkpoint (by the validation
selection figure) is exported with a fresh algorithm UID; with a lesion
classifier, that is fitted next and its background bias calibrated on
validation cases (``training.calibrate``), so the file is ready to use.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from pipeline.model.candidate_classifier import ClassifierConfig
from pipeline.model.inference import Labeller, ModelConfig
from pipeline.model.unet import UNetConfig
from pipeline.model.preprocess import PreprocessConfig, Preprocess
from pipeline.model.weights import WeightsFile, load_weights, new_uid, save_weights
from training.calibrate import calibrate, with_best_bias
from training.cases import CaseSource, HospitalSource, phantoms
from training.config import TrainingConfig
from training.datamodule import CalciumDataModule, classifier_phantom_sources
from training.fit_classifier import add_classifier
from training.module import CalciumSegmenter

log = logging.getLogger(__name__)


class EpochLog(Callback):
    """One log line per validation with the scored figures (progress bars are off)."""

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        # After the module's own epoch-end hook, which computes ``last_validation``.
        f = getattr(module, "last_validation", {})
        if trainer.is_global_zero and f:
            log.info(
                "epoch %d: icc %.4f kappa %.3f zero->0 %.2f right artery %.3f sensitivity %.3f fp/scan %.2f",
                trainer.current_epoch, f["icc"], f["kappa"], f["zero_to_zero"], f["right_artery"],
                f["lesion_sensitivity"], f["fp_per_scan"],
            )


def build_trainer(config: TrainingConfig, work_dir: Path, fast_dev_run: bool,
                  checkpoint: ModelCheckpoint) -> pl.Trainer:
    """The Trainer, every setting explicit."""
    return pl.Trainer(
        accelerator=config.accelerator,
        devices=config.devices,
        strategy=config.strategy,
        precision=config.precision,
        max_epochs=config.max_epochs,
        max_time={"minutes": config.max_minutes},
        check_val_every_n_epoch=config.check_val_every_n_epoch,
        reload_dataloaders_every_n_epochs=1,  # new random patches every epoch
        num_sanity_val_steps=0,
        callbacks=[checkpoint, EpochLog()],
        logger=CSVLogger(work_dir, name="logs"),
        log_every_n_steps=5,
        enable_progress_bar=False,
        enable_model_summary=False,
        fast_dev_run=fast_dev_run,
        default_root_dir=work_dir,
    )


def run_train(config: TrainingConfig, output: Path | None, fast_dev_run: bool, *,
              sources: tuple[Sequence[CaseSource], Sequence[CaseSource]] | None = None,
              classifier_sources: Sequence[CaseSource] | None = None,
              classifier_config: ClassifierConfig = ClassifierConfig(),
              calibration_sources: Sequence[CaseSource] | None = None) -> int:
    """Train, validate and export; returns the process exit code.

    Parameters
    ----------
    config
        The ``[training]`` section.
    output
        Weights file to write; ``None`` takes ``config.output``.
    fast_dev_run
        One training and one validation batch (smoke test); the weights are still exported.
    sources
        Training and validation cases replacing the phantoms of ``config`` (tests, custom sets).
    classifier_sources, classifier_config
        Cases replacing the classifier phantoms of ``config``, and the classifier's architecture.
    calibration_sources
        Cases replacing the calibration phantoms of ``config`` (the classifier's background bias).
    """
    started = time.monotonic()
    output = Path(output if output is not None else config.output)
    work_dir = Path(config.work_dir)
    if config.accelerator == "cpu":
        torch.set_num_threads(config.cpu_threads)
    pl.seed_everything(config.seed, workers=True)
    uid = new_uid()
    start = load_weights(Path(config.init_weights)) if config.init_weights is not None else None
    if start is not None:  # the file's architecture and preprocessing win over channels/grid/crop_mm
        preprocess = Preprocess(start.preprocess)
        model_config = start.model
        log.info("starting from %s (uid %s)", config.init_weights, start.uid)
    else:
        preprocess = Preprocess(PreprocessConfig(grid=config.grid, crop_mm=config.crop_mm))
        model_config = UNetConfig(channels=tuple(config.channels))
    data = CalciumDataModule(config, preprocess, work_dir / "cache", sources=sources)
    module = CalciumSegmenter(
        model_config,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        artery_weight=config.artery_weight,
        context_weight=config.context_weight,
        max_epochs=config.max_epochs,
        candidate_hu=preprocess.config.candidate_hu,
    )
    if start is not None:
        module.model.load_state_dict(start.state_dict)
    checkpoint = ModelCheckpoint(dirpath=work_dir / "checkpoints" / uid, monitor="val/selection", mode="max",
                                 save_top_k=1, save_last=True, filename="best-{epoch}")
    trainer = build_trainer(config, work_dir, fast_dev_run, checkpoint)
    log.info("training %s %s (uid %s) on %s, %d+%d cases", config.name, config.version, uid,
             config.accelerator, len(data.train_sources), len(data.val_sources))
    trainer.fit(module, datamodule=data)
    epochs = trainer.current_epoch
    if not fast_dev_run and checkpoint.best_model_path:
        state = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
        log.info("best checkpoint %s; validating it", Path(checkpoint.best_model_path).name)
        trainer.validate(module, datamodule=data, verbose=False)
    if not trainer.is_global_zero:
        return 0
    figures = {k: v for k, v in module.last_validation.items() if not math.isnan(v)}
    weights = WeightsFile(
        name=config.name,
        version=config.version,
        uid=uid,
        model=model_config,
        preprocess=preprocess.config,
        state_dict=module.model.state_dict(),
        training={
            "data": data.describe(),
            "epochs": epochs,
            "samples_per_epoch": config.samples_per_epoch,
            "batch_size": config.batch_size,
            "patch": [config.patch_slices, config.patch_cells, config.patch_cells],
            "learning_rate": config.learning_rate,
            "accelerator": config.accelerator,
            "devices": config.devices,
            "precision": config.precision,
            "wall_minutes": round((time.monotonic() - started) / 60.0, 1),
            "fast_dev_run": bool(fast_dev_run),
            "started_from": None if start is None else {"uid": start.uid, "training": start.training},
            "torch": torch.__version__,
        },
        validation={"phantom_validation_set": figures},
    )
    if classifier_sources is None:
        # Phantoms the network never saw, plus the site's own training series (the only real
        # scans there may be: worth more than the network's overconfidence on them costs).
        site = [s for s in data.train_sources if isinstance(s, HospitalSource)]
        classifier_sources = [*classifier_phantom_sources(config), *site]
    if classifier_sources and not fast_dev_run:
        # The second stage; the file gets a new UID and the classifier records the network's (``network_uid``).
        weights = add_classifier(weights, classifier_sources, work_dir / "candidates", workers=config.prepare_workers,
                                 epochs=config.classifier_epochs, max_minutes=config.classifier_max_minutes,
                                 accelerator="gpu" if config.accelerator == "gpu" else "cpu",
                                 config=classifier_config)
        weights = dataclasses.replace(weights, validation={"phantom_validation_set_network": figures})
        if calibration_sources is None:
            site_val = [s for s in data.val_sources if isinstance(s, HospitalSource)]
            calibration_sources = [*phantoms(config.val_seed, config.calibration_phantoms, families=config.families),
                                       *site_val]
        if calibration_sources:
            # Untouched, the classifier's bias is 0: the balanced loss leaves it eager to call calcium.
            labeller = Labeller(weights, ModelConfig(), torch.device("cpu"))
            table = calibrate(labeller, calibration_sources, workers=config.prepare_workers)
            weights = with_best_bias(weights, table, "calibration_set",
                                     config.calibration_min_background_bias)
            log.info("lesion classifier background bias %.1f (calibrated on %d cases)",
                     weights.validation["calibration_set"]["background_bias"], len(calibration_sources))
    save_weights(weights, output)
    log.info("wrote %s (uid %s): %s", output, weights.uid, ", ".join(f"{k} {v:.4g}" for k, v in figures.items()))
    return 0
