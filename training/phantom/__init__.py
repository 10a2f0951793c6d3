"""In-silico cardiac calcium-scoring CT phantoms with exact ground truth."""

# Raised whenever the same seed gives a different case, so caches keyed by seed go stale.
# 2: no distractor reaches a coronary wall (``coronary.distractors``).
# 3: no plaque near bone or in the descending aorta (``coronary.clear_of_bone_and_aorta``).
REVISION = 3
