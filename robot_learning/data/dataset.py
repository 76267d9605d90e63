"""Torch dataset of training windows from an episode store, and the train/val split by episode."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from robot_learning.data.sampler import build_windows, window_rows
from robot_learning.data.store import IMAGE_PREFIX, EpisodeInfo, EpisodeStore

_from_numpy = torch.from_numpy


def _select(
    store: EpisodeStore, success: bool | None, source: str | Sequence[str] | None,
    task: str | Sequence[str] | None,
) -> list[EpisodeInfo]:
    infos = store.episodes(success=success, source=source, task=task)
    if not infos:
        raise ValueError(f"no episode in {store.uri} matches success={success}, source={source}, task={task} "
                         f"(the store has {len(store)} episodes)")
    return infos


def split_episodes(
    store: EpisodeStore,
    val_fraction: float = 0.1,
    seed: int = 0,
    success: bool | None = None,
    source: str | Sequence[str] | None = None,
    task: str | Sequence[str] | None = None,
) -> tuple[list[int], list[int]]:
    """Split matching episodes into (train ids, val ids), by episode, reproducibly for a seed."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    ids = np.array([e.index for e in _select(store, success, source, task)])
    n_val = int(round(val_fraction * len(ids)))
    if val_fraction > 0 and len(ids) >= 2:
        n_val = min(max(n_val, 1), len(ids) - 1)
    perm = np.random.default_rng(seed).permutation(len(ids))
    val = sorted(int(i) for i in ids[perm[:n_val]])
    train = sorted(int(i) for i in ids[perm[n_val:]])
    return train, val


