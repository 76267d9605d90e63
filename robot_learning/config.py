"""Hydra composition for every sub-command, with typed validation through dataclasses.

Sub-commands compose a primary config from ``configs/`` with command-line overrides
(``rlstack train policy=bc train.steps=200``), validate each section against its dataclass
schema (unknown keys and wrong types are errors that name the key), and save the resolved config
next to what they produce.
"""

from __future__ import annotations

import os
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[1]


def config_dir() -> Path:
    """The Hydra config directory (``$RLSTACK_CONFIGS`` or the repository's ``configs/``)."""
    return Path(os.environ.get("RLSTACK_CONFIGS", REPO_ROOT / "configs")).resolve()


def compose(config_name: str, overrides: list[str] | None = None) -> DictConfig:
    """Compose ``configs/<config_name>.yaml`` with Hydra overrides and return it resolved."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=list(overrides or []))
    OmegaConf.resolve(cfg)
    return cfg


def to_dataclass(cfg: Any, cls: type[T], where: str = "") -> T:
    """Validate a config node against dataclass ``cls`` and return an instance.

    Unknown keys and values of the wrong type raise ``ValueError`` naming the offending key.
    """
    if not is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    schema = OmegaConf.structured(cls)
    try:
        merged = OmegaConf.merge(schema, cfg if cfg is not None else {})
    except Exception as exc:  # omegaconf raises several error types; all mean "bad config"
        raise ValueError(f"invalid config{' for ' + where if where else ''}: {exc}") from exc
    obj = OmegaConf.to_object(merged)
    assert isinstance(obj, cls)
    return obj


def dataclass_keys(cls: type) -> list[str]:
    """Field names of a dataclass config (for help texts)."""
    return [f.name for f in fields(cls)]


def save_config(cfg: DictConfig, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(OmegaConf.to_yaml(cfg, resolve=True))
