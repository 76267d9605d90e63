"""``rlstack deploy``: run a policy as a real-time ROS 2 control node against a robot.

With ``robot.kind=sim`` it starts the ``sim_robot`` node and the policy node as processes, runs
``episodes`` episodes (reset the sim and the policy node, run until success or ``max_steps``) and
prints the success rate with its Wilson interval and seeds. With ``robot.kind=external`` (a real
driver already publishes the topic contract) or ``episodes=0`` it runs the policy node until Ctrl-C.

    rlstack deploy deploy.policy.checkpoint=runs/bc/policy.pt episodes=10
    rlstack deploy deploy.policy.server=ws://gpu-box:8765 robot.kind=external
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from robot_learning.deploy.config import DeployConfig, load_deploy_config


@dataclass
class RobotConfig:
    """The robot the node drives."""

    kind: str = "sim"  # sim | external
    cameras: list[str] = field(default_factory=lambda: ["front", "wrist"])
    image_size: int = 96
    control_hz: float = 10.0
    dr: str = "none"
    seed: int = 1000

    def __post_init__(self) -> None:
        if self.kind not in ("sim", "external"):
            raise ValueError(f"robot.kind: '{self.kind}' is not sim or external")


@dataclass
class DeployRunConfig:
    """``configs/deploy.yaml`` without the ``deploy`` node section."""

    task: str = "lift"
    robot: RobotConfig = field(default_factory=RobotConfig)
    episodes: int = 5
    max_steps: int = 120
    domain_id: int = -1
    loopback: bool = True
    log_dir: str = "data/deploy_logs"
    startup_timeout_s: float = 60.0
    # pause: stop the sim, reset the policy node, reset the sim, start it (its first observation is the
    # policy's first input); legacy: reset policy, sim, policy again while the sim runs (the second
    # reset threw away the episode's first observation, so its first tick was a hold)
    reset_mode: str = "pause"
    store: str = "data/deploy/rollouts.zarr"  # every deployed episode is recorded here; none = off
    operator: str = ""

    def __post_init__(self) -> None:
        if self.reset_mode not in ("pause", "legacy"):
            raise ValueError(f"reset_mode: '{self.reset_mode}' is not pause or legacy")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line options of ``rlstack deploy``."""
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. deploy.policy.checkpoint=x.pt episodes=10 "
                        "deploy.scheduler.blend=temporal_ensemble robot.kind=external")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def load_configs(overrides: list[str]) -> tuple[DeployRunConfig, DeployConfig, Any]:
    """Compose ``configs/deploy.yaml`` with overrides and validate both parts."""
    from omegaconf import OmegaConf

    from robot_learning.config import compose, to_dataclass

    try:
        cfg = compose("deploy", overrides)
    except Exception as exc:  # Hydra raises several types for bad overrides; all mean "bad config"
        raise ValueError(f"{type(exc).__name__}: {exc}") from exc
    node_cfg = load_deploy_config(cfg.deploy)
    # The task group carries the sim settings (already interpolated into robot.*); the run needs its name.
    rest = OmegaConf.create({k: (v.name if k == "task" else v) for k, v in cfg.items() if k != "deploy"})
    run_cfg = to_dataclass(rest, DeployRunConfig, where="deploy run")
    return run_cfg, node_cfg, cfg


