"""One self-contained checkpoint file per policy, and the ``Policy`` that runs it.

A checkpoint is ``torch.save`` of plain dicts, lists and tensors only (loaded with
``weights_only=True``, so no pickled classes): format tag, policy type (and the module that
registers it), hyper-parameters, the ``PolicySpec``, normalizer statistics and the EMA weights.
Training checkpoints add a ``train_state`` entry (optimizer, scheduler, RNG, step) that
``load_policy`` ignores. Version 1 files (a single network) load unchanged; version 2 files are
composites (a wrapper's own weights plus its base, see policies/composite.py).
"""

from __future__ import annotations

import os
import shutil
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robot_learning.config import to_dataclass
from robot_learning.policies.base import ChunkResult, Policy, PolicySpec, check_spec_matches
from robot_learning.policies.model import PolicyModel
from robot_learning.policies.registry import policy_class, types_of_kind

FORMAT = "rlstack.policy"
FORMAT_VERSION = 1  # a single network; unchanged since the first release
COMPOSITE_VERSION = 2  # adds a wrapper around an embedded or referenced base (policies/composite.py)
SUPPORTED_VERSIONS = (FORMAT_VERSION, COMPOSITE_VERSION)


def model_types() -> dict[str, type[PolicyModel]]:
    """Registered network types, by the name used in configs (``policy.type``)."""
    return types_of_kind(PolicyModel)


def build_model(policy_type: str, params: Any, spec: PolicySpec, stats: dict[str, Any],
                module: str | None = None) -> PolicyModel:
    """Instantiate a policy network from its type name, validated hyper-parameters, spec and stats."""
    cls = policy_class(policy_type, module)
    if not (isinstance(cls, type) and issubclass(cls, PolicyModel)):
        raise ValueError(f"policy type '{policy_type}' is a wrapper around a base policy, not a trainable "
                         f"network (trainable: {', '.join(sorted(model_types()))})")
    config = to_dataclass(params or {}, cls.config_cls, where=f"policy.params ({policy_type})")
    return cls(spec, config, stats)


def checkpoint_dict(model: PolicyModel, state_dict: dict[str, torch.Tensor] | None = None, **extra: Any) -> dict[str, Any]:
    """The plain-data checkpoint of ``model`` (``state_dict`` overrides its weights, e.g. EMA)."""
    weights = state_dict if state_dict is not None else model.state_dict()
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "policy_type": model.policy_type,
        "policy_module": type(model).__module__,
        "policy_config": model.config_dict(),
        "spec": model.spec.to_dict(),
        "normalizer": model.normalizer.stats,
        "state_dict": {k: v.detach().cpu() for k, v in weights.items()},
        **extra,
    }


def _write_atomically(path: str | Path, write: Any) -> None:
    """Run ``write(tmp)`` on a temporary file beside ``path``, then rename: a kill never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


def atomic_save(obj: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` to a temporary file, then rename: a kill never leaves half a checkpoint."""
    _write_atomically(path, lambda tmp: torch.save(obj, tmp))


def atomic_copy(src: str | Path, dst: str | Path) -> None:
    """Copy a file to a temporary name beside ``dst``, then rename: readers never see half a copy."""
    _write_atomically(dst, lambda tmp: shutil.copyfile(src, tmp))


def check_format(ckpt: Any, where: str) -> dict[str, Any]:
    """Raise ValueError unless ``ckpt`` is a policy checkpoint dict of a supported version."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{where} is not an rlstack policy checkpoint (no '{FORMAT}' format tag)")
    if ckpt.get("version") not in SUPPORTED_VERSIONS:
        raise ValueError(f"{where}: checkpoint version {ckpt.get('version')} unsupported "
                         f"(this code reads {', '.join(map(str, SUPPORTED_VERSIONS))})")
    return ckpt


def load_plain(path: str | Path, what: str) -> Any:
    """Load a torch file of plain data (no code execution); missing -> FileNotFoundError, corrupt -> ValueError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or foreign files
        raise ValueError(f"{path} is not a readable {what}: {exc}") from exc


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint's plain data (no code execution) and check its format tag."""
    return check_format(load_plain(path, "policy checkpoint"), str(path))


def model_from_checkpoint(ckpt: dict[str, Any]) -> PolicyModel:
    """Rebuild the network stored in a (non-composite) checkpoint dict, weights loaded."""
    spec = PolicySpec.from_dict(ckpt["spec"])
    model = build_model(ckpt["policy_type"], ckpt["policy_config"], spec, ckpt["normalizer"],
                        module=ckpt.get("policy_module"))
    model.load_state_dict(ckpt["state_dict"])
    return model


def obs_to_tensors(spec: PolicySpec, obs_history: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    """Check an observation history against ``spec`` and batch it (B = 1) on ``device``."""
    spec.check_obs_history(obs_history)
    out = {}
    for key in spec.obs_shapes:
        arr = np.asarray(obs_history[key])
        if key in spec.image_keys:
            if arr.dtype != np.uint8:
                raise ValueError(f"image key '{key}' must be uint8, got {arr.dtype}")
        else:
            arr = arr.astype(np.float32, copy=False)
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"observation '{key}' contains NaN or inf")
        out[key] = torch.from_numpy(np.ascontiguousarray(arr)).unsqueeze(0).to(device)
    return out


