"""Fast CPU inference for the diffusion policy: compiled graphs and a per-frame feature cache.

At batch 1 the U-Net and the image encoders run on tiny tensors, so eager PyTorch spends most of
its time dispatching hundreds of small ops per denoising step, not computing. This module compiles
the same modules, from the model's current (EMA) weights, into graphs with low per-op overhead:

* ``onnxruntime`` (default on CPU through ``auto``): ``torch.onnx.export`` to an in-memory ONNX
  model run by onnxruntime's CPU executor;
* ``torchscript``: ``torch.jit.trace`` + ``torch.jit.optimize_for_inference``;
* ``eager``: the modules as they are (the reference).

Deterministic samplers (DDIM with eta = 0, DPM-Solver++) with their fixed timesteps are traced as
one graph: the whole reverse process, diffusers' own ``step`` included, so the scheduler's
arithmetic is the library's, not a copy. DDPM draws fresh noise at every step from the policy's
generator, so it keeps diffusers' Python loop and compiles only the U-Net. Every compiled graph is
checked against eager on a random input when built; a graph that fails to build or disagrees is
replaced by eager with a logged warning, never used silently.

Images: each frame is encoded on its own (GroupNorm works per sample), so the features of a frame
seen in a previous call are reused. The cache key is the frame's bytes (exact: Python compares the
full key on every hit), because the callers (deploy controller, sim agent, policy server) pass
plain stacked arrays with no per-frame stamp.
"""

from __future__ import annotations

import io
import logging
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from robot_learning.policies.unet import obs_film_from

if TYPE_CHECKING:
    from robot_learning.policies.diffusion import DiffusionModel

log = logging.getLogger(__name__)

BACKENDS = ("auto", "eager", "torchscript", "onnxruntime")
DETERMINISTIC_SAMPLERS = ("ddim", "dpmsolver++")
ONNX_OPSET = 18
VERIFY_TOL = 1e-3  # compiled vs eager on the build check: |got - want| / (1 + |want|)
SERIAL_BATCH = 2  # sampler calls with at most this many chunks run single-threaded (see _OrtRunner)
SERIAL_FRAMES = 4  # camera-encoder calls with at most this many frames, likewise
ONE_STEP = "onestep"  # sampler name of distilled policies: x0 = U-Net(noise, T - 1, obs) in one call

Runner = Callable[..., torch.Tensor]


