"""Loading, preprocessing, inference and scoring of CT series (no network, no training)."""