class EpisodeDriver:
    """An rclpy node that resets the sim and the policy node and watches for success."""

    def __init__(self, node_cfg: DeployConfig, reset_mode: str = "pause") -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Bool, String
        from std_srvs.srv import SetBool, Trigger

        from ros_nodes.common import TOPICS, control_qos, sensor_pub_qos

        self.node = rclpy.create_node("deploy_driver")
        self.success = False
        self.steps = 0
        self.diagnostics: dict[str, Any] = {}
        self.node.create_subscription(Bool, TOPICS.success, self._on_success, sensor_pub_qos(10))
        self.node.create_subscription(JointState, TOPICS.joint_states, self._on_joints, sensor_pub_qos(10))
        self.node.create_subscription(String, node_cfg.topics.diagnostics,
                                      lambda m: setattr(self, "diagnostics", json.loads(m.data)), control_qos())
        self.sim_reset = self.node.create_client(Trigger, TOPICS.sim_reset)
        self.sim_enable = self.node.create_client(SetBool, TOPICS.sim_enable)
        self._set_bool = SetBool
        self.reset_mode = reset_mode
        self.policy_reset = self.node.create_client(Trigger, node_cfg.topics.reset_episode)
        self.label = self.node.create_client(SetBool, node_cfg.topics.label)
        self._trigger = Trigger
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self._spin = threading.Thread(target=self.executor.spin, daemon=True)
        self._spin.start()

    def _on_success(self, msg: Any) -> None:
        self.success = self.success or bool(msg.data)

    def _on_joints(self, _msg: Any) -> None:
        self.steps += 1

    def call(self, client: Any, timeout: float) -> str:
        """Call a Trigger service; RuntimeError naming it if it does not answer or fails."""
        from ros_nodes.common import call_service

        try:
            result = call_service(client, self._trigger.Request(), timeout)
        except TimeoutError as exc:
            raise RuntimeError(str(exc)) from exc
        if not result.success:
            raise RuntimeError(f"service {client.srv_name} failed: {result.message}")
        return result.message

    def enable_sim(self, on: bool, timeout: float) -> None:
        """Start (True) or stop (False) the sim robot's clock."""
        from ros_nodes.common import call_service

        call_service(self.sim_enable, self._set_bool.Request(data=on), timeout)

    def run_episode(self, max_steps: int, timeout: float) -> tuple[bool, int, int]:
        """Reset both nodes, run until success or ``max_steps`` executed actions; return (success, steps, seed)."""
        if self.reset_mode == "pause":
            self.enable_sim(False, timeout)  # nothing of the old episode reaches the node after its reset
            self.call(self.policy_reset, timeout)
            message = self.call(self.sim_reset, timeout)
            self.success, self.steps = False, -1  # the first message is the initial observation, not a step
            self.enable_sim(True, timeout)  # publishes the first observation at once
        else:
            self.call(self.policy_reset, timeout)
            message = self.call(self.sim_reset, timeout)
            self.call(self.policy_reset, timeout)
            self.success, self.steps = False, 0
        match = re.search(r"seed (-?\d+)", message)
        seed = int(match.group(1)) if match else -1
        while not self.success and self.steps < max_steps:
            time.sleep(0.005)
        if self.reset_mode == "pause":
            self.enable_sim(False, timeout)  # the robot stops with the episode (a recorded episode ends here)
        self._label(self.success, timeout)
        return self.success, max(self.steps, 0), seed

    def _label(self, success: bool, timeout: float) -> None:
        """The sim's success is the operator label of the episode (refused, harmlessly, when not recording)."""
        from ros_nodes.common import call_service

        call_service(self.label, self._set_bool.Request(data=success), timeout)

    def close(self) -> None:
        """Stop spinning and destroy the node."""
        self.executor.shutdown()
        self.node.destroy_node()