class ModelPolicy(Policy):
    """A trained ``PolicyModel`` behind the ``Policy`` interface (eval mode, no gradients)."""

    def __init__(self, model: PolicyModel, device: str | torch.device = "cpu", seed: int = 0) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.spec = model.spec
        self.generator = torch.Generator(device=self.device)
        self.reseed(seed)

    @property
    def policy_type(self) -> str:
        """``diffusion`` or ``bc``."""
        return self.model.policy_type

    def reseed(self, seed: int) -> None:
        """Restart the sampling noise stream (same seed and inputs -> same chunks)."""
        self.seed = int(seed)
        self.generator.manual_seed(self.seed)

    def reseed_from(self, obs_history: dict[str, np.ndarray]) -> None:
        """Seed from observation content, so a rollout's noise depends only on what it sees."""
        crc = zlib.crc32(str(self.seed).encode())
        for key in sorted(obs_history):
            crc = zlib.crc32(np.ascontiguousarray(obs_history[key]).tobytes(), crc)
        self.generator.manual_seed(crc)

    def reset(self) -> None:
        """Episode boundary: drop the model's per-episode inference state (frame feature cache)."""
        self.model.reset_inference_state()

    def configure_inference(self, **options: Any) -> None:
        """Forward inference options (``sampler``, ``num_inference_steps``, ``inference_backend`` for diffusion)."""
        self.model.configure_inference(**options)

    @torch.inference_mode()
    def predict_chunk(self, obs_history: dict[str, np.ndarray]) -> np.ndarray:
        """One chunk ``(horizon, action_dim)``; BC mixtures return their most likely mode."""
        obs = obs_to_tensors(self.spec, obs_history, self.device)
        chunk = self.model.sample_actions(obs, 1, generator=self.generator, deterministic=True)
        return chunk[0, 0].float().cpu().numpy()

    def predict_chunk_with_info(self, obs_history: dict[str, np.ndarray]) -> ChunkResult:
        """``predict_chunk`` with the inference time in ``info["infer_ms"]``."""
        t = time.perf_counter()
        chunk = self.predict_chunk(obs_history)
        return ChunkResult(chunk, {"infer_ms": (time.perf_counter() - t) * 1e3})

    @torch.inference_mode()
    def sample_chunks(self, obs_history: dict[str, np.ndarray], k: int) -> np.ndarray:
        """``k`` candidate chunks ``(k, horizon, action_dim)`` from one batched pass."""
        return self.sample_chunks_with_features(obs_history, k)[0]

    @torch.inference_mode()
    def sample_chunks_with_features(self, obs_history: dict[str, np.ndarray], k: int) -> tuple[np.ndarray, torch.Tensor]:
        """``sample_chunks`` plus the observation features ``(1, F)`` it conditioned on (encoded once, so a
        critic on the same frozen encoder scores the candidates without encoding the observation again)."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        obs = obs_to_tensors(self.spec, obs_history, self.device)
        cond = self.model.encode_obs(obs)
        chunks = self.model.sample_actions(obs, k, generator=self.generator, cond=cond)
        return chunks[0].float().cpu().numpy(), cond

    def checkpoint(self) -> dict[str, Any]:
        """The self-contained checkpoint (current weights, which are the EMA weights)."""
        return checkpoint_dict(self.model)


def load_policy(
    path: str | Path,
    device: str | torch.device = "cpu",
    seed: int = 0,
    sampler: str | None = None,
    num_inference_steps: int | None = None,
    inference_backend: str | None = None,
    base: Policy | None = None,
) -> Policy:
    """Load any policy checkpoint (a network, a training checkpoint or a composite wrapper) as a
    ready-to-run ``Policy``; inference options reach the innermost network. ``base``: for a composite,
    an already built policy to wrap instead of the stored base (e.g. a ``RemotePolicy`` to that base on
    ``rlstack serve``); it must have the composite's spec."""
    options = {"sampler": sampler, "num_inference_steps": num_inference_steps, "inference_backend": inference_backend}
    options = {k: v for k, v in options.items() if v}
    return policy_from_checkpoint(read_checkpoint(path), device=resolve_device(str(device)), seed=seed,
                                  where=str(path), base_dir=Path(path).parent, base=base, **options)


def policy_from_checkpoint(ckpt: dict[str, Any], device: str | torch.device = "cpu", seed: int = 0,
                           where: str = "checkpoint", base_dir: str | Path = ".", base: Policy | None = None,
                           **options: Any) -> Policy:
    """Rebuild any registered policy type from checkpoint data (wrappers rebuild their base first, or wrap ``base``)."""
    check_format(ckpt, where)
    cls = policy_class(ckpt["policy_type"], ckpt.get("policy_module"), where=where)
    if isinstance(cls, type) and issubclass(cls, PolicyModel):
        if base is not None:
            raise ValueError(f"{where}: a base policy was given, but '{ckpt['policy_type']}' is not a composite")
        model = model_from_checkpoint(ckpt)
        if options:
            model.configure_inference(**options)
        return ModelPolicy(model, device=device, seed=seed)
    from robot_learning.policies.composite import WrapperPolicy, base_checkpoint

    if not (isinstance(cls, type) and issubclass(cls, WrapperPolicy)):
        raise ValueError(f"{where}: policy type '{ckpt['policy_type']}' ({cls.__name__}) cannot be loaded "
                         "from a checkpoint (neither a PolicyModel nor a WrapperPolicy)")
    if base is not None:
        check_spec_matches(PolicySpec.from_dict(ckpt["spec"]), base.spec, f"given base of {where}")
        if options:
            configure = getattr(base, "configure_inference", None)
            if configure is None:
                raise ValueError(f"{where}: inference options {sorted(options)} cannot reach the given base "
                                 f"{type(base).__name__}")
            configure(**options)
        return cls.from_checkpoint(ckpt, base, device=device, seed=seed)
    base_ckpt, base_where = base_checkpoint(ckpt, where, Path(base_dir))
    base = policy_from_checkpoint(base_ckpt, device=device, seed=seed, where=base_where, base_dir=base_dir, **options)
    return cls.from_checkpoint(ckpt, base, device=device, seed=seed)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; other names are passed to ``torch.device``."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
