"""Recorder under load: 2 cameras 640x480 rgb8 @ 30 Hz + JointState @ 500 Hz for 60 s, over real rclpy.

Three processes on one loopback DDS domain: a synthetic driver publishing the streams (stamped at
publish time, as a camera driver stamps at capture), the real recorder node writing a zarr store,
and this script, which starts/stops the episode through the recorder's services. Reported: frames
published vs recorded, DDS-lost and rejected frames, steps, alignment error per stream, and CPU %
per process (from /proc, user+system time over the recording window; 100 % = one core).

    python benchmarks/bench_recorder.py            # 60 s, writes its section of benchmarks/README.md
    python benchmarks/bench_recorder.py --seconds 10 --no-write
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CAMERAS = ("front", "wrist")
HW = (480, 640)


def driver(seconds: float, cam_hz: float, joint_hz: float) -> None:
    """The synthetic robot driver (runs in its own process): publishes, then prints its counts as JSON."""
    import rclpy
    from sensor_msgs.msg import Image, JointState

    from ros_nodes.common import TOPICS, numpy_to_image, numpy_to_joint_state, sensor_pub_qos

    rclpy.init()
    node = rclpy.create_node("bench_driver")
    # one second of history per writer: reliable repair can resend anything the recorder missed
    pub_j = node.create_publisher(JointState, TOPICS.joint_states, sensor_pub_qos(int(joint_hz)))
    pubs = {c: node.create_publisher(Image, TOPICS.camera(c), sensor_pub_qos(int(cam_hz))) for c in CAMERAS}
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (*HW, 3), dtype=np.uint8) for _ in range(8)]
    counts = {"joint": 0, **{f"camera_{c}": 0 for c in CAMERAS}}
    print("ready", flush=True)
    sys.stdin.readline()  # the bench says go once the recorder is recording
    start = time.monotonic()
    next_j, next_c, k = start, start, 0
    while (now := time.monotonic()) - start < seconds:
        if now >= next_j:
            t = time.time()
            pub_j.publish(numpy_to_joint_state(np.sin(np.arange(7) + t), t, np.cos(np.arange(7) + t)))
            counts["joint"] += 1
            next_j += 1.0 / joint_hz
        if now >= next_c:
            for c in CAMERAS:
                t = time.time()
                pubs[c].publish(numpy_to_image(frames[k % len(frames)], t, f"camera_{c}"))
                counts[f"camera_{c}"] += 1
            k += 1
            next_c += 1.0 / cam_hz
        time.sleep(max(0.0, min(next_j, next_c) - time.monotonic()))
    print(json.dumps(counts), flush=True)
    time.sleep(1.0)  # let reliable retransmissions finish before the participant goes away
    node.destroy_node()
    rclpy.try_shutdown()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    """Run the benchmark and write the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--cam-hz", type=float, default=30.0)
    parser.add_argument("--joint-hz", type=float, default=500.0)
    parser.add_argument("--control-hz", type=float, default=10.0)
    parser.add_argument("--domain-id", type=int, default=199)
    parser.add_argument("--no-write", action="store_true", help="print only, do not update benchmarks/README.md")
    parser.add_argument("--driver", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.driver:
        driver(args.seconds, args.cam_hz, args.joint_hz)
        return 0

    import rclpy
    from std_msgs.msg import String
    from std_srvs.srv import Trigger

    from benchmarks._table import load_note, markdown_table, write_section
    from robot_learning.data.alignment import StreamConfig
    from ros_nodes.common import TOPICS, NodeProcess, apply_loopback_env, loopback_env

    env = loopback_env(args.domain_id)
    apply_loopback_env(args.domain_id)
    tmp = Path(tempfile.mkdtemp(prefix="bench_recorder_"))
    joints = [f"joint{i + 1}" for i in range(7)]  # what the driver publishes (numpy_to_joint_state's names)
    streams = [StreamConfig("joint", TOPICS.joint_states, "joint_state", rate_hz=args.joint_hz, names=joints,
                            keep_raw=True)]
    streams += [StreamConfig(f"camera_{c}", TOPICS.camera(c), "image", rate_hz=args.cam_hz, height=HW[0], width=HW[1])
                for c in CAMERAS]
    rec = NodeProcess("ros_nodes.recorder", {
        "store": str(tmp / "bench.zarr"), "streams": [s.to_param() for s in streams], "clock": "joint",
        "control_hz": args.control_hz, "task": "bench", "source": "teleop"}, env, tmp / "recorder.log")
    drv = subprocess.Popen([sys.executable, __file__, "--driver", "--seconds", str(args.seconds), "--cam-hz",
                            str(args.cam_hz), "--joint-hz", str(args.joint_hz)], env=env, cwd=ROOT,
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    rclpy.init()
    node = rclpy.create_node("bench")
    client = node.create_client(Trigger, TOPICS.recorder_stop)
    status: dict = {}
    node.create_subscription(String, TOPICS.recorder_status, lambda m: status.update(json.loads(m.data)), 10)
    start_client = node.create_client(Trigger, TOPICS.recorder_start)

    def call(c):
        assert c.wait_for_service(timeout_sec=60), "recorder did not come up"
        f = c.call_async(Trigger.Request())
        rclpy.spin_until_future_complete(node, f, timeout_sec=120)
        return f.result()

    try:
        assert drv.stdout.readline().strip() == "ready"
        assert call(start_client).success
        time.sleep(2.0)  # discovery: the driver's writers match the recorder's readers
        cpu0 = {"recorder": cpu_seconds(rec.pid), "driver": cpu_seconds(drv.pid)}
        load0 = os.getloadavg()[0]
        t0 = time.monotonic()
        drv.stdin.write("go\n")
        drv.stdin.flush()
        counts = json.loads(drv.stdout.readline())
        wall = time.monotonic() - t0
        cpu1 = {"recorder": cpu_seconds(rec.pid), "driver": cpu_seconds(drv.pid)}
        # the recorder may still be working through a backlog: wait until its counts stop growing
        settle_end, last, stable_since = time.monotonic() + 30, None, time.monotonic()
        while time.monotonic() < settle_end and time.monotonic() - stable_since < 1.5:
            rclpy.spin_once(node, timeout_sec=0.1)
            totals = sum(v["received"] for v in status.get("streams", {}).values())
            if totals != last:
                last, stable_since = totals, time.monotonic()
        resp = call(client)
        summary = json.loads(resp.message)
        from robot_learning.data.store import EpisodeStore

        store = EpisodeStore.open(tmp / "bench.zarr", mode="r")
        raw_rows = {k: len(store.read_stream(0, k)[1]) for k in ("joint_pos", "joint_vel")}
        drv.wait(30)
    finally:
        rec.stop()
        node.destroy_node()
        rclpy.try_shutdown()
        if drv.poll() is None:
            drv.kill()
    rows = []
    half_period_ms = 500.0 / args.control_hz
    misaligned = 0
    for name, published in counts.items():
        s = summary["streams"][name]
        misaligned += s["missing_steps"] + (1 if s["align_err_max_ms"] > half_period_ms else 0)
        rows.append([name, published, s["received"], published - s["received"], s["lost"], s["rejected"],
                     s["gaps"], s["rate_hz"], round(s["align_err_mean_ms"], 2), round(s["align_err_max_ms"], 2),
                     s.get("raw", 0), round(100.0 * summary["cpu_s"].get(name, 0.0) / wall, 1)])
    header = ["stream", "published", "recorded", "missing", "DDS lost", "rejected", "gaps", "measured Hz",
              "align err mean ms", "align err max ms", "raw kept", "callback CPU %"]
    cpu = {k: 100.0 * (cpu1[k] - cpu0[k]) / wall for k in cpu0}
    expected_steps = int(args.seconds * args.control_hz)
    body = (
        f"{len(CAMERAS)} cameras {HW[1]}x{HW[0]} rgb8 @ {args.cam_hz:g} Hz + JointState @ {args.joint_hz:g} Hz for "
        f"{args.seconds:g} s, reliable KEEP_ALL readers, Fast DDS with the SHM profile "
        f"(`ros_nodes/dds/fastdds-lo-shm-tuned.xml`), store image codec jpeg, joints' raw samples kept in `streams/`, "
        f"recorder executor pausing {os.environ.get('RLSTACK_RECORDER_PAUSE_S', '0.01')} s between callbacks "
        "(`ros_nodes/recorder.py:batching_executor`).\n\n"
        + markdown_table(header, rows)
        + f"\n\nSteps committed: {summary['steps']} (expected ~{expected_steps} at {args.control_hz:g} Hz), "
        f"misaligned steps (a stream missing or further than half a period from the tick): {misaligned}. "
        f"Raw joint samples kept in `streams/`: {raw_rows['joint_pos']} joint_pos, {raw_rows['joint_vel']} joint_vel. "
        f"CPU (100 % = one core, user+system over the recording window): recorder {cpu['recorder']:.0f} % "
        f"(target <= 25 %), of which the streams' callbacks (column above) and the store writer thread "
        f"{100.0 * summary['cpu_s']['writer'] / wall:.0f} % (jpeg encoding, zarr writes); the rest is rclpy's executor "
        f"and DDS threads. Driver {cpu['driver']:.0f} %. {load_note(load0)}\n\n"
        "`missing` = published - recorded (the recorder counts what it took, after its backlog drained); "
        "`gaps` = frames missing judged against the stream's measured period (mean of its last 256 intervals; a hole over 2.5 "
        "periods counts, a publisher's catch-up burst after a stall pays it back), so timing jitter is not counted.\n\n"
        "DDS lost frames are counted by the recorder from Fast DDS `message_lost` events. They appear when the "
        "recorder gets too little CPU to keep up for longer than the writers' 1 s history: before the recorder "
        "drained each subscription's backlog in one callback (one message per executor wait-set pass costs "
        "~0.3 ms of Python), a 60 s run at load average 12 recorded 11569 of 30000 joint states."
    )
    expected = {"joint": args.seconds * args.joint_hz, **{f"camera_{c}": args.seconds * args.cam_hz for c in CAMERAS}}
    starved = [f"{n} {counts[n]} of {e:.0f}" for n, e in expected.items() if counts[n] < 0.9 * e]
    if starved:  # the driver could not publish at its rates: this run measured the machine, not the recorder
        print(body)
        print(f"not written to benchmarks/README.md: the driver published only {', '.join(starved)} "
              f"({load_note(load0)}); rerun on a quieter machine", file=sys.stderr)
        return 3
    if args.no_write:
        print(body)
    else:
        write_section("recorder", "Recorder: 2x640x480 @ 30 Hz + JointState @ 500 Hz",
                      body, "python benchmarks/bench_recorder.py")
    lost = sum(r[3] for r in rows) + sum(r[4] for r in rows)
    return 0 if lost == 0 and misaligned == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
