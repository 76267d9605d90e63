"""One writer per store for the writer's whole life: a real second process is refused between episodes."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from robot_learning.data.store import EpisodeStore, StoreError
from robot_learning.data.synthetic import episode_digest, write_episode

# The other process: opens the store, commits one episode, then idles between episodes (an operator
# resetting the scene) until told to write another one or to close.
HOLDER = textwrap.dedent("""
    import sys
    import numpy as np
    from robot_learning.data.store import EpisodeStore
    from robot_learning.data.synthetic import write_episode
    store = EpisodeStore.open(sys.argv[1], mode="a")
    rng = np.random.default_rng(1)
    for line in sys.stdin:
        if line.strip() == "episode":
            print("committed", write_episode(store, rng, 4), flush=True)
        else:
            break
    store.close()
    print("closed", flush=True)
""")


def test_second_writer_process_is_refused_between_episodes(tmp_path) -> None:
    path = tmp_path / "held.zarr"
    seed = EpisodeStore.open(path, mode="w", image_codec="lossless")
    write_episode(seed, np.random.default_rng(0), 5)
    seed.close()
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write("episode\n")
        proc.stdin.flush()
        assert proc.stdout.readline().split() == ["committed", "1"], proc.stderr
        # between episodes: the other process holds the store; this one can read, not write
        reader = EpisodeStore.open(path, mode="r")
        digests = [episode_digest(reader.read_episode(i)) for i in range(2)]
        with pytest.raises(StoreError, match=rf"another writer holds the store \(.writer.lock, pid {proc.pid}\)"):
            EpisodeStore.open(path, mode="a")
        with pytest.raises(StoreError, match="another writer holds the store.*not overwriting it"):
            EpisodeStore.open(path, mode="w")
        reader.refresh()
        assert [episode_digest(reader.read_episode(i)) for i in range(2)] == digests  # nothing wiped
        proc.stdin.write("episode\n")
        proc.stdin.flush()
        assert proc.stdout.readline().split() == ["committed", "2"]
        proc.stdin.write("close\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "closed"
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
    store = EpisodeStore.open(path, mode="a")  # released at close
    assert len(store) == 3 and [episode_digest(store.read_episode(i)) for i in range(2)] == digests
    store.close()
