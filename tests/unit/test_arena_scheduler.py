"""The arena's active pair scheduler (expected ranking-loss reduction) and how arena episodes are recorded."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from robot_learning.arena.client import SlotRecord
from robot_learning.arena.ranking import Comparison
from robot_learning.arena.scheduler import davidson_information, pair_weights, ranking_loss


def test_ranking_loss_is_large_for_overlapping_gaps_and_shrinks_with_variance() -> None:
    separated = ranking_loss(np.array([3.0]), np.array([0.1]))
    overlapping = ranking_loss(np.array([0.1]), np.array([0.1]))
    assert separated < 1e-6 < overlapping
    losses = [ranking_loss(np.array([0.2]), np.array([v])) for v in (1.0, 0.3, 0.1, 0.01)]
    assert losses == sorted(losses, reverse=True)  # more certainty, less expected mis-ordering
    # a tie in truth (gap 0): the loss is the expected |gap|, s * phi(0)
    assert ranking_loss(np.array([0.0]), np.array([0.25])) == pytest.approx(0.5 / np.sqrt(2 * np.pi))


def test_davidson_information_peaks_at_even_pairs_and_falls_with_ties() -> None:
    assert davidson_information(0.0, -50.0) == pytest.approx(0.25, abs=1e-9)  # no ties: plain BT p(1-p)
    info = [davidson_information(d, np.log(0.5)) for d in (0.0, 1.0, 3.0, 6.0)]
    assert info == sorted(info, reverse=True) and info[-1] < 0.05
    assert davidson_information(0.0, np.log(2.0)) < davidson_information(0.0, np.log(0.5))


def test_active_puts_its_mass_on_the_unresolved_neighbours() -> None:
    comps = ([Comparison(1, 2, "A")] * 30 + [Comparison(3, 4, "A")] * 30 + [Comparison(1, 3, "A")] * 20
             + [Comparison(2, 4, "A")] * 20 + [Comparison(2, 3, "A")] * 3 + [Comparison(2, 3, "B")] * 3)
    w = pair_weights([1, 2, 3, 4], comps, "active", explore=0.1)
    assert abs(sum(w.values()) - 1) < 1e-9
    assert max(w, key=w.get) == "2-3"  # the only order still in doubt
    assert w["2-3"] > 0.5 and w["1-4"] == pytest.approx(min(w.values()), rel=0.5)
    assert min(w.values()) >= 0.1 / 6 - 1e-12  # the exploration floor keeps every pair reachable


def test_arena_rollouts_carry_source_slot_and_session(tmp_path: Path) -> None:
    from robot_learning.data.store import EpisodeStore
    from robot_learning.deploy.rollout import RolloutConfig, RolloutRecorder

    rec = SlotRecord(session_id="s-1", slot="B", seed=7, task="push", instruction="push it", operator="ann")
    cfg = RolloutConfig(store=str(tmp_path / "r.zarr"), task="push", source="arena", policy_id=rec.policy_id,
                        instruction=rec.instruction, tags=rec.tags(), operator=rec.operator)
    recorder = RolloutRecorder(cfg, "ws://127.0.0.1:1/ws/slot/opaque", 10.0)
    now = time.time()
    for k in range(3):
        recorder.on_tick(now + k * 0.1, {"j": np.zeros(2, np.float32)}, {"j": now + k * 0.1}, np.zeros(5), "policy",
                         False)
    recorder.label(True, by="service")
    recorder.close()
    info = EpisodeStore.open(str(tmp_path / "r.zarr"), mode="r").episodes()[0]
    assert (info.meta.source, info.meta.policy_id, info.meta.instruction) == ("arena", "arena-slot-B", "push it")
    assert info.meta.tags["arena_session"] == "s-1" and info.meta.tags["arena_slot"] == "B"
    assert info.meta.tags["seed"] == 7 and info.meta.tags["label"] == "success" and info.success
