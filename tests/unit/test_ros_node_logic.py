"""Node logic without rclpy: the sim_robot loop, the expert teleop over its privileged-state view,
the keyboard mapping, and the recorder writing a real store."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from robot_learning.data.alignment import StreamConfig
from ros_nodes.recorder import Recorder, RecorderSettings
from ros_nodes.sim_robot import SimRobotLoop
from ros_nodes.teleop import ExpertTeleop, KeyboardTeleop
from sim.privileged import PrivilegedView


@pytest.fixture(scope="module")
def robot():
    from sim import make_robot

    r = make_robot(task="lift", cameras=("front",), image_size=32, control_hz=10.0, seed=0)
    yield r
    r.close()


def test_expert_over_the_view_acts_like_the_expert_on_the_robot(robot) -> None:
    """The teleop process sees only the published state; its actions must equal the in-process expert's."""
    from sim import make_expert

    loop = SimRobotLoop(robot, base_seed=3)
    direct, remote = make_expert("lift", seed=1), ExpertTeleop(make_expert("lift", seed=1), control_hz=10.0)
    loop.reset()
    remote.reset()
    direct.reset()
    for _ in range(15):
        loop.tick()
        a_direct = direct.act(robot)
        a_remote = remote.on_state(loop.privileged())
        np.testing.assert_allclose(a_remote, a_direct, atol=1e-5)
        assert remote.on_state(loop.privileged()) is None  # the same step is answered once
        loop.on_action(a_remote)
    assert robot.steps == 14


def test_sim_loop_holds_without_actions_and_rejects_bad_ones(robot) -> None:
    loop = SimRobotLoop(robot, base_seed=0)
    assert loop.reset() == 0 and loop.reset() == 1  # seeds follow the episode count
    loop.tick()  # first tick of an episode only observes
    assert robot.steps == 0
    loop.tick()
    assert robot.steps == 1 and loop.ticks_without_action == 1
    with pytest.raises(ValueError, match="expected 5 finite values"):
        loop.on_action(np.array([0, 0, np.nan, 0, 1.0]))
    with pytest.raises(ValueError, match="task 'lift' has no predicate 'stacked'"):
        SimRobotLoop(robot, task_flags=("stacked",))


def test_view_explains_missing_task_flags() -> None:
    view = PrivilegedView(10.0)
    view.update({"steps": np.array([4.0]), "ee_pos": np.zeros(3), "task_stacked": np.array([1.0])})
    assert view.steps == 4 and set(view.privileged()) == {"ee_pos"} and view.task.stacked()
    with pytest.raises(AttributeError, match="task_flags"):
        view.task.grasped()
    with pytest.raises(ValueError, match="no 'steps' segment"):
        view.update({"ee_pos": np.zeros(3)})


def test_keyboard_mapping() -> None:
    kb = KeyboardTeleop(action_dim=5, hold_s=0.2)
    kb.on_key("w", now=0.0)
    kb.on_key("f", now=0.1)
    np.testing.assert_array_equal(kb.action(0.15), [1, 0, -1, 0, 1])
    np.testing.assert_array_equal(kb.action(0.25), [0, 0, -1, 0, 1])  # w released
    kb.on_key(" ", now=0.3)
    assert kb.action(0.3)[-1] == -1.0
    assert kb.on_key("i", 0.3) is None and kb.intervention
    assert kb.on_key("n", 0.3) == "/recorder/stop"


JOINTS = [f"joint{i + 1}" for i in range(7)]


def _msgs(t: float, k: int):
    stamp = SimpleNamespace(sec=int(t), nanosec=int(round((t - int(t)) * 1e9)))
    joint = SimpleNamespace(header=SimpleNamespace(stamp=stamp), name=JOINTS, position=[0.1 * k] * 7, velocity=[0.0] * 7)
    img = SimpleNamespace(header=SimpleNamespace(stamp=stamp), height=8, width=8, step=24, encoding="rgb8",
                          data=bytes([k % 256]) * 192)
    action = SimpleNamespace(data=[float(k)] * 5)
    return joint, img, action


