"""Family B: cardiac calcium-scoring CT phantoms built independently of family A at every level.

Implicit-surface anatomy, coronary trees found on the epicardial surface,
lesions rendered to a drawn score, kernel-shaped noise; the DICOM layout and
truth contract are family A's, so a model trained on one family can be
tested on the other.
"""

# Raised whenever the same seed gives a different case, so caches keyed by seed go stale.
REVISION = 1
