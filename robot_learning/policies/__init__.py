"""Policies: the interface and type registry, diffusion and BC networks, checkpoints, wrappers."""

from robot_learning.policies.base import ChunkResult, Policy, PolicyResult, PolicySpec
from robot_learning.policies.checkpoint import ModelPolicy, build_model, load_policy, resolve_device
from robot_learning.policies.composite import WrapperPolicy
from robot_learning.policies.registry import register_policy, registered_types

__all__ = ["ChunkResult", "ModelPolicy", "Policy", "PolicyResult", "PolicySpec", "WrapperPolicy", "build_model",
           "load_policy", "register_policy", "registered_types", "resolve_device"]
