"""Wrapper policies and their composite checkpoints.

A refinement method (residual RL, value-guided steering, a perturbation for data collection) is a
``WrapperPolicy``: a registered ``Policy`` around a frozen base ``Policy``. Its checkpoint is still
one file of plain data (``torch.load(weights_only=True)``):

    format, version 2, policy_type, policy_module, policy_config, spec, normalizer,
    state_dict               the wrapper's own tensors (e.g. a residual actor, a critic)
    base                     the base's whole checkpoint dict, embedded (the default), or
    base_ref                 {"sha256": ..., "path": ...}: the base file referenced by content hash

``load_policy`` (policies/checkpoint.py) rebuilds the base first (any registered type, wrappers of
wrappers included) and then the wrapper, so eval, serve, deploy and the arena run a wrapper with no
special case. A referenced base is looked up at its stored path (relative to the composite's folder
when it was saved next to it), then by its file name in the composite's folder, and must have the
recorded hash: a base retrained in place is refused instead of silently combined.

Writing a wrapper::

    @register_policy("my_method")
    class MyWrapper(WrapperPolicy):
        config_cls = MyConfig                       # a dataclass: validated from policy_config
        def __init__(self, base, config, device="cpu"): ...
        def own_state_dict(self): return self.net.state_dict()
        def load_own_state_dict(self, sd): self.net.load_state_dict(sd)
        def step_action(self, obs_history, planned_action, step_in_chunk): ...   # optional
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from robot_learning.config import to_dataclass
from robot_learning.policies.base import ChunkResult, Policy, PolicySpec, check_spec_matches
from robot_learning.policies.checkpoint import (
    COMPOSITE_VERSION,
    FORMAT,
    atomic_save,
    check_format,
    read_checkpoint,
)


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (the content hash a composite records for a referenced base)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class WrapperPolicy(Policy):
    """A policy around a frozen base ``Policy``; saved as a composite checkpoint."""

    config_cls: ClassVar[type | None] = None  # dataclass of the wrapper's hyper-parameters

    def __init__(self, base: Policy, config: Any = None, device: str | torch.device = "cpu") -> None:
        self.base = base
        self.config = config
        self.device = torch.device(device)
        self.spec = base.spec

    # -- what a subclass overrides ------------------------------------------------------------------
    def own_state_dict(self) -> dict[str, torch.Tensor]:
        """The wrapper's own tensors (default: none)."""
        return {}

    def load_own_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load what ``own_state_dict`` returned; default refuses unexpected tensors."""
        if state_dict:
            raise ValueError(f"{type(self).__name__} has no weights, checkpoint has {sorted(state_dict)}")

    def config_dict(self) -> dict[str, Any]:
        """Plain-data hyper-parameters (stored as ``policy_config``)."""
        if self.config is None:
            return {}
        return asdict(self.config) if is_dataclass(self.config) else dict(self.config)

    # -- Policy: forward everything to the base by default ---------------------------------------
    def reset(self) -> None:
        """Episode boundary: the base's chunk state too."""
        self.base.reset()

    def reseed(self, seed: int) -> None:
        """Reseed the base (subclasses with their own noise extend this)."""
        self.base.reseed(seed)

    def reseed_from(self, obs_history: dict[str, np.ndarray]) -> None:
        """Content-seed the base."""
        self.base.reseed_from(obs_history)

    def close(self) -> None:
        """Close the base."""
        self.base.close()

    def configure_inference(self, **options: Any) -> None:
        """Forward inference options (sampler, steps, backend) to the base."""
        configure = getattr(self.base, "configure_inference", None)
        if configure is None:
            raise ValueError(f"base policy {type(self.base).__name__} has no inference options {sorted(options)}")
        configure(**options)

    def predict_chunk(self, obs_history: dict[str, np.ndarray]) -> np.ndarray:
        """The base's planned chunk (per-step corrections happen in ``step_action``)."""
        return self.base.predict_chunk(obs_history)

    def predict_chunk_with_info(self, obs_history: dict[str, np.ndarray]) -> ChunkResult:
        """The base's chunk and info, under ``info["base"]``."""
        res = self.base.predict_chunk_with_info(obs_history)
        return ChunkResult(res.actions, {"base": res.info} if res.info else {})

    def sample_chunks(self, obs_history: dict[str, np.ndarray], k: int) -> np.ndarray:
        """The base's ``k`` candidates in one batched call."""
        return self.base.sample_chunks(obs_history, k)

    # -- checkpoints ----------------------------------------------------------------------------------
    def checkpoint(self, base_ref: str | Path | None = None, saved_at: str | Path | None = None) -> dict[str, Any]:
        """Composite checkpoint data: own weights plus the base, embedded or referenced by hash."""
        base_ckpt = self.base.checkpoint()
        ckpt: dict[str, Any] = {
            "format": FORMAT,
            "version": COMPOSITE_VERSION,
            "policy_type": self.policy_type,
            "policy_module": type(self).__module__,
            "policy_config": self.config_dict(),
            "spec": self.spec.to_dict(),
            "normalizer": base_ckpt.get("normalizer", {}),
            "state_dict": {k: v.detach().cpu() for k, v in self.own_state_dict().items()},
        }
        if base_ref is None:
            ckpt["base"] = base_ckpt
        else:
            ckpt["base_ref"] = _reference(Path(base_ref), self, saved_at)
        return ckpt

    def save(self, path: str | Path, base_ref: str | Path | None = None) -> None:
        """Write the composite to one file; ``base_ref`` stores the base by content hash instead of embedding it."""
        atomic_save(self.checkpoint(base_ref=base_ref, saved_at=path), path)

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any], base: Policy, device: str | torch.device = "cpu",
                        seed: int = 0) -> WrapperPolicy:
        """Rebuild the wrapper around an already rebuilt ``base``."""
        where = f"policy_config ({cls.policy_type})"
        config = to_dataclass(ckpt.get("policy_config") or {}, cls.config_cls, where=where) if cls.config_cls else None
        policy = cls(base, config, device=device)
        policy.load_own_state_dict(ckpt.get("state_dict") or {})
        policy.reseed(seed)
        return policy


