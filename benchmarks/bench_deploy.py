"""Deployment benchmark: control-loop jitter at 50 Hz, observation-to-action latency, policy-server RTT.

1. The policy node (real rclpy, in this process, multi-threaded executor) drives a small torch MLP
   policy at 50 Hz while an observer process... publishes JointState + PoseStamped at 50 Hz from a
   separate rclpy node. Each observation carries a sequence number that the policy copies into its
   actions, so the latency from an observation's publication to the first /action computed from it
   is measured end to end at the subscriber.
2. ``rlstack serve``'s PolicyServer in its own process; a RemotePolicy client sends sequential
   requests with a low-dim observation and with two 96x96 cameras x 2 steps: round trip p50/p99 and
   requests/s (a policy that returns at once, so the figures are the protocol's cost).

    .venv/bin/python benchmarks/bench_deploy.py [--seconds 20] [--requests 300]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._table import load_note, markdown_table, write_section  # noqa: E402
from robot_learning.policies.base import Policy, PolicySpec  # noqa: E402

HZ = 50.0


class SeqMLPPolicy(Policy):
    """A small torch MLP (real inference cost) whose action dim 0 carries the observation's sequence number."""

    def __init__(self) -> None:
        import torch

        torch.manual_seed(0)
        torch.set_num_threads(1)  # a small MLP gains nothing from threads and would fight the control loop
        self.spec = PolicySpec(obs_shapes={"joint_pos": (9,), "ee_pose": (7,)}, action_dim=5, n_obs_steps=2,
                               horizon=16, n_action_steps=8, control_hz=HZ)
        self.net = torch.nn.Sequential(torch.nn.Linear(32, 256), torch.nn.Mish(), torch.nn.Linear(256, 256),
                                       torch.nn.Mish(), torch.nn.Linear(256, 16 * 5))
        self.torch = torch

    def predict_chunk(self, obs_history: dict[str, np.ndarray]) -> np.ndarray:
        x = np.concatenate([obs_history["joint_pos"].reshape(-1), obs_history["ee_pose"].reshape(-1)])
        with self.torch.inference_mode():
            out = self.net(self.torch.as_tensor(x, dtype=self.torch.float32)).numpy().reshape(16, 5)
        chunk = np.tanh(out) * 0.1
        chunk[:, 0] = obs_history["joint_pos"][-1, 0]  # the sequence number of the newest observation
        return chunk


class ZeroPolicy(Policy):
    """Returns zeros at once: server figures are pure protocol + transport cost."""

    def __init__(self, images: bool) -> None:
        shapes: dict[str, tuple[int, ...]] = {"joint_pos": (9,), "ee_pose": (7,)}
        if images:
            shapes.update({"camera_front": (96, 96, 3), "camera_wrist": (96, 96, 3)})
        self.spec = PolicySpec(obs_shapes=shapes, action_dim=5, n_obs_steps=2, horizon=16, n_action_steps=8)

    def predict_chunk(self, obs_history: dict[str, np.ndarray]) -> np.ndarray:
        return np.zeros((16, 5), np.float32)


def publisher_process(domain_id: int, seconds: float, ready: Any) -> None:
    """Publish JointState + PoseStamped at 50 Hz with a sequence number in joint 0 (separate process)."""
    import rclpy

    from ros_nodes.common import apply_loopback_env, numpy_to_joint_state, numpy_to_pose, sensor_pub_qos

    apply_loopback_env(domain_id)
    rclpy.init(domain_id=domain_id)
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import JointState

    node = rclpy.create_node("bench_obs")
    pj = node.create_publisher(JointState, "/joint_states", sensor_pub_qos(10))
    pp = node.create_publisher(PoseStamped, "/ee_pose", sensor_pub_qos(10))
    ready.set()
    seq, period = 0, 1.0 / HZ
    deadline = time.perf_counter()
    end = time.time() + seconds
    while time.time() < end:
        deadline += period
        time.sleep(max(0.0, deadline - time.perf_counter()))
        seq += 1
        t = time.time()
        q = np.zeros(9)
        q[0] = seq
        pj.publish(numpy_to_joint_state(q, t, np.zeros(9)))
        pp.publish(numpy_to_pose(np.array([0.5, 0, 0.2, 0, 0, 0, 1.0]), t))
    node.destroy_node()
    rclpy.try_shutdown()


