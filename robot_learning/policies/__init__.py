"""Policies: the interface, diffusion and BC networks, checkpoints."""

from robot_learning.policies.base import ChunkResult, Policy, PolicySpec
from robot_learning.policies.checkpoint import ModelPolicy, build_model, load_policy, resolve_device

__all__ = ["ChunkResult", "ModelPolicy", "Policy", "PolicySpec", "build_model", "load_policy", "resolve_device"]
