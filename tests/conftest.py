"""Shared pytest setup: keep torch to the machine's cores and every test on loopback."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