def onnxruntime_available() -> bool:
    """Whether onnxruntime (and onnx, which ``torch.onnx.export`` needs) can be imported."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(name: str, device: torch.device) -> str:
    """``auto`` -> ``onnxruntime`` on CPU when installed, else ``eager``; other names are checked."""
    if name not in BACKENDS:
        raise ValueError(f"policy.params.inference_backend: unknown '{name}' (choose from {', '.join(BACKENDS)})")
    if name == "auto":
        return "onnxruntime" if device.type == "cpu" and onnxruntime_available() else "eager"
    if name in ("onnxruntime", "torchscript") and device.type != "cpu":
        log.warning("inference_backend=%s runs on CPU only; using eager on %s", name, device)
        return "eager"
    if name == "onnxruntime" and not onnxruntime_available():
        log.warning("inference_backend=onnxruntime but onnxruntime/onnx are not installed; using eager")
        return "eager"
    return name


class _OrtRunner:
    """Calls an onnxruntime session with torch tensors (CPU, zero-copy in and out).

    Calls with at most ``serial_batch`` rows run on a single-threaded session: at batch 1 the
    sampler's ops are so small that waking a second thread costs more than it saves (DDIM-10,
    U-Net 32/64/128: 19 ms on one thread, 22-25 ms on two, here). Larger batches (K candidate
    chunks) use ``threads``. Sessions are created on first use.
    """

    def __init__(self, model_bytes: bytes, input_names: Sequence[str], threads: int, serial_batch: int = 0) -> None:
        self.model_bytes = model_bytes
        self.input_names = list(input_names)
        self.threads = max(1, threads)
        self.serial_batch = serial_batch
        self._sessions: dict[int, Any] = {}
        self.session = self._session(self.threads)

    def _session(self, threads: int) -> Any:
        if threads not in self._sessions:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            # no busy-waiting: torch's OpenMP pool runs in the same process on the same few cores, and
            # two spinning pools starve each other (measured 3x slower DDIM-10 chunks with 2 threads here)
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self._sessions[threads] = ort.InferenceSession(self.model_bytes, opts, providers=["CPUExecutionProvider"])
        return self._sessions[threads]

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        feeds = {n: x.detach().contiguous().numpy() for n, x in zip(self.input_names, inputs, strict=True)}
        session = self._session(1) if inputs[0].shape[0] <= self.serial_batch else self.session
        return torch.from_numpy(session.run(None, feeds)[0])


def compile_module(module: nn.Module, example: tuple[torch.Tensor, ...], names: Sequence[str], backend: str) -> Runner:
    """Compile ``module`` (batch dimension 0 of every input dynamic) for ``backend``."""
    module = module.eval()
    if backend == "eager":
        return module
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # tracing converts the sampler's Python-level tensor comparisons to constants: intended
        # (the timesteps are fixed), so the TracerWarnings are noise here
        warnings.simplefilter("ignore")
        if backend == "torchscript":
            traced = torch.jit.trace(module, example, check_trace=False)
            return torch.jit.optimize_for_inference(traced)
        if backend == "onnxruntime":
            if isinstance(module, DenoiseLoop):
                proto = _export_denoise_loop(module, *example)
            else:
                proto = _export_onnx(module, example, names)
            serial = (SERIAL_BATCH if isinstance(module, _FactoredFilm)
                      else SERIAL_FRAMES if isinstance(module, CameraGraph) else 0)
            return _OrtRunner(proto.SerializeToString(), names, torch.get_num_threads(), serial_batch=serial)
    raise ValueError(f"cannot compile for backend '{backend}'")


def _export_onnx(module: nn.Module, example: tuple[torch.Tensor, ...], names: Sequence[str], **kwargs: Any) -> Any:
    """``torch.onnx.export`` (TorchScript exporter, dynamic batch) into an in-memory ``onnx.ModelProto``."""
    import onnx

    buf = io.BytesIO()
    dynamic = {n: {0: "batch"} for n in [*names, "out"]}
    # Mish as one ONNX op (opset 18) instead of Softplus-Tanh-Mul: ~10 % faster U-Net steps here
    torch.onnx.register_custom_op_symbolic("aten::mish", _mish_symbolic, ONNX_OPSET)
    try:
        torch.onnx.export(module, example, buf, dynamo=False, input_names=list(names), output_names=["out"],
                          dynamic_axes=dynamic, opset_version=ONNX_OPSET, **kwargs)
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::mish", ONNX_OPSET)
    return onnx.load_from_string(buf.getvalue())


def _mish_symbolic(g: Any, x: Any) -> Any:
    return g.op("Mish", x)


class _TrunkCall(torch.autograd.Function):
    """Stands for the U-Net trunk while the sampler loop is exported: one custom ONNX node per step."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, film: torch.Tensor) -> torch.Tensor:
        """A placeholder value: only the loop's graph structure is exported."""
        return x.clone()

    @staticmethod
    def symbolic(g: Any, x: Any, film: Any) -> Any:
        """The custom node that ``_inline_unet`` replaces by the trunk's graph."""
        out = g.op("rlstack::UNet", x, film)
        out.setType(x.type())
        return out


class _TrunkStub(nn.Module):
    def forward(self, x: torch.Tensor, film: torch.Tensor) -> torch.Tensor:
        return _TrunkCall.apply(x, film)


