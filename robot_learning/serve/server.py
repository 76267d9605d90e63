"""Serve a :class:`Policy` over websockets so a GPU machine can drive robot-side policy nodes.

Protocol (every frame a msgpack map, see ``wire.py``):

1. server -> client ``{"type": "hello", "protocol", "spec": PolicySpec.to_dict(), "policy": name}``
2. client -> server ``{"type": "handshake", "protocol", "obs_shapes", "action_dim", "action_mode"}``: what
   the robot side provides. The server answers ``{"type": "ready"}`` or a fatal ``error`` naming every
   mismatch, then closes (code 1008).
3. ``{"type": "infer", "id", "obs": {key: (n_obs_steps, ...) array}}`` -> ``{"type": "chunk", "id",
   "actions", "infer_ms"}``; ``{"type": "reset"}`` -> ``{"type": "reset_ok"}``.

A malformed request gets an ``error`` reply and the connection keeps serving; a policy exception is
reported the same way. Inference runs on one worker thread so the event loop keeps answering pings.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from robot_learning.policies.base import Policy, PolicySpec
from robot_learning.serve.wire import MAX_MESSAGE_BYTES, PROTOCOL_VERSION, WireError, pack, unpack

log = logging.getLogger(__name__)


MAX_SAMPLES = 256  # candidates per sample request (bounds one reply's size)


def spec_mismatches(
    spec: PolicySpec, obs_shapes: dict[str, Any], action_dim: int, action_mode: str | None = None
) -> list[str]:
    """Every way the robot side (provided obs shapes, action dim/mode) disagrees with ``spec``."""
    problems = []
    for key, shape in sorted(spec.obs_shapes.items()):
        if key not in obs_shapes:
            problems.append(f"policy needs observation '{key}' {tuple(shape)}, robot does not provide it")
        elif tuple(int(s) for s in obs_shapes[key]) != tuple(shape):
            problems.append(
                f"observation '{key}': policy expects shape {tuple(shape)}, robot provides {tuple(obs_shapes[key])}"
            )
    if int(action_dim) != spec.action_dim:
        problems.append(f"action_dim: policy produces {spec.action_dim}, robot accepts {action_dim}")
    if action_mode is not None and action_mode != spec.action_mode:
        problems.append(f"action_mode: policy produces '{spec.action_mode}', robot expects '{action_mode}'")
    return problems


@dataclass
class ServerStats:
    """Counters a running server keeps (read by tests and benchmarks)."""

    connections: int = 0
    requests: int = 0
    errors: int = 0
    refused_handshakes: int = 0
    last_error: str = ""
    infer_ms: list[float] = field(default_factory=list)


class PolicyServer:
    """A websocket server around one policy instance."""

    def __init__(self, policy: Policy, host: str = "127.0.0.1", port: int = 8765, name: str = "") -> None:
        self.policy = policy
        self.host = host
        self.port = port
        self.name = name or type(policy).__name__
        self.stats = ServerStats()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy-infer")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    # -- request handling -------------------------------------------------------------------
    def _infer(self, obs: dict[str, np.ndarray]) -> tuple[np.ndarray, float]:
        """Run the policy on one observation history (on the worker thread)."""
        self.policy.spec.check_obs_history(obs)
        t0 = time.perf_counter()
        actions = np.asarray(self.policy.predict_chunk(obs), dtype=np.float32)
        ms = (time.perf_counter() - t0) * 1e3
        expected = (self.policy.spec.horizon, self.policy.spec.action_dim)
        if actions.shape != expected:
            raise ValueError(f"policy returned actions of shape {actions.shape}, spec says {expected}")
        return actions, ms

    def _sample(self, obs: dict[str, np.ndarray], k: int) -> tuple[np.ndarray, float]:
        """``k`` candidate chunks for one observation history (on the worker thread)."""
        self.policy.spec.check_obs_history(obs)
        t0 = time.perf_counter()
        chunks = np.asarray(self.policy.sample_chunks(obs, k), dtype=np.float32)
        ms = (time.perf_counter() - t0) * 1e3
        expected = (k, self.policy.spec.horizon, self.policy.spec.action_dim)
        if chunks.shape != expected:
            raise ValueError(f"policy returned chunks of shape {chunks.shape}, expected {expected}")
        return chunks, ms

    async def _reply_error(self, ws: ServerConnection, message: str, request_id: Any = None) -> None:
        self.stats.errors += 1
        self.stats.last_error = message
        log.warning("policy server: %s", message)
        await ws.send(pack({"type": "error", "id": request_id, "message": message, "fatal": False}))

    async def _handshake(self, ws: ServerConnection) -> bool:
        """Send the spec, check what the client provides; refuse mismatches."""
        await ws.send(pack({"type": "hello", "protocol": PROTOCOL_VERSION, "spec": self.policy.spec.to_dict(),
                            "policy": self.name}))
        try:
            msg = unpack(await asyncio.wait_for(ws.recv(), timeout=10.0))
        except (WireError, asyncio.TimeoutError) as exc:
            problems = [f"bad handshake: {exc or 'timed out'}"]
        else:
            if msg["type"] != "handshake":
                problems = [f"expected a 'handshake' message first, got '{msg['type']}'"]
            elif msg.get("protocol") != PROTOCOL_VERSION:
                problems = [f"protocol {msg.get('protocol')} not supported (server speaks {PROTOCOL_VERSION})"]
            else:
                try:
                    problems = spec_mismatches(self.policy.spec, dict(msg.get("obs_shapes") or {}),
                                               int(msg.get("action_dim", -1)), msg.get("action_mode"))
                except (TypeError, ValueError) as exc:
                    problems = [f"malformed handshake: {exc}"]
        if problems:
            self.stats.refused_handshakes += 1
            text = "handshake refused: " + "; ".join(problems)
            self.stats.last_error = text
            log.warning("policy server: %s", text)
            await ws.send(pack({"type": "error", "message": text, "fatal": True}))
            await ws.close(code=1008, reason="spec mismatch"[:120])
            return False
        await ws.send(pack({"type": "ready"}))
        return True

    async def _handle(self, ws: ServerConnection) -> None:
        """Serve one client connection until it closes."""
        self.stats.connections += 1
        loop = asyncio.get_running_loop()
        try:
            if not await self._handshake(ws):
                return
            async for frame in ws:
                try:
                    msg = unpack(frame)
                except WireError as exc:
                    await self._reply_error(ws, f"malformed message: {exc}")
                    continue
                kind, request_id = msg["type"], msg.get("id")
                if kind == "infer":
                    obs = msg.get("obs")
                    if not isinstance(obs, dict) or not all(isinstance(v, np.ndarray) for v in obs.values()):
                        await self._reply_error(ws, "infer: 'obs' must map keys to arrays", request_id)
                        continue
                    try:
                        actions, ms = await loop.run_in_executor(self._executor, self._infer, obs)
                    except Exception as exc:  # report any policy failure to the client, keep serving
                        await self._reply_error(ws, f"infer failed: {exc}", request_id)
                        continue
                    self.stats.requests += 1
                    self.stats.infer_ms.append(ms)
                    del self.stats.infer_ms[:-1000]
                    await ws.send(pack({"type": "chunk", "id": request_id, "actions": actions, "infer_ms": ms}))
                elif kind == "sample":
                    obs, k = msg.get("obs"), msg.get("k")
                    if not isinstance(obs, dict) or not all(isinstance(v, np.ndarray) for v in obs.values()):
                        await self._reply_error(ws, "sample: 'obs' must map keys to arrays", request_id)
                        continue
                    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_SAMPLES:
                        await self._reply_error(ws, f"sample: 'k' must be an integer in 1..{MAX_SAMPLES}, got {k!r}",
                                                request_id)
                        continue
                    try:
                        chunks, ms = await loop.run_in_executor(self._executor, self._sample, obs, k)
                    except Exception as exc:  # report any policy failure to the client, keep serving
                        await self._reply_error(ws, f"sample failed: {exc}", request_id)
                        continue
                    self.stats.requests += 1
                    await ws.send(pack({"type": "chunks", "id": request_id, "actions": chunks, "infer_ms": ms}))
                elif kind == "reset":
                    await loop.run_in_executor(self._executor, self.policy.reset)
                    await ws.send(pack({"type": "reset_ok", "id": request_id}))
                else:
                    await self._reply_error(ws, f"unknown message type '{kind}'", request_id)
        except ConnectionClosed:
            pass

    # -- lifecycle ------------------------------------------------------------------------------
    async def serve_async(self) -> None:
        """Serve until ``stop()`` is called."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve(self._handle, self.host, self.port, compression=None, max_size=MAX_MESSAGE_BYTES,
                         ping_interval=5, ping_timeout=20) as server:
            self.port = server.sockets[0].getsockname()[1]  # resolves port 0
            self._ready.set()
            log.info("policy server '%s' on ws://%s:%d", self.name, self.host, self.port)
            await self._stop.wait()

    def serve_forever(self) -> None:
        """Blocking entry point (``rlstack serve``)."""
        asyncio.run(self.serve_async())

    def start_in_thread(self, timeout: float = 10.0) -> PolicyServer:
        """Start serving on a background thread and wait until the port is bound."""
        self._thread = threading.Thread(target=self.serve_forever, name="policy-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"policy server did not start on {self.host}:{self.port} within {timeout} s")
        return self

    @property
    def url(self) -> str:
        """The ws:// address clients connect to."""
        return f"ws://{self.host}:{self.port}"

    def stop(self) -> None:
        """Stop serving (from any thread) and wait for the server thread; calling it again does nothing."""
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed since the check: already stopped
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._executor.shutdown(wait=False)
