"""Teleop device -> action/event mapping on recorded event sequences (gamepad, SpaceMouse, ROS joy
layout, Twist). No hardware here: only the device read is stood in for, by ``RecordedDevice``
through the same ``read()`` the pygame and pyspacemouse readers have."""

from __future__ import annotations

import numpy as np
import pytest

from ros_nodes.teleop_devices import (
    GAMEPAD,
    JOY,
    SPACEMOUSE,
    DeviceTeleop,
    JoyMapping,
    JoyState,
    RecordedDevice,
    open_device,
    twist_action,
)


def pad(t: float, axes: dict[int, float] | None = None, buttons: tuple[int, ...] = (), n_axes: int = 6,
        n_buttons: int = 11) -> JoyState:
    a = [0.0] * n_axes
    for i, v in (axes or {}).items():
        a[i] = v
    return JoyState(a, [int(i in buttons) for i in range(n_buttons)], t)


def run(teleop: DeviceTeleop, states: list[JoyState]) -> tuple[list[np.ndarray], list[tuple[float, str]]]:
    dev = RecordedDevice(states)
    actions, events = [], []
    while not dev.done:
        s = dev.read()
        a, ev = teleop.on_state(s)
        actions.append(a)
        events += [(s.t, e) for e in ev]
    return actions, events


def test_gamepad_session_maps_sticks_and_buttons() -> None:
    tel = DeviceTeleop(GAMEPAD)
    states = [pad(0.0, buttons=(7,)), pad(0.1),  # start: begin (on release)
              pad(0.2, {1: -1.0}), pad(0.3, {1: -0.05, 3: 0.5}),  # stick forward (SDL: -1), then in the deadzone
              pad(0.4, buttons=(5,)), pad(0.5),  # RB: gripper closes
              pad(0.6, buttons=(3,)), pad(0.7),  # Y: intervention on
              pad(0.8, buttons=(0,)), pad(0.9), pad(1.0, buttons=(6,)), pad(1.1)]  # A success, back end
    actions, events = run(tel, states)
    assert events == [(0.1, "begin"), (0.5, "gripper"), (0.7, "intervention"), (0.9, "success"), (1.1, "end")]
    np.testing.assert_allclose(actions[2], [1, 0, 0, 0, 1])
    np.testing.assert_allclose(actions[3], [0, 0, 0, -0.5, 1])  # x in the deadzone, right stick x = yaw
    assert actions[-1][-1] == -1.0 and tel.intervention


def test_ros_joy_layout_is_not_inverted() -> None:
    tel = DeviceTeleop(JOY)
    a, _ = tel.on_state(pad(0.0, {1: 1.0, 0: -0.5, 4: 0.25}, n_axes=8))
    np.testing.assert_allclose(a, [1.0, -0.5, 0.25, 0.0, 1.0])


def test_spacemouse_two_buttons_reach_the_whole_workflow() -> None:
    tel = DeviceTeleop(SPACEMOUSE)
    sm = lambda t, b=(), **ax: pad(t, {"xyzrpY".index(k): v for k, v in ax.items()}, b, n_axes=6, n_buttons=2)  # noqa: E731
    states = [sm(0.0, (0, 1)), sm(0.1, (0, 1)), sm(0.2),  # both briefly: begin
              sm(0.3, x=0.5, Y=-0.2), sm(0.4, (0,)), sm(0.5),  # move; short left press: gripper
              sm(0.6, (0,)), sm(1.2, (0,)), sm(1.7, (0,)), sm(1.8),  # left held 1.1 s: success once, no gripper
              sm(1.9, (1,)), sm(2.0),  # short right: intervention
              sm(2.1, (0, 1)), sm(3.2, (0, 1)), sm(3.3, (1,)), sm(3.4)]  # both held: end, not begin
    actions, events = run(tel, states)
    assert [e for _t, e in events] == ["begin", "gripper", "success", "intervention", "end"], events
    np.testing.assert_allclose(actions[3], [0.5, 0, 0, -0.2, 1.0])
    assert tel.gripper == -1.0 and tel.intervention


def test_twist_and_recorded_device_file(tmp_path) -> None:
    np.testing.assert_allclose(twist_action([0.25, -1.0, 0.0], 0.5, 1.0), [0.5, -1.0, 0.0, 0.5, 1.0])
    dev = RecordedDevice([pad(0.0, {0: 0.3}), pad(0.1, buttons=(2,))])
    dev.save(tmp_path / "session.jsonl")
    loaded = open_device("gamepad", str(tmp_path / "session.jsonl"))
    assert [s.buttons for s in loaded.states] == [s.buttons for s in dev.states] and loaded.read().axes[0] == 0.3
    (tmp_path / "bad.jsonl").write_text('{"t": 0, "axes": [0]}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1: bad recorded device reading"):
        RecordedDevice.load(tmp_path / "bad.jsonl")
    with pytest.raises(ValueError, match="unknown event"):
        JoyMapping(axes={}, buttons={"launch": 0})


def test_real_readers_name_a_missing_device() -> None:
    pytest.importorskip("pygame")
    with pytest.raises(RuntimeError, match="gamepad 0 not found"):
        open_device("gamepad")
    pytest.importorskip("pyspacemouse")
    with pytest.raises(RuntimeError, match="SpaceMouse"):
        open_device("spacemouse")
