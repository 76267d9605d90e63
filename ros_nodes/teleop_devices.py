"""Teleop devices -> ee-delta actions and operator events, without rclpy.

Every device is read into one ``JoyState`` (axes in [-1, 1], buttons 0/1), the layout of
``sensor_msgs/Joy``, and one ``DeviceTeleop`` maps it to an action (``x y z yaw gripper``) and to
operator events (``begin end success discard intervention gripper``). The readers are thin wrappers
around the libraries made for the devices: pygame (SDL's game-controller support: Xbox, PlayStation,
generic USB pads), pyspacemouse (3Dconnexion SpaceMouse over HID), and the ROS ``joy`` node
(``sensor_msgs/Joy``) or ``geometry_msgs/Twist`` (teleop_twist_keyboard / teleop_twist_joy) for
labs that already run a ROS teleop. ``RecordedDevice`` replays a recorded event sequence through
the same ``read()`` a device has (tests, and replaying an operator's session).

A button acts once per press, on release (so a chord or a long hold can be told from a press); a
mapping entry ``(button, "long")`` acts once the button has been held ``long_press_s``, and a chord
``(b1, b2)`` when both were down together, so a two-button SpaceMouse still reaches the whole workflow.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

EVENTS = ("begin", "end", "success", "discard", "intervention", "gripper")


@dataclass
class JoyState:
    """One reading of a device: axes in [-1, 1] and buttons (0/1), as in ``sensor_msgs/Joy``."""

    axes: list[float]
    buttons: list[int]
    t: float = 0.0  # when it was read (device time or the recording's time)


@dataclass
class JoyMapping:
    """Which axis drives which action dimension and which buttons raise which operator event."""

    axes: dict[int, tuple[int, float]]  # action index -> (axis index, scale; negative flips it)
    buttons: dict[str, Any]  # event -> button index, (index, "long") or a chord (i, j)
    deadzone: float = 0.1
    long_press_s: float = 1.0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.buttons) - set(EVENTS))
        if unknown:
            raise ValueError(f"teleop mapping: unknown event(s) {unknown} (choose from {', '.join(EVENTS)})")


# Xbox-layout pads as SDL (pygame) numbers them: axis 1/4 point down when pushed forward.
GAMEPAD = JoyMapping(
    axes={0: (1, -1.0), 1: (0, -1.0), 2: (4, -1.0), 3: (3, -1.0)},  # left stick x/y, right stick z/yaw
    buttons={"begin": 7, "end": 6, "success": 0, "discard": 1, "intervention": 3, "gripper": 5},
)
# The ROS joy node (Linux joystick API, Xbox pad): forward is +1 on axis 1; axes 2/5 are triggers.
JOY = JoyMapping(
    axes={0: (1, 1.0), 1: (0, 1.0), 2: (4, 1.0), 3: (3, 1.0)},
    buttons={"begin": 7, "end": 6, "success": 0, "discard": 1, "intervention": 3, "gripper": 5},
)
# SpaceMouse: axes x y z roll pitch yaw; two buttons: short press = gripper / intervention,
# held 1 s = success / discard, both together = begin, both held 1 s = end.
SPACEMOUSE = JoyMapping(
    axes={0: (0, 1.0), 1: (1, 1.0), 2: (2, 1.0), 3: (5, 1.0)},
    buttons={"gripper": 0, "intervention": 1, "success": (0, "long"), "discard": (1, "long"),
             "begin": (0, 1), "end": ((0, 1), "long")},
    deadzone=0.05,
)
PRESETS = {"gamepad": GAMEPAD, "joy": JOY, "spacemouse": SPACEMOUSE}


@dataclass
class DeviceTeleop:
    """JoyState -> (action, events): held axes move, buttons raise operator events once per press."""

    mapping: JoyMapping
    action_dim: int = 5
    speed: float = 1.0
    gripper: float = 1.0  # open
    intervention: bool = False
    _down: dict[Any, float] = field(default_factory=dict)  # mapping entry -> when its buttons went down
    _fired_long: set[Any] = field(default_factory=set)
    _chorded: set[int] = field(default_factory=set)

    def on_state(self, state: JoyState, now: float | None = None) -> tuple[np.ndarray, list[str]]:
        """Action for this reading and the operator events it raises (gripper/intervention applied here)."""
        now = state.t if now is None else now
        events = self._events(state.buttons, now)
        for e in events:
            if e == "gripper":
                self.gripper = -self.gripper
            elif e == "intervention":
                self.intervention = not self.intervention
        return self.action(state), events

    def action(self, state: JoyState) -> np.ndarray:
        """Motion from the axes (deadzone, clipped to [-1, 1]) and the gripper state."""
        a = np.zeros(self.action_dim)
        for i, (axis, scale) in self.mapping.axes.items():
            if i < self.action_dim - 1 and axis < len(state.axes):
                v = float(state.axes[axis])
                a[i] = 0.0 if abs(v) < self.mapping.deadzone else float(np.clip(scale * v * self.speed, -1, 1))
        a[-1] = self.gripper
        return a

    def _events(self, buttons: Sequence[int], now: float) -> list[str]:
        pressed = {i for i, b in enumerate(buttons) if b}
        specs = {e: (tuple(_buttons(sp)), _is_long(sp)) for e, sp in self.mapping.buttons.items()}
        for ids, _long in specs.values():
            if len(ids) > 1 and set(ids) <= pressed:
                self._chorded |= set(ids)  # these presses belong to a chord, not to their own entries
        hold = self.mapping.long_press_s
        out: list[str] = []
        for event, key in specs.items():
            ids, long = key
            blocked = len(ids) == 1 and ids[0] in self._chorded
            has_long = (ids, True) in specs.values()
            if set(ids) <= pressed:
                start = self._down.setdefault(key, now)
                if long and not blocked and now - start >= hold and key not in self._fired_long:
                    self._fired_long.add(key)
                    out.append(event)
            elif key in self._down:
                held = now - self._down.pop(key)
                self._fired_long.discard(key)
                if not long and not blocked and not (has_long and held >= hold):
                    out.append(event)  # a short press, told from a chord or a long hold on release
        self._chorded &= pressed
        return out


def _chord(spec: Any) -> bool:
    return len(_buttons(spec)) > 1


def _is_long(spec: Any) -> bool:
    return isinstance(spec, tuple) and len(spec) == 2 and spec[1] == "long"


def _buttons(spec: Any) -> list[int]:
    """Button indices of a mapping entry: 3, (3, "long"), (0, 1) or ((0, 1), "long")."""
    if _is_long(spec):
        spec = spec[0]
    if isinstance(spec, int):
        return [spec]
    return [int(b) for b in spec]


def twist_action(linear: Sequence[float], angular_z: float, gripper: float, max_linear: float = 0.5,
                 max_angular: float = 1.0, action_dim: int = 5) -> np.ndarray:
    """geometry_msgs/Twist -> action: linear x y z and angular z scaled to [-1, 1] (m/s, rad/s at full scale)."""
    a = np.zeros(action_dim)
    a[:3] = np.clip(np.asarray(linear[:3], dtype=float) / max_linear, -1, 1)
    a[3] = float(np.clip(angular_z / max_angular, -1, 1))
    a[-1] = gripper
    return a


# ------------------------------------------------------------------------------------ device readers
class PygameGamepad:
    """A gamepad through pygame (SDL): ``read()`` returns its axes and buttons now."""

    def __init__(self, index: int = 0) -> None:
        import os

        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # no window: joystick events only
        import pygame

        self.pygame = pygame
        pygame.display.init()
        pygame.joystick.init()
        n = pygame.joystick.get_count()
        if n <= index:
            raise RuntimeError(f"teleop: gamepad {index} not found (pygame sees {n} joystick(s); is it plugged in "
                               "and readable, /dev/input/js* or event*?)")
        self.js = pygame.joystick.Joystick(index)
        self.js.init()
        self.name = self.js.get_name()

    def read(self) -> JoyState:
        """Current axes and buttons."""
        self.pygame.event.pump()
        return JoyState([self.js.get_axis(i) for i in range(self.js.get_numaxes())],
                        [int(self.js.get_button(i)) for i in range(self.js.get_numbuttons())], time.monotonic())


class SpaceMouseDevice:
    """A 3Dconnexion SpaceMouse through pyspacemouse (HID): axes x y z roll pitch yaw, its buttons."""

    def __init__(self, device: str = "") -> None:
        import pyspacemouse

        try:
            self.dev = pyspacemouse.open(device=device or None)
        except Exception as exc:  # the library raises its own errors for "no device" / "no permission"
            raise RuntimeError(f"teleop: no SpaceMouse opened ({exc}); is it plugged in and is /dev/hidraw* "
                               "readable?") from exc
        if self.dev is None:
            raise RuntimeError("teleop: no SpaceMouse found (pyspacemouse.open returned nothing)")

    def read(self) -> JoyState:
        """Current axes and buttons."""
        s = self.dev.read()
        return JoyState([s.x, s.y, s.z, s.roll, s.pitch, s.yaw], [int(b) for b in s.buttons], time.monotonic())


class RecordedDevice:
    """Replays recorded ``JoyState`` readings (JSON lines: ``{"t", "axes", "buttons"}``) through ``read()``."""

    def __init__(self, states: Iterable[JoyState]) -> None:
        self.states = list(states)
        self.i = 0

    @classmethod
    def load(cls, path: str | Path) -> RecordedDevice:
        """Read a recording written by ``save``."""
        out = []
        for n, line in enumerate(Path(path).read_text().splitlines(), 1):
            if line.strip():
                try:
                    d = json.loads(line)
                    out.append(JoyState([float(a) for a in d["axes"]], [int(b) for b in d["buttons"]], float(d["t"])))
                except (ValueError, KeyError, TypeError) as exc:
                    raise ValueError(f"{path}:{n}: bad recorded device reading ({exc})") from exc
        return cls(out)

    def save(self, path: str | Path) -> None:
        """Write the readings as JSON lines."""
        Path(path).write_text("".join(json.dumps({"t": s.t, "axes": s.axes, "buttons": s.buttons}) + "\n"
                                      for s in self.states))

    def read(self) -> JoyState:
        """The next reading (the last one repeats once the recording is over)."""
        s = self.states[min(self.i, len(self.states) - 1)]
        self.i += 1
        return s

    @property
    def done(self) -> bool:
        """Whether every reading was read."""
        return self.i >= len(self.states)


def open_device(mode: str, device: str = "") -> Any:
    """The reader of a device mode: ``gamepad`` (pygame), ``spacemouse`` (pyspacemouse), or a recording path."""
    if device.endswith(".jsonl"):
        return RecordedDevice.load(device)
    if mode == "gamepad":
        return PygameGamepad(int(device or 0))
    if mode == "spacemouse":
        return SpaceMouseDevice(device)
    raise ValueError(f"teleop: no device reader for mode '{mode}'")
