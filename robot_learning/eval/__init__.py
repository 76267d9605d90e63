"""Evaluation: sim reports with Wilson intervals."""