def run_sim_episodes(run_cfg: DeployRunConfig, node_cfg: DeployConfig, env: dict[str, str],
                     log_dir: Path) -> dict[str, Any]:
    """Launch sim_robot + policy node, run the episodes, print the success rate; return the report."""
    import rclpy
    from tqdm import tqdm

    from robot_learning.stats import format_rate
    from ros_nodes.common import NodeProcess

    r = run_cfg.robot
    # The episodes depend on sim_robot's reset service, and rclpy 7.1.6's experimental EventsExecutor
    # (opt-in via RLSTACK_ROS_EXECUTOR=events) never answered a service call here (measured, even in a
    # two-node script): sim_robot always runs on the single-threaded executor in this runner.
    sim_env = {**env, "RLSTACK_ROS_EXECUTOR": "single"}
    sim = NodeProcess("ros_nodes.sim_robot", {"task": run_cfg.task, "cameras": list(r.cameras),
                                              "image_size": r.image_size, "control_hz": r.control_hz, "dr": r.dr,
                                              "seed": r.seed}, env=sim_env, log_path=log_dir / "sim_robot.log")
    policy = NodeProcess("ros_nodes.policy_node", {"config_json": json.dumps(asdict(node_cfg))}, env=env,
                         log_path=log_dir / "policy_node.log")
    os.environ.update(env)  # this process joins the same loopback domain
    rclpy.init(domain_id=int(env["ROS_DOMAIN_ID"]))
    driver = EpisodeDriver(node_cfg, run_cfg.reset_mode)
    results: list[tuple[bool, int, int]] = []
    try:
        t0 = time.time()
        while not driver.diagnostics:
            for proc in (sim, policy):
                if not proc.alive():
                    raise RuntimeError(f"{proc.name} exited during start-up:\n{proc.log_text()[-3000:]}")
            if time.time() - t0 > run_cfg.startup_timeout_s:
                raise RuntimeError(f"policy node not up after {run_cfg.startup_timeout_s} s; logs in {log_dir}")
            time.sleep(0.2)
        from ros_nodes.common import TOPICS

        n_pub = driver.node.count_publishers(TOPICS.joint_states)
        if n_pub > 1:  # another robot graph shares this ROS domain: its resets and states would mix in
            raise RuntimeError(f"ROS domain {env['ROS_DOMAIN_ID']} has {n_pub} publishers on {TOPICS.joint_states}; "
                               "another robot graph runs there: pick a free domain_id=")
        bar = tqdm(range(run_cfg.episodes), desc="deploy episodes", unit="ep")
        for _ in bar:
            results.append(driver.run_episode(run_cfg.max_steps, timeout=run_cfg.startup_timeout_s))
            bar.set_postfix(success=sum(s for s, _, _ in results))
        diag = driver.diagnostics
    finally:
        driver.close()
        rclpy.try_shutdown()
        policy.stop()
        sim.stop()
    successes = sum(s for s, _, _ in results)
    seeds = [seed for _, _, seed in results]
    print(f"deploy {run_cfg.task}: success {format_rate(successes, len(results), seeds)}")
    print("per episode: " + ", ".join(f"seed {sd}: {'ok' if s else 'fail'} ({n} steps)" for s, n, sd in results))
    print("diagnostics: " + json.dumps({k: diag.get(k) for k in (
        "loop_hz", "jitter_p50_ms", "jitter_p99_ms", "inference_p50_ms", "inference_p99_ms", "obs_to_action_p50_ms",
        "late_dropped_actions", "starved_ticks", "holds", "inference_errors")}, default=str))
    report = {"task": run_cfg.task, "successes": successes, "episodes": len(results), "seeds": seeds,
              "rate": format_rate(successes, len(results), seeds), "steps": [n for _, n, _ in results],
              "per_episode_success": [bool(s) for s, _, _ in results], "store": node_cfg.record.store,
              "diagnostics": diag}
    (log_dir / "deploy_report.json").write_text(json.dumps(report, indent=2, default=str))
    return report


def deploy_in_sim(overrides: list[str]) -> dict[str, Any]:
    """Library entry for the demo: ``rlstack deploy`` on the sim robot; returns the episode report."""
    run_cfg, node_cfg, cfg = load_configs(overrides)
    node_cfg.policy.kind()
    if run_cfg.robot.kind != "sim" or run_cfg.episodes < 1:
        raise ValueError("deploy_in_sim needs robot.kind=sim and episodes >= 1")
    env, log_dir = prepare(run_cfg, node_cfg, cfg)
    return run_sim_episodes(run_cfg, node_cfg, env, log_dir)


