"""Lateness of 2 x 90 VGA frames at 30 Hz over a Fast DDS profile, to a reader spending 12 ms per frame.

    .venv/bin/python ros_nodes/dds/measure_frame_lateness.py ros_nodes/dds/fastdds-lo.xml 150

Prints frames received, within 100 ms, over 1 s, median and worst lateness (receive time minus
capture stamp), and the load average. The figures in ``fastdds-lo.xml``'s comment come from it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

TOPICS = ("/img", "/img2")


def publish() -> None:
    """The camera side: two 640x480 rgb8 topics at 30 Hz, 90 frames each."""
    import rclpy
    from sensor_msgs.msg import Image

    from ros_nodes.common import numpy_to_image, sensor_pub_qos

    rclpy.init()
    node = rclpy.create_node("frames_pub")
    pubs = [node.create_publisher(Image, t, sensor_pub_qos(100)) for t in TOPICS]
    img = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    while any(p.get_subscription_count() == 0 for p in pubs):
        time.sleep(0.05)
    time.sleep(1.0)
    for _ in range(90):
        for p in pubs:
            p.publish(numpy_to_image(img, time.time()))
        time.sleep(1 / 30)
    time.sleep(6.0)  # let repairs finish


def main() -> None:
    """Reader side; starts the publisher as a child process on the same profile and domain."""
    profile, domain = sys.argv[1], int(sys.argv[2])
    from ros_nodes.common import loopback_env

    env = loopback_env(domain, profile)
    os.environ.update(env)
    if len(sys.argv) > 3:
        publish()
        return
    import rclpy
    from sensor_msgs.msg import Image

    from ros_nodes.common import recorder_sub_qos, stamp_to_sec

    rclpy.init()
    node = rclpy.create_node("frames_sub")
    late: list[float] = []

    def on_frame(msg: Image) -> None:
        late.append(time.time() - stamp_to_sec(msg.header.stamp))
        t = time.perf_counter()
        while time.perf_counter() - t < 0.012:  # a recorder's per-frame work
            pass

    for topic in TOPICS:
        node.create_subscription(Image, topic, on_frame, recorder_sub_qos())
    pub = subprocess.Popen([sys.executable, __file__, profile, str(domain), "pub"], env=env)
    end = time.time() + 30
    while pub.poll() is None and time.time() < end:
        rclpy.spin_once(node, timeout_sec=0.05)
    arr = np.array(late)
    print(json.dumps({"profile": os.path.basename(profile), "received": len(arr),
                      "within_100ms": int((arr < 0.1).sum()), "over_1s": int((arr > 1).sum()),
                      "p50_ms": round(1e3 * float(np.median(arr)), 1) if len(arr) else None,
                      "max_ms": round(1e3 * float(arr.max()), 1) if len(arr) else None,
                      "load": round(os.getloadavg()[0], 1)}))


if __name__ == "__main__":
    main()
