"""Policies: one interface (``base.Policy``) used by training, refinement, deployment and evaluation."""
