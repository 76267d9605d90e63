"""Property tests (hypothesis) for window starts and edge padding against a step-by-step reference."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from robot_learning.data.sampler import build_windows, window_rows, window_starts


def reference_window(episode: np.ndarray, start: int, horizon: int) -> np.ndarray:
    """diffusion_policy-style: copy the in-episode part, fill the rest with the first/last frame."""
    lo, hi = max(start, 0), min(start + horizon, len(episode))
    out = np.empty((horizon, *episode.shape[1:]), episode.dtype)
    before, after = lo - start, start + horizon - hi
    out[before:horizon - after] = episode[lo:hi]
    out[:before] = episode[0]
    if after:
        out[horizon - after:] = episode[-1]
    return out


@settings(max_examples=200, deadline=None)
@given(length=st.integers(1, 40), horizon=st.integers(1, 20), n_obs=st.integers(1, 20), n_act=st.integers(1, 20))
def test_windows_match_reference(length, horizon, n_obs, n_act):
    n_obs, n_act = min(n_obs, horizon), min(n_act, horizon)
    pad_before, pad_after = n_obs - 1, n_act - 1
    starts = window_starts(length, horizon, pad_before, pad_after)
    assert len(starts) == max(0, length - horizon + pad_before + pad_after + 1)
    episode = np.arange(100, 100 + length)
    rows = window_rows(starts, np.full(len(starts), 100), np.full(len(starts), length), horizon)
    for s, r in zip(starts, rows, strict=True):
        assert np.array_equal(r, reference_window(episode, int(s), horizon))
        # the newest observation is a real step, and at least n_action_steps actions are real or held
        assert 0 <= s + n_obs - 1
        assert s + horizon - 1 - pad_after <= length - 1
        # padding is only ever a repeat of the first / last frame, at most pad_before / pad_after of them
        before, after = max(0, -int(s)), max(0, int(s) + horizon - length)
        assert before <= pad_before and after <= pad_after
        assert np.all(r[:before] == 100) and np.all(r[horizon - after:] == 100 + length - 1)
        assert np.array_equal(r[before:horizon - after], np.arange(100 + max(int(s), 0), 100 + min(int(s) + horizon, length)))


@settings(max_examples=50, deadline=None)
@given(lengths=st.lists(st.integers(1, 30), min_size=1, max_size=6), horizon=st.integers(1, 12),
       steps=st.integers(1, 12))
def test_rows_never_cross_episodes(lengths, horizon, steps):
    steps = min(steps, horizon)
    pos, starts = build_windows(lengths, horizon, 1, 2)
    ep_start = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    rows = window_rows(starts, ep_start[pos], np.asarray(lengths)[pos], steps)
    for p, r in zip(pos, rows, strict=True):
        assert ep_start[p] <= r.min() and r.max() < ep_start[p] + lengths[p]


def test_short_episode_and_bad_args():
    assert len(window_starts(3, 16, 1, 7)) == 0  # too short for a 16-step window even with padding
    assert list(window_starts(4, 4, 0, 0)) == [0]
    try:
        window_starts(4, 0, 0, 0)
    except ValueError as exc:
        assert "horizon" in str(exc)
    else:
        raise AssertionError("horizon 0 accepted")
