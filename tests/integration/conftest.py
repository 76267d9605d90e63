"""Fixtures for ROS 2 integration tests: each test gets its own ROS_DOMAIN_ID on loopback only.

``ros_env`` sets the loopback DDS environment in this process (for an in-test rclpy context) and
returns the environment for child processes; ``rclpy_context`` also inits rclpy on that domain.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

_counter = itertools.count()


@dataclass(frozen=True)
class RosEnv:
    """A test's ROS 2 domain and the environment its child processes must run with."""

    domain_id: int
    env: dict[str, str]


def _next_domain_id() -> int:
    # Spread by pid so that test sessions running side by side on this machine rarely share a domain.
    return 10 + (os.getpid() * 7 + next(_counter)) % 200


@pytest.fixture
def ros_env(monkeypatch: pytest.MonkeyPatch) -> RosEnv:
    """A fresh ROS_DOMAIN_ID with the loopback-only Fast DDS profile, set in os.environ too."""
    pytest.importorskip("rclpy", reason="ROS 2 rclpy is not installed (pip install -e '.[ros]')")
    from ros_nodes.common import loopback_env

    domain_id = _next_domain_id()
    env = loopback_env(domain_id)
    for key in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "RMW_IMPLEMENTATION",
                "FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.delenv("ROS_LOCALHOST_ONLY", raising=False)
    return RosEnv(domain_id=domain_id, env=env)


@pytest.fixture
def rclpy_context(ros_env: RosEnv) -> Iterator[RosEnv]:
    """rclpy initialised on the test's domain for the duration of the test."""
    import rclpy

    rclpy.init(domain_id=ros_env.domain_id)
    try:
        yield ros_env
    finally:
        rclpy.try_shutdown()