def bench_control_loop(seconds: float) -> dict[str, float]:
    """Run the node at 50 Hz against the publisher process; return jitter and latency figures."""
    import rclpy
    from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray

    from robot_learning.deploy.config import load_deploy_config
    from ros_nodes.common import apply_loopback_env, control_qos, sensor_pub_qos, stamp_to_sec
    from ros_nodes.policy_node import make_node

    domain_id = 210 + os.getpid() % 20  # outside the 10..209 range the test fixture hands out
    apply_loopback_env(domain_id)
    rclpy.init(domain_id=domain_id)
    cfg = load_deploy_config({"policy": {"scripted": "bench"}, "safety": {"hold_keep_dims": [], "stale_timeout_s": 0.2},
                              "scheduler": {"blend": "latest"}, "diagnostics_hz": 1.0})
    node = make_node(cfg, policy=SeqMLPPolicy())
    executor = MultiThreadedExecutor(num_threads=2)
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()

    # the observer: when each sequence number was captured, and when /action first carried it
    probe = rclpy.create_node("bench_probe")
    obs_time: dict[int, float] = {}
    first_action: dict[int, float] = {}
    arrivals: list[float] = []
    probe.create_subscription(JointState, "/joint_states",
                              lambda m: obs_time.setdefault(int(m.position[0]), stamp_to_sec(m.header.stamp)),
                              sensor_pub_qos(10))

    def on_action(m: Any) -> None:
        now = time.time()
        arrivals.append(time.perf_counter())
        first_action.setdefault(int(round(m.data[0])), now)

    probe.create_subscription(Float64MultiArray, "/action", on_action, control_qos())
    pex = SingleThreadedExecutor()
    pex.add_node(probe)
    threading.Thread(target=pex.spin, daemon=True).start()

    ready = mp.get_context("spawn").Event()
    pub = mp.get_context("spawn").Process(target=publisher_process, args=(domain_id, seconds + 3.0, ready))
    pub.start()
    ready.wait(60)
    time.sleep(3.0)  # discovery + warm-up
    before = node.ctrl.diagnostics()  # counters since start-up; the table reports the measured window only
    before["overruns"] = node.overruns
    node.ctrl.diag._ticks.clear()
    node.ctrl.diag._infer_ms.clear()
    arrivals.clear()
    t_start = time.time()
    time.sleep(seconds)
    diag = node.ctrl.diagnostics()
    diag["overruns"] = node.overruns
    for key in ("late_dropped_actions", "chunks", "starved_ticks", "overruns"):
        diag[key] = diag.get(key, 0) - before.get(key, 0)
    pub.join(30)
    node.close()
    executor.shutdown()
    pex.shutdown()
    rclpy.try_shutdown()
    lat = np.array([first_action[s] - obs_time[s] for s in first_action if s in obs_time and obs_time[s] >= t_start]) * 1e3
    inter = np.diff(np.asarray(arrivals)) * 1e3
    sub_jitter = np.abs(inter - 1e3 / HZ)
    return {
        "loop_hz": diag["loop_hz"], "tick_jitter_p50_ms": diag["jitter_p50_ms"],
        "tick_jitter_p99_ms": diag["jitter_p99_ms"], "tick_jitter_max_ms": diag["jitter_max_ms"],
        "sub_jitter_p50_ms": float(np.percentile(sub_jitter, 50)), "sub_jitter_p99_ms": float(np.percentile(sub_jitter, 99)),
        "obs_to_action_p50_ms": float(np.percentile(lat, 50)), "obs_to_action_p99_ms": float(np.percentile(lat, 99)),
        "inference_p50_ms": diag["inference_p50_ms"], "inference_p99_ms": diag["inference_p99_ms"],
        "late_dropped": diag["late_dropped_actions"], "chunks": diag["chunks"], "starved": diag["starved_ticks"],
        "overruns": diag.get("overruns", 0), "n_latency": int(lat.size),
    }


def server_process(images: bool, port_q: Any) -> None:
    """Serve a ZeroPolicy on a free port (separate process, like a GPU box would)."""
    from robot_learning.serve.server import PolicyServer

    srv = PolicyServer(ZeroPolicy(images), port=0)
    threading.Thread(target=lambda: (srv._ready.wait(30), port_q.put(srv.port)), daemon=True).start()
    srv.serve_forever()