class WindowDataset(torch.utils.data.Dataset):
    """Windows of ``horizon`` steps: obs = first ``n_obs_steps`` (per-key override via ``key_horizons``),
    action = all ``horizon`` steps. Edge padding repeats the first/last frame with
    pad_before = n_obs_steps - 1 and pad_after = n_action_steps - 1 (diffusion_policy's convention).

    Low-dim keys are always held in RAM (they are small); ``cache=True`` also decodes the images of
    the selected episodes into RAM once. Without the cache only the obs frames a window uses are read.
    The store is reopened read-only, lazily, in each DataLoader worker.
    """

    def __init__(
        self,
        store: EpisodeStore | str,
        obs_keys: Sequence[str],
        action_key: str = "action",
        n_obs_steps: int = 2,
        horizon: int = 16,
        n_action_steps: int = 8,
        episodes: Sequence[int] | None = None,
        cache: bool = False,
        key_horizons: Mapping[str, int] | None = None,
        success: bool | None = None,
        source: str | Sequence[str] | None = None,
        task: str | Sequence[str] | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        if isinstance(store, str):
            store = EpisodeStore.open(store, mode="r", storage_options=storage_options)
        self._uri, self._storage_options = store.uri, storage_options
        self._store: EpisodeStore | None = store
        self._pid = os.getpid()  # forked DataLoader workers must not share the parent's connections
        if not 1 <= n_obs_steps <= horizon or not 1 <= n_action_steps <= horizon:
            raise ValueError(f"need 1 <= n_obs_steps, n_action_steps <= horizon; got {n_obs_steps=}, "
                             f"{n_action_steps=}, {horizon=}")
        known = store.keys
        for key in [*obs_keys, action_key]:
            if key not in known:
                raise ValueError(f"key {key!r} is not in store {store.uri} (keys: {sorted(known)})")
        self.obs_keys, self.action_key = list(obs_keys), action_key
        self.n_obs_steps, self.horizon, self.n_action_steps = n_obs_steps, horizon, n_action_steps
        self.key_horizons = {k: n_obs_steps for k in self.obs_keys}
        self.key_horizons[action_key] = horizon
        for key, h in (key_horizons or {}).items():
            if key not in self.key_horizons:
                raise ValueError(f"key_horizons names {key!r}, which is neither an obs key nor the action key")
            if not 1 <= int(h) <= horizon:
                raise ValueError(f"key_horizons[{key!r}] = {h} must be in 1..{horizon}")
            self.key_horizons[key] = int(h)

        if episodes is None:
            infos = _select(store, success, source, task)
        else:
            wanted = {int(i) for i in episodes}
            infos = [e for e in _select(store, success, source, task) if e.index in wanted]
            missing = wanted - {e.index for e in store.episodes()}
            if missing:
                raise ValueError(f"episodes {sorted(missing)} are not in {store.uri} ({len(store)} episodes)")
            if not infos:
                raise ValueError(f"none of the {len(wanted)} requested episodes matches the filters")
        self.episode_ids = [e.index for e in infos]
        lengths = np.array([e.length for e in infos], dtype=np.int64)
        # rows of the selected episodes, packed one after another in RAM
        packed_start = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        pos, starts = build_windows(lengths, horizon, n_obs_steps - 1, n_action_steps - 1)
        self._rows = {h: window_rows(starts, packed_start[pos], lengths[pos], h)
                      for h in sorted(set(self.key_horizons.values()))}
        # packed row + shift = store row (for images read from the store)
        self._shift = np.array([e.start for e in infos], dtype=np.int64)[pos] - packed_start[pos]
        self._episode_of = np.array(self.episode_ids, dtype=np.int64)[pos] if len(pos) else pos
        self._starts = starts
        self._ram: dict[str, np.ndarray] = {}
        for key in dict.fromkeys([*self.obs_keys, action_key]):
            is_image = key.startswith(IMAGE_PREFIX)
            if is_image and not cache:
                continue
            parts = [store.read_rows(key, e.start, e.end)
                     for e in tqdm(infos, desc=f"load {key}", disable=len(infos) < 50 or not is_image)]
            data = np.concatenate(parts)
            self._ram[key] = data if is_image else data.astype(np.float32, copy=False)
        # (key, RAM array or None = read from the store, row matrix); "__action__" marks the action
        self._plan = [(k, self._ram.get(k), self._rows[self.key_horizons[k]]) for k in self.obs_keys]
        self._plan.append(("__action__", self._ram[action_key], self._rows[self.key_horizons[action_key]]))
        self._all_in_ram = all(data is not None for _k, data, _r in self._plan)

    def __len__(self) -> int:
        return len(self._starts)

    def window(self, i: int) -> tuple[int, int]:
        """(episode id, start offset within the episode) of sample ``i``."""
        return int(self._episode_of[i]), int(self._starts[i])

    def _reader(self) -> EpisodeStore:
        if self._store is None or self._pid != os.getpid():
            self._store = EpisodeStore.open(self._uri, mode="r", storage_options=self._storage_options)
            self._pid = os.getpid()
        return self._store

    def _from_store(self, key: str, rows: np.ndarray, shifts: np.ndarray) -> np.ndarray:
        """Frames of windows ``rows`` (n, h) read from the store: one contiguous range per window, all
        ranges fetched concurrently; only the frames the windows use are decoded."""
        lo, hi = rows[:, 0], rows[:, -1]  # clipped rows are sorted and contiguous
        blocks = self._reader().read_many([(f"data/{key}", int(a + s), int(b + s + 1))
                                           for a, b, s in zip(lo, hi, shifts, strict=True)])
        return np.stack([blk[r - a] for blk, r, a in zip(blocks, rows, lo, strict=True)])

    def __getitem__(self, i: int | Sequence[int] | np.ndarray) -> dict[str, Any]:
        """One window, or a batch of windows (leading batch dim) when ``i`` is a sequence of indices."""
        if isinstance(i, (int, np.integer)):
            return self._single(int(i))
        idx = np.asarray(i, dtype=np.int64)
        out: dict[str, Any] = {"obs": {}}
        for key, data, rows in self._plan:
            r = rows[idx]
            batch = data.take(r, axis=0) if data is not None else self._from_store(key, r, self._shift[idx])
            if key == "__action__":
                out["action"] = torch.from_numpy(batch)
            else:
                out["obs"][key] = torch.from_numpy(batch)
        return out

    def _single(self, i: int) -> dict[str, Any]:
        if self._all_in_ram:  # the hot path: one gather and one tensor per key, nothing else
            take, act_data, act_rows = _from_numpy, self._plan[-1][1], self._plan[-1][2]
            return {"obs": {k: take(d.take(r[i], axis=0)) for k, d, r in self._plan[:-1]},
                    "action": take(act_data.take(act_rows[i], axis=0))}
        obs = {}
        action = None
        for key, data, rows in self._plan:
            r = rows[i]
            frames = data.take(r, axis=0) if data is not None else self._from_store(key, r[None], self._shift[i:i + 1])[0]
            if key == "__action__":
                action = torch.from_numpy(frames)
            else:
                obs[key] = torch.from_numpy(frames)
        return {"obs": obs, "action": action}

    def loader(self, batch_size: int, shuffle: bool = True, num_workers: int = 0, drop_last: bool = False,
               seed: int = 0, **kwargs: Any) -> torch.utils.data.DataLoader:
        """A DataLoader that fetches whole batches at once (one gather per key, no per-sample collate)."""
        gen = torch.Generator().manual_seed(seed)
        base = torch.utils.data.RandomSampler(self, generator=gen) if shuffle else torch.utils.data.SequentialSampler(self)
        sampler = torch.utils.data.BatchSampler(base, batch_size=batch_size, drop_last=drop_last)
        return torch.utils.data.DataLoader(self, sampler=sampler, batch_size=None, num_workers=num_workers, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_store"] = None  # each worker opens its own read-only store
        return state
