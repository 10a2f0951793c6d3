"""``python -m training.export CHECKPOINT --config F --uid UID --output W``: a stopped run's network as weights.

``cacnode train`` writes its weights file when every stage is done.  When a
run was stopped after the network stage (a time box, a crash in the
classifier stage), its best Lightning checkpoint still holds the network;
this writes it as a weights file without a classifier, built the way
``training.train`` builds it from the same ``[training]`` section, under the
run's own UID (the checkpoint folder's name), so that the candidate rows the
run had cached for its classifier are found again by
``training.fit_classifier``.  Then ``training.fit_classifier`` and
``training.calibrate`` finish the file.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from cacnode.config import load_config
from pipeline.model.unet import UNetConfig
from pipeline.model.preprocess import PreprocessConfig
from pipeline.model.weights import WeightsFile, load_weights, save_weights

log = logging.getLogger(__name__)


def export_network(checkpoint: Path, config_path: Path, uid: str) -> WeightsFile:
    """The network of ``checkpoint`` (a ``training.module.CalciumSegmenter`` checkpoint) as a weights file."""
    config = load_config(config_path).training
    start = load_weights(Path(config.init_weights)) if config.init_weights is not None else None
    if start is not None:  # as training.train: the starting file's architecture and preprocessing
        model, preprocess = start.model, start.preprocess
    else:
        model = UNetConfig(channels=tuple(config.channels))
        preprocess = PreprocessConfig(grid=config.grid, crop_mm=config.crop_mm)
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    prefix = "model."
    state = {k[len(prefix):]: v for k, v in saved["state_dict"].items() if k.startswith(prefix)}
    return WeightsFile(
        name=config.name, version=config.version, uid=uid, model=model, preprocess=preprocess, state_dict=state,
        training={
            "exported_from": checkpoint.name,
            "epoch": int(saved.get("epoch", -1)),
            "families": list(config.families),
            "phantom_train": config.phantom_train,
            "phantom_train_seeds": [config.train_seed, config.train_seed + config.phantom_train - 1],
            "max_minutes": config.max_minutes,
            "learning_rate": config.learning_rate,
            "started_from": None if start is None else {"uid": start.uid, "version": start.version},
            "torch": torch.__version__,
        },
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--config", type=Path, required=True, help="the run's config file (its [training] section)")
    p.add_argument("--uid", help="the run's UID (default: the checkpoint folder's name)")
    p.add_argument("--output", type=Path, required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    weights = export_network(args.checkpoint, args.config, args.uid or args.checkpoint.parent.name)
    save_weights(weights, args.output)
    log.info("wrote %s (uid %s, epoch %s)", args.output, weights.uid, weights.training["epoch"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
