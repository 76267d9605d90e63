"""Transitions from the episode store: n-step targets, source mixing, incremental refresh.

A ``ReplaySource`` loads the committed episodes of one store that pass a filter into RAM (images
uint8, low-dim float32, optional derived per-step columns such as frozen-encoder features) and
indexes every transition. A sample is a batch of

    obs / next_obs   {key: (B, n_obs_steps, *shape)}, oldest first; the history is padded with the
                     episode's first frame at its start (as the policy agents do), never across episodes
    action           (B, A) the executed action at step t (the operator's during a takeover)
    reward           (B,) n-step discounted return  sum_{i<k} gamma^i r[t+i]
    discount         (B,) gamma^k if the target bootstraps from next_obs, else 0
    n_steps          (B,) k; terminal / truncated (B,) whether the n-step window reached the episode's end
    mc_return        (B,) Monte-Carlo return-to-go (Cal-QL's floor), intervention, episode, step, source

Episode ends (``rl/rewards.py: end_is_terminal``). A terminal end (success, or a failure the task
declares terminal) has no successor: windows that reach it are cut there and do not bootstrap. A
truncated end (time limit, operator stop) does have a successor state, but the store holds no
observation after the last step; so the last step's transition is dropped and windows that reach the
end bootstrap from the last stored observation. No window is padded across the end.

``MixedReplay`` draws each batch from several sources by fixed ratios (RLPD: 50 % demos, 50 %
online). ``refresh()`` loads episodes committed since the last call (a learner sees what its actors
commit); episodes deleted from the store stay in replay.

Why not a library buffer (torchrl, d3rlpy)? Their buffers own the storage; here the episode store is
the storage of record (crash-safe, shared with training and evaluation), and what replay adds --
n-step targets with the store's terminal/truncated semantics and per-episode metadata filters -- is
the part those buffers would need custom code for anyway.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from robot_learning.data.layout import EpisodeInfo
from robot_learning.data.store import EpisodeStore
from robot_learning.rl.rewards import RewardFn, discounted_returns, end_is_terminal, reward_fn

DerivedFn = Callable[[EpisodeInfo, Mapping[str, np.ndarray]], np.ndarray]
STEP_KEYS = ("reward", "done", "terminal", "intervention", "control_source")
TRANSITION_FIELDS = ("reward", "discount", "n_steps", "terminal", "truncated", "mc_return", "intervention",
                     "episode", "step")


@dataclass
class EpisodeFilter:
    """Which committed episodes a source uses (None = any)."""

    success: bool | None = None
    source: str | Sequence[str] | None = None
    task: str | Sequence[str] | None = None
    predicate: Callable[[EpisodeInfo], bool] | None = None  # e.g. lambda e: e.meta.policy_id == "v3"

    def select(self, store: EpisodeStore) -> list[EpisodeInfo]:
        """Matching episodes of ``store``."""
        infos = store.episodes(success=self.success, source=self.source, task=self.task)
        return [e for e in infos if self.predicate is None or self.predicate(e)]


class _Rows:
    """A growable row buffer (capacity doubling): appends are amortised O(rows appended)."""

    def __init__(self) -> None:
        self.data: np.ndarray | None = None
        self.n = 0

    def append(self, rows: np.ndarray) -> None:
        if self.data is None:
            self.data = np.empty((max(1024, 2 * len(rows)), *rows.shape[1:]), dtype=rows.dtype)
        if rows.shape[1:] != self.data.shape[1:]:
            raise ValueError(f"per-step shape changed from {self.data.shape[1:]} to {rows.shape[1:]}")
        need = self.n + len(rows)
        if need > len(self.data):
            grown = np.empty((max(need, 2 * len(self.data)), *self.data.shape[1:]), dtype=self.data.dtype)
            grown[: self.n] = self.data[: self.n]
            self.data = grown
        self.data[self.n : need] = rows
        self.n = need

    def view(self) -> np.ndarray:
        assert self.data is not None
        return self.data[: self.n]


def n_step_table(length: int, terminal: bool, n: int, gamma: float, rewards: np.ndarray) -> dict[str, np.ndarray]:
    """Per-transition indices and targets of one episode (see the module docstring for the end rules)."""
    if n < 1:
        raise ValueError(f"n_step must be >= 1, got {n}")
    last = length if terminal else length - 1  # transitions t < last
    t = np.arange(max(last, 0), dtype=np.int64)
    k = np.minimum(n, last - t)
    boot = t + k
    bootstraps = boot < length if terminal else np.ones(len(t), dtype=bool)
    ret = np.zeros(len(t), dtype=np.float64)
    for i in range(n):
        live = i < k
        ret[live] += gamma**i * rewards[t[live] + i]
    reached_end = boot >= last if not terminal else ~bootstraps
    return {
        "t": t, "next": np.minimum(boot, length - 1), "n_steps": k, "reward": ret.astype(np.float32),
        "discount": np.where(bootstraps, gamma ** k.astype(np.float64), 0.0).astype(np.float32),
        "terminal": reached_end & terminal, "truncated": reached_end & (not terminal),
    }


class ReplaySource:
    """Transitions of the matching episodes of one store, in RAM."""

    def __init__(
        self,
        store: EpisodeStore | str,
        obs_keys: Sequence[str],
        action_key: str = "action",
        n_obs_steps: int = 2,
        n_step: int = 1,
        gamma: float = 0.99,
        reward: str | RewardFn = "stored",
        filter: EpisodeFilter | None = None,  # noqa: A002 - the natural name
        derived: Mapping[str, DerivedFn] | None = None,
        name: str = "",
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        self.store = EpisodeStore.open(store, mode="r", storage_options=storage_options) if isinstance(store, str) else store
        self.name = name or self.store.uri
        if n_obs_steps < 1 or not 0.0 < gamma <= 1.0:
            raise ValueError(f"need n_obs_steps >= 1 and 0 < gamma <= 1, got {n_obs_steps=}, {gamma=}")
        self.obs_keys, self.action_key = list(obs_keys), action_key
        self.n_obs_steps, self.n_step, self.gamma = int(n_obs_steps), int(n_step), float(gamma)
        self.reward_fn = reward_fn(reward)
        self.filter = filter or EpisodeFilter()
        self.derived = dict(derived or {})
        clash = set(self.derived) & set(self.store.keys)
        if clash:
            raise ValueError(f"derived column names {sorted(clash)} are already store keys")
        self.sample_keys = [*self.obs_keys, *self.derived]
        self._cols: dict[str, _Rows] = {k: _Rows() for k in [*self.sample_keys, action_key]}
        self._table: dict[str, _Rows] = {}
        self._seen: set[str] = set()
        self.episode_ids: list[int] = []
        self.refresh()

    def __len__(self) -> int:
        """Number of transitions."""
        return self._table["t"].n if "t" in self._table else 0

    @property
    def n_episodes(self) -> int:
        """Episodes loaded so far."""
        return len(self.episode_ids)

    def refresh(self) -> int:
        """Load episodes committed since the last call; returns how many were added."""
        self.store.refresh()
        known = self.store.keys
        for key in [*self.obs_keys, self.action_key]:
            if key not in known:
                raise ValueError(f"replay source {self.name}: key {key!r} is not in the store (keys: {sorted(known)})")
        added = 0
        for info in self.filter.select(self.store):
            if info.uid in self._seen:
                continue
            self._seen.add(info.uid)
            if info.length == 0:
                continue
            self._add_episode(info, known)
            added += 1
        return added

    def _add_episode(self, info: EpisodeInfo, known: Mapping[str, Any]) -> None:
        inputs = [k for fn in self.derived.values() for k in getattr(fn, "inputs", ())]  # e.g. a camera not kept
        keys = list(dict.fromkeys([*self.obs_keys, self.action_key, *(k for k in STEP_KEYS if k in known), *inputs]))
        data = self.store.read_episode(info.index, keys)
        steps = {k: data[k] for k in keys}
        for key in [*self.obs_keys, self.action_key]:
            arr = steps[key]
            if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
                step = int(np.argwhere(~np.isfinite(arr.reshape(len(arr), -1)))[0][0])
                raise ValueError(f"replay source {self.name}: key {key!r} has NaN/inf in episode {info.index} "
                                 f"at step {step} (the episode would poison every batch it is sampled into)")
        rewards = np.asarray(self.reward_fn(info, steps), dtype=np.float32).reshape(-1)
        if len(rewards) != info.length or not np.all(np.isfinite(rewards)):
            raise ValueError(f"replay source {self.name}: reward labels of episode {info.index} have length "
                             f"{len(rewards)} (expected {info.length}) or are not finite")
        table = n_step_table(info.length, end_is_terminal(info, steps), self.n_step, self.gamma, rewards)
        mc = discounted_returns(rewards, self.gamma)
        offset = self._cols[self.action_key].n
        for key in self.obs_keys:
            arr = steps[key]
            self._cols[key].append(arr if arr.dtype == np.uint8 else arr.astype(np.float32, copy=False))
        for key, fn in self.derived.items():
            col = np.asarray(fn(info, steps))
            if len(col) != info.length:
                raise ValueError(f"derived column {key!r} gave {len(col)} rows for episode {info.index} "
                                 f"of length {info.length}")
            self._cols[key].append(col)
        self._cols[self.action_key].append(steps[self.action_key].astype(np.float32, copy=False))
        flags = np.asarray(steps["intervention"], dtype=bool) if "intervention" in steps else np.zeros(info.length, bool)
        t = table["t"]
        rows = {
            "t": offset + t, "next": offset + table["next"], "start": np.full(len(t), offset, np.int64),
            "reward": table["reward"], "discount": table["discount"], "n_steps": table["n_steps"],
            "terminal": table["terminal"], "truncated": table["truncated"], "mc_return": mc[t],
            "intervention": flags[t], "episode": np.full(len(t), info.index, np.int64), "step": t,
        }
        for key, value in rows.items():
            self._table.setdefault(key, _Rows()).append(np.asarray(value))
        self.episode_ids.append(info.index)

    def _history_rows(self, rows: np.ndarray, starts: np.ndarray) -> np.ndarray:
        offsets = np.arange(self.n_obs_steps - 1, -1, -1, dtype=np.int64)
        return np.maximum(rows[:, None] - offsets[None, :], starts[:, None])  # pad at the episode's start only

    def empty_batch(self, n: int) -> dict[str, Any]:
        """Uninitialised arrays for ``n`` transitions, laid out as ``gather`` returns them."""
        def like(col: _Rows, *lead: int) -> np.ndarray:
            return np.empty((*lead, *col.data.shape[1:]), dtype=col.data.dtype)

        out: dict[str, Any] = {
            "obs": {k: like(self._cols[k], n, self.n_obs_steps) for k in self.sample_keys},
            "next_obs": {k: like(self._cols[k], n, self.n_obs_steps) for k in self.sample_keys},
            "action": like(self._cols[self.action_key], n),
        }
        out.update({k: like(self._table[k], n) for k in TRANSITION_FIELDS})
        return out

    def gather(self, idx: np.ndarray, out: dict[str, Any] | None = None, at: int = 0) -> dict[str, Any]:
        """The transitions at indices ``idx`` as numpy arrays (see the module docstring); written into
        rows ``at:at+len(idx)`` of ``out`` (from ``empty_batch``) when given, so mixing copies once."""
        idx = np.asarray(idx, dtype=np.int64)
        out = self.empty_batch(len(idx)) if out is None else out
        sl = slice(at, at + len(idx))
        tab = {k: v.view() for k, v in self._table.items()}
        starts = tab["start"][idx]
        rows = tab["t"][idx]
        for name, base in (("obs", rows), ("next_obs", tab["next"][idx])):
            hist = self._history_rows(base, starts)
            for k in self.sample_keys:
                np.take(self._cols[k].view(), hist, axis=0, out=out[name][k][sl])
        np.take(self._cols[self.action_key].view(), rows, axis=0, out=out["action"][sl])
        for key in TRANSITION_FIELDS:
            np.take(tab[key], idx, axis=0, out=out[key][sl])
        return out

    def sample_indices(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` transition indices drawn uniformly with replacement."""
        if len(self) == 0:
            raise ValueError(f"replay source {self.name} has no transitions (no matching episode yet)")
        return rng.integers(0, len(self), size=n)