def test_recorder_commits_discards_and_survives_bad_messages(tmp_path) -> None:
    streams = [StreamConfig("joint", "/joint_states", "joint_state", rate_hz=10.0, names=JOINTS, keep_raw=True),
               StreamConfig("camera_front", "/camera/front/image_raw", "image", height=8, width=8),
               StreamConfig("action", "/action", "float_array", mode="next", dim=5)]
    logs: list[str] = []
    rec = Recorder(RecorderSettings(store=str(tmp_path / "s.zarr"), streams=streams, task="t"),
                   log=lambda level, text: logs.append(f"{level}: {text}"))
    t0 = 1_700_000_000.0

    def session(n: int, start: float) -> None:
        for k in range(n):
            t = start + 0.1 * k
            joint, img, action = _msgs(t, k)
            rec.on_message("joint", joint, t + 0.002)
            rec.on_message("camera_front", img, t + 0.003)
            rec.on_message("action", action, t + 0.01)
        rec.poll(start + 0.1 * n + 2.0)

    assert rec.stop() == (False, "not recording")
    assert rec.start(t0)[0] and not rec.start(t0)[0]
    session(10, t0)
    _, bad_img, _ = _msgs(t0 + 1.0, 0)
    bad_img.encoding = "yuv422"
    rec.on_message("camera_front", bad_img, t0 + 1.0)
    rec.mark_success(True)
    ok, msg = rec.stop()
    summary = json.loads(msg)
    assert ok and summary["steps"] == 10 and summary["episode"] == 0
    assert summary["streams"]["camera_front"]["rejected"] == 1
    assert any("unsupported image encoding 'yuv422'" in line for line in logs)
    assert rec.start(t0 + 10)[0]
    session(5, t0 + 10)
    assert rec.discard()[0]
    assert rec.start(t0 + 20)[0]
    ok, msg = rec.stop()  # nothing arrived: discarded, with the reason
    assert not ok and "no steps recorded" in msg
    rec.close()
    from robot_learning.data.store import EpisodeStore

    store = EpisodeStore.open(tmp_path / "s.zarr", mode="r")
    assert len(store) == 1 and store.episode(0).success and store.episode(0).length == 10
    ep = store.read_episode(0)
    np.testing.assert_array_equal(ep["action"][:, 0], np.arange(10))
    np.testing.assert_array_equal(ep["camera_front"][:, 0, 0, 0], np.arange(10))
    raw, raw_t = store.read_stream(0, "joint_pos")  # keep_raw: every joint sample, not only the steps
    assert raw.shape == (10, 7) and np.all(np.diff(raw_t) > 0)


def test_recorder_reports_a_silent_driver_and_the_real_reason_for_an_empty_episode(tmp_path) -> None:
    streams = [StreamConfig("joint", "/joint_states", "joint_state", rate_hz=10.0, names=JOINTS),
               StreamConfig("camera_front", "/camera/front/image_raw", "image", height=8, width=8)]
    logs: list[str] = []
    rec = Recorder(RecorderSettings(store=str(tmp_path / "s.zarr"), streams=streams, task="t"),
                   log=lambda level, text: logs.append(f"{level}: {text}"))
    t0 = 1_700_000_000.0
    assert rec.start(t0)[0]
    rec.poll(t0 + 5.0)  # nothing has published yet: not "stopped", but "no message since the start"
    assert not any("stopped publishing" in line for line in logs)
    assert any("camera_front" in line and "no message in the 5.0 s since the episode started" in line for line in logs)
    for k in range(5):  # joints come, with a wrong joint name, then the camera never does
        joint, _img, _a = _msgs(t0 + 5 + 0.1 * k, k)
        joint.name = [*JOINTS[:6], "elbow"]
        rec.on_message("joint", joint, t0 + 5 + 0.1 * k)
    ok, msg = rec.stop()
    assert not ok
    reason = json.loads(msg)["error"]
    assert "clock stream 'joint'" in reason and "lacks joint names ['joint7']" in reason, reason
    assert sum("rejected message" in line and "lacks joint names" in line for line in logs) == 1  # per kind: 1 line, not 5
    rec.close()
