"""Exact-resume machinery shared by the policy training loop and RL learners.

Exactness rests on three things this module provides: every RNG state as plain data (restorable
from a ``weights_only`` checkpoint), a per-step seed that is a pure function of (seed, step, rank),
and atomic checkpoint files holding model, optimizer, scheduler, EMA and RNG state together. A run
killed after checkpoint k and resumed then reaches the same weights as an uninterrupted one.
"""

from __future__ import annotations

import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from robot_learning.policies.checkpoint import atomic_save, read_checkpoint

LATEST = "checkpoints/latest.pt"


def step_seed(seed: int, step: int, rank: int) -> int:
    """The torch seed of one training step on one process."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


def warn_thread_change(saved: int | None, where: str) -> None:
    """Warn when a resumed run uses another torch thread count than the one it was saved with.

    CPU kernels split their reductions by thread, so the float sums (and from there the trained weights) differ
    with the count: same seed, same result holds at a fixed count only (2 vs 1 thread: ~3e-7 after 30 BC steps).
    """
    now = torch.get_num_threads()
    if saved is not None and int(saved) != now:
        warnings.warn(f"{where} was trained with {saved} torch thread(s) and resumes with {now}: the result will not "
                      f"be bit-identical to an uninterrupted run (set OMP_NUM_THREADS or train.threads={saved})",
                      stacklevel=2)


def saved_threads(saved_config: dict[str, Any] | None) -> int | None:
    """The torch thread count an RL run's stored config set (``threads``, at least 1), or None if it has none."""
    if not saved_config or saved_config.get("threads") is None:
        return None
    return max(1, int(saved_config["threads"]))


def rng_states() -> dict[str, Any]:
    """Every RNG state as plain data (restorable with ``weights_only`` loading)."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2])},
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_states(states: dict[str, Any]) -> None:
    """Inverse of ``rng_states``."""
    torch.set_rng_state(states["torch"])
    np.random.set_state(("MT19937", states["numpy"]["key"].numpy().astype(np.uint32), states["numpy"]["pos"], 0, 0.0))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if states.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def gather_rng(world: int) -> list[dict[str, Any]]:
    """Every process's RNG states (rank order), so that a resumed multi-process run restores each."""
    mine = rng_states()
    if world == 1:
        return [mine]
    everyone: list[Any] = [None] * world
    dist.all_gather_object(everyone, mine)  # in-process collective over the existing group
    return everyone


def numpy_generator_state(rng: np.random.Generator) -> dict[str, Any]:
    """A numpy Generator's bit-generator state as plain data (RL samplers draw from their own Generator)."""
    return dict(rng.bit_generator.state)


def set_numpy_generator_state(rng: np.random.Generator, saved: dict[str, Any]) -> None:
    """Inverse of ``numpy_generator_state``."""
    if saved.get("bit_generator") != type(rng.bit_generator).__name__:
        raise ValueError(f"saved generator state is {saved.get('bit_generator')}, this generator is "
                         f"{type(rng.bit_generator).__name__}")
    rng.bit_generator.state = saved


def state_dicts(objects: dict[str, Any]) -> dict[str, Any]:
    """``{name: obj.state_dict()}`` for modules, optimizers, schedulers, EMA (None entries skipped)."""
    return {name: obj.state_dict() for name, obj in objects.items() if obj is not None}


