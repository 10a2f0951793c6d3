"""The vote within calcified objects that follows the lesion classifier (pipeline.model.object_consensus)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from test_candidate_classifier import _weights_with_classifier

from pipeline.model.candidate_features import N_FEATURES, Candidates, map_candidates
from pipeline.model.inference import CandidateDecisions
from pipeline.model.object_consensus import ConsensusRule, agatston_weight, agree_within_objects
from pipeline.model.weights import load_weights, save_weights
from pipeline.scoring.arteries import N_CLASSES

RULE = ConsensusRule(fill_share=0.5, drop_share=0.8, max_object_mm3=1000.0)
LM, LAD, LCX = 1, 2, 3


def vote(classes: list[int], weight: list[float], objects: list[int], mm3: float = 50.0) -> list[int]:
    n = len(classes)
    return agree_within_objects(np.array(classes), np.array(weight, dtype=float), np.array(objects),
                                np.full(n, mm3), RULE).tolist()


def test_a_plaque_half_called_background_is_counted_whole() -> None:
    # one object of three slices: the classifier called the bright middle LAD, its faint ends background
    assert vote([0, LAD, 0], [10.0, 60.0, 10.0], [7, 7, 7]) == [LAD, LAD, LAD]
    # a second object beside it, all background, stays so
    assert vote([0, LAD, 0, 0], [10.0, 60.0, 10.0, 30.0], [7, 7, 7, 8]) == [LAD, LAD, LAD, 0]


def test_an_artery_that_holds_too_little_of_its_object_fills_nothing() -> None:
    assert vote([0, LAD, 0], [40.0, 30.0, 40.0], [1, 1, 1]) == [0, LAD, 0]


def test_a_speck_of_a_large_non_coronary_calcification_is_dropped() -> None:
    # an aortic-wall calcification of which one small candidate was called LM
    assert vote([0, 0, LM, 0], [50.0, 60.0, 5.0, 40.0], [3, 3, 3, 3]) == [0, 0, 0, 0]


def test_different_arteries_of_one_object_keep_theirs() -> None:
    # the left main's bifurcation: LM, LAD and LCX calcium touch; a background speck takes the heaviest
    assert vote([LM, LAD, LCX, 0], [30.0, 35.0, 30.0, 5.0], [2, 2, 2, 2]) == [LM, LAD, LCX, LAD]


def test_objects_larger_than_the_limit_are_left_alone() -> None:
    assert vote([0, LAD, 0], [10.0, 60.0, 10.0], [7, 7, 7], mm3=5000.0) == [0, LAD, 0]
    assert vote([0, 0, LM, 0], [50.0, 60.0, 5.0, 40.0], [3, 3, 3, 3], mm3=5000.0) == [0, 0, LM, 0]


def test_the_rule_is_checked() -> None:
    with pytest.raises(ValueError, match="drop_share"):
        ConsensusRule(drop_share=0.4)
    assert vote([], [], []) == []


def test_candidates_know_their_3d_object_and_weight() -> None:
    """The objects are the 26-connected components of the candidate voxels; the weight is area x density."""
    hu = np.full((4, 12, 12), 0.0, dtype=np.float32)
    hu[0, 1:3, 1:3] = 250.0  # 4 px: with the next slice's square, one object (diagonal touch)
    hu[1, 3:5, 3:5] = 450.0
    hu[3, 8:10, 8:10] = 150.0  # alone
    hu[1, 9, 1] = 500.0  # one pixel: under the minimum area, weight 0
    found = map_candidates(hu, (0.7, 0.7), 3.0, 130.0, 8)
    labelled, _ = ndimage.label(found.ids > 0, structure=np.ones((3, 3, 3)))
    first_voxel = np.array([found.voxels[found.which == k][0] for k in range(found.centres.shape[0])])
    reference = labelled.reshape(-1)[first_voxel]
    # the same partition as a 3-D labelling of the candidate mask
    pairs = set(zip(found.object_of.tolist(), reference.tolist()))
    assert len(pairs) == len(set(found.object_of.tolist())) == len(set(reference.tolist())) == 3
    weights = agatston_weight(found.area_mm2, found.peak_hu)
    by_peak = dict(zip(found.peak_hu.tolist(), weights.tolist()))
    assert by_peak[250.0] == pytest.approx(4 * 0.49 * 2) and by_peak[450.0] == pytest.approx(4 * 0.49 * 4)
    assert by_peak[500.0] == 0.0


def test_decisions_apply_the_vote_of_the_weights_file_and_the_file_keeps_it(tmp_path: Path) -> None:
    ids = np.zeros((3, 6, 6), dtype=np.int32)
    ids[0, 1:3, 1:3], ids[1, 1:3, 1:3], ids[2, 1:3, 1:3] = 1, 2, 3  # one object of three candidates
    voxels = np.flatnonzero(ids)
    found = Candidates(ids, np.zeros((3, N_FEATURES), dtype=np.float32), np.zeros((3, 3)), voxels,
                       ids.reshape(-1)[voxels] - 1, np.zeros(3, dtype=np.int64), np.full(3, 40.0),
                       np.array([5.0, 50.0, 5.0]))
    logits = torch.zeros((3, N_CLASSES))
    logits[1, LAD] = 3.0  # the middle one LAD, the ends background
    alone = CandidateDecisions(found, np.arange(3), logits, 20.0)
    together = dataclasses.replace(alone, consensus=RULE)
    np.testing.assert_array_equal(alone.labels(0.0), np.where(ids == 2, LAD, 0))
    np.testing.assert_array_equal(together.labels(0.0), np.where(ids > 0, LAD, 0))

    saved = _weights_with_classifier(tmp_path)
    assert load_weights(tmp_path / "w.pt").classifier.object_consensus is None  # files before it: none
    with_vote = dataclasses.replace(saved, classifier=dataclasses.replace(saved.classifier, object_consensus=RULE))
    save_weights(with_vote, tmp_path / "v.pt")
    assert load_weights(tmp_path / "v.pt").classifier.object_consensus == RULE
