"""Policy server + client over real websockets on loopback (threads in this process)."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from websockets.sync.client import connect

from robot_learning.policies.base import Policy, PolicySpec
from robot_learning.serve.client import PolicyServerError, RemotePolicy, SpecMismatchError
from robot_learning.serve.server import PolicyServer
from robot_learning.serve.wire import WireError, pack, unpack

SPEC = PolicySpec(obs_shapes={"camera_front": (8, 8, 3), "joint_pos": (3,)}, action_dim=2, n_obs_steps=2,
                  horizon=4, n_action_steps=2, control_hz=10.0)


class MeanPolicy(Policy):
    """Chunk filled with the mean of the newest joint_pos; counts resets; fails on demand."""

    def __init__(self) -> None:
        self.spec = SPEC
        self.resets = 0

    def reset(self) -> None:
        self.resets += 1

    def predict_chunk(self, obs_history: dict[str, np.ndarray]) -> np.ndarray:
        m = float(obs_history["joint_pos"][-1].mean())
        if m < -100:
            raise RuntimeError("policy exploded")
        return np.full((SPEC.horizon, SPEC.action_dim), m, dtype=np.float32)


def obs(value: float = 0.5) -> dict[str, np.ndarray]:
    return {"camera_front": np.zeros((2, 8, 8, 3), np.uint8), "joint_pos": np.full((2, 3), value, np.float32)}


@pytest.fixture
def server():
    srv = PolicyServer(MeanPolicy(), port=0).start_in_thread()
    yield srv
    srv.stop()


def test_wire_roundtrip_keeps_dtype_shape_and_values() -> None:
    msg = {"type": "x", "a": np.arange(12, dtype=np.int16).reshape(3, 4), "b": [np.float64(2.5), {"c": np.ones(2, bool)}]}
    out = unpack(pack(msg))
    assert out["a"].dtype == np.int16 and out["a"].shape == (3, 4) and out["a"].tolist() == msg["a"].tolist()
    assert out["b"][0] == 2.5 and out["b"][1]["c"].dtype == bool


def test_wire_rejects_object_arrays_wrong_sizes_and_garbage() -> None:
    with pytest.raises(TypeError, match="dtype object"):
        pack({"type": "x", "a": np.array([object()], dtype=object)})
    bad = msgpack.packb({"type": "infer", "obs": {"__ndarray__": True, "dtype": "<f4", "shape": [4], "data": b"\0" * 8}})
    with pytest.raises(WireError, match=r"infer\.obs: 8 bytes for shape \(4,\)"):
        unpack(bad)
    sneaky = msgpack.packb({"type": "x", "a": {"__ndarray__": True, "dtype": "|O", "shape": [1], "data": b"\0" * 8}})
    with pytest.raises(WireError, match="not allowed"):
        unpack(sneaky)
    with pytest.raises(WireError, match="not a msgpack"):
        unpack(b"\xc1\xc1")
    with pytest.raises(WireError, match="'type'"):
        unpack(msgpack.packb([1, 2]))


def test_remote_policy_predicts_like_the_local_one_and_resets(server: PolicyServer) -> None:
    remote = RemotePolicy(server.url, obs_shapes=SPEC.obs_shapes, action_dim=2, action_mode="ee_delta")
    try:
        assert remote.spec == SPEC
        chunk = remote.predict_chunk(obs(0.25))
        assert chunk.shape == (4, 2) and np.allclose(chunk, 0.25)
        remote.reset()
        assert server.policy.resets == 1
    finally:
        remote.close()


def test_handshake_refuses_mismatches_naming_them(server: PolicyServer) -> None:
    with pytest.raises(SpecMismatchError, match=r"joint_pos.*\(3,\).*\(7,\).*action_dim: policy produces 2, robot accepts 5"):
        RemotePolicy(server.url, obs_shapes={"camera_front": (8, 8, 3), "joint_pos": (7,)}, action_dim=5)
    # an older or foreign client that skips its own check is refused by the server itself
    with connect(server.url, proxy=None) as ws:
        unpack(ws.recv(timeout=5))
        ws.send(pack({"type": "handshake", "protocol": 1, "obs_shapes": {"joint_pos": [3]}, "action_dim": 2}))
        reply = unpack(ws.recv(timeout=5))
    assert reply["type"] == "error" and reply["fatal"] and "camera_front" in reply["message"]
    assert server.stats.refused_handshakes == 1


def test_server_answers_malformed_requests_and_keeps_serving(server: PolicyServer) -> None:
    with connect(server.url, proxy=None) as ws:
        unpack(ws.recv(timeout=5))
        ws.send(pack({"type": "handshake", "protocol": 1, "obs_shapes": {k: list(v) for k, v in SPEC.obs_shapes.items()},
                      "action_dim": 2}))
        assert unpack(ws.recv(timeout=5))["type"] == "ready"
        ws.send(b"\xc1 not msgpack")
        assert "malformed message" in unpack(ws.recv(timeout=5))["message"]
        ws.send(pack({"type": "infer", "id": 1, "obs": {"joint_pos": np.zeros((2, 3), np.float32)}}))
        assert "missing key 'camera_front'" in unpack(ws.recv(timeout=5))["message"]
        ws.send(pack({"type": "infer", "id": 2, "obs": obs(-1000.0)}))
        assert "policy exploded" in unpack(ws.recv(timeout=5))["message"]
        ws.send(pack({"type": "infer", "id": 3, "obs": obs(0.5)}))
        reply = unpack(ws.recv(timeout=5))
    assert reply["type"] == "chunk" and reply["id"] == 3 and np.allclose(reply["actions"], 0.5)
    assert server.stats.errors == 3


def test_client_reconnects_after_server_restart_on_the_same_port() -> None:
    srv = PolicyServer(MeanPolicy(), port=0).start_in_thread()
    port = srv.port
    remote = RemotePolicy(srv.url, timeout_s=2.0)
    try:
        assert np.allclose(remote.predict_chunk(obs(0.1)), 0.1)
        srv.stop()
        with pytest.raises(PolicyServerError, match="policy server ws://127.0.0.1"):
            remote.predict_chunk(obs(0.1))
        with pytest.raises(PolicyServerError, match="unreachable"):
            remote.predict_chunk(obs(0.1))
        srv = PolicyServer(MeanPolicy(), port=port).start_in_thread()
        assert np.allclose(remote.predict_chunk(obs(0.3)), 0.3)
        assert remote.reconnects == 1
    finally:
        remote.close()
        srv.stop()


def test_stop_twice_is_harmless() -> None:
    srv = PolicyServer(MeanPolicy(), port=0).start_in_thread()
    srv.stop()
    srv.stop()  # e.g. a finally block after an explicit stop
    assert not srv._thread.is_alive()


def test_unreachable_server_is_a_clear_error() -> None:
    with pytest.raises(PolicyServerError, match="unreachable"):
        RemotePolicy("ws://127.0.0.1:9", connect_timeout_s=1.0)


def test_build_policy_waits_for_a_server_that_comes_up_late() -> None:
    import socket
    import threading

    from robot_learning.deploy.config import PolicySourceConfig
    from robot_learning.deploy.scripted import build_policy

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    holder: list[PolicyServer] = []
    timer = threading.Timer(1.5, lambda: holder.append(PolicyServer(MeanPolicy(), port=port).start_in_thread()))
    timer.start()
    try:
        remote = build_policy(PolicySourceConfig(server=f"ws://127.0.0.1:{port}", connect_wait_s=20.0),
                              obs_shapes=SPEC.obs_shapes, action_dim=2)
        assert np.allclose(remote.predict_chunk(obs(0.7)), 0.7)
        remote.close()
        with pytest.raises(SpecMismatchError, match="action_dim"):  # a mismatch is final, not retried
            build_policy(PolicySourceConfig(server=f"ws://127.0.0.1:{port}", connect_wait_s=20.0),
                         obs_shapes=SPEC.obs_shapes, action_dim=7)
    finally:
        timer.join()
        for srv in holder:
            srv.stop()


class NoisyPolicy(MeanPolicy):
    """Stochastic: every chunk is the mean plus fresh noise; counts sample_chunks calls (one per request)."""

    def __init__(self) -> None:
        super().__init__()
        self.rng = np.random.default_rng(0)
        self.sample_calls = 0

    def predict_chunk(self, obs_history: dict[str, np.ndarray]) -> np.ndarray:
        return super().predict_chunk(obs_history) + self.rng.normal(0, 0.1, (SPEC.horizon, SPEC.action_dim))

    def sample_chunks(self, obs_history: dict[str, np.ndarray], k: int) -> np.ndarray:
        self.sample_calls += 1
        return super().sample_chunks(obs_history, k)


def test_sample_chunks_k_different_candidates_in_one_request() -> None:
    srv = PolicyServer(NoisyPolicy(), port=0).start_in_thread()
    remote = RemotePolicy(srv.url, obs_shapes=SPEC.obs_shapes, action_dim=2, action_mode="ee_delta")
    try:
        chunks = remote.sample_chunks(obs(0.5), 5)
        assert chunks.shape == (5, SPEC.horizon, SPEC.action_dim) and srv.policy.sample_calls == 1
        assert len({c.tobytes() for c in chunks}) == 5  # stochastic: K different chunks
        assert abs(float(chunks.mean()) - 0.5) < 0.1
        with pytest.raises(ValueError, match="k must be >= 1"):
            remote.sample_chunks(obs(0.5), 0)
        with connect(srv.url, proxy=None) as ws:  # a bad k from any client is answered with the reason
            ws.recv(timeout=5)
            ws.send(pack({"type": "handshake", "protocol": 1, "action_dim": 2,
                          "obs_shapes": {k: list(v) for k, v in SPEC.obs_shapes.items()}}))
            assert unpack(ws.recv(timeout=5))["type"] == "ready"
            ws.send(pack({"type": "sample", "id": 9, "obs": obs(0.5), "k": 10_000}))
            reply = unpack(ws.recv(timeout=5))
            assert reply["type"] == "error" and "'k' must be an integer" in reply["message"]
        assert remote.predict_chunk(obs(0.5)).shape == (4, 2)  # the server kept serving
    finally:
        remote.close()
        srv.stop()