def load_state_dicts(objects: dict[str, Any], states: dict[str, Any], where: str) -> None:
    """Load what ``state_dicts`` saved into the same named objects; a missing entry is an error."""
    for name, obj in objects.items():
        if obj is None:
            continue
        if name not in states:
            raise ValueError(f"{where}: the checkpoint has no state for '{name}' (has {sorted(states)})")
        obj.load_state_dict(states[name])


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Atomically write a checkpoint (plain data only, so it loads with ``weights_only=True``)."""
    atomic_save(payload, path)


def load_resume(out_dir: str | Path, name: str = LATEST) -> dict[str, Any] | None:
    """The latest training checkpoint of a run folder, or None when there is none yet."""
    path = Path(out_dir) / name
    return read_checkpoint(path) if path.exists() else None


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level of dotted keys (``critic.lr``)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_resume_config(saved: dict[str, Any] | None, current: dict[str, Any], where: str,
                        may_change: tuple[str, ...] = ()) -> None:
    """Refuse to resume a run whose settings changed since its resume file was written.

    Continuing with another learning rate or reward would mix two runs in one folder and report it as one.
    Keys in ``may_change`` (a budget, threads, a progress bar; a section name covers its keys) and keys the
    saved config did not have yet (older resume files) are not compared; lists and tuples compare by content.
    """
    if not saved:
        return
    old, new = _flat(saved), _flat(current)

    def may(key: str) -> bool:
        return any(key == m or key.startswith(m + ".") for m in may_change)

    def plain(v: Any) -> Any:
        return list(v) if isinstance(v, tuple) else v

    changed = [f"{k}: {old[k]!r} -> {new[k]!r}" for k in sorted(old.keys() & new.keys())
               if not may(k) and plain(old[k]) != plain(new[k])]
    if changed:
        raise ValueError(f"{where}: cannot resume, the settings differ from the run's resume file ("
                         + "; ".join(changed) + "). Restore them, or use a new out_dir for a new run.")


def ema_state_dict(model: torch.nn.Module, ema: Any) -> dict[str, torch.Tensor]:
    """``model``'s state dict with the EMA weights (diffusers ``EMAModel``) in place of the trained ones."""
    if ema is None:
        return {k: v.detach().clone() for k, v in model.state_dict().items()}
    params = [p for p in model.parameters() if p.requires_grad]
    ema.store(params)
    ema.copy_to(params)
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ema.restore(params)
    return weights


TRAIN_STATE_FORMAT = "rlstack.train_state"


def save_train_state(path: str | Path, step: int, objects: dict[str, Any],
                     generators: dict[str, np.random.Generator | torch.Generator] | None = None,
                     extra: dict[str, Any] | None = None, world: int = 1) -> None:
    """One atomic resume file for a learner: every object's state, its generators, the global RNGs, the step.

    ``objects`` are modules, optimizers, schedulers (anything with ``state_dict``); ``generators`` the
    numpy/torch generators the learner draws from (replay sampling, exploration noise); ``extra`` plain data.
    """
    gens: dict[str, Any] = {}
    for name, g in (generators or {}).items():
        gens[name] = {"torch": g.get_state()} if isinstance(g, torch.Generator) else {"numpy": numpy_generator_state(g)}
    save_checkpoint(path, {"format": TRAIN_STATE_FORMAT, "step": int(step), "world": int(world),
                           "objects": state_dicts(objects), "generators": gens, "rng": gather_rng(world),
                           "extra": dict(extra or {})})


def load_train_state(path: str | Path, objects: dict[str, Any],
                     generators: dict[str, np.random.Generator | torch.Generator] | None = None,
                     rank: int = 0) -> dict[str, Any]:
    """Restore what ``save_train_state`` wrote into the same named objects; returns ``{"step", "extra"}``."""
    from robot_learning.policies.checkpoint import load_plain

    path = Path(path)
    state = load_plain(path, "train state")
    if not isinstance(state, dict) or state.get("format") != TRAIN_STATE_FORMAT:
        raise ValueError(f"{path} is not an rlstack train state (no '{TRAIN_STATE_FORMAT}' format tag)")
    load_state_dicts(objects, state["objects"], str(path))
    for name, g in (generators or {}).items():
        saved = state["generators"].get(name)
        if saved is None:
            raise ValueError(f"{path}: no state for generator '{name}' (has {sorted(state['generators'])})")
        if isinstance(g, torch.Generator):
            g.set_state(saved["torch"])
        else:
            set_numpy_generator_state(g, saved["numpy"])
    set_rng_states(state["rng"][min(rank, len(state["rng"]) - 1)])
    return {"step": int(state["step"]), "extra": state["extra"]}
