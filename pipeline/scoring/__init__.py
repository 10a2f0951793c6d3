"""Scoring: the Agatston definition and its measures as pure functions, the scored result, acquisition flags."""
