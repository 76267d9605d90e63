"""The registry of policy types: each type registers itself where it is defined.

Two kinds of types share one namespace (the ``policy_type`` stored in every checkpoint):

- *model* types, ``PolicyModel`` subclasses (diffusion, bc, ...): trainable networks that
  ``ModelPolicy`` runs;
- *wrapper* types, ``WrapperPolicy`` subclasses (residual RL, value-guided steering, perturbation):
  policies around a frozen base, saved as composite checkpoints (policies/composite.py).

A checkpoint also records the module that defines its type (``policy_module``), so ``load_policy``
can rebuild a type whose module nobody imported yet (e.g. ``robot_learning.rl.residual`` in a fresh
``rlstack eval`` process). Only modules of this project's packages are imported that way: a
checkpoint is data (``torch.load(weights_only=True)``), and a file must not be able to make the
loader import arbitrary code.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

# modules whose types every process knows without a checkpoint naming them
BUILTIN_MODULES = (
    "robot_learning.policies.diffusion",
    "robot_learning.policies.bc",
    "robot_learning.policies.distill",
)
IMPORTABLE_PREFIXES = ("robot_learning.", "sim.")

_TYPES: dict[str, type] = {}


def register_policy(name: str) -> Callable[[type[T]], type[T]]:
    """Class decorator: register a policy type (model or wrapper) under ``name`` (``policy.type``)."""
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"policy type name '{name}' must be a non-empty identifier")

    def decorate(cls: type[T]) -> type[T]:
        old = _TYPES.get(name)
        # a module imported twice (e.g. under -m and by path) re-registers the same class: allowed
        if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(f"policy type '{name}' is already registered by {old.__module__}.{old.__qualname__}")
        cls.policy_type = name  # type: ignore[attr-defined]
        _TYPES[name] = cls
        return cls

    return decorate


def _import_builtins() -> None:
    for module in BUILTIN_MODULES:
        importlib.import_module(module)


def registered_types() -> dict[str, type]:
    """Every registered type by name (built-in modules imported first)."""
    _import_builtins()
    return dict(_TYPES)


def policy_class(name: str, module: str | None = None, where: str = "policy") -> type:
    """The class registered as ``name``, importing ``module`` (a project module) if it is not known yet."""
    _import_builtins()
    if name not in _TYPES and module:
        if not module.startswith(IMPORTABLE_PREFIXES):
            raise ValueError(f"{where}: policy type '{name}' is defined in module '{module}', which is outside "
                             f"the importable packages {IMPORTABLE_PREFIXES}")
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ValueError(f"{where}: policy type '{name}' needs module '{module}', which cannot be "
                             f"imported: {exc}") from exc
    if name not in _TYPES:
        raise ValueError(f"unknown policy type '{name}' (choose from {', '.join(sorted(_TYPES))})")
    return _TYPES[name]


def types_of_kind(base: type) -> dict[str, Any]:
    """Registered types that subclass ``base`` (e.g. every ``PolicyModel``)."""
    return {k: v for k, v in registered_types().items() if isinstance(v, type) and issubclass(v, base)}