def _reference(base_path: Path, wrapper: WrapperPolicy, saved_at: str | Path | None) -> dict[str, str]:
    """``base_ref`` entry for ``base_path``; the file must hold the wrapper's actual base."""
    ckpt = read_checkpoint(base_path)
    check_spec_matches(PolicySpec.from_dict(ckpt["spec"]), wrapper.base.spec, f"base of {wrapper.policy_type}")
    path = base_path.resolve()
    if saved_at is not None:
        try:  # relative when possible, so a run folder can be moved as a whole
            path = Path(os.path.relpath(path, Path(saved_at).resolve().parent))
        except ValueError:  # another drive (Windows)
            pass
    return {"sha256": file_sha256(base_path), "path": str(path)}


def base_checkpoint(ckpt: dict[str, Any], where: str, base_dir: Path) -> tuple[dict[str, Any], str]:
    """The base checkpoint dict of a composite (embedded, or the referenced file after its hash check)."""
    if "base" in ckpt:
        return check_format(ckpt["base"], f"{where} (embedded base)"), f"{where} (embedded base)"
    ref = ckpt.get("base_ref")
    if not isinstance(ref, dict) or "sha256" not in ref or "path" not in ref:
        raise ValueError(f"{where}: composite policy '{ckpt.get('policy_type')}' has neither an embedded base "
                         "nor a base_ref {sha256, path}")
    stored = Path(ref["path"])
    candidates = [stored if stored.is_absolute() else base_dir / stored, base_dir / stored.name]
    for cand in candidates:
        if cand.is_file():
            digest = file_sha256(cand)
            if digest != ref["sha256"]:
                raise ValueError(f"{where}: base checkpoint {cand} has content hash {digest[:12]}..., the composite "
                                 f"was saved with {ref['sha256'][:12]}... (the base changed since)")
            return read_checkpoint(cand), str(cand)
    raise FileNotFoundError(f"{where}: referenced base checkpoint not found (looked at "
                            f"{', '.join(str(c) for c in candidates)}; sha256 {ref['sha256'][:12]}...)")
