"""``recorder`` node: configured topics -> aligned control steps -> one committed episode at a time.

Subscriptions are KEEP_ALL (reliable by default): a shallow KEEP_LAST reader silently overwrites
frames under load. Steps are aligned by ``robot_learning.data.alignment`` and appended to the store by a
writer thread as they resolve, so callbacks never wait on disk; ``/recorder/stop`` commits.

Services (std_srvs): ``/recorder/start`` (Trigger), ``/recorder/stop`` (Trigger, commits; the reply
message is a JSON summary), ``/recorder/discard`` (Trigger), ``/recorder/mark_success`` (SetBool).
Status (JSON, std_msgs/String) on ``/recorder/status``. Bad messages are logged with the stream,
topic and reason, counted, and skipped; the node keeps running. An episode in progress when the
node is stopped is discarded; committed episodes are never touched.

    python -m ros_nodes.recorder --ros-args -p store:=data/demo.zarr \
        -p streams:="['joint=/joint_states:joint_state', 'camera_front=/camera/front/image_raw:image', \
                      'action=/action:float_array:next']" -p clock:=joint -p control_hz:=10.0
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from robot_learning.data.alignment import EpisodeAligner, SampleError, Step, StreamConfig, decode


@dataclass
class RecorderSettings:
    """What to record and where (the node's parameters)."""

    store: str
    streams: list[StreamConfig]
    clock: str = "joint"
    control_hz: float = 10.0
    task: str = ""
    source: str = "teleop"
    operator: str = ""
    max_wait_s: float = 1.0  # a stream silent this long is reported as stopped
    image_codec: str = "jpeg"
    max_future_s: float = 1.0  # a stamp further ahead of the receive clock is rejected (wrong publisher clock)
    tags: dict[str, Any] = field(default_factory=dict)


class _StepWriter:
    """Appends steps to an EpisodeWriter on a background thread (store writes never block callbacks)."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer
        self.queue: queue.Queue[Step | tuple[str, Any, Any] | None] = queue.Queue()
        self.error: str = ""
        self.written = 0
        self.cpu_s = 0.0  # this thread's CPU time (encoding + store writes)
        self.thread = threading.Thread(target=self._run, daemon=True, name="episode-writer")
        self.thread.start()

    def _run(self) -> None:
        while True:
            step = self.queue.get()
            if step is None:
                self.cpu_s = time.thread_time()
                return
            if self.error:
                continue  # the episode is already bad; keep draining
            try:
                if isinstance(step, tuple):  # raw samples of a high-rate stream: (key, values, stamps)
                    self.writer.append_stream(*step)
                else:
                    self.writer.append(step.data, step.stamps)
                    self.written += 1
            except Exception as exc:  # a store error ends this episode, never the recorder
                self.error = f"store append failed at step {self.written}: {exc}"

    def finish(self) -> None:
        """Wait until every queued step is written."""
        self.queue.put(None)
        self.thread.join()


class Recorder:
    """Recorder logic without rclpy: messages in, committed episodes out."""

    def __init__(self, settings: RecorderSettings, log: Callable[[str, str], None] | None = None) -> None:
        from robot_learning.data.store import EpisodeStore

        if not settings.streams:
            raise ValueError("recorder: no streams configured")
        names = [s.name for s in settings.streams]
        if len(set(names)) != len(names):
            raise ValueError(f"recorder: duplicate stream names in {names}")
        if settings.clock not in names:
            raise ValueError(f"recorder: clock stream '{settings.clock}' is not one of {names}")
        self.settings = settings
        self.streams = {s.name: s for s in settings.streams}
        self.log = log or (lambda level, text: print(f"[{level}] {text}", file=sys.stderr))
        self.store = EpisodeStore.open(settings.store, mode="a", image_codec=settings.image_codec)
        self.aligner: EpisodeAligner | None = None
        self.writer: _StepWriter | None = None
        self.meta: Any = None
        self.success = False
        self.committed = 0
        self.last_summary: dict[str, Any] = {}
        self._last_recv: dict[str, float] = {}
        self._stalled: set[str] = set()
        self._last_log: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._started_at = 0.0
        self._silent_reported: set[str] = set()
        self._carry: dict[str, tuple[float, Any]] = {}  # latest-mode values seen between episodes
        self.cpu_s: dict[str, float] = {}  # per stream: CPU seconds of its callbacks this episode (the node fills it)

    @property
    def recording(self) -> bool:
        """Whether an episode is open."""
        return self.aligner is not None

    # ---------------------------------------------------------------- control
    def start(self, now: float) -> tuple[bool, str]:
        """Open a new episode; samples stamped before ``now`` are not part of it."""
        from robot_learning.data.store import EpisodeMeta

        if self.recording:
            return False, "already recording: stop or discard the current episode first"
        s = self.settings
        rates = {"step": s.control_hz, **{k: st.rate_hz for st in s.streams for k in st.keys if st.rate_hz > 0}}
        self.meta = EpisodeMeta(task=s.task, source=s.source, operator=s.operator, rates=rates, tags=dict(s.tags))
        self.writer = _StepWriter(self.store.begin_episode(self.meta))
        self.aligner = EpisodeAligner(s.streams, s.clock, s.control_hz, start_time=now, max_wait_s=s.max_wait_s,
                                      max_future_s=s.max_future_s)
        for name, (stamp, values) in self._carry.items():
            self.aligner.carry_in(name, stamp, values)
        self.success = False
        self._stalled.clear()
        self._silent_reported.clear()
        self._started_at = now
        self.cpu_s = dict.fromkeys(self.streams, 0.0)
        self._last_recv = {}  # a stream is "stopped" only after it has published in this episode
        return True, f"recording episode {len(self.store)}"

    def mark_success(self, success: bool) -> tuple[bool, str]:
        """Set the success flag the episode will be committed with."""
        if not self.recording:
            return False, "not recording"
        self.success = bool(success)
        return True, f"success={self.success}"

    def stop(self) -> tuple[bool, str]:
        """Align what is left, write it, commit; the message is a JSON summary (or the reason it failed)."""
        if not self.recording:
            return False, "not recording"
        assert self.aligner is not None and self.writer is not None
        for step in self.aligner.flush():
            self.writer.queue.put(step)
        self._queue_raw()
        self.writer.finish()
        summary = {"streams": self.aligner.summary(), "steps": self.writer.written, "success": self.success,
                   "dropped_ticks": dict(self.aligner.drops),  # by cause: which stream, gap or staleness
                   "cpu_s": {**{k: round(v, 3) for k, v in self.cpu_s.items()}, "writer": round(self.writer.cpu_s, 3)}}
        writer, error = self.writer.writer, self.writer.error
        self.aligner, self.writer = None, None
        self.last_summary = summary
        if error or writer._n == 0:
            writer.discard()
            reason = error or self._why_no_steps(summary["streams"])
            self.log("error", f"episode discarded: {reason}")
            return False, json.dumps({**summary, "error": reason})
        writer.meta.tags["recorder"] = {"streams": summary["streams"], "dropped_ticks": summary["dropped_ticks"]}
        index = writer.commit(success=self.success)
        self.committed += 1
        summary["episode"] = index
        drops = "; ".join(f"{why}: {n}" for why, n in summary["dropped_ticks"].items())
        self.log("info", f"committed episode {index}: {summary['steps']} steps, success={self.success}"
                 + (f"; dropped control ticks: {drops}" if drops else ""))
        return True, json.dumps(summary)

    def discard(self) -> tuple[bool, str]:
        """Drop the open episode."""
        if not self.recording:
            return False, "not recording"
        assert self.writer is not None
        self.writer.finish()
        self.writer.writer.discard()
        self.aligner, self.writer = None, None
        return True, "episode discarded"

    # ---------------------------------------------------------------- data
    def on_message(self, name: str, msg: Any, recv_time: float) -> None:
        """One message of stream ``name``: decode, check, align; bad input is logged and skipped."""
        if not self.recording:
            if self.streams[name].mode == "latest":  # keep the state of flags for the next episode
                try:
                    stamp, values = decode(self.streams[name], msg)
                    self._carry[name] = (recv_time if stamp is None else stamp, values)
                except SampleError as exc:
                    self._log_throttled(name, exc.kind, f"rejected message: {exc}")
            return
        assert self.aligner is not None
        self._last_recv[name] = recv_time
        if name in self._stalled:
            self._stalled.discard(name)
            self.log("info", f"stream '{name}' ({self.streams[name].topic}) is publishing again")
        notes: list[str] = []
        try:
            stamp, values = decode(self.streams[name], msg, notes)
        except SampleError as exc:
            self.aligner.stats[name].reject(exc)  # add() counts its own rejections
            self._log_throttled(name, exc.kind, f"rejected message: {exc}")
            return
        for note in notes:
            self._log_throttled(name, "note", note, level="warn")
        if self.streams[name].mode == "latest":  # a flag raised in this episode still holds in the next
            self._carry[name] = (recv_time if stamp is None else stamp, values)
        try:
            self.aligner.add(name, stamp, values, recv_time)
        except SampleError as exc:
            self._log_throttled(name, exc.kind, f"rejected message: {exc}")
        # steps are resolved by poll() on a timer, not per message: at 500 Hz that work adds up

    def on_lost(self, name: str, count: int) -> None:
        """DDS reported ``count`` messages of stream ``name`` lost."""
        if self.recording and count > 0:
            assert self.aligner is not None
            self.aligner.add_lost(name, count)
            self._log_throttled(name, "lost", f"stream '{name}' ({self.streams[name].topic}): DDS lost {count} message(s) "
                                f"({self.aligner.stats[name].lost} this episode)")

    def poll(self, now: float) -> None:
        """Hand resolved steps to the writer; report streams that stopped publishing."""
        if not self.recording:
            return
        assert self.aligner is not None and self.writer is not None
        for step in self.aligner.pop_ready(now):
            self.writer.queue.put(step)
        self._queue_raw()
        for _kind, text in self.aligner.notes:
            self.log("warn", text)
        self.aligner.notes.clear()
        for name, stream in self.streams.items():
            if stream.mode == "latest":
                continue
            last = self._last_recv.get(name)
            if last is None:
                waited = now - self._started_at
                if name not in self._silent_reported and waited > max(self.settings.max_wait_s, 3.0):
                    self._silent_reported.add(name)
                    self.log("warn", f"stream '{name}' ({stream.topic}): no message in the {waited:.1f} s since "
                                     f"the episode started (is its publisher running with a matching QoS?)")
            elif name not in self._stalled and now - last > self.settings.max_wait_s:
                self._stalled.add(name)
                self.log("error", f"stream '{name}' ({stream.topic}) stopped publishing: "
                                  f"no message for {now - last:.1f} s; its steps are dropped until it returns")

    def status(self) -> dict[str, Any]:
        """JSON-friendly state: recording, committed count, current episode counters."""
        out: dict[str, Any] = {"recording": self.recording, "committed": self.committed, "store": self.settings.store}
        if self.aligner is not None and self.writer is not None:
            out.update(steps=self.writer.written, streams=self.aligner.summary(), stalled=sorted(self._stalled))
        return out

    def close(self) -> None:
        """Shutdown: an open episode is discarded (never half-committed)."""
        if self.recording:
            self.log("warn", "shutting down while recording: the open episode is discarded")
            self.discard()
        self.store.close()

    def _queue_raw(self) -> None:
        assert self.aligner is not None and self.writer is not None
        for key, (values, stamps) in self.aligner.pop_raw().items():
            self.writer.queue.put((key, values, stamps))

    def _why_no_steps(self, streams: dict[str, Any]) -> str:
        """The reason an episode has no steps, from its counters (not a guess)."""
        clock = self.settings.clock
        c = streams[clock]
        if c["received"] == 0:
            why = (f"the clock stream '{clock}' ({self.streams[clock].topic}) delivered no usable message "
                   f"({c['rejected']} rejected{': ' + c['last_error'] if c['last_error'] else ''})")
            return f"no steps recorded: {why}"
        blockers = [f"'{n}' missing for {s['missing_steps']} steps (received {s['received']}, rejected "
                    f"{s['rejected']}{', last error: ' + s['last_error'] if s['last_error'] else ''})"
                    for n, s in streams.items() if s["missing_steps"]]
        return "no steps recorded: every step was dropped; " + ("; ".join(blockers) or "the episode was too short")

    def _log_throttled(self, name: str, kind: str, text: str, level: str = "error") -> None:
        # at most one line per second per stream and problem kind, so a broken 500 Hz stream cannot
        # flood the log while every distinct problem shows up on its own line, with how many it hid
        key = f"{name}|{kind}"
        now = time.monotonic()
        if now - self._last_log.get(key, -1e9) >= 1.0:
            self._last_log[key] = now
            hidden = self._suppressed.pop(key, 0)
            self.log(level, text + (f" (+{hidden} more of this kind in the last second)" if hidden else ""))
        else:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1


def make_node() -> Any:
    """Build the rclpy node (parameters from the command line / params file)."""
    from rclpy.event_handler import SubscriptionEventCallbacks
    from rclpy.node import Node
    from std_msgs.msg import String
    from std_srvs.srv import SetBool, Trigger

    from ros_nodes.common import TOPICS, now_sec, recorder_sub_qos

    def _received(info: Any) -> float:
        # DDS's reception time, not the time the callback ran: the executor pauses between callbacks
        # (batching_executor), and unstamped streams (/action) are stamped with their receive time
        try:
            ns = int(info["received_timestamp"])
        except (TypeError, KeyError, ValueError):
            ns = 0
        return ns * 1e-9 if ns > 0 else now_sec()

    def msg_class(ros_type: str) -> Any:
        pkg, _, name = ros_type.split("/")
        return getattr(__import__(f"{pkg}.msg", fromlist=[name]), name)

    class RecorderNode(Node):
        """Thin rclpy wiring around ``Recorder``."""

        def __init__(self) -> None:
            super().__init__("recorder")
            specs = [s for s in self.declare_parameter("streams", [""]).value if s]
            settings = RecorderSettings(
                store=self.declare_parameter("store", "data/collect.zarr").value,
                streams=[StreamConfig.from_param(s) for s in specs],
                clock=self.declare_parameter("clock", "joint").value,
                control_hz=float(self.declare_parameter("control_hz", 10.0).value),
                task=self.declare_parameter("task", "").value,
                source=self.declare_parameter("source", "teleop").value,
                operator=self.declare_parameter("operator", "").value,
                max_wait_s=float(self.declare_parameter("max_wait_s", 1.0).value),
                image_codec=self.declare_parameter("image_codec", "jpeg").value,
                max_future_s=float(self.declare_parameter("max_future_s", 1.0).value),
            )
            logger = self.get_logger()
            self.subs: dict[str, Any] = {}

            def log(level: str, text: str) -> None:
                # one call site per severity: rclpy refuses to change the severity of a call site
                if level == "error":
                    logger.error(text)
                elif level == "warn":
                    logger.warning(text)
                else:
                    logger.info(text)

            self.rec = Recorder(settings, log=log)
            for s in settings.streams:
                events = SubscriptionEventCallbacks(
                    message_lost=lambda ev, n=s.name: self.rec.on_lost(n, ev.total_count_change),
                    incompatible_qos=lambda ev, n=s.name, t=s.topic: logger.error(
                        f"stream '{n}' ({t}): publisher QoS incompatible with this reader "
                        f"(reliable={self.rec.streams[n].reliable}); nothing will arrive. Last policy kind: "
                        f"{ev.last_policy_kind}"),
                )
                self.subs[s.name] = self.create_subscription(
                    msg_class(s.ros_type), s.topic, lambda msg, info, n=s.name: self._on_message(n, msg, info),
                    recorder_sub_qos(s.reliable, latched=s.type == "bool" and s.mode == "latest"),
                    event_callbacks=events)
            self.create_service(Trigger, TOPICS.recorder_start, self._srv(lambda: self.rec.start(now_sec())))
            self.create_service(Trigger, TOPICS.recorder_stop, self._srv(self.rec.stop))
            self.create_service(Trigger, TOPICS.recorder_discard, self._srv(self.rec.discard))
            self.create_service(SetBool, TOPICS.recorder_mark_success, self._on_mark)
            self.pub_status = self.create_publisher(String, TOPICS.recorder_status, 10)
            self.create_timer(0.05, lambda: self.rec.poll(now_sec()))
            self.create_timer(0.5, lambda: self.pub_status.publish(String(data=json.dumps(self.rec.status()))))
            logger.info(f"recorder: {len(settings.streams)} streams -> {settings.store} "
                        f"(clock '{settings.clock}' @ {settings.control_hz} Hz)")

        def _on_message(self, name: str, msg: Any, info: Any) -> None:
            t0 = time.thread_time()  # per-stream CPU of the callbacks (the executor's own work is not in it)
            self._take(name, msg, info)
            if name in self.rec.cpu_s:
                self.rec.cpu_s[name] += time.thread_time() - t0

        def _take(self, name: str, msg: Any, info: Any) -> None:
            self.rec.on_message(name, msg, _received(info))
            # The executor takes one message per subscription per wait-set pass, at ~0.3 ms of Python
            # per pass; a 500 Hz stream on a busy machine then falls behind until DDS drops samples.
            # Take this stream's backlog here with the same call the executor uses.
            sub = self.subs[name]
            for _ in range(256):
                with sub.handle:
                    got = sub.handle.take_message(sub.msg_type, sub.raw)
                if got is None:
                    return
                self.rec.on_message(name, got[0], _received(got[1]))

        def _srv(self, fn: Callable[[], tuple[bool, str]]) -> Callable[[Any, Any], Any]:
            def handler(_req: Any, resp: Any) -> Any:
                resp.success, resp.message = fn()
                return resp

            return handler

        def _on_mark(self, req: Any, resp: Any) -> Any:
            resp.success, resp.message = self.rec.mark_success(bool(req.data))
            return resp

        def close(self) -> None:
            """Discard an open episode and close the store."""
            self.rec.close()

    return RecorderNode()


def batching_executor(pause_s: float | None = None) -> Any:
    """A single-threaded executor that pauses ``pause_s`` after each callback.

    Why: every wake-up of rclpy's Python executor costs ~0.3-0.5 ms (wait-set rebuild), and a 500 Hz
    stream wakes it 500 times a second: most of the recorder's CPU. Pausing lets messages queue in
    the KEEP_ALL readers (nothing is lost) and each callback drains its backlog in one go; alignment
    goes by stamps, so a few ms of extra delay change nothing. ``RLSTACK_RECORDER_PAUSE_S`` (default
    0.01, which halved the recorder's CPU in benchmarks/bench_recorder.py; 0 = rclpy's plain executor)."""
    import os

    from rclpy.executors import SingleThreadedExecutor

    pause = float(os.environ.get("RLSTACK_RECORDER_PAUSE_S", "0.01")) if pause_s is None else pause_s

    class BatchingExecutor(SingleThreadedExecutor):
        def spin(self) -> None:
            while self._context.ok() and not self._is_shutdown:
                self.spin_once()
                if pause > 0:
                    time.sleep(pause)

    return BatchingExecutor()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``python -m ros_nodes.recorder --ros-args -p store:=… -p streams:=[…]``."""
    from ros_nodes.common import run_node_main

    return run_node_main(make_node, argv, executor_factory=batching_executor)


if __name__ == "__main__":
    sys.exit(main())
