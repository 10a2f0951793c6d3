"""Who produced a set of labels: the model (or reference annotation) identity for reports."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from cacnode import __version__ as SOFTWARE_VERSION


@dataclass(frozen=True)
class AlgorithmIdentity:
    """Identity written into the SR's device observer and algorithm identification (TID 4019)."""

    name: str  # e.g. "cacnode-unet"
    version: str  # model version, e.g. "1.0.0"
    uid: str  # changes with every retraining; device observer UID in the SR
    manufacturer: str = "cacnode project"
    software_version: str = SOFTWARE_VERSION
    # Set when the labels are a reference annotation, not a model's output: where
    # they came from (a file name, a SEG's SOP Instance UID).  Reports then say
    # "manual" instead of coding the labels as artificial-intelligence output.
    labels_origin: str | None = None

    @property
    def is_reference(self) -> bool:
        """Whether the labels are a reference annotation (no model involved)."""
        return self.labels_origin is not None


# When scores come from a label file (a reference annotation), the algorithm is
# the scoring software alone; its UID is fixed per software version.
REFERENCE_LABELS = AlgorithmIdentity(
    name="cacnode-scoring (reference labels)",
    version=SOFTWARE_VERSION,
    uid="2.25.163870133929474457380858651946436410437",
    labels_origin="reference labels",
)


def reference_labels(origin: str) -> AlgorithmIdentity:
    """:data:`REFERENCE_LABELS` for labels read from ``origin`` (e.g. ``labels.seg.dcm (SEG 1.2.3)``)."""
    return dataclasses.replace(REFERENCE_LABELS, labels_origin=origin)
