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


CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def headless_chromium(tmp_path: os.PathLike, extra_args: tuple[str, ...] = (), console_log: bool = False):  # noqa: ANN201
    """Debian's Chromium, headless, with a fresh profile, driven by Debian's chromedriver (selenium).

    Browser downloads by pip packages do not work here, so the system browser is the one tested;
    missing in CI (``.ci/services.sh`` installs it) is a failure, missing elsewhere a skip.
    """
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        if os.environ.get("CI"):
            pytest.fail("Debian chromium + chromedriver missing in CI (.ci/services.sh installs them)")
        pytest.skip("Debian chromium + chromedriver are not installed (.ci/services.sh installs them)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    # without the background-networking flags Chromium keeps trying hosts this machine cannot reach
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                f"--user-data-dir={os.path.join(str(tmp_path), 'chromium-profile')}", *extra_args):
        opts.add_argument(arg)
    if console_log:
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
