"""In-silico cardiac calcium-scoring CT phantoms with exact ground truth."""
