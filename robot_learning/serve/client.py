"""``RemotePolicy``: a :class:`Policy` whose predictions come from a policy server.

It is a drop-in replacement for a local policy: the policy node uses either by config. The
connection is (re)opened lazily, so after a server restart the next ``predict_chunk`` reconnects;
while the server is down calls raise :class:`PolicyServerError` quickly and the caller (the policy
node) holds the robot safe.
"""

from __future__ import annotations

import inspect
import itertools
import threading
from typing import Any

import numpy as np
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.sync.client import ClientConnection, connect

from robot_learning.policies.base import Policy, PolicySpec
from robot_learning.serve.server import spec_mismatches
from robot_learning.serve.wire import MAX_MESSAGE_BYTES, PROTOCOL_VERSION, WireError, pack, unpack

# websockets >= 16 asks for an explicit opt-in to a plain (non-context-manager) connection; older
# versions do not know the flag. Reconnection is done here, lazily at the next request, rather than
# with websockets' ``reconnect`` iterator, because a policy call is a request/response, not a loop.
_CONNECT_KW = {"legacy": True} if "legacy" in inspect.signature(connect).parameters else {}


class PolicyServerError(RuntimeError):
    """The server is unreachable, died, timed out or answered with an error."""


class SpecMismatchError(ValueError):
    """The served policy does not fit what the robot provides (refused at the handshake)."""


class RemotePolicy(Policy):
    """A policy served by ``rlstack serve`` at ``url`` (``ws://host:port``)."""

    def __init__(
        self,
        url: str,
        obs_shapes: dict[str, tuple[int, ...]] | None = None,
        action_dim: int | None = None,
        action_mode: str | None = None,
        timeout_s: float = 5.0,
        connect_timeout_s: float = 2.0,
    ) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._provided = (obs_shapes, action_dim, action_mode)
        self._ws: ClientConnection | None = None
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self.server_name = ""
        self.reconnects = -1  # the first connection is not a reconnect
        self.last_infer_ms = float("nan")
        self.spec: PolicySpec = self._connect()

    # -- connection -------------------------------------------------------------------------------
    def _connect(self) -> PolicySpec:
        """Open the socket, read the server's spec, state what this side provides."""
        try:
            ws = connect(self.url, open_timeout=self.connect_timeout_s, compression=None,
                         max_size=MAX_MESSAGE_BYTES, proxy=None, ping_interval=5, ping_timeout=20, **_CONNECT_KW)
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            raise PolicyServerError(f"policy server {self.url} unreachable: {exc}") from exc
        try:
            hello = unpack(ws.recv(timeout=self.timeout_s))
            if hello["type"] != "hello" or hello.get("protocol") != PROTOCOL_VERSION:
                raise PolicyServerError(f"{self.url}: unexpected greeting {hello.get('type')!r} "
                                        f"protocol {hello.get('protocol')!r} (want {PROTOCOL_VERSION})")
            spec = PolicySpec.from_dict(hello["spec"])
            obs_shapes, action_dim, action_mode = self._provided
            obs_shapes = spec.obs_shapes if obs_shapes is None else obs_shapes
            action_dim = spec.action_dim if action_dim is None else action_dim
            # Check here too, so the error is raised on this side even if the server is older.
            problems = spec_mismatches(spec, obs_shapes, action_dim, action_mode)
            if hasattr(self, "spec") and spec != self.spec:
                problems.append(f"server's policy changed since the first connection: {spec} != {self.spec}")
            if problems:
                raise SpecMismatchError(f"policy server {self.url} refused: " + "; ".join(problems))
            ws.send(pack({"type": "handshake", "protocol": PROTOCOL_VERSION,
                          "obs_shapes": {k: list(v) for k, v in obs_shapes.items()},
                          "action_dim": int(action_dim), "action_mode": action_mode}))
            reply = unpack(ws.recv(timeout=self.timeout_s))
            if reply["type"] == "error":
                raise SpecMismatchError(f"policy server {self.url}: {reply.get('message')}")
            if reply["type"] != "ready":
                raise PolicyServerError(f"{self.url}: expected 'ready', got {reply['type']!r}")
        except (ConnectionClosed, TimeoutError, OSError, WireError) as exc:
            ws.close()
            raise PolicyServerError(f"policy server {self.url} handshake failed: {exc}") from exc
        except Exception:
            ws.close()
            raise
        self.server_name = str(hello.get("policy", ""))
        self._ws = ws
        self.reconnects += 1
        return spec

    def _request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send one request and wait for its reply; drop the connection on any transport failure."""
        with self._lock:
            if self._ws is None:
                self._connect()
            assert self._ws is not None
            request_id = next(self._ids)
            message["id"] = request_id
            try:
                self._ws.send(pack(message))
                while True:
                    reply = unpack(self._ws.recv(timeout=self.timeout_s))
                    if reply.get("id") == request_id or reply["type"] == "error" and reply.get("id") is None:
                        break  # anything else is a stale reply to a request that timed out
            except (ConnectionClosed, TimeoutError, OSError, WireError) as exc:
                self._drop()
                raise PolicyServerError(f"policy server {self.url}: {type(exc).__name__}: {exc}") from exc
        if reply["type"] == "error":
            raise PolicyServerError(f"policy server {self.url}: {reply.get('message')}")
        return reply

    def _drop(self) -> None:
        if self._ws is not None:
            try:
                self._ws.close()
            except Exception:  # already broken; nothing left to release
                pass
        self._ws = None

    @property
    def connected(self) -> bool:
        """Whether a socket is currently open (it reopens on the next request if not)."""
        return self._ws is not None

    # -- Policy interface -------------------------------------------------------------------------
    def reset(self) -> None:
        """Reset the served policy's per-episode state."""
        self._request({"type": "reset"})

    def predict_chunk(self, obs_history: dict[str, np.ndarray]) -> np.ndarray:
        """One chunk ``(horizon, action_dim)`` from the server."""
        self.spec.check_obs_history(obs_history)
        obs = {k: np.asarray(obs_history[k]) for k in self.spec.obs_shapes}
        reply = self._request({"type": "infer", "obs": obs})
        actions = reply.get("actions")
        expected = (self.spec.horizon, self.spec.action_dim)
        if not isinstance(actions, np.ndarray) or actions.shape != expected:
            shape = getattr(actions, "shape", type(actions).__name__)
            raise PolicyServerError(f"policy server {self.url} sent actions of shape {shape}, expected {expected}")
        self.last_infer_ms = float(reply.get("infer_ms", float("nan")))
        return actions

    def sample_chunks(self, obs_history: dict[str, np.ndarray], k: int) -> np.ndarray:
        """``k`` candidate chunks ``(k, horizon, action_dim)`` from the server in one round trip."""
        self.spec.check_obs_history(obs_history)
        if int(k) < 1:
            raise ValueError(f"sample_chunks: k must be >= 1, got {k}")
        obs = {key: np.asarray(obs_history[key]) for key in self.spec.obs_shapes}
        reply = self._request({"type": "sample", "obs": obs, "k": int(k)})
        actions = reply.get("actions")
        expected = (int(k), self.spec.horizon, self.spec.action_dim)
        if not isinstance(actions, np.ndarray) or actions.shape != expected:
            shape = getattr(actions, "shape", type(actions).__name__)
            raise PolicyServerError(f"policy server {self.url} sent chunks of shape {shape}, expected {expected}")
        self.last_infer_ms = float(reply.get("infer_ms", float("nan")))
        return actions

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._drop()
