"""In-silico cardiac calcium-scoring CT phantoms with exact ground truth."""

# Raised whenever the same seed gives a different case, so caches keyed by seed go stale.
# 2: no distractor reaches a coronary wall (``coronary.distractors``).
REVISION = 2
