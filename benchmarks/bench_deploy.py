"""Deployment benchmark: control-loop jitter at 50 Hz, observation-to-action latency, policy-server RTT.

1. The policy node (real rclpy, ``policy_node.make_node`` + ``make_executor``) drives a small torch MLP
   policy at 50 Hz in a fresh process per scenario (executor kind, inference in a thread or a child
   process, with or without a busy-loop process on the other core). A separate observer process (the
   robot side) publishes JointState + PoseStamped at 50 Hz and subscribes to /action: each observation
   carries a sequence number that the policy copies into its actions, so the latency from an
   observation's publication to the first /action computed from it is measured on one clock.
2. ``rlstack serve``'s PolicyServer in its own process; a RemotePolicy client sends sequential
   requests with a low-dim observation and with two 96x96 cameras x 2 steps: round trip p50/p99 and
   requests/s (a policy that returns at once, so the figures are the protocol's cost).

3. ``--parity``: success of trained checkpoints through the node vs direct evaluation on the same seeds,
   and the ablation of the parity fixes (``benchmarks/deploy_parity.py``).

    .venv/bin/python benchmarks/bench_deploy.py [--seconds 20] [--requests 300] [--scenarios before,process]
    .venv/bin/python benchmarks/bench_deploy.py --parity --checkpoint bc_lift=runs/bases/lift/bc/policy.pt  # after benchmarks/train_bases.sh
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue
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

    def predict_chunk(self, obs_history: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        torch.set_num_threads(1)  # again: in a policy process this object was unpickled, not constructed
        x = np.concatenate([obs_history["joint_pos"].reshape(-1), obs_history["ee_pose"].reshape(-1)])
        with torch.inference_mode():
            out = self.net(torch.as_tensor(x, dtype=torch.float32)).numpy().reshape(16, 5)
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


def observer_process(domain_id: int, warmup: float, seconds: float, ready: Any, out: Any) -> None:
    """The robot side, in its own process: publish observations at 50 Hz, time the /action replies.

    Joint 0 of each JointState carries a sequence number that the policy copies into its actions, so
    the latency from an observation's publication to the first /action computed from it is measured
    on one clock. Only the ``seconds`` after ``warmup`` count.
    """
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from ros_nodes.common import (
        apply_loopback_env,
        control_qos,
        numpy_to_joint_state,
        numpy_to_pose,
        sensor_pub_qos,
    )

    apply_loopback_env(domain_id)
    rclpy.init(domain_id=domain_id)
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray

    node = rclpy.create_node("bench_observer")
    pj = node.create_publisher(JointState, "/joint_states", sensor_pub_qos(10))
    pp = node.create_publisher(PoseStamped, "/ee_pose", sensor_pub_qos(10))
    obs_time: dict[int, float] = {}
    first_action: dict[int, float] = {}
    arrivals: list[float] = []
    window = [float("inf"), float("inf")]

    def on_action(m: Any) -> None:
        now = time.time()
        if window[0] <= now <= window[1]:
            arrivals.append(time.perf_counter())
        first_action.setdefault(int(round(m.data[0])), now)

    node.create_subscription(Float64MultiArray, "/action", on_action, control_qos())
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    ready.set()
    seq, period = 0, 1.0 / HZ
    deadline = time.perf_counter()
    t0 = time.time()
    window[:] = [t0 + warmup, t0 + warmup + seconds]
    while time.time() < window[1] + 0.5:
        deadline += period
        time.sleep(max(0.0, deadline - time.perf_counter()))
        seq += 1
        t = time.time()
        q = np.zeros(9)
        q[0] = seq
        obs_time[seq] = t
        pj.publish(numpy_to_joint_state(q, t, np.zeros(9)))
        pp.publish(numpy_to_pose(np.array([0.5, 0, 0.2, 0, 0, 0, 1.0]), t))
    executor.shutdown()
    node.destroy_node()
    rclpy.try_shutdown()
    lat = [first_action[s] - obs_time[s] for s in first_action if s in obs_time and window[0] <= obs_time[s] <= window[1]]
    out.put({"latency_ms": np.asarray(lat) * 1e3, "arrivals": np.asarray(arrivals)})


# name -> (executor, inference isolation, busy-loop processes beside the node, control_priority, in-process probe)
SCENARIOS = {
    "before": ("multi", "thread", 0, 0, True),
    "before-alone": ("multi", "thread", 0, 0, False),
    "thread": ("single", "thread", 0, 0, False),
    "process": ("single", "process", 0, 0, False),
    "process+probe": ("single", "process", 0, 0, True),
    "thread+busy": ("single", "thread", 1, 0, False),
    "process+busy": ("single", "process", 1, 0, False),
    "process+busy+rt": ("single", "process", 1, 50, False),
}
SCENARIO_TEXT = {
    "before": "the node as it was (MultiThreadedExecutor(2), inference in the node's process) with the earlier "
              "benchmark's layout: an /action subscriber spinning its own executor thread in the node's process",
    "before-alone": "as `before`, without the in-process subscriber",
    "thread": "single-threaded executor, inference in the node's process (`isolation=thread`)",
    "process": "single-threaded executor, inference in a child process (`isolation=process`, the default)",
    "process+probe": "as `process`, with `before`'s in-process /action subscriber",
    "thread+busy": "as `thread`, one core kept busy by a `while 1: pass` process",
    "process+busy": "as `process`, one core kept busy by a `while 1: pass` process",
    "process+busy+rt": "as `process+busy`, with `control_priority=50` (SCHED_FIFO control thread)",
}


def bench_control_loop(seconds: float, executor_kind: str = "single", isolation: str = "process",
                       busy: int = 0, priority: int = 0, probe: bool = False, warmup: float = 3.0) -> dict[str, float]:
    """Run the node at 50 Hz against the observer process; return jitter and latency figures."""
    import subprocess

    import rclpy
    from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor

    from robot_learning.deploy.config import load_deploy_config
    from ros_nodes.common import apply_loopback_env
    from ros_nodes.policy_node import make_executor, make_node

    domain_id = 210 + os.getpid() % 20  # outside the 10..209 range the test fixture hands out
    apply_loopback_env(domain_id)
    rclpy.init(domain_id=domain_id)
    cfg = load_deploy_config({"policy": {"scripted": "bench", "isolation": isolation},
                              "safety": {"hold_keep_dims": [], "stale_timeout_s": 0.2},
                              "scheduler": {"blend": "latest"}, "diagnostics_hz": 1.0, "control_priority": priority})
    node = make_node(cfg, policy=SeqMLPPolicy())
    # "multi" reproduces the node as it was before the fix (see policy_node.make_executor)
    executor = MultiThreadedExecutor(num_threads=2) if executor_kind == "multi" else make_executor()
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    if probe:  # the earlier benchmark's layout: a second node + executor thread in the node's process
        from std_msgs.msg import Float64MultiArray

        from ros_nodes.common import control_qos

        probe_node = rclpy.create_node("bench_probe")
        probe_node.create_subscription(Float64MultiArray, "/action", lambda _m: None, control_qos())
        probe_ex = SingleThreadedExecutor()
        probe_ex.add_node(probe_node)
        threading.Thread(target=probe_ex.spin, daemon=True).start()
    hogs = [subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(busy)]
    ctx = mp.get_context("spawn")
    ready, out = ctx.Event(), ctx.Queue()
    observer = ctx.Process(target=observer_process, args=(domain_id, warmup, seconds, ready, out))
    try:
        observer.start()
        ready.wait(60)
        time.sleep(warmup)  # discovery + warm-up
        before = node.ctrl.diagnostics()  # counters since start-up; the table reports the measured window only
        before["overruns"] = node.overruns
        node.ctrl.diag._ticks.clear()
        node.ctrl.diag._infer_ms.clear()
        time.sleep(seconds)
        diag = node.ctrl.diagnostics()
        diag["overruns"] = node.overruns
        seen = out.get(timeout=60)
        observer.join(30)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
        node.close()
        executor.shutdown()
        rclpy.try_shutdown()
    for key in ("late_dropped_actions", "chunks", "starved_ticks", "overruns"):
        diag[key] = diag.get(key, 0) - before.get(key, 0)
    lat = seen["latency_ms"]
    sub_jitter = np.abs(np.diff(seen["arrivals"]) * 1e3 - 1e3 / HZ)
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


def _scenario(name: str, seconds: float, out: Any) -> None:
    """One scenario in a fresh process, so no threads or DDS state carry over between scenarios."""
    out.put(bench_control_loop(seconds, *SCENARIOS[name]))


def run_scenario(name: str, seconds: float) -> dict[str, float]:
    """Run scenario ``name`` (see SCENARIOS) in its own process and return its figures."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_scenario, args=(name, seconds, out))
    proc.start()
    give_up = time.monotonic() + seconds + 180
    try:
        while True:
            try:
                return out.get(timeout=1.0)
            except queue.Empty:
                if not proc.is_alive() or time.monotonic() > give_up:
                    raise RuntimeError(f"scenario {name} failed (exit code {proc.exitcode}); "
                                       "see its traceback above") from None
    finally:
        proc.join(60)


