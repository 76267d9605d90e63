"""Opaque per-session policy endpoints: ``/ws/slot/<key>`` relays to the assigned policy server.

The evaluator client talks the ordinary policy-server protocol (``robot_learning/serve``) to this URL;
the arena opens the real endpoint and relays frames both ways, replacing the policy name in the
server's greeting so that nothing identifies the policy before the vote. If the policy server cannot
be reached or dies while the session is open, the session is marked invalid with the reason.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from sqlalchemy import or_, select
from starlette.concurrency import run_in_threadpool
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from robot_learning.arena import services
from robot_learning.arena.models import ArenaSession, Policy, as_utc, utcnow
from robot_learning.serve.wire import MAX_MESSAGE_BYTES, WireError, pack, unpack


def _resolve(factory: Any, key: str) -> tuple[str, str, str] | str:
    """(session id, slot, upstream endpoint) for an open session's slot key, else the refusal reason."""
    with factory() as db:
        s = db.scalar(select(ArenaSession).where(or_(ArenaSession.slot_key_a == key, ArenaSession.slot_key_b == key)))
        if s is None:
            return "unknown slot endpoint"
        if s.state == "open" and utcnow() > as_utc(s.expires_at):
            s.state = "expired"
            db.commit()
        if s.state != "open":
            return f"session is {s.state}"
        slot = "A" if s.slot_key_a == key else "B"
        policy = db.get(Policy, s.policy_a_id if slot == "A" else s.policy_b_id)
        return s.id, slot, policy.endpoint


def _invalidate(factory: Any, session_id: str, reason: str) -> None:
    with factory() as db:
        try:
            services.invalidate(db, None, session_id, reason)
        except services.ArenaError:
            pass  # already voted or expired: nothing to mark


def add_proxy(app: FastAPI) -> None:
    """Register the relay endpoint on ``app``."""
    factory = app.state.factory

    @app.websocket("/ws/slot/{key}")
    async def slot(ws: WebSocket, key: str) -> None:
        resolved = await run_in_threadpool(_resolve, factory, key)
        await ws.accept()
        if isinstance(resolved, str):
            await ws.send_bytes(pack({"type": "error", "message": f"arena: {resolved}", "fatal": True}))
            await ws.close(code=1008)
            return
        session_id, slot_name, endpoint = resolved
        try:
            upstream = await connect(endpoint, open_timeout=5, max_size=MAX_MESSAGE_BYTES, compression=None,
                                     proxy=None, ping_interval=5, ping_timeout=20)
        except Exception as exc:  # unreachable policy server: the session cannot be judged
            reason = f"policy server of slot {slot_name} unreachable ({type(exc).__name__})"
            await run_in_threadpool(_invalidate, factory, session_id, reason)
            await ws.send_bytes(pack({"type": "error", "message": f"arena: {reason}", "fatal": True}))
            await ws.close(code=1011)
            return
        client_gone = asyncio.Event()
        try:
            hello = unpack(await upstream.recv())
            hello["policy"] = f"arena slot {slot_name}"  # the only identifying field of the protocol
            await ws.send_bytes(pack(hello))
            up = asyncio.create_task(_upstream_to_client(upstream, ws, client_gone))
            down = asyncio.create_task(_client_to_upstream(ws, upstream, client_gone))
            done, pending = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            for task in done:
                task.exception()  # retrieved: an upstream failure is handled below, whichever side saw it first
            # the policy server went away (seen by either relay: its frames ended, or sending to it failed)
            # while the client is still there
            if not client_gone.is_set():
                reason = f"policy server of slot {slot_name} closed the connection mid-session"
                await run_in_threadpool(_invalidate, factory, session_id, reason)
                await ws.close(code=1011)
        except (ConnectionClosed, WireError, WebSocketDisconnect) as exc:
            if not client_gone.is_set() and isinstance(exc, ConnectionClosed):
                reason = f"policy server of slot {slot_name} closed the connection mid-session"
                await run_in_threadpool(_invalidate, factory, session_id, reason)
        finally:
            await upstream.close()


async def _upstream_to_client(upstream: Any, ws: WebSocket, gone: asyncio.Event) -> None:
    """Relay every policy-server frame to the client (``gone`` is set if the client cannot be reached)."""
    async for frame in upstream:
        try:
            await ws.send_bytes(frame if isinstance(frame, bytes) else frame.encode())
        except Exception:
            gone.set()
            raise


async def _client_to_upstream(ws: WebSocket, upstream: Any, gone: asyncio.Event) -> None:
    """Relay every client frame to the policy server until the client leaves (``gone`` is set then; a
    failed send to the policy server raises ConnectionClosed and leaves it unset)."""
    while True:
        try:
            message = await ws.receive()
        except Exception:
            gone.set()
            raise
        if message["type"] == "websocket.disconnect":
            gone.set()
            return
        data = message.get("bytes")
        if data is None and message.get("text") is not None:
            data = message["text"].encode()
        if data is not None:
            await upstream.send(data)
