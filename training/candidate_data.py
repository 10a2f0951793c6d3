"""Training rows for the lesion classifier: the candidates of a case, their features, patches and truth.

A case goes through exactly the inference path of ``pipeline.model.inference``
(preprocessing, the trained network, ``pipeline.model.candidate_features``, the
gate of ``pipeline.model.candidate_classifier``); only the candidates past the gate
become rows, as only those reach the classifier.  The truth of a candidate is
the artery labelling most of its voxels (``pipeline.model.candidates.majority_classes``,
the majority rule on the truth labels).  The network that produced the
probabilities must not have been trained on these cases, or its confidence
would be that of training data, not of new scans: the phantom seeds used here
are their own range.

Rows are cached per case, network UID and preprocessing settings under ``cache_dir`` (a few MB each),
so refitting the classifier does not regenerate phantoms.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from pipeline.model.candidate_features import N_FEATURES, PATCH_CHANNELS, PATCH_SIDE, WIDE_CHANNELS, WIDE_SIDE
from pipeline.model.candidates import majority_classes
from pipeline.model.inference import ModelConfig, look_closer, run_network
from pipeline.model.preprocess import Preprocess, extract
from pipeline.model.weights import WeightsFile
from training.cases import CaseSource, preprocess_tag

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CandidateRows:
    """Feature rows of many cases.

    The wide view is always kept, whether or not the classifier to be fitted
    has the wide branch, so one cache serves both.
    """

    features: np.ndarray  # float32 (n, N_FEATURES)
    patches: np.ndarray  # float16 (n, PATCH_CHANNELS, side, side)
    wide: np.ndarray  # float16 (n, WIDE_CHANNELS, wide side, wide side)
    truth: np.ndarray  # int64 (n,) 0 background, 1-4 artery
    case: np.ndarray  # int64 (n,) index of the case in the source list
    area_mm2: np.ndarray  # float32 (n,) candidate area (weights the loss: sub-1 mm^2 ones are never scored)

    @staticmethod
    def empty(n: int = 0) -> CandidateRows:
        """``n`` rows of zeros (to be filled)."""
        return CandidateRows(np.zeros((n, N_FEATURES), np.float32),
                             np.zeros((n, PATCH_CHANNELS, PATCH_SIDE, PATCH_SIDE), np.float16),
                             np.zeros((n, WIDE_CHANNELS, WIDE_SIDE, WIDE_SIDE), np.float16),
                             np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.float32))

    def take(self, chosen: np.ndarray) -> CandidateRows:
        """The rows ``chosen`` (a boolean mask or indices)."""
        return CandidateRows(*(getattr(self, f.name)[chosen] for f in fields(CandidateRows)))


def case_rows(source: CaseSource, weights: WeightsFile, index: int, gate: float,
              config: ModelConfig = ModelConfig()) -> CandidateRows:
    """The gated candidates of one case, through the inference path of ``weights``' network."""
    case = source.load()
    prepared = Preprocess(weights.preprocess)(case.hu, case.pixel_spacing_mm, case.increment_mm)
    logits = run_network(weights.build_model(), prepared.image, weights.model.z_multiple, torch.device("cpu"))
    looked = look_closer(case.hu, prepared, logits, config.candidate_threshold_hu, config.candidate_connectivity,
                         gate)
    found, look = looked.candidates, looked.indices
    truth = majority_classes(found.ids, found.count, extract(case.labels, prepared.box, 0))[1:][look]
    pixels = np.bincount(found.ids.ravel(), minlength=found.count + 1)[1:][look]
    area = (pixels * case.pixel_spacing_mm[0] * case.pixel_spacing_mm[1]).astype(np.float32)
    return CandidateRows(found.features[look], looked.patches.astype(np.float16), looked.wide.astype(np.float16),
                         truth.astype(np.int64), np.full(look.size, index, np.int64), area)


def _cache_path(source: CaseSource, weights: WeightsFile, cache_dir: Path, gate: float) -> Path:
    # Stale when the network, the preprocessing (the heart crop), the features or the gate change
    # (not when only the classifier was refitted).
    return cache_dir / (f"{source.key}-{weights.network_uid}-{preprocess_tag(weights.preprocess)}"
                        f"-f{N_FEATURES}-p{PATCH_CHANNELS}x{PATCH_SIDE}-w{WIDE_CHANNELS}x{WIDE_SIDE}-g{gate:g}.npz")


def _cached_count(source: CaseSource, weights: WeightsFile, cache_dir: Path, gate: float) -> int:
    """Make sure the rows of ``source`` are cached; their number."""
    path = _cache_path(source, weights, cache_dir, gate)
    if path.is_file():
        with np.load(path) as z:
            return len(z["truth"])
    rows = case_rows(source, weights, 0, gate)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, features=rows.features, patches=rows.patches, wide=rows.wide, truth=rows.truth, area=rows.area_mm2)
    tmp.replace(path)
    return len(rows.truth)


def collect_rows(sources: Sequence[CaseSource], weights: WeightsFile, cache_dir: Path, gate: float,
                 workers: int = 1) -> CandidateRows:
    """Rows of every source (cached), using ``workers`` processes.

    The workers only fill the cache; the rows are then read into one
    preallocated set, so memory holds them once, not as parts plus their
    concatenation (the patches of 1600 phantoms take about 10 GB).
    """
    jobs = [(s, weights, cache_dir, gate) for s in sources]
    if workers <= 1 or len(jobs) <= 1:
        counts = [_cached_count(*job) for job in jobs]
    else:
        # One torch thread per worker process: the processes already fill the cores.
        with ProcessPoolExecutor(min(workers, len(jobs)), initializer=torch.set_num_threads, initargs=(1,)) as pool:
            counts = list(pool.map(_cached_count, *zip(*jobs), chunksize=4))
    rows = CandidateRows.empty(sum(counts))
    at = 0
    for index, (source, count) in enumerate(zip(sources, counts)):
        with np.load(_cache_path(source, weights, cache_dir, gate)) as z:
            part = slice(at, at + count)
            rows.features[part], rows.patches[part], rows.wide[part] = z["features"], z["patches"], z["wide"]
            rows.truth[part], rows.area_mm2[part] = z["truth"], z["area"]
        rows.case[part] = index
        at += count
    log.info("%d candidates from %d cases (%d coronary)", len(rows.truth), len(sources),
             int(np.count_nonzero(rows.truth)))
    return rows
