"""The store report of a real sim store in Debian's headless Chromium (selenium + chromedriver):
the page renders, every figure and thumbnail decodes, no console errors, a screenshot is written;
and ``rlstack data view --serve`` serves the Rerun web viewer on a local port."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.integration.conftest import headless_chromium

RLSTACK = [sys.executable, "-m", "robot_learning.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sim_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three scripted lift demos (two cameras) from the real PyBullet sim."""
    out = tmp_path_factory.mktemp("sim") / "lift.zarr"
    subprocess.run([*RLSTACK, "sim", "demos", "--task", "lift", "--episodes", "3", "--out", str(out),
                    "image_size=32"], check=True, capture_output=True, timeout=300)
    return out


def _browser(tmp_path: Path):  # noqa: ANN202 (selenium's WebDriver)
    return headless_chromium(tmp_path, ("--window-size=1400,1000",), console_log=True)


@pytest.mark.integration
def test_report_renders_in_headless_chromium(sim_store: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.html"
    done = subprocess.run([*RLSTACK, "data", "report", str(sim_store), "--out", str(report), "--no-progress"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"wrote {report} (3 episodes" in done.stdout
    driver = _browser(tmp_path)
    try:
        driver.get(report.as_uri())
        assert driver.title == "Store report: lift.zarr"
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.src.slice(0, 22)])")
        figures = [i for i in images if i[2].startswith("data:image/png")]
        thumbs = [i for i in images if i[2].startswith("data:image/jpeg")]
        assert len(figures) >= 5 and len(thumbs) == 3 * 2 * 2  # episodes x cameras x (first, last)
        assert all(complete and width > 0 for complete, width, _ in images), images
        rows = driver.execute_script("return Array.from(document.querySelectorAll('tr[id^=ep-]')).map(r => r.id)")
        assert rows == ["ep-0", "ep-1", "ep-2"]
        text = driver.find_element("tag name", "body").text
        assert "Success rate (Wilson 95% CI)" in text and "1.00 (3/3, Wilson 95% CI 0.44-1.00)" in text
        links = driver.execute_script("return Array.from(document.querySelectorAll('a[href^=\"#ep-\"]')).map(a => a.hash)")
        for link in links:  # every flag links to an existing row
            assert link[1:] in rows
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert errors == []
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(1400, min(height + 40, 6000))
        shot = tmp_path / "store_report.png"  # the test artifact
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    finally:
        driver.quit()


@pytest.mark.integration
def test_view_serves_the_web_viewer(sim_store: Path) -> None:
    port = _free_port()
    proc = subprocess.Popen([*RLSTACK, "data", "view", str(sim_store), "0", "--serve", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, page = time.monotonic() + 60, ""
        while time.monotonic() < deadline and not page:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                    page = r.read().decode(errors="replace")
            except OSError:
                time.sleep(0.5)
        assert "Rerun" in page and "<html" in page.lower()
        with socket.create_connection(("127.0.0.1", port + 1), timeout=2):  # the recording's gRPC server
            pass
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.mark.integration
def test_report_and_view_of_an_s3_store(tmp_path: Path) -> None:
    """Both commands read s3:// stores (moto's S3 server on loopback)."""
    import boto3
    import numpy as np
    from moto.server import ThreadedMotoServer

    from robot_learning.cli import main
    from robot_learning.data.store import EpisodeMeta, EpisodeStore
    from robot_learning.data.synthetic import write_episode

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="k", aws_secret_access_key="s",
                     region_name="us-east-1").create_bucket(Bucket="lab")
        options = {"endpoint_url": endpoint, "key": "k", "secret": "s", "client_kwargs": {"region_name": "us-east-1"}}
        uri = "s3://lab/lift.zarr"
        store = EpisodeStore.open(uri, mode="w", storage_options=options)
        rng = np.random.default_rng(0)
        for ok in (True, False):
            write_episode(store, rng, 8, success=ok, meta=EpisodeMeta(task="lift", source="teleop"), t0=1.8e9)
        opts = ["--storage-option", f"endpoint_url={endpoint}", "--storage-option", "key=k",
                "--storage-option", "secret=s", "--storage-option", 'client_kwargs={"region_name": "us-east-1"}']
        assert main(["data", "report", uri, "--out", str(tmp_path / "r.html"), "--no-progress", *opts]) == 0
        page = (tmp_path / "r.html").read_text()
        assert "0.50 (1/2, Wilson 95% CI" in page and 'id="ep-1"' in page
        assert main(["data", "view", uri, "1", "--save", str(tmp_path / "s3.rrd"), *opts]) == 0
        assert (tmp_path / "s3.rrd").stat().st_size > 1000
    finally:
        server.stop()