def prepare(run_cfg: DeployRunConfig, node_cfg: DeployConfig, cfg: Any) -> tuple[dict[str, str], Path]:
    """Loopback env, log folder with the resolved config, sim observation shapes for the start-up check."""
    from omegaconf import OmegaConf

    from ros_nodes.common import loopback_env

    domain = run_cfg.domain_id if run_cfg.domain_id >= 0 else int(os.environ.get("ROS_DOMAIN_ID", "0"))
    env = loopback_env(domain) if run_cfg.loopback else dict(os.environ, ROS_DOMAIN_ID=str(domain))
    log_dir = Path(run_cfg.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, log_dir / "deploy_config.yaml")
    if not node_cfg.record.store:
        node_cfg.record.store = "none" if run_cfg.store in ("", "none") else run_cfg.store
    node_cfg.record.task = node_cfg.record.task or run_cfg.task
    if run_cfg.robot.kind == "sim" and run_cfg.episodes > 0:
        node_cfg.record.start = "reset"  # the sim's warm-up scene before the first reset is no episode
    node_cfg.record.operator = node_cfg.record.operator or run_cfg.operator
    if run_cfg.robot.kind == "sim" and not node_cfg.robot_obs_shapes:
        node_cfg.robot_obs_shapes = sim_obs_shapes(run_cfg)
    return env, log_dir


def sim_obs_shapes(run_cfg: DeployRunConfig) -> dict[str, list[int]]:
    """What the sim_robot node publishes, so a policy that needs anything else is refused at start-up."""
    from robot_learning.deploy.scripted import PRIVILEGED_KEY
    from sim.privileged import privileged_layout

    r = run_cfg.robot
    shapes = {f"camera_{c}": [r.image_size, r.image_size, 3] for c in r.cameras}
    shapes.update(joint_pos=[9], joint_vel=[9], ee_pose=[7], gripper=[1])
    shapes[PRIVILEGED_KEY] = [sum(privileged_layout(run_cfg.task).values())]
    return shapes


def run(args: argparse.Namespace) -> int:
    """Entry point of ``rlstack deploy``."""
    from omegaconf import OmegaConf

    try:
        run_cfg, node_cfg, cfg = load_configs(list(args.overrides))
        node_cfg.policy.kind()
    except ValueError as exc:
        print(f"rlstack deploy: {exc}", file=sys.stderr)
        print("policy sources: deploy.policy.checkpoint=<file> | deploy.policy.server=ws://host:port | "
              "deploy.policy.scripted=expert:<task>; every key: rlstack deploy --print-config "
              "deploy.policy.scripted=expert:lift", file=sys.stderr)
        return 2
    if args.print_config:
        print(OmegaConf.to_yaml(cfg))
        return 0
    env, log_dir = prepare(run_cfg, node_cfg, cfg)
    if run_cfg.robot.kind == "sim" and run_cfg.episodes > 0:
        try:
            run_sim_episodes(run_cfg, node_cfg, env, log_dir)
        except RuntimeError as exc:
            print(f"rlstack deploy: {exc}", file=sys.stderr)
            return 1
        return 0
    os.environ.update(env)
    if run_cfg.robot.kind == "sim":
        from ros_nodes.common import NodeProcess

        r = run_cfg.robot
        sim = NodeProcess("ros_nodes.sim_robot", {"task": run_cfg.task, "cameras": list(r.cameras),
                                                  "image_size": r.image_size, "control_hz": r.control_hz,
                                                  "dr": r.dr, "seed": r.seed}, env=env,
                          log_path=log_dir / "sim_robot.log")
        try:
            return _run_node_here(node_cfg)
        finally:
            sim.stop()
    return _run_node_here(node_cfg)


def _run_node_here(node_cfg: DeployConfig) -> int:
    from ros_nodes.policy_node import run_node

    print("policy node running; Ctrl-C to stop", flush=True)
    return run_node(["rlstack-deploy"], cfg=node_cfg)
