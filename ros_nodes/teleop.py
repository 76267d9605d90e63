"""``teleop`` node: a person (keyboard, gamepad, SpaceMouse, a ROS Joy or Twist teleop) or the sim's
scripted expert publishes ``/action``.

- ``mode:=expert``: the scripted expert runs in this process on the privileged state that
  ``sim_robot`` publishes (``/sim/privileged_state``) and answers every observation with one action.
- ``mode:=keyboard``: a terminal in raw mode; motion keys publish ee-delta actions at the control
  rate, ``i`` toggles the intervention flag, and the recorder is driven from the same keyboard.
- ``mode:=gamepad`` (pygame), ``mode:=spacemouse`` (pyspacemouse; ``device:=`` a name, or a
  ``.jsonl`` recording to replay): axes move, buttons raise the operator events (``teleop_devices.py``).
- ``mode:=joy`` (``sensor_msgs/Joy`` from the ``joy`` node, ``topic:=/joy``) and ``mode:=twist``
  (``geometry_msgs/Twist`` from teleop_twist_keyboard / teleop_twist_joy, ``topic:=/cmd_vel``):
  an existing ROS teleop drives the stack; a message older than 0.5 s stops the motion.

Every operator event is also a service: ``/recorder/start|stop|discard`` (Trigger),
``/recorder/mark_success``, ``/teleop/gripper`` (true = open), ``/teleop/intervention`` (SetBool).
In every person mode the keys below work too when the node has a terminal.

Keys (keyboard mode)::

    w/s  +x/-x     a/d  +y/-y     r/f  +z/-z     q/e  yaw +/-     space  gripper open/close
    i    intervention on/off (a person taking over is recorded on /intervention)
    b    begin episode   n  end + commit   y  mark success   x  discard episode   Ctrl-C quit

    python -m ros_nodes.teleop --ros-args -p mode:=expert -p task:=lift
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ros_nodes.common import TOPICS
from sim.privileged import PrivilegedView

# key -> (action index, sign) for motion keys
MOTION_KEYS: dict[str, tuple[int, float]] = {
    "w": (0, 1.0), "s": (0, -1.0), "a": (1, 1.0), "d": (1, -1.0),
    "r": (2, 1.0), "f": (2, -1.0), "q": (3, 1.0), "e": (3, -1.0),
}
# key -> recorder service (topic name from the contract)
RECORDER_KEYS: dict[str, str] = {
    "b": TOPICS.recorder_start, "n": TOPICS.recorder_stop, "x": TOPICS.recorder_discard, "y": TOPICS.recorder_mark_success,
}


class ExpertTeleop:
    """Scripted expert as a teleoperator: one action per observed state."""

    def __init__(self, expert: Any, control_hz: float) -> None:
        self.expert = expert
        self.view = PrivilegedView(control_hz)
        self.last_step = -1

    def reset(self) -> None:
        """New episode."""
        self.expert.reset()
        self.last_step = -1

    def on_state(self, segments: dict[str, np.ndarray]) -> np.ndarray | None:
        """Action for this state, or None if the step was already answered (a repeated message)."""
        self.view.update(segments)
        if self.view.steps == self.last_step:
            return None
        self.last_step = self.view.steps
        return np.asarray(self.expert.act(self.view), dtype=np.float64)


class KeyboardTeleop:
    """Key presses -> ee-delta actions: a motion key moves for ``hold_s`` (terminal auto-repeat keeps it going)."""

    def __init__(self, action_dim: int = 5, speed: float = 1.0, hold_s: float = 0.25) -> None:
        self.action_dim = action_dim
        self.speed = speed
        self.hold_s = hold_s
        self.gripper = 1.0  # open
        self.intervention = False
        self._until = np.zeros(action_dim)
        self._sign = np.zeros(action_dim)

    def on_key(self, key: str, now: float) -> str | None:
        """Handle one key; returns a recorder service name to call, if the key asks for one."""
        if key in MOTION_KEYS:
            i, sign = MOTION_KEYS[key]
            self._sign[i], self._until[i] = sign, now + self.hold_s
        elif key == " ":
            self.gripper = -self.gripper
        elif key == "i":
            self.intervention = not self.intervention
        elif key in RECORDER_KEYS:
            return RECORDER_KEYS[key]
        return None

    def action(self, now: float) -> np.ndarray:
        """The action at ``now``: held motion keys, and the gripper state."""
        a = np.where(self._until > now, self._sign * self.speed, 0.0)
        a[-1] = self.gripper
        return a


def read_keys(on_key: Callable[[str], None], stop: Callable[[], bool]) -> None:
    """Read single key presses from the terminal (cbreak mode) until ``stop()``; restores the terminal."""
    import select
    import termios
    import tty

    fd = sys.stdin.fileno()
    old = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        while not stop():
            ready, _, _ = select.select([sys.stdin], [], [], 0.1)
            if ready:
                on_key(sys.stdin.read(1))
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)


# operator event -> recorder service (the same from every device and from ``ros2 service call``)
EVENT_SERVICES = {"begin": TOPICS.recorder_start, "end": TOPICS.recorder_stop,
                  "discard": TOPICS.recorder_discard, "success": TOPICS.recorder_mark_success}
DEVICE_MODES = ("gamepad", "spacemouse", "joy", "twist")


def make_node() -> Any:
    """Build the rclpy node (parameters from the command line / params file)."""
    import threading

    from rclpy.node import Node
    from std_msgs.msg import Bool, Float64MultiArray
    from std_srvs.srv import SetBool, Trigger

    from ros_nodes.common import (
        control_qos,
        float_array_segments,
        latched_qos,
        numpy_to_float_array,
        sensor_pub_qos,
    )

    class TeleopNode(Node):
        """Thin rclpy wiring around ``ExpertTeleop`` / ``KeyboardTeleop`` / ``DeviceTeleop``."""

        def __init__(self) -> None:
            super().__init__("teleop")
            self.mode = self.declare_parameter("mode", "expert").value
            control_hz = float(self.declare_parameter("control_hz", 10.0).value)
            self.action_dim = int(self.declare_parameter("action_dim", 5).value)
            self.speed = float(self.declare_parameter("speed", 1.0).value)
            self.pub_action = self.create_publisher(Float64MultiArray, TOPICS.action, control_qos())
            self.pub_intervention = self.create_publisher(Bool, TOPICS.intervention, latched_qos())
            self.pub_intervention.publish(Bool(data=False))
            self.create_service(Trigger, TOPICS.teleop_reset, self._on_reset)
            self.published = 0
            self._stopping = False
            # not self._clients: rclpy's Node keeps its own list of service clients under that name
            self._recorder_clients = {
                srv: self.create_client(SetBool if ev == "success" else Trigger, srv) for ev, srv in EVENT_SERVICES.items()}
            if self.mode == "expert":
                from sim import make_expert

                task = self.declare_parameter("task", "lift").value
                quality = float(self.declare_parameter("quality", 1.0).value)
                seed = int(self.declare_parameter("seed", 0).value)
                self.expert = ExpertTeleop(make_expert(task, quality=quality, seed=seed), control_hz)
                self.create_subscription(Float64MultiArray, TOPICS.privileged_state, self._on_state, sensor_pub_qos())
                self.get_logger().info(f"teleop: scripted expert for '{task}' (quality {quality}, seed {seed})")
                return
            if self.mode not in ("keyboard", *DEVICE_MODES):
                raise ValueError(f"teleop: unknown mode '{self.mode}' (choose expert, keyboard, {', '.join(DEVICE_MODES)})")
            # a person drives: gripper and intervention are also services, for setups without buttons
            self.create_service(SetBool, "/teleop/gripper", self._srv_flag("gripper"))
            self.create_service(SetBool, "/teleop/intervention", self._srv_flag("intervention"))
            self.keyboard = KeyboardTeleop(self.action_dim, self.speed)
            self.device: Any = None
            self.reader: Any = None
            self._latest: Any = None  # joy / twist: the newest message and when it came
            if self.mode in ("gamepad", "spacemouse", "joy"):
                from ros_nodes.teleop_devices import PRESETS, DeviceTeleop, open_device

                self.device = DeviceTeleop(PRESETS[self.mode], self.action_dim, self.speed)
                if self.mode == "joy":
                    from sensor_msgs.msg import Joy

                    topic = self.declare_parameter("topic", "").value or "/joy"
                    self.create_subscription(Joy, topic, self._on_joy, 10)
                    self.get_logger().info(f"teleop: sensor_msgs/Joy on {topic} (the ROS joy node's Xbox layout)")
                else:
                    self.reader = open_device(self.mode, str(self.declare_parameter("device", "").value))
                    self.get_logger().info(f"teleop: {self.mode} {getattr(self.reader, 'name', '')}")
            elif self.mode == "twist":
                from geometry_msgs.msg import Twist

                topic = self.declare_parameter("topic", "").value or "/cmd_vel"
                self.create_subscription(Twist, topic, self._on_twist, 10)
                self.get_logger().info(f"teleop: geometry_msgs/Twist on {topic}; begin/end/success/discard are the "
                                       "recorder's services, gripper and intervention /teleop/gripper, /teleop/intervention")
            self.create_timer(1.0 / control_hz, self._publish_person)
            if sys.stdin.isatty():  # keys work next to every device (and are the whole interface in keyboard mode)
                threading.Thread(target=read_keys, args=(self._on_key, lambda: self._stopping), daemon=True).start()
                print(__doc__.split("Keys (keyboard mode)::")[1].split("python -m")[0], flush=True)
            elif self.mode == "keyboard":
                self.get_logger().error("teleop: mode=keyboard needs a terminal (stdin is not a tty)")

        def _on_reset(self, _req: Any, resp: Any) -> Any:
            if self.mode == "expert":
                self.expert.reset()
            resp.success, resp.message = True, "teleop reset"
            return resp

        def _on_state(self, msg: Any) -> None:
            try:
                action = self.expert.on_state(float_array_segments(msg))
            except (ValueError, AttributeError, KeyError) as exc:
                self.get_logger().error(f"expert teleop: {exc}", throttle_duration_sec=1.0)
                return
            if action is not None:
                self.pub_action.publish(numpy_to_float_array(action))
                self.published += 1

        # ------------------------------------------------------------ a person
        def _srv_flag(self, flag: str) -> Any:
            def handler(req: Any, resp: Any) -> Any:
                if flag == "gripper":
                    self._set_gripper(1.0 if req.data else -1.0)
                else:
                    self._set_intervention(bool(req.data))
                resp.success, resp.message = True, f"{flag}={'open' if flag == 'gripper' and req.data else req.data}"
                return resp
            return handler

        def _set_gripper(self, value: float) -> None:
            self.keyboard.gripper = value
            if self.device is not None:
                self.device.gripper = value

        def _set_intervention(self, on: bool) -> None:
            if on == self.keyboard.intervention:
                return
            self.keyboard.intervention = on
            if self.device is not None:
                self.device.intervention = on
            self.pub_intervention.publish(Bool(data=on))
            self.get_logger().info(f"intervention {'ON' if on else 'off'}")

        def _on_event(self, event: str) -> None:
            """An operator event from any device: toggles here, the episode workflow at the recorder."""
            if event == "gripper":
                self._set_gripper(-self.keyboard.gripper)
            elif event == "intervention":
                self._set_intervention(not self.keyboard.intervention)
            elif event in EVENT_SERVICES:
                self._call(EVENT_SERVICES[event])

        def _call(self, service: str) -> None:
            client = self._recorder_clients[service]
            req = SetBool.Request(data=True) if service == TOPICS.recorder_mark_success else Trigger.Request()
            # a recorder that just came up may not be discovered by this client yet: give it 3 s
            if not client.service_is_ready() and not client.wait_for_service(timeout_sec=3.0):
                self.get_logger().error(f"{service}: recorder not running (no such service after 3 s)")
                return
            client.call_async(req).add_done_callback(
                lambda f, s=service: self.get_logger().info(f"{s}: {f.result().message}"))

        def _on_key(self, key: str) -> None:
            was_g, was_i = self.keyboard.gripper, self.keyboard.intervention
            service = self.keyboard.on_key(key, time.time())
            if self.keyboard.intervention != was_i:
                self.keyboard.intervention = was_i
                self._set_intervention(not was_i)
            if self.keyboard.gripper != was_g:
                self._set_gripper(self.keyboard.gripper)
            if service is not None:
                self._call(service)

        def _on_joy(self, msg: Any) -> None:
            from ros_nodes.teleop_devices import JoyState

            state = JoyState(list(msg.axes), list(msg.buttons), time.monotonic())
            g, i = self.device.gripper, self.device.intervention
            action, events = self.device.on_state(state)
            self.device.gripper, self.device.intervention = g, i  # applied once, by _on_event
            self._latest = (time.monotonic(), state)
            for e in events:
                self._on_event(e)

        def _on_twist(self, msg: Any) -> None:
            self._latest = (time.monotonic(), msg)

        def _publish_person(self) -> None:
            now = time.time()
            action = self.keyboard.action(now)
            if self.reader is not None:
                g, i = self.device.gripper, self.device.intervention
                dev_action, events = self.device.on_state(self.reader.read(), time.monotonic())
                self.device.gripper, self.device.intervention = g, i
                for e in events:
                    self._on_event(e)
                action = np.where(action[:-1] != 0, action[:-1], dev_action[:-1]).tolist() + [self.keyboard.gripper]
            elif self._latest is not None and time.monotonic() - self._latest[0] < 0.5:  # deadman: stale = stop
                from ros_nodes.teleop_devices import twist_action

                if self.mode == "joy":
                    dev = self.device.action(self._latest[1])[:-1]
                else:
                    m = self._latest[1]
                    dev = twist_action([m.linear.x, m.linear.y, m.linear.z], m.angular.z, 1.0,
                                       action_dim=self.action_dim)[:-1]
                action = np.where(action[:-1] != 0, action[:-1], dev).tolist() + [self.keyboard.gripper]
            self.pub_action.publish(numpy_to_float_array(np.asarray(action, dtype=np.float64)))
            self.published += 1

        def close(self) -> None:
            """Stop the key reader (restores the terminal)."""
            self._stopping = True

    return TeleopNode()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``python -m ros_nodes.teleop --ros-args -p mode:=expert``."""
    from ros_nodes.common import run_node_main

    return run_node_main(make_node, argv)


if __name__ == "__main__":
    sys.exit(main())
