"""``rlstack collect``: start the collection graph as processes and record episodes into a store.

    rlstack collect robot=sim teleop=expert episodes=20 store=data/x.zarr
    rlstack collect robot=external teleop=keyboard store=data/real.zarr task=lift

Hydra config: ``configs/collect.yaml`` with groups ``configs/collect/robot`` and ``configs/collect/teleop``.
With ``robot=sim`` the sim_robot node is launched; ``robot=external`` expects a driver already
publishing the topic contract. With ``teleop=expert`` this command drives the episodes itself (reset,
start, success, stop); with ``teleop=keyboard`` the operator does (keys in this terminal) and the
command returns once ``episodes`` episodes are committed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from robot_learning.data.collect_config import CollectConfig, load_config  # noqa: F401  (re-exported for callers)


def node_params(cfg: CollectConfig) -> dict[str, dict[str, Any]]:
    """Parameters of each node of the graph (what the launch file and this command pass)."""
    source = cfg.source or ("scripted" if cfg.teleop.mode == "expert" else "teleop")
    params = {
        "recorder": {
            "store": cfg.store, "streams": [s.to_param() for s in cfg.all_streams()], "clock": cfg.recorder.clock,
            "control_hz": cfg.robot.control_hz, "task": cfg.robot.task, "source": source, "operator": cfg.operator,
            "max_wait_s": cfg.recorder.max_wait_s, "image_codec": cfg.recorder.image_codec,
            "max_future_s": cfg.recorder.max_future_s,
        },
        "teleop": {"mode": cfg.teleop.mode, "task": cfg.robot.task, "quality": cfg.teleop.quality,
                   "seed": cfg.teleop.seed, "control_hz": cfg.robot.control_hz, "action_dim": cfg.teleop.action_dim,
                   "speed": cfg.teleop.speed, "device": cfg.teleop.device, "topic": cfg.teleop.topic},
    }
    if cfg.robot.kind == "sim":
        params["sim_robot"] = {
            "task": cfg.robot.task, "cameras": list(cfg.robot.cameras), "image_size": cfg.robot.image_size,
            "control_hz": cfg.robot.control_hz, "dr": cfg.robot.dr, "seed": cfg.robot.seed,
            # the expert's conductor runs the sim episode by episode; for a person it runs from the start
            "task_flags": list(cfg.robot.task_flags) or [""], "autostart": cfg.teleop.mode != "expert",
        }
    return params


class Conductor:
    """Drives episodes over the graph's services: reset, start, watch success, stop (expert teleop)."""

    def __init__(self, node: Any, timeout_s: float) -> None:
        from std_msgs.msg import Bool, String
        from std_srvs.srv import SetBool, Trigger

        from ros_nodes.common import TOPICS, sensor_pub_qos

        self.node = node
        self.timeout_s = timeout_s
        self.Trigger, self.SetBool = Trigger, SetBool
        self.clients: dict[str, Any] = {}
        self.ticks = 0
        self.success_run = 0
        self.status: dict[str, Any] = {}
        node.create_subscription(Bool, TOPICS.success, self._on_success, sensor_pub_qos())
        node.create_subscription(String, TOPICS.recorder_status, self._on_status, 10)

    def _on_success(self, msg: Any) -> None:
        self.ticks += 1
        self.success_run = self.success_run + 1 if msg.data else 0

    def _on_status(self, msg: Any) -> None:
        self.status = json.loads(msg.data)

    def call(self, name: str, data: bool | None = None) -> Any:
        """Call a Trigger (or SetBool when ``data`` is given) service and return its response."""
        from ros_nodes.common import call_service

        srv_type = self.Trigger if data is None else self.SetBool
        client = self.clients.get(name) or self.clients.setdefault(name, self.node.create_client(srv_type, name))
        req = srv_type.Request() if data is None else srv_type.Request(data=data)
        try:
            return call_service(client, req, self.timeout_s, node=self.node)
        except TimeoutError as exc:
            raise RuntimeError(f"{exc} (did the node start? see its log)") from exc

    def spin_for(self, seconds: float) -> None:
        """Process callbacks for ``seconds``."""
        import rclpy

        end = time.monotonic() + seconds
        while time.monotonic() < end:
            rclpy.spin_once(self.node, timeout_sec=min(0.05, max(0.0, end - time.monotonic())))

    def episode(self, max_steps: int, hold_steps: int, alive: Any) -> dict[str, Any]:
        """Record one episode: pause sim, reset sim + teleop, start recorder, run until success or max_steps."""
        from ros_nodes.common import TOPICS

        self.call(TOPICS.sim_enable, False)
        seed_msg = self.call(TOPICS.sim_reset).message
        self.call(TOPICS.teleop_reset)
        resp = self.call(TOPICS.recorder_start)
        if not resp.success:
            raise RuntimeError(f"recorder refused to start: {resp.message}")
        self.ticks, self.success_run = 0, 0
        self.call(TOPICS.sim_enable, True)
        deadline = time.monotonic() + self.timeout_s + max_steps * 1.0
        while self.ticks < max_steps and self.success_run < hold_steps:
            self.spin_for(0.05)
            if time.monotonic() > deadline:
                raise RuntimeError(f"sim_robot published only {self.ticks} steps before the deadline")
            if not alive():
                raise RuntimeError("a node of the graph exited (see the logs)")
        success = self.success_run >= hold_steps
        self.call(TOPICS.sim_enable, False)
        self.call(TOPICS.recorder_mark_success, success)
        resp = self.call(TOPICS.recorder_stop)
        summary = json.loads(resp.message) if resp.message.startswith("{") else {"error": resp.message}
        seed = int(seed_msg.rsplit(" ", 1)[-1]) if seed_msg.rsplit(" ", 1)[-1].isdigit() else -1
        summary.update(success=success, seed=seed, committed=bool(resp.success))
        return summary