class _Trunk(nn.Module):
    """``ConditionalUnet1D.trunk`` as a module of its own, for export."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, film: torch.Tensor) -> torch.Tensor:
        return self.unet.trunk(x, film)


def _export_denoise_loop(loop: DenoiseLoop, x: torch.Tensor, cond: torch.Tensor) -> Any:
    """The sampler loop as one ONNX graph, built from one export of the U-Net trunk.

    Tracing the loop with the real U-Net exports it once per step (~20 s for 10 steps here); instead
    the trunk is exported once and its nodes are copied into the loop graph at each step, all copies
    sharing one set of weights.
    """
    film = loop.obs_film(cond)
    trunk = _export_onnx(_Trunk(loop.unet), (x, film), ("x", "film"))
    stub = DenoiseLoop(loop.steps, loop.scheduler_cls, loop.scheduler_config, loop.unet, trunk=_TrunkStub())
    graph = _export_onnx(stub, (x, cond), ("x", "cond"), custom_opsets={"rlstack": 1})
    return _inline_unet(graph, trunk)


def _inline_unet(loop: Any, unet: Any) -> Any:
    """Replace every ``rlstack::UNet`` node of ``loop`` by a renamed copy of the trunk graph ``unet``'s nodes."""
    ug = unet.graph
    weights = {w.name: f"unet/{w.name}" for w in ug.initializer}
    nodes = []
    for node in loop.graph.node:
        if node.domain != "rlstack":
            nodes.append(node)
            continue
        k = len(nodes)
        rename = {**weights, **dict(zip([i.name for i in ug.input], node.input, strict=True)),
                  ug.output[0].name: node.output[0]}
        for un in ug.node:
            new = type(un)()
            new.CopyFrom(un)
            new.input[:] = [rename.get(n, f"unet{k}/{n}") if n else n for n in un.input]
            new.output[:] = [rename.get(n, f"unet{k}/{n}") for n in un.output]
            new.name = f"unet{k}/{un.name}"
            nodes.append(new)
    graph = loop.graph
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    for w in ug.initializer:
        copy = graph.initializer.add()
        copy.CopyFrom(w)
        copy.name = weights[w.name]
    opsets = [o for o in loop.opset_import if o.domain != "rlstack"]
    del loop.opset_import[:]
    loop.opset_import.extend(opsets)
    return loop


class CameraGraph(nn.Module):
    """One camera's eval-mode encoder as a module of its own: uint8 frames -> features."""

    def __init__(self, model: DiffusionModel, key: str) -> None:
        super().__init__()
        self.model = model
        self.key = key

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """``(N, H, W, 3)`` uint8 -> ``(N, feature_dim)``."""
        return self.model.encoder.encode_camera(self.key, frames)


class _FactoredFilm(nn.Module):
    """Holds the U-Net's FiLM weights split by input (``ConditionalUnet1D.film_weights``).

    The observation part is computed once per call, the diffusion-step part once per timestep when
    the sampler is built; together they were ~40 % of a U-Net step at batch 1 on CPU.
    """

    def __init__(self, unet: nn.Module, timesteps: torch.Tensor, trunk: nn.Module | None) -> None:
        super().__init__()
        self.unet = unet
        self.trunk = trunk if trunk is not None else _Trunk(unet)
        device = next(unet.parameters()).device
        with torch.no_grad():  # from the weights at build time: DiffusionInference rebuilds when they change
            step_film = unet.step_film(timesteps.to(device))
            _, w_obs, bias = unet.film_weights()
        self.register_buffer("step_film", step_film, persistent=False)  # (steps, S)
        self.register_buffer("w_obs", w_obs.detach().clone(), persistent=False)
        self.register_buffer("bias", bias.detach().clone(), persistent=False)

    def obs_film(self, cond: torch.Tensor) -> torch.Tensor:
        """The observation part of every block's FiLM vector, ``(B, D)`` -> ``(B, S)``."""
        return obs_film_from(cond, self.w_obs, self.bias)


class DenoiseLoop(_FactoredFilm):
    """The whole reverse process of a deterministic sampler: initial noise + conditioning -> sample."""

    def __init__(self, steps: int, scheduler_cls: type, scheduler_config: Any, unet: nn.Module,
                 trunk: nn.Module | None = None) -> None:
        sched = scheduler_cls.from_config(scheduler_config)
        sched.set_timesteps(steps)
        super().__init__(unet, sched.timesteps, trunk)
        self.steps = steps
        self.scheduler_cls = scheduler_cls
        self.scheduler_config = scheduler_config

    @classmethod
    def of(cls, model: DiffusionModel) -> DenoiseLoop:
        """The loop of ``model``'s current sampler and step count."""
        sched = model.inference_scheduler
        return cls(model.num_inference_steps, type(sched), sched.config, model.unet)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """``x`` (B, horizon, A) noise, ``cond`` (B, D) -> denoised (B, horizon, A), before clamping."""
        sched = self.scheduler_cls.from_config(self.scheduler_config)  # fresh multistep state per run
        sched.set_timesteps(self.steps)
        obs_film = self.obs_film(cond)
        for k, t in enumerate(sched.timesteps):
            x = sched.step(self.trunk(x, obs_film + self.step_film[k]), t, x).prev_sample
        return x