def to_torch(batch: Mapping[str, Any], device: str | torch.device = "cpu") -> dict[str, Any]:
    """Numpy batch -> torch tensors on ``device`` (nested dicts kept)."""
    out: dict[str, Any] = {}
    for k, v in batch.items():
        out[k] = to_torch(v, device) if isinstance(v, Mapping) else torch.from_numpy(np.ascontiguousarray(v)).to(device)
    return out


def split_counts(batch_size: int, weights: Sequence[float]) -> np.ndarray:
    """Deterministic per-source counts summing to ``batch_size`` (largest remainders get the extra rows)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.sum() <= 0:
        raise ValueError("at least one source needs a positive ratio")
    exact = batch_size * w / w.sum()
    counts = np.floor(exact).astype(np.int64)
    rest = batch_size - counts.sum()
    counts[np.argsort(-(exact - counts), kind="stable")[:rest]] += 1
    return counts


class MixedReplay:
    """Batches drawn from several sources by fixed ratios (e.g. ``{"demo": 0.5, "online": 0.5}``)."""

    def __init__(self, sources: Mapping[str, ReplaySource], ratios: Mapping[str, float], seed: int = 0,
                 device: str | torch.device = "cpu") -> None:
        if set(sources) != set(ratios):
            raise ValueError(f"ratios name {sorted(ratios)}, sources are {sorted(sources)}")
        if any(r < 0 for r in ratios.values()):
            raise ValueError(f"ratios must be >= 0, got {dict(ratios)}")
        layouts = {n: (tuple(s.sample_keys), s.n_obs_steps, s.action_key) for n, s in sources.items()}
        if len(set(layouts.values())) > 1:
            raise ValueError(f"mixed sources must sample the same keys and history length, got {layouts}")
        self.names = list(sources)
        self.sources = dict(sources)
        self.ratios = [float(ratios[n]) for n in self.names]
        self.rng = np.random.default_rng(seed)
        self.device = torch.device(device)
        self._warned: set[str] = set()

    def refresh(self) -> dict[str, int]:
        """Refresh every source; returns episodes added per source."""
        return {n: s.refresh() for n, s in self.sources.items()}

    def __len__(self) -> int:
        return sum(len(s) for s in self.sources.values())

    def sample(self, batch_size: int, as_torch: bool = True) -> dict[str, Any]:
        """One mixed batch; an empty source's share goes to the others (warned once), ``source`` says which."""
        weights = [r if len(self.sources[n]) else 0.0 for n, r in zip(self.names, self.ratios, strict=True)]
        for n, r, w in zip(self.names, self.ratios, weights, strict=True):
            if r > 0 and w == 0 and n not in self._warned:
                self._warned.add(n)
                warnings.warn(f"replay source '{n}' is empty: its share of each batch goes to the others", stacklevel=2)
        counts = split_counts(batch_size, weights)
        batch: dict[str, Any] | None = None
        ids, at = [], 0
        for i, (name, c) in enumerate(zip(self.names, counts, strict=True)):
            if c:
                src = self.sources[name]
                batch = src.empty_batch(batch_size) if batch is None else batch
                src.gather(src.sample_indices(int(c), self.rng), out=batch, at=at)
                ids.append(np.full(int(c), i, dtype=np.int64))
                at += int(c)
        assert batch is not None
        batch["source"] = np.concatenate(ids)
        return to_torch(batch, self.device) if as_torch else batch


