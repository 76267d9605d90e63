"""``ProcessPolicy``: run a policy in a child process so that its inference never holds the node's GIL.

CPython lets one thread run Python at a time. A policy that runs in the control node's process takes
the GIL for its Python code and re-takes it after every torch/numpy call; on a multi-core machine a
thread that drops and re-takes the GIL that often keeps the control thread waiting (it is woken, but
loses the race for the lock). In a child process the policy has its own interpreter and GIL: the
node's inference thread only waits on a pipe (with the GIL released) until the chunk is back.

The child is started with ``spawn`` (never ``fork``: torch and DDS threads do not survive a fork)
and builds the policy from a picklable factory. The pipe carries pickled numpy arrays: it connects
this process to its own child, never a network peer, so the no-pickle rule of the policy server's
wire format does not apply here. If the child dies, the next request starts a fresh one.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import pickle
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from robot_learning.policies.base import ChunkResult, Policy, PolicySpec, warm_up


class PolicyWorkerError(RuntimeError):
    """The policy process failed to start, died, timed out or raised."""


class GivenPolicy:
    """A picklable factory that hands over an existing policy object (it is pickled into the child)."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def __call__(self) -> Policy:
        """The policy itself."""
        return self.policy


def _serve(conn: Any, factory: Callable[[], Policy], threads: int = 0) -> None:
    """Child process: build the policy, then answer (kind, id, payload) requests until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the node's to handle; it closes this process
    if threads > 0:
        try:  # torch's intra-op pool spins on every core; next to the robot's processes it starves them
            import torch

            torch.set_num_threads(threads)
        except ImportError:
            pass
    try:
        _answer(conn, factory)
    except (BrokenPipeError, EOFError, OSError):  # the node is gone: nothing left to serve
        pass


def _answer(conn: Any, factory: Callable[[], Policy]) -> None:
    try:
        policy = factory()
        warm_up(policy)  # lazily built inference graphs are built before the node's first tick needs them
        # the per-step hook (if any) runs in the node's control thread, not here: send it back
        conn.send(("ready", -1, policy.spec.to_dict(), type(policy).__name__, os.getpid(), policy.step_hook()))
    except Exception as exc:  # report why start-up failed; the parent raises it
        conn.send(("error", -1, f"building the policy failed: {type(exc).__name__}: {exc}", isinstance(exc, ValueError)))
        return
    while True:
        kind, rid, payload = conn.recv()
        if kind == "close":
            return
        try:
            if kind == "infer":
                t = time.perf_counter()
                result = policy.predict_chunk_with_info(payload)  # info (e.g. steering scores) goes back too
                conn.send(("chunk", rid, np.asarray(result.actions), (time.perf_counter() - t) * 1e3, result.info))
            elif kind == "sample":  # K candidate chunks in one round trip (value-guided steering)
                t = time.perf_counter()
                obs, k = payload
                chunks = np.asarray(policy.sample_chunks(obs, int(k)))
                conn.send(("chunks", rid, chunks, (time.perf_counter() - t) * 1e3))
            elif kind == "reset":
                policy.reset()
                conn.send(("reset_ok", rid, None))
            else:
                conn.send(("error", rid, f"unknown request '{kind}'"))
        except Exception as exc:  # a policy bug: report it and keep serving
            conn.send(("error", rid, f"{type(exc).__name__}: {exc}"))


class ProcessPolicy(Policy):
    """A :class:`Policy` whose ``predict_chunk`` runs in a child process built by ``factory``."""

    def __init__(self, factory: Callable[[], Policy], timeout_s: float = 5.0, start_timeout_s: float = 120.0,
                 name: str = "", threads: int = 0) -> None:
        self.factory = factory
        self.timeout_s = timeout_s
        self.start_timeout_s = start_timeout_s
        self.threads = threads
        self._ctx = mp.get_context("spawn")
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._proc: Any = None
        self._conn: Any = None
        self._closed = False
        self._hook: Any = None  # the policy's step hook, sent back by the child (Policy.step_hook)
        self.restarts = -1  # the first start is not a restart
        self.last_infer_ms = float("nan")
        self.inner_name = name
        self.spec: PolicySpec = self._start()
        self.url = f"process:{self.inner_name}"  # how the node names its policy in logs

    # -- the child ----------------------------------------------------------------------------------
    def _start(self) -> PolicySpec:
        """Spawn the child, wait for its spec; PolicyWorkerError says why if it cannot start."""
        try:  # the child unpickles the factory (and a given policy): find out here, with a clear error
            pickle.loads(pickle.dumps(self.factory))
        except Exception as exc:
            raise ValueError(f"policy.isolation=process: the policy cannot be sent to a child process "
                             f"({type(exc).__name__}: {exc}); make it picklable or use isolation=thread") from exc
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_serve, args=(child, self.factory, self.threads), name="policy-worker",
                                 daemon=True)
        proc.start()
        child.close()
        try:
            if not parent.poll(self.start_timeout_s):
                raise PolicyWorkerError(f"policy process did not start within {self.start_timeout_s:.0f} s")
            reply = parent.recv()
        except (EOFError, OSError) as exc:
            proc.join(5)
            raise PolicyWorkerError(f"policy process exited during start-up (exit code {proc.exitcode}); "
                                    "its traceback is on stderr") from exc
        except PolicyWorkerError:
            proc.kill()
            raise
        if reply[0] == "error":  # a config problem (checkpoint does not fit the robot) stays a ValueError
            proc.join(5)
            raise (ValueError if reply[3] else PolicyWorkerError)(reply[2])
        spec = PolicySpec.from_dict(reply[2])
        if hasattr(self, "spec") and spec != self.spec:
            proc.kill()
            raise PolicyWorkerError(f"restarted policy has a different spec: {spec} != {self.spec}")
        self.inner_name = self.inner_name or reply[3]
        self._hook = reply[5] if len(reply) > 5 else None
        self._proc, self._conn = proc, parent
        self.restarts += 1
        return spec

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._proc is not None and self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
        self._proc = self._conn = None

    def _request(self, kind: str, payload: Any = None) -> tuple[Any, ...]:
        """Send one request and wait (GIL released) for its reply; stale replies are skipped."""
        with self._lock:
            if self._closed:
                raise PolicyWorkerError("policy process: closed")
            if self._proc is None or not self._proc.is_alive():
                self._drop()
                self._start()
            rid = next(self._ids)
            deadline = time.monotonic() + self.timeout_s
            try:
                self._conn.send((kind, rid, payload))
                while True:
                    if not self._conn.poll(max(0.0, deadline - time.monotonic())):
                        # A late reply is skipped by its id, so the child may finish this one meanwhile.
                        raise PolicyWorkerError(f"policy process: no reply to '{kind}' within {self.timeout_s} s")
                    reply = self._conn.recv()
                    if reply[1] == rid:
                        break
            except (EOFError, OSError) as exc:
                code = self._proc.exitcode if self._proc is not None else None
                self._drop()
                raise PolicyWorkerError(f"policy process died (exit code {code}); restarting it "
                                        "at the next request") from exc
        if reply[0] == "error":
            raise PolicyWorkerError(f"policy process: {reply[2]}")
        return reply

    # -- Policy interface ---------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        """The child's process id (None while no child runs)."""
        return None if self._proc is None else self._proc.pid

    def predict_chunk(self, obs_history: dict[str, np.ndarray]) -> np.ndarray:
        """One chunk ``(horizon, action_dim)`` computed in the child process."""
        return self.predict_chunk_with_info(obs_history).actions

    def predict_chunk_with_info(self, obs_history: dict[str, np.ndarray]) -> ChunkResult:
        """The child's chunk with its policy's info (``Policy.predict_chunk_with_info``)."""
        self.spec.check_obs_history(obs_history)
        reply = self._request("infer", {k: np.asarray(obs_history[k]) for k in self.spec.obs_shapes})
        self.last_infer_ms = float(reply[3])
        return ChunkResult(reply[2], dict(reply[4]) if len(reply) > 4 else {})

    def sample_chunks(self, obs_history: dict[str, np.ndarray], k: int) -> np.ndarray:
        """``k`` candidate chunks ``(k, horizon, action_dim)`` from the child in one request."""
        self.spec.check_obs_history(obs_history)
        if int(k) < 1:
            raise ValueError(f"sample_chunks: k must be >= 1, got {k}")
        reply = self._request("sample", ({key: np.asarray(obs_history[key]) for key in self.spec.obs_shapes}, int(k)))
        self.last_infer_ms = float(reply[3])
        return reply[2]

    def reset(self) -> None:
        """Reset the policy's per-episode state in the child (and of its hook, here)."""
        self._request("reset")
        if self._hook is not None:
            self._hook.reset()

    @property
    def has_step_hook(self) -> bool:
        """Whether the child's policy sent a per-step hook at start."""
        return getattr(self, "_hook", None) is not None

    def step_action(self, obs_history: dict[str, np.ndarray], planned_action: np.ndarray,
                    step_in_chunk: int) -> np.ndarray:
        """The child's policy's per-step hook, run in this process (never waits for the child)."""
        if self._hook is None:
            return planned_action
        return self._hook.step_action(obs_history, planned_action, step_in_chunk)

    def close(self) -> None:
        """Stop the child process (a prediction still in flight after 1 s is ended by killing it)."""
        self._closed = True
        if not self._lock.acquire(timeout=1.0):
            proc = self._proc
            if proc is not None:
                proc.kill()  # the waiting request sees the pipe close, fails and lets go of the lock
            self._lock.acquire()
        try:
            if self._conn is not None and self._proc is not None and self._proc.is_alive():
                try:
                    self._conn.send(("close", -1, None))
                    self._proc.join(5)
                except OSError:  # already gone
                    pass
            self._drop()
        finally:
            self._lock.release()