class OneStepSample(_FactoredFilm):
    """A distilled policy's sampler: one U-Net call at the last training timestep maps noise to a chunk."""

    def __init__(self, unet: nn.Module, timestep: int) -> None:
        super().__init__(unet, torch.tensor([timestep]), None)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """``x`` (B, horizon, A) noise, ``cond`` (B, D) -> chunk (B, horizon, A), before clamping."""
        return self.trunk(x, self.obs_film(cond) + self.step_film[0])


class FrameFeatureCache:
    """Exact per-frame feature cache (LRU per camera), keyed by the frame's bytes."""

    def __init__(self, max_frames: int) -> None:
        self.max_frames = max(1, int(max_frames))
        self._store: dict[str, OrderedDict[bytes, torch.Tensor]] = {}
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()  # cameras may be encoded from concurrent threads

    def clear(self) -> None:
        """Forget every frame (episode boundary, new weights)."""
        self._store.clear()

    def features(self, key: str, frames: torch.Tensor, encode: Runner) -> torch.Tensor:
        """Features of uint8 ``frames`` (N, H, W, 3) of camera ``key``; only unseen frames are encoded."""
        lru = self._store.setdefault(key, OrderedDict())
        arr = frames.numpy()
        ids = [arr[i].tobytes() for i in range(arr.shape[0])]
        found: dict[bytes, torch.Tensor] = {}
        missing: list[int] = []
        for i, fid in enumerate(ids):
            if fid in found:
                continue
            hit = lru.get(fid)
            if hit is None:
                missing.append(i)
                found[fid] = hit  # placeholder: a repeated frame in this call is encoded once
            else:
                lru.move_to_end(fid)
                found[fid] = hit
        with self._lock:
            self.misses += len(missing)
            self.hits += len(ids) - len(missing)
        if missing:
            new = encode(frames[missing])
            for row, i in enumerate(missing):
                found[ids[i]] = lru[ids[i]] = new[row].clone()
            while len(lru) > self.max_frames:
                lru.popitem(last=False)
        return torch.stack([found[fid] for fid in ids])


