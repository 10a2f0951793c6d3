"""One decision per calcified object: the lesion classifier's candidates agree within their 3-D object.

A candidate is a 2-D component on one slice (calcium-scoring.md, "From model
output to labels"), so a plaque that spans slices is several candidates and the
lesion classifier decides each one alone.  It then leaves parts of a plaque as
background beside parts it gave an artery (the lesion is half counted), and
gives an artery to a small part of an aortic-wall or valve calcification.
Within each 26-connected calcified object no larger than ``max_object_mm3``
(bone and large valve calcium are larger), weighing each candidate by what it
would add to the Agatston score:

- when the candidates given an artery hold at least ``fill_share`` of the
  object's weight, its background candidates take the artery that holds most;
- when the background candidates hold at least ``drop_share``, its candidates
  given an artery become background.

Candidates given different arteries keep them: the left main's bifurcation
joins LM, LAD and LCX calcium in one object.  The rule uses no position and no
constant of a phantom generator, only the calcium's own connectivity; its
shares were chosen on validation phantoms of both families (model card).
Pure numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.scoring.agatston import ScoringProfile, density_weight

_TIE = 1e-6  # every candidate weighs a little, so an object of sub-minimum specks still has a majority


@dataclass(frozen=True)
class ConsensusRule:
    """When the candidates of one calcified object are made to agree (see the module docstring)."""

    fill_share: float = 0.5
    drop_share: float = 0.8
    max_object_mm3: float = 1000.0

    def __post_init__(self) -> None:
        if not (0.0 < self.fill_share <= 1.0 and 0.5 < self.drop_share <= 1.0 and self.max_object_mm3 > 0):
            raise ValueError(f"object consensus: need 0 < fill_share <= 1, 0.5 < drop_share <= 1 and "
                             f"max_object_mm3 > 0, got {self}")


def agatston_weight(area_mm2: np.ndarray, peak_hu: np.ndarray,
                    profile: ScoringProfile = ScoringProfile()) -> np.ndarray:
    """What each candidate would add to the Agatston score (before increment normalisation); 0 under
    the minimum area.  A weight for the vote, not a score: the default profile is used."""
    return np.where(area_mm2 >= profile.min_area, area_mm2 * density_weight(peak_hu, profile), 0.0)


def agree_within_objects(classes: np.ndarray, weight: np.ndarray, object_of: np.ndarray,
                         object_mm3: np.ndarray, rule: ConsensusRule) -> np.ndarray:
    """The class of every candidate after the vote of its object.

    Parameters
    ----------
    classes
        int (n,): each candidate's class (0 background, 1-4 an artery).
    weight
        float (n,): :func:`agatston_weight` of each candidate.
    object_of
        int (n,): each candidate's 3-D object (any integer labels).
    object_mm3
        float (n,): the volume of each candidate's object.
    rule
        The shares and the largest object voted on.
    """
    out = classes.copy()
    if classes.size == 0:
        return out
    objects, which = np.unique(object_of, return_inverse=True)
    n_classes = int(max(classes.max(), 0)) + 1
    votes = np.zeros((objects.size, max(n_classes, 2)))
    np.add.at(votes, (which, classes), weight + _TIE)
    total = votes.sum(axis=1)
    artery_votes = votes[:, 1:].sum(axis=1)
    small = np.zeros(objects.size, dtype=bool)
    small[which] = object_mm3 <= rule.max_object_mm3
    has_artery = votes[:, 1:].max(axis=1) > 0
    fill = small & has_artery & (artery_votes >= rule.fill_share * total)
    drop = small & has_artery & (votes[:, 0] >= rule.drop_share * total)
    majority = 1 + np.argmax(votes[:, 1:], axis=1)
    background = classes == 0
    filled = fill[which] & background
    out[filled] = majority[which][filled]
    out[drop[which] & ~background] = 0
    return out