def bench_server(images: bool, n: int) -> dict[str, float]:
    """Sequential round trips through RemotePolicy against a server process."""
    from robot_learning.serve.client import RemotePolicy

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=server_process, args=(images, q), daemon=True)
    proc.start()
    try:
        port = q.get(timeout=60)
        remote = RemotePolicy(f"ws://127.0.0.1:{port}")
        spec = remote.spec
        rng = np.random.default_rng(0)
        obs = {k: (rng.integers(0, 255, (2, *s), dtype=np.uint8) if len(s) == 3 else rng.standard_normal((2, *s)).astype(np.float32))
               for k, s in spec.obs_shapes.items()}
        payload = sum(v.nbytes for v in obs.values())
        for _ in range(20):
            remote.predict_chunk(obs)
        rtt = []
        t0 = time.perf_counter()
        for _ in range(n):
            t = time.perf_counter()
            remote.predict_chunk(obs)
            rtt.append((time.perf_counter() - t) * 1e3)
        total = time.perf_counter() - t0
        remote.close()
    finally:
        proc.terminate()
        proc.join(10)
    r = np.asarray(rtt)
    return {"payload_kb": payload / 1024, "rtt_p50_ms": float(np.percentile(r, 50)),
            "rtt_p99_ms": float(np.percentile(r, 99)), "req_per_s": n / total}


def main() -> int:
    """Run both parts, print and write the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="control-loop measurement time")
    parser.add_argument("--requests", type=int, default=300, help="server round trips per payload")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    load_before = os.getloadavg()[0]
    loop = bench_control_loop(args.seconds)
    low = bench_server(False, args.requests)
    img = bench_server(True, args.requests)
    rows = [
        ["control loop rate (target 50 Hz)", f"{loop['loop_hz']:.2f} Hz"],
        ["tick jitter p50 / p99 / max (in node)",
         f"{loop['tick_jitter_p50_ms']:.2f} / {loop['tick_jitter_p99_ms']:.2f} / {loop['tick_jitter_max_ms']:.2f} ms"],
        ["/action inter-arrival jitter p50 / p99 (subscriber process side)",
         f"{loop['sub_jitter_p50_ms']:.2f} / {loop['sub_jitter_p99_ms']:.2f} ms"],
        ["observation published -> first /action from it, p50 / p99",
         f"{loop['obs_to_action_p50_ms']:.1f} / {loop['obs_to_action_p99_ms']:.1f} ms (n={loop['n_latency']})"],
        ["inference (MLP 32-256-256-80, torch CPU) p50 / p99",
         f"{loop['inference_p50_ms']:.2f} / {loop['inference_p99_ms']:.2f} ms"],
        ["chunks / late-dropped actions / starved ticks / overruns",
         f"{loop['chunks']} / {loop['late_dropped']} / {loop['starved']} / {loop['overruns']}"],
        [f"policy server RTT, low-dim obs ({low['payload_kb']:.2f} KB) p50 / p99",
         f"{low['rtt_p50_ms']:.2f} / {low['rtt_p99_ms']:.2f} ms, {low['req_per_s']:.0f} req/s"],
        [f"policy server RTT, 2 cams 96x96 x 2 steps ({img['payload_kb']:.0f} KB) p50 / p99",
         f"{img['rtt_p50_ms']:.2f} / {img['rtt_p99_ms']:.2f} ms, {img['req_per_s']:.0f} req/s"],
    ]
    body = markdown_table(["measure", "value"], rows) + (
        f"\n\nControl loop: policy node in-process (rclpy, Fast DDS on loopback) for {args.seconds:.0f} s; observations "
        "from a separate process at 50 Hz. Server: `PolicyServer` in its own process, one sequential client "
        f"(`RemotePolicy`), {args.requests} requests per payload, a policy that returns at once.\n\n"
        f"{load_note(load_before)}\n\n"
        "Known issue: on an idle machine this in-process loop shows stalls of ~200 ms at p99 (inference of a tiny "
        "MLP included) that a plain 50 Hz sleep loop in the same machine does not (p99 overshoot 0.2 ms); an earlier "
        "run under heavy load measured 49.9 Hz with p99 jitter 12.6 ms. The cause (GIL hand-over between the "
        "executor threads and the inference thread is the first suspect) is not found yet.")
    write_section("deploy", "Deployment: control loop and policy server", body, "python benchmarks/bench_deploy.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