def camera_features(encoder: torch.nn.Module, key: str, batch_size: int = 256,
                    device: str | torch.device = "cpu") -> DerivedFn:
    """A derived column: frozen per-frame features of camera ``key`` (``ObsEncoder.encode_camera``),
    computed once per episode at load instead of at every sampled batch."""
    encoder = encoder.eval()

    @torch.inference_mode()
    def features(info: EpisodeInfo, steps: Mapping[str, np.ndarray]) -> np.ndarray:
        frames = steps[key]
        out = [encoder.encode_camera(key, torch.from_numpy(frames[i : i + batch_size]).to(device)).float().cpu()
               for i in range(0, len(frames), batch_size)]
        return torch.cat(out).numpy()

    features.inputs = (key,)  # type: ignore[attr-defined] - read for the function even if not an obs key
    return features


def planned_actions(policy: Any, n_action_steps: int | None = None, seed: int = 0, step_hook: bool = True) -> DerivedFn:
    """A derived column: the action ``policy`` would have executed at every stored step, running its
    chunks open-loop as the sim agent and the deploy controller do (re-plan every ``n_action_steps``,
    history padded with the episode's first frame, ``reset`` + ``reseed(seed + episode)`` per episode),
    then, with ``step_hook``, the policy's own per-step hook (``step_action``) on each step as the agents
    apply it (e.g. a wrapper base such as a perturbed policy).

    Used to relabel demonstrations with a frozen base's prediction (residual RL: target = demo - base).
    Like every derived column it is sampled as a history: the step's own value is ``obs[name][:, -1]``
    (and ``next_obs[name][:, -1]`` for the bootstrap state).
    """
    spec = policy.spec
    n_exec = int(n_action_steps or spec.n_action_steps)
    if not 1 <= n_exec <= spec.horizon:
        raise ValueError(f"n_action_steps={n_exec} must be in 1..horizon={spec.horizon}")
    back = np.arange(spec.n_obs_steps - 1, -1, -1)
    hooked = step_hook and bool(getattr(policy, "has_step_hook", False))

    def plan(info: EpisodeInfo, steps: Mapping[str, np.ndarray]) -> np.ndarray:
        policy.reset()  # chunk state never leaks from one episode into the next
        policy.reseed(seed + info.index)
        out = np.empty((info.length, spec.action_dim), dtype=np.float32)
        for t in range(0, info.length, n_exec):
            rows = np.maximum(t - back, 0)
            chunk = np.asarray(policy.predict_chunk({k: steps[k][rows] for k in spec.obs_shapes}))
            n = min(n_exec, info.length - t)
            out[t : t + n] = chunk[:n]
            if hooked:  # the hook sees each step's own history, in execution order
                for i in range(t, t + n):
                    hist = {k: steps[k][np.maximum(i - back, 0)] for k in spec.obs_shapes}
                    out[i] = policy.step_action(hist, out[i], i - t)
        return out

    plan.inputs = tuple(spec.obs_shapes)  # type: ignore[attr-defined]
    return plan