def main() -> int:
    """Run both parts, print and write the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="control-loop measurement time per scenario")
    parser.add_argument("--requests", type=int, default=300, help="server round trips per payload")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated subset of {list(SCENARIOS)}")
    parser.add_argument("--no-write", action="store_true", help="print only; leave benchmarks/README.md alone")
    parser.add_argument("--parity", action="store_true", help="run the parity section instead (direct vs node)")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="LABEL=PATH",
                        help="parity: a checkpoint, label <policy>_<task> (e.g. bc_lift=runs/bc/policy.pt); repeatable")
    parser.add_argument("--episodes", type=int, default=50, help="parity: episodes per row")
    parser.add_argument("--seed", type=int, default=1000, help="parity: first seed")
    parser.add_argument("--max-steps", type=int, default=120, help="parity: step limit")
    parser.add_argument("--out", default="runs/bench_parity", help="parity: where row reports are kept (resumable)")
    parser.add_argument("--ablate", default="", help="parity: run only the ablation section, on this checkpoint label")
    parser.add_argument("--ablate-episodes", type=int, default=20, help="parity: episodes per ablation row")
    parser.add_argument("--no-serve", action="store_true", help="parity: skip the node + rlstack serve rows")
    args = parser.parse_args()
    if args.parity:
        return run_parity(args, parser)
    names = [n for n in args.scenarios.split(",") if n]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"--scenarios: unknown {unknown}; known: {list(SCENARIOS)}")
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    load_before = os.getloadavg()[0]
    rows = []
    for name in names:
        load0 = os.getloadavg()[0]
        r = run_scenario(name, args.seconds)
        print(name, r, flush=True)
        rows.append([f"`{name}`", f"{r['loop_hz']:.2f}",
                     f"{r['tick_jitter_p50_ms']:.2f} / {r['tick_jitter_p99_ms']:.2f} / {r['tick_jitter_max_ms']:.1f}",
                     f"{r['sub_jitter_p50_ms']:.2f} / {r['sub_jitter_p99_ms']:.2f}",
                     f"{r['obs_to_action_p50_ms']:.1f} / {r['obs_to_action_p99_ms']:.1f}",
                     f"{r['inference_p50_ms']:.2f} / {r['inference_p99_ms']:.2f}",
                     f"{r['chunks']} / {r['late_dropped']} / {r['starved']} / {r['overruns']}",
                     f"{load0:.1f}"])
    low = bench_server(False, args.requests)
    img = bench_server(True, args.requests)
    loop_table = markdown_table(
        ["scenario", "loop Hz (target 50)", "tick jitter p50 / p99 / max, ms (in node)",
         "/action inter-arrival jitter p50 / p99, ms (robot side)", "observation -> first /action from it, p50 / p99, ms",
         "inference p50 / p99, ms (node side)", "chunks / late-dropped / starved ticks / overruns",
         "1-min load at start"], rows)
    server_table = markdown_table(["policy server (loopback websocket)", "RTT p50 / p99", "requests/s"], [
        [f"low-dim obs ({low['payload_kb']:.2f} KB)", f"{low['rtt_p50_ms']:.2f} / {low['rtt_p99_ms']:.2f} ms",
         f"{low['req_per_s']:.0f}"],
        [f"2 cams 96x96 x 2 steps ({img['payload_kb']:.0f} KB)", f"{img['rtt_p50_ms']:.2f} / {img['rtt_p99_ms']:.2f} ms",
         f"{img['req_per_s']:.0f}"],
    ])
    scenarios = "; ".join(f"`{n}`: {SCENARIO_TEXT[n]}" for n in names)
    body = (
        f"{loop_table}\n\nScenarios: {scenarios}.\n\n"
        f"Control loop: the policy node (rclpy, Fast DDS on loopback) with a small torch MLP (32-256-256-80) at "
        f"50 Hz, {args.seconds:.0f} s per scenario after a 3 s warm-up, each scenario in a fresh process; "
        "observations come from, and /action is timed in, a separate process (the robot side). The last column is "
        "the 1-min load average as each scenario started (a `busy` scenario adds its own busy process).\n\n"
        f"{server_table}\n\nServer: `PolicyServer` in its own process, one sequential client (`RemotePolicy`), "
        f"{args.requests} requests per payload, a policy that returns at once.\n\n"
        f"{load_note(load_before)}\n\n"
        "Cause of the earlier stalls (found with `py-spy record --gil`): the node ran on rclpy's "
        "MultiThreadedExecutor(2), whose spin thread re-builds the wait set in Python about three times per "
        "received message (the message, then two guard-condition triggers from the pool thread that ran its "
        "callback); it held the GIL in 80 % of py-spy's samples. Between rounds it drops the GIL only for a short wait "
        "and takes it straight back. CPython 3.11 forces a hand-over only when a waiting thread has sat through a "
        "whole switch interval (5 ms) without the GIL being released meanwhile; every short release wakes the "
        "waiter, which loses the race on the other core and starts a new 5 ms wait. So on an idle 2-core machine the "
        "control and inference threads lost the race for hundreds of ms at a time (rows `before*`: 0.2-0.6 s "
        "here, up to 2 s in other runs; a tiny MLP's inference p99 > 200 ms), also without any other node in the "
        "process. "
        "On a busy machine the OS preempts the spinning thread, which is why loaded runs looked better. "
        "Fix: the node spins a single-threaded executor (its callbacks only store a sample), the policy runs in "
        "a child process by default (`policy.isolation=process`, `robot_learning/deploy/worker.py`), so "
        "inference holds no GIL in the node's process, and `control_priority` optionally makes the control "
        "thread SCHED_FIFO against other processes. The earlier benchmark also ran its /action probe in the "
        "node's process; the robot side is now a separate process.")
    if not args.no_write:
        write_section("deploy", "Deployment: control loop and policy server", body, "python benchmarks/bench_deploy.py")
    else:
        print(body)
    return 0


def run_parity(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """The parity section: every row a fresh ``rlstack eval`` / ``rlstack deploy`` (benchmarks/deploy_parity.py)."""
    from benchmarks.deploy_parity import ablation_section, parity_section

    ckpts = dict(c.split("=", 1) for c in args.checkpoint if "=" in c)
    if not ckpts or len(ckpts) != len(args.checkpoint):
        parser.error("--parity needs --checkpoint LABEL=PATH (e.g. bc_lift=runs/bc/policy.pt)")
    if args.ablate and args.ablate not in ckpts:
        parser.error(f"--ablate {args.ablate}: not one of the --checkpoint labels ({', '.join(ckpts)})")
    if args.ablate:  # the ablation is its own section, so re-running it leaves the parity table alone
        sections = [("deploy_parity_ablation", "Deployment parity: ablation of the node's fixes",
                     ablation_section(args.ablate, ckpts[args.ablate], args.ablate_episodes, args.seed,
                                      args.max_steps, Path(args.out)),
                     f"python benchmarks/bench_deploy.py --parity --checkpoint {args.ablate}={ckpts[args.ablate]} "
                     f"--ablate {args.ablate} --ablate-episodes {args.ablate_episodes}")]
    else:
        sections = [("deploy_parity", "Deployment parity: direct eval vs the ROS 2 policy node",
                     parity_section(ckpts, args.episodes, args.seed, args.max_steps, Path(args.out),
                                    serve=not args.no_serve),
                     "python benchmarks/bench_deploy.py --parity "
                     + " ".join(f"--checkpoint {c}" for c in args.checkpoint) + f" --episodes {args.episodes}")]
    for name, title, body, cmd in sections:
        if args.no_write:
            print(body)
        else:
            write_section(name, title, body, cmd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