class DiffusionInference:
    """Compiled encoders and sampler of one ``DiffusionModel``, tied to the weights it was built from."""

    def __init__(self, model: DiffusionModel, backend: str, feature_cache: bool) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.backend = resolve_backend(backend, self.device)
        # the weight tensors themselves, listed once: walking the module tree on every call cost ~3 ms
        self.weights = [*model.parameters(), *model.buffers()]
        self.fingerprint = weights_fingerprint(self.weights)
        spec = model.spec
        self.cache = FrameFeatureCache(2 * spec.n_obs_steps) if feature_cache and self.device.type == "cpu" else None
        self.cameras: dict[str, Runner] = {}
        for key in model.encoder.image_keys:
            example = torch.randint(0, 256, (2, *spec.obs_shapes[key]), dtype=torch.uint8, device=self.device)
            self.cameras[key] = self._build(CameraGraph(model, key), (example,), ("frames",), f"camera '{key}' encoder")
        self._samplers: dict[tuple[str, int], tuple[Runner, bool]] = {}
        concurrent = self.backend == "onnxruntime" and len(self.cameras) > 1 and torch.get_num_threads() > 1
        self._pool = ThreadPoolExecutor(min(len(self.cameras), torch.get_num_threads()) - 1,
                                        thread_name_prefix="camera-encoder") if concurrent else None

    def _build(self, module: nn.Module, example: tuple[torch.Tensor, ...], names: Sequence[str], what: str) -> Runner:
        """Compile and check against eager; eager (with a warning) when that fails."""
        if self.backend == "eager":
            return module
        try:
            runner = compile_module(module, example, names, self.backend)
            with torch.no_grad():
                want = module(*example)
                got = runner(*example)
            # relative: an untrained DPM-Solver++ can end far outside [-1, 1] before the clamp
            err = float(((got - want).abs() / (1.0 + want.abs())).max())
            if not err <= VERIFY_TOL:
                raise RuntimeError(f"compiled output differs from eager by {err:.2e} (relative)")
            return runner
        except Exception as exc:  # any export/runtime failure: keep serving with the eager module
            log.warning("inference backend %s failed for the %s (%s); using eager for it", self.backend, what, exc)
            return module

    def is_current(self, model: DiffusionModel) -> bool:
        """Whether ``model``'s weights are still the ones this was built from."""
        return model is self.model and weights_fingerprint(self.weights) == self.fingerprint

    def encode(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The conditioning vector, each camera frame encoded at most once across calls.

        With onnxruntime the cameras are encoded concurrently: a session runs without the GIL, and
        one camera's batch-1 convolutions gain nothing from a second intra-op thread (96 px, 2 frames:
        2.6 ms on one thread, 2.8 ms on two), so a second core is better spent on another camera.
        """
        def one(key: str) -> torch.Tensor:
            img = obs[key]
            b, t = img.shape[:2]
            flat = img.reshape(b * t, *img.shape[2:])
            run = self.cameras[key]
            out = self.cache.features(key, flat, run) if self.cache is not None else run(flat)
            return out.reshape(b, t, -1)

        keys = list(self.cameras)
        if self._pool is not None and len(keys) > 1:
            pending = {key: self._pool.submit(one, key) for key in keys[1:]}
            feats = {keys[0]: one(keys[0])} | {key: f.result() for key, f in pending.items()}
        else:
            feats = {key: one(key) for key in keys}
        return self.model.encoder.combine(feats, obs)

    def _sampler(self) -> tuple[Runner, bool]:
        """The compiled sampler for the model's current sampler/steps: (runner, whole_loop)."""
        m = self.model
        key = (m.sampler_name, m.num_inference_steps)
        if key not in self._samplers:
            h, a, d = m.spec.horizon, m.spec.action_dim, m.encoder.out_dim
            cond = torch.randn(2, d, device=self.device)
            x = torch.randn(2, h, a, device=self.device)
            if m.sampler_name == ONE_STEP:
                module = OneStepSample(m.unet, m.config.num_train_timesteps - 1)
                self._samplers[key] = (self._build(module, (x, cond), ("x", "cond"), "one-step sampler"), True)
            elif m.sampler_name in DETERMINISTIC_SAMPLERS:
                what = f"{m.sampler_name}-{m.num_inference_steps} sampler"
                self._samplers[key] = (self._build(DenoiseLoop.of(m), (x, cond), ("x", "cond"), what), True)
            else:
                t = torch.full((2,), m.config.num_train_timesteps // 2, dtype=torch.long, device=self.device)
                self._samplers[key] = (self._build(m.unet, (x, t, cond), ("x", "t", "cond"), "U-Net"), False)
        return self._samplers[key]

    def denoise(self, x: torch.Tensor, cond: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Reverse process from noise ``x``; the same generator draws as the eager path."""
        run, whole_loop = self._sampler()
        if whole_loop:
            return run(x, cond)
        return reverse_process(lambda x_t, t: run(x_t, t.expand(x_t.shape[0]).to(x_t.device), cond),
                               self.model.inference_scheduler, self.model.num_inference_steps, x, generator)


def reverse_process(predict: Any, sched: Any, steps: int, x: torch.Tensor,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """The one stochastic denoising loop (eager and compiled U-Nets): ``predict(x, t)`` at every timestep
    of ``sched`` (a diffusers scheduler) set to ``steps``, starting from noise ``x``."""
    sched.set_timesteps(steps)
    for t in sched.timesteps:
        x = sched.step(predict(x, t), t, x, generator=generator).prev_sample
    return x


def weights_fingerprint(weights: Sequence[torch.Tensor]) -> tuple[Any, ...]:
    """Storage + in-place version counter of every weight: changes on load, ``.to()``, optimizer or EMA step."""
    return tuple((t.data_ptr(), t._version) for t in weights)