def status_line(status: dict[str, Any]) -> str:
    """One line for the operator: episode, steps, per-stream rate and drops, worst alignment error."""
    if not status:
        return "waiting for the recorder ..."
    head = f"episode {status.get('committed', 0)}"
    if not status.get("recording"):
        return f"{head} | idle ({status.get('committed', 0)} committed) | begin: b / start button / /recorder/start"
    parts = [f"{head} REC", f"steps {status.get('steps', 0)}"]
    worst = 0.0
    for name, s in status.get("streams", {}).items():
        drops = s.get("dropped", 0) + s.get("missing_steps", 0)
        parts.append(f"{name} {s.get('rate_hz', 0.0):.0f} Hz" + (f" drop {drops}" if drops else ""))
        worst = max(worst, s.get("align_err_max_ms", 0.0))
    parts.append(f"align {worst:.1f} ms")
    if status.get("stalled"):
        parts.append("STALLED " + ",".join(status["stalled"]))
    return " | ".join(parts)


class StatusLine:
    """Rewrites one terminal line (``\r``) with the recorder's status, at most 4 times a second."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.last = 0.0

    def show(self, status: dict[str, Any], final: bool = False) -> None:
        """Print the line if it is time (or ``final``)."""
        if self.stream is None or (not final and time.monotonic() - self.last < 0.25):
            return
        self.last = time.monotonic()
        text = status_line(status)
        self.stream.write("\r\x1b[2K" + text + ("\n" if final else ""))
        self.stream.flush()


def run_collection(cfg: CollectConfig, progress: bool = True) -> list[dict[str, Any]]:
    """Launch the graph, record ``cfg.episodes`` episodes, stop the graph; returns per-episode summaries."""
    import rclpy
    from tqdm import tqdm

    from ros_nodes.common import NodeProcess, loopback_env

    domain = cfg.domain_id if cfg.domain_id >= 0 else int(os.environ.get("ROS_DOMAIN_ID", "0"))
    env = loopback_env(domain) if cfg.loopback else {**os.environ, "ROS_DOMAIN_ID": str(domain)}
    os.environ.update({k: env[k] for k in env if k.startswith(("ROS_", "FAST", "RMW_"))})
    log_dir = Path(cfg.log_dir or f"{cfg.store.rstrip('/')}.logs")
    if "://" in str(log_dir):
        log_dir = Path("data/collect.logs")
    log_dir.mkdir(parents=True, exist_ok=True)
    params = node_params(cfg)
    procs: list[NodeProcess] = []
    keyboard = cfg.teleop.mode != "expert"  # a person drives: the operator's terminal runs the teleop
    results: list[dict[str, Any]] = []
    rclpy.init(domain_id=domain)
    node = rclpy.create_node("collect")
    try:
        for name in ("sim_robot", "recorder", "teleop"):
            if name in params:
                # the operator types into this terminal (keys work next to every device when there is one)
                attach = keyboard and name == "teleop" and (cfg.teleop.mode == "keyboard" or sys.stdin.isatty())
                procs.append(NodeProcess(f"ros_nodes.{name}", params[name], env,
                                         None if attach else log_dir / f"{name}.log", attach_terminal=attach))
        print(f"collect: graph on ROS_DOMAIN_ID={domain}{' (loopback)' if cfg.loopback else ''}; logs in {log_dir}",
              file=sys.stderr)
        conductor = Conductor(node, cfg.startup_timeout_s)

        def alive() -> bool:
            return all(p.alive() for p in procs)

        bar = tqdm(total=cfg.episodes, desc="episodes", unit="ep", disable=not progress)
        if keyboard:
            bar.close()  # the status line below replaces the bar
            line = StatusLine(sys.stderr if progress else None)
            while conductor.status.get("committed", 0) < cfg.episodes:
                conductor.spin_for(0.2)
                line.show(conductor.status)
                if not alive():
                    raise RuntimeError("a node of the graph exited (see the logs)")
            line.show(conductor.status, final=True)
        else:
            for _ in range(cfg.episodes):
                summary = conductor.episode(cfg.max_steps, cfg.success_hold_steps, alive)
                results.append(summary)
                if not summary["committed"]:
                    bar.write(f"episode {len(results) - 1} not committed: {summary.get('error', '?')} "
                              f"(node logs in {log_dir})", file=sys.stderr)
                bar.update(1)
                bar.set_postfix(steps=summary.get("steps"), success=summary["success"])
        bar.close()
    finally:
        for p in reversed(procs):  # teleop first, recorder before the robot: the recorder sees the end
            p.stop()
        node.destroy_node()
        rclpy.try_shutdown()
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``rlstack collect [key=value ...]``."""
    parser.epilog = ("examples:\n  rlstack collect robot=sim teleop=expert episodes=20 store=data/x.zarr\n"
                     "  rlstack collect teleop=keyboard episodes=5 operator=ana\n"
                     "groups: robot=sim|external, teleop=expert|keyboard|gamepad|spacemouse|joy|twist; keys: see configs/collect.yaml")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. episodes=20 store=data/x.zarr task=lift")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--print-config", action="store_true", help="print the composed config and exit")


def run(args: argparse.Namespace) -> int:
    """Compose the config, run the collection, print a summary (success rate with Wilson interval)."""
    from omegaconf import OmegaConf

    from robot_learning.config import save_config
    from robot_learning.stats import format_rate

    try:
        cfg, raw = load_config(list(args.overrides))
    except ValueError as exc:
        print(f"rlstack collect: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(OmegaConf.to_yaml(raw))
        return 0
    try:
        results = run_collection(cfg, progress=not args.no_progress)
    except RuntimeError as exc:
        print(f"rlstack collect: {exc}", file=sys.stderr)
        return 1
    if "://" not in cfg.store:
        save_config(raw, Path(f"{cfg.store.rstrip('/')}.logs") / "collect.yaml")
    if results:
        wins = sum(bool(r["success"]) for r in results)
        committed = sum(bool(r["committed"]) for r in results)
        seeds = [int(r["seed"]) for r in results]
        print(f"collected {committed}/{len(results)} episodes into {cfg.store}; "
              f"success {format_rate(wins, len(results), seeds)}")
        worst = max((s["align_err_max_ms"] for r in results for s in r.get("streams", {}).values()), default=0.0)
        dropped = sum(s["dropped"] for r in results for s in r.get("streams", {}).values())
        print(f"max alignment error {worst:.1f} ms, dropped frames {dropped}")
        return 0 if committed == len(results) else 1
    return 0
