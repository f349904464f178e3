"""Both frameworks in float64 and in a low precision, on the same weights, input and target; every tensor judged
against the float64 truth (the rule: parity_tests/verdict.py).

    report = run_anchored(Config(width=32, grid=32))
    report.overall             # "both within rounding", "JAX deviates", "PyTorch deviates", ...
    report.first_divergence    # block, op, framework, words (None when nothing deviates)
    report.rows                # one TensorRow per compared tensor

The design. Six runs: JAX and PyTorch, each in float64, in `config.dtype`, and in float64 on the decisions (ReLU
masks, max-pool winners) of its `config.dtype` run, the truth that run is measured against
(parity_tests/decisions.py). (a) The two float64 runs must agree to float64 rounding on every tensor; a
disagreement is a bug in one of them (present in its low-precision run too), found at the first block whose
float64 output disagrees while its inputs agree, and attributed to a framework by the op-level localiser
(`parity_tests/ops.py`, which judges each op against NumPy float64); what no block holds is judged alone in each
framework's float64 run: the parameters as loaded against the weights given, the loss against NumPy's MSE of the
framework's own output, the first RMSprop step against NumPy's on the framework's own gradients. (b) Each
framework's low-precision run is measured against its own aligned float64 run, so it sees its own rounding only,
and the two rounding errors are compared by the calibrated rule: a bug that shows in low precision only (a
one-pass variance, a bfloat16 accumulation) makes its framework's error exceed the other's. With float64 as the
only precision (`dtype="float64"`) there is no (b), and the yardstick of (a) is each framework's float64 run on
weights, input and target perturbed by a relative 2^-50 (`perturbed`): how much the steps amplify a perturbation
the size of float64 rounding.

Planted bugs: `run_anchored(config, jax_patch=f, torch_patch=g)` enters `f()` around everything JAX does (building
the model, loading the weights, running, reading the results back) and `g()` around everything PyTorch does. The
weights (the authors' init, drawn in float32 by PyTorch), the input and the target are drawn outside both, so a
patch cannot reach the other framework. Runs without a patch are cached by config, so a suite of planted bugs
repeats only the patched framework's two runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from flax import nnx

from parity_tests import decisions as D
from parity_tests import verdict as V
from parity_tests.compare import INPUT, OUTPUT, owner_block, to_jax_layout, to_torch_layout
from v2v_jax import convert
from v2v_jax import model as jmodel
from v2v_jax.dtypes import PRECISIONS
from v2v_jax.layers import BatchNorm3d, Numerics
from v2v_jax.train.optim import AUTHORS_RMSPROP
from v2v_jax.train.optim import make_optimizer as jax_optimizer
from v2v_torch_ref import model as tmodel
from v2v_torch_ref.backends import torch_switches
from v2v_torch_ref.train import make_optimizer as torch_optimizer

LR = AUTHORS_RMSPROP["lr"]
MOMENTUM = BatchNorm3d.momentum  # torch's BatchNorm default, 0.1; read before any patch


@dataclasses.dataclass(frozen=True)
class Config:
    width: int = 32
    grid: int = 32
    batch: int = 2
    joints: int = 21
    dtype: str = "float32"  # the low precision: float32, bfloat16 (float64 compares the float64 runs only)
    device: str = "cpu"  # cpu or gpu
    tf32: bool = False  # TF32 convolutions and matmuls on a GPU, both frameworks
    cudnn: bool = True  # torch.backends.cudnn.enabled
    channels_last: bool = False  # torch model and input in channels_last_3d
    seed: int = 0
    steps: int = 3  # RMSprop steps; the first one's activations and gradients are compared
    density: float = 0.05  # occupied fraction of the binary input voxels
    conv: str = Numerics.conv
    upsample: str = Numerics.upsample

    def __post_init__(self):
        problems = [f"{name} {value!r}: {why}" for name, value, ok, why in (
            ("grid", self.grid, self.grid > 0 and self.grid % 4 == 0, "must be a positive multiple of 4"),
            ("width", self.width, self.width > 0 and self.width % 2 == 0, "must be a positive even number"),
            ("batch", self.batch, self.batch > 0, "must be positive"),
            ("joints", self.joints, self.joints > 0, "must be positive"),
            ("steps", self.steps, self.steps > 0, "must be positive"),
            ("dtype", self.dtype, self.dtype in PRECISIONS, f"choose one of {sorted(PRECISIONS)}"),
            ("device", self.device, self.device in ("cpu", "gpu"), "choose cpu or gpu"),
            ("density", self.density, 0 <= self.density <= 1, "must lie in [0, 1]"))
            if not ok]
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def rounding(self) -> str:
        """The unit roundoff's name: TF32 where a GPU's float32 convolutions run in it."""
        return "tf32" if self.tf32 and self.device == "gpu" and self.dtype == "float32" else self.dtype


# ---------------------------------------------------------------------------------------------------- inputs


@dataclasses.dataclass(frozen=True)
class Inputs:
    """Torch keys and layout, float64 arrays holding float32 values (so every precision starts from the same)."""

    weights: Mapping[str, np.ndarray]
    x: np.ndarray
    target: np.ndarray


def _float32(a) -> np.ndarray:
    return np.asarray(a, np.float32).astype(np.float64)


def reference_weights(config: Config) -> dict[str, np.ndarray]:
    """The authors' init drawn by PyTorch in float32 from `config.seed`, BN running statistics zero.

    Zero running statistics make the first step's running mean and variance exactly MOMENTUM times the batch
    mean and unbiased variance (train mode never reads them), so the batch statistics are compared at full precision.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = tmodel.V2VModel(1, config.joints, config.width)
    return train_mode_weights({k: v.numpy() for k, v in model.state_dict().items()})


def train_mode_weights(weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A state_dict as float64 arrays with zero BN running statistics (a checkpoint's are unused in train mode)."""
    return {k: np.zeros(np.shape(v)) if k.endswith(("running_mean", "running_var")) else
            (np.asarray(v) if np.asarray(v).dtype.kind in "iu" else np.asarray(v, np.float64))
            for k, v in weights.items()}


def make_inputs(config: Config, weights: Mapping[str, np.ndarray] | None = None) -> Inputs:
    rng = np.random.default_rng(config.seed)
    n, m = config.grid, config.grid // 2
    x = (rng.random((config.batch, 1, n, n, n)) < config.density).astype(np.float64)
    target = _float32(rng.random((config.batch, config.joints, m, m, m)))  # in [0, 1) like heatmaps
    return Inputs(reference_weights(config) if weights is None else train_mode_weights(weights), x, target)


# ------------------------------------------------------------------------------------------------------ runs


@dataclasses.dataclass
class Trace:
    """What one framework computed at one precision: torch layout and keys, float64 numpy arrays."""

    acts: dict[str, np.ndarray]  # block path -> its output in the first step; OUTPUT -> the model's output
    loss: float
    input_grad: np.ndarray
    grads: dict[str, np.ndarray]  # parameter key -> its gradient in the first step
    batch_stats: dict[str, np.ndarray]  # BN running_mean / running_var key -> first step's batch mean / unb. var
    trained: dict[str, np.ndarray]  # state_dict after config.steps steps
    losses: list[float]
    stepped: dict[str, np.ndarray]  # parameter key -> its value after the first step
    loaded: dict[str, np.ndarray]  # parameter key -> its value as loaded, before any step
    decisions: list[dict[str, np.ndarray]]  # per step: each ReLU's and pool's input (parity_tests/decisions.py)


def _numpy(t) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        return t.detach().cpu().to(torch.float64).numpy()
    return np.asarray(t, np.float64)


def _host(t) -> np.ndarray:
    """A decision's input on the host in float32, or float64 when it was computed in float64 (bfloat16 and
    float32 values are exact in float32)."""
    if isinstance(t, torch.Tensor):
        return t.detach().cpu().to(torch.float64 if t.dtype == torch.float64 else torch.float32).numpy()
    return np.asarray(t, np.float64 if t.dtype == np.float64 else np.float32)


def _is_stat(key: str) -> bool:
    return key.endswith(("running_mean", "running_var", "num_batches_tracked"))


def _batch_stats(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: _numpy(v) / MOMENTUM for k, v in state.items() if k.endswith(("running_mean", "running_var"))}


def torch_loss(y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The authors' loss: MSE, mean over every element (v2v_torch_ref/train.py)."""
    return F.mse_loss(y, target.to(y.dtype))


def torch_trace(config: Config, inputs: Inputs, dtype: str, fresh: bool = True, imposed: list | None = None) -> Trace:
    """`config.steps` RMSprop steps of the PyTorch V2V in `dtype` (bfloat16: autocast on float32 parameters);
    `fresh` is JAX's concern (eager PyTorch runs whatever code is current). `imposed`: per step, the ReLU and pool
    decisions to take (parity_tests/decisions.py)."""
    device = torch.device("cuda" if config.device == "gpu" else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device gpu: torch sees no CUDA device")
    param_dtype = torch.float64 if dtype == "float64" else torch.float32
    memory_format = torch.channels_last_3d if config.channels_last else torch.contiguous_format
    autocast = (functools.partial(torch.autocast, device.type, torch.bfloat16) if dtype == "bfloat16"
                else contextlib.nullcontext)
    with torch_switches(cudnn=config.cudnn, tf32=config.tf32):
        model = tmodel.V2VModel(1, config.joints, config.width)
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in inputs.weights.items()})
        model = model.to(device=device, dtype=param_dtype, memory_format=memory_format).train()
        # copies: a float64 parameter's array is its storage, which the steps update in place
        loaded = {k: _numpy(p).copy() for k, p in model.named_parameters()}
        optimizer = torch_optimizer(model.parameters(), "rmsprop", LR)
        target = torch.as_tensor(inputs.target, dtype=param_dtype, device=device)
        losses, first, decided = [], None, []
        for step in range(config.steps):
            x = torch.as_tensor(inputs.x, dtype=param_dtype, device=device).contiguous(memory_format=memory_format)
            x.requires_grad_(step == 0)
            optimizer.zero_grad(set_to_none=True)
            with autocast(), D.torch_hooks(None if imposed is None else imposed[step]) as seen:
                y, taps = tmodel.forward_with_intermediates(model, x)
                loss = torch_loss(y, target)
            decided.append({k: _host(v) for k, v in seen.items()})
            loss.backward()
            if step == 0:
                first = dict(acts={**{k: _numpy(v) for k, v in taps.items()}, OUTPUT: _numpy(y)}, loss=loss.item(),
                             input_grad=_numpy(x.grad),
                             grads={k: np.zeros(tuple(p.shape)) if p.grad is None else _numpy(p.grad)
                                    for k, p in model.named_parameters()},  # None: the loss does not read p
                             batch_stats=_batch_stats(model.state_dict()))
            optimizer.step()
            losses.append(loss.item())
            if step == 0:
                first["stepped"] = {k: _numpy(p).copy() for k, p in model.named_parameters()}
        trained = {k: _numpy(v) for k, v in model.state_dict().items()}
    return Trace(**first, trained=trained, losses=losses, loaded=loaded, decisions=decided)


def jax_loss(y: jax.Array, target: jax.Array) -> jax.Array:
    """MSE, mean over every element, in at least float32 (as v2v_jax.geometry.heatmap_mse)."""
    y = y.astype(jnp.promote_types(y.dtype, jnp.float32))
    return jnp.mean(jnp.square(y - target.astype(y.dtype)))


def _jax_step(model, optimizer, x, target, imposed):
    def loss_fn(model, x):
        with jmodel.record_intermediates() as taps, D.jax_hooks(imposed) as seen:
            y = model(x)
        return jax_loss(y, target), (y, dict(taps), dict(seen))

    (loss, (y, taps, seen)), (g_model, g_x) = nnx.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(model, x)
    optimizer.update(model, g_model)
    return loss, y, taps, seen, g_model, g_x


def _jax_device(kind: str):
    try:
        return jax.devices(kind)[0]
    except RuntimeError as e:
        raise ValueError(f"device {kind}: JAX sees none ({e})") from e


_SHARED_STEP = nnx.jit(_jax_step)  # for unpatched runs: compiled once per shape and precision


def jax_trace(config: Config, inputs: Inputs, dtype: str, fresh: bool = True, imposed: list | None = None) -> Trace:
    """`config.steps` RMSprop steps of the Flax V2V in `dtype` (bfloat16 computes on float32 parameters).

    fresh: trace and compile a new step function, so that code patched now is what runs (not a cached trace).
    imposed: per step, the ReLU and pool decisions to take, torch layout (parity_tests/decisions.py).
    """
    x64 = jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext()
    precision = "default" if config.tf32 else "highest"
    with x64, jax.default_device(_jax_device(config.device)), jax.default_matmul_precision(precision):
        compute, param = PRECISIONS[dtype]
        numerics = Numerics(dtype=compute, param_dtype=param, conv=config.conv, upsample=config.upsample)
        model = jmodel.V2VModel(1, config.joints, config.width, numerics=numerics, rngs=nnx.Rngs(config.seed))
        convert.load_torch_state_dict(model, {k: torch.from_numpy(np.array(v)) for k, v in inputs.weights.items()},
                                      source="reference weights")
        model.train()
        loaded = {k: _numpy(v) for k, v in convert.torch_state_dict(model).items() if not _is_stat(k)}
        optimizer = nnx.Optimizer(model, jax_optimizer("rmsprop", LR), wrt=nnx.Param)
        step = nnx.jit(_jax_step) if fresh else _SHARED_STEP
        x, target = (jnp.asarray(to_jax_layout(a), param) for a in (inputs.x, inputs.target))
        losses, first, decided = [], None, []
        for i in range(config.steps):
            decide_on = None if imposed is None else {k: to_jax_layout(v) for k, v in imposed[i].items()}
            loss, y, taps, seen, g_model, g_x = step(model, optimizer, x, target, decide_on)
            losses.append(float(loss))
            decided.append({k: _host(to_torch_layout(v)) for k, v in seen.items()})
            if i == 0:
                grad_model = nnx.clone(model)
                nnx.update(grad_model, g_model)
                grads = {k: _numpy(v) for k, v in convert.torch_state_dict(grad_model).items() if not _is_stat(k)}
                state = convert.torch_state_dict(model)
                first = dict(acts={**{k: to_torch_layout(_numpy(v)) for k, v in taps.items()},
                                   OUTPUT: to_torch_layout(_numpy(y))},
                             loss=float(loss), input_grad=to_torch_layout(_numpy(g_x)), grads=grads,
                             batch_stats=_batch_stats(state),
                             stepped={k: _numpy(v) for k, v in state.items() if not _is_stat(k)})
        trained = {k: _numpy(v) for k, v in convert.torch_state_dict(model).items()}
    return Trace(**first, trained=trained, losses=losses, loaded=loaded, decisions=decided)


TRACERS = {V.JAX: jax_trace, V.TORCH: torch_trace}


def perturbed(inputs: Inputs, seed: int) -> Inputs:
    """The inputs with every float weight, input voxel and target value multiplied by 1 +- `verdict.PERTURBATION`,
    the signs drawn from `seed`."""
    rng = np.random.default_rng(seed)

    def jitter(a: np.ndarray) -> np.ndarray:
        return a * (1 + V.PERTURBATION * rng.choice([-1.0, 1.0], np.shape(a))) if a.dtype.kind == "f" else a

    return Inputs({k: jitter(w) for k, w in inputs.weights.items()}, jitter(inputs.x), jitter(inputs.target))


def _runs(framework: str, config: Config, inputs: Inputs, fresh: bool) -> dict[str, Trace]:
    """float64, the low precision, and float64 on the low precision's decisions ('aligned': the truth of the
    low-precision run, parity_tests/decisions.py). With float64 alone, the low precision is float64 itself and
    'perturbed' is a float64 run on perturbed weights, the yardstick of the float64 runs' disagreement."""
    trace = functools.partial(TRACERS[framework], config, fresh=fresh)
    run = functools.partial(trace, inputs)
    runs = {"float64": run("float64")}
    if config.dtype == "float64":
        return dict(runs, low=runs["float64"], aligned=runs["float64"],
                    perturbed=trace(perturbed(inputs, config.seed), "float64"))
    runs["low"] = run(config.dtype)
    runs["aligned"] = run("float64", imposed=runs["low"].decisions)
    return runs


@functools.lru_cache(maxsize=4)
def _cached_runs(framework: str, config: Config) -> dict[str, Trace]:
    return _runs(framework, config, make_inputs(config), fresh=False)


def traces(framework: str, config: Config, patch: Callable, inputs: Inputs | None) -> dict[str, Trace]:
    """{'float64', 'low', 'aligned'} runs of one framework; cached when unpatched and on the reference weights."""
    unpatched = patch is contextlib.nullcontext
    if unpatched and inputs is None:
        return _cached_runs(framework, config)
    inputs = inputs or make_inputs(config)  # drawn outside the patch: a planted init bug must not move them
    with patch():
        return _runs(framework, config, inputs, fresh=not unpatched)


# ------------------------------------------------------------------------------------------------- tensors


def _layers(keys) -> dict[str, list[str]]:
    layers: dict[str, list[str]] = {}
    for k in keys:
        layers.setdefault(k.rsplit(".", 1)[0], []).append(k)
    return layers


def _dead_bias(key: str, trace: Trace) -> bool:
    """The bias of a conv that feeds a train-mode BatchNorm: BN removes it, so its exact gradient is 0."""
    layer, _, name = key.rpartition(".")
    prefix, _, index = layer.rpartition(".")
    return name == "bias" and index.isdigit() and f"{prefix}.{int(index) + 1}.running_var" in trace.trained


def tensors(trace: Trace, steps: int) -> dict[tuple[str, str, str], np.ndarray]:
    """(block, quantity, layer) -> the tensor, in execution order of the blocks.

    Gradients per layer, weight and bias as one vector: the exact gradient of a conv bias before a train-mode BN
    is 0 (BN removes the batch mean), and noise on its own compares rounding with rounding. After the steps that
    bias is left out: RMSprop's first step is lr * g / (sqrt(0.01 g^2) + eps), about 10 lr sign(g) for any
    |g| >> 1e-7, so a float32 run moves it by ~2.5e-3 per step in the direction of its rounding noise. The running
    means after the steps carry that bias too and are not compared (the first step's batch means are).
    """
    blocks = [p for p in trace.acts if p not in ("", OUTPUT)]
    out = {(INPUT, "input gradient", ""): trace.input_grad}
    for path in [*blocks, OUTPUT]:
        out[(path, "activation", "")] = trace.acts[path]
    out[(OUTPUT, "loss", "")] = np.array([trace.loss])
    grouped = {
        "parameter gradient": (trace.grads, list(trace.grads)),
        "BN batch mean": (trace.batch_stats, [k for k in trace.batch_stats if k.endswith("mean")]),
        "BN batch variance": (trace.batch_stats, [k for k in trace.batch_stats if k.endswith("var")]),
        f"parameters after {steps} steps": (trace.trained, [k for k in trace.grads if not _dead_bias(k, trace)]),
        f"BN running variance after {steps} steps": (trace.trained, [k for k in trace.trained
                                                                     if k.endswith("running_var")]),
    }
    for quantity, (source, keys) in grouped.items():
        for layer, ks in _layers(keys).items():
            out[(owner_block(layer, blocks), quantity, layer)] = np.concatenate([source[k].ravel() for k in ks])
    out[(OUTPUT, f"losses over {steps} steps", "")] = np.array(trace.losses)
    return out


# ------------------------------------------------------------------------------------------------- verdicts


@dataclasses.dataclass(frozen=True)
class TensorRow:
    block: str
    quantity: str
    layer: str  # the layer inside the block ('' for a block-level tensor)
    jax: V.Errors  # JAX low precision vs JAX float64 (float64 alone: perturbed vs plain float64)
    torch: V.Errors  # PyTorch low precision vs PyTorch float64 (the same)
    float64: V.Errors  # JAX float64 vs PyTorch float64
    float64_ok: bool
    verdict: str


@dataclasses.dataclass(frozen=True)
class Divergence:
    block: str
    op: str | None  # named by the op-level localiser; None where it did not run
    framework: str | None  # None: the float64 runs disagree and no localiser attributed it
    quantity: str
    words: str


@dataclasses.dataclass
class AnchoredReport:
    config: Config
    rows: list[TensorRow]
    overall: str
    first_divergence: Divergence | None
    amplification: dict[str, dict[str, float]]  # block -> {framework: output error / input error}
    flips: dict[str, D.Flips]  # framework -> how its first step's decisions differ from float64's

    @property
    def deviates(self) -> bool:
        return self.overall != V.WITHIN


DISAGREE = "float64 runs disagree"


def scaled_runs(dtype: str) -> tuple[str, str]:
    """The run whose error against the other measures the conditioning (`verdict.float64_bound`'s), and that other."""
    return ("perturbed", "float64") if dtype == "float64" else ("low", "aligned")


def judge(jax_runs: dict[str, Trace], torch_runs: dict[str, Trace], config: Config) -> list[TensorRow]:
    """Each low-precision run against its aligned float64 truth; the plain float64 runs against each other, within
    `verdict.float64_bound` of the low-precision errors (float64 alone: of the perturbed runs' errors)."""
    j64, t64 = (tensors(runs["float64"], config.steps) for runs in (jax_runs, torch_runs))
    if set(j64) != set(t64):
        missing = sorted(set(j64) ^ set(t64))[:5]
        raise ValueError(f"the frameworks record different tensors, e.g. {missing}")
    alone = config.dtype == "float64"
    jlow, jtrue, tlow, ttrue = (tensors(runs[name], config.steps)
                                for runs in (jax_runs, torch_runs) for name in scaled_runs(config.dtype))
    rows = []
    for key in t64:
        ej, et, e64 = V.errors(jlow[key], jtrue[key]), V.errors(tlow[key], ttrue[key]), V.errors(j64[key], t64[key])
        ok64 = all(e64[m] <= V.float64_bound(ej, et, config.dtype, m) for m in V.METRICS)
        rule = V.TRAINING_RULE if _after_step1(key[1]) else V.RULE
        verdict = DISAGREE if not ok64 else V.WITHIN if alone else V.rounding_verdict(ej, et, config.rounding, rule)
        rows.append(TensorRow(*key, jax=ej, torch=et, float64=e64, float64_ok=ok64, verdict=verdict))
    return rows


# The authors' init (v2v_torch_ref/model.py `initialize`): conv and transposed-conv weights N(0, 1e-3^2), BN
# weights U(0, 1); (mean, std, kurtosis) of each. Biases and BN running statistics start exactly at 0 (var: 1).
AUTHORS_INIT = {5: (0.0, 1e-3, 3.0), 1: (0.5, 12 ** -0.5, 1.8)}  # by the weight's number of dimensions
INIT_Z = 6.0  # sampling z-score beyond which an init deviates: 2e-9 two-sided per statistic, ~300 statistics


def init_scores(state: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Per tensor of a freshly initialised model: how far its draw is from the authors' distribution, as the
    larger z-score of its sample mean (sd sigma / sqrt(n)) and sample std (relative sd sqrt((kurtosis - 1) / 4n));
    0 or inf for the tensors that start at an exact value."""
    out = {}
    for key, v in state.items():
        v = np.asarray(v, np.float64)
        if key.endswith("weight") and v.ndim in AUTHORS_INIT:
            mean, std, kurtosis = AUTHORS_INIT[v.ndim]
            n = v.size
            z_mean = abs(v.mean() - mean) / std * np.sqrt(n)
            z_std = abs(v.std() / std - 1) / np.sqrt((kurtosis - 1) / (4 * n))
            out[key] = float(max(z_mean, z_std))
        elif key.endswith(("bias", "running_mean", "running_var")):
            out[key] = 0.0 if np.all(v == (1.0 if key.endswith("running_var") else 0.0)) else math.inf
    return out


def _own_init(framework: str, config: Config) -> dict[str, np.ndarray]:
    if framework == V.JAX:
        model = jmodel.V2VModel(1, config.joints, config.width, rngs=nnx.Rngs(config.seed))
        return {k: v.numpy() for k, v in convert.torch_state_dict(model).items()}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return {k: v.numpy() for k, v in tmodel.V2VModel(1, config.joints, config.width).state_dict().items()}


@functools.lru_cache(maxsize=8)
def _cached_init(framework: str, config: Config) -> dict[str, float]:
    return init_scores(_own_init(framework, config))


def init_rows(config: Config, jax_patch: Callable, torch_patch: Callable) -> list[TensorRow]:
    """Each framework's own init (inside its patch) against the authors' distribution: the one place where the
    truth is a distribution, not a float64 run (the runs themselves all start from the same reference weights).
    Each row's Errors hold the z-score (init_scores) in every field."""
    scores = {}
    for fw, patch in ((V.JAX, jax_patch), (V.TORCH, torch_patch)):
        if patch is contextlib.nullcontext:
            scores[fw] = _cached_init(fw, config)
        else:
            with patch():
                scores[fw] = init_scores(_own_init(fw, config))
    blocks = list(SOURCES)
    rows = []
    for key in scores[V.TORCH]:
        z = {fw: scores[fw].get(key, math.inf) for fw in scores}
        bad = [fw for fw in (V.JAX, V.TORCH) if not z[fw] <= INIT_Z]
        verdict = V.WITHIN if not bad else (V.deviates(bad[0]) if len(bad) == 1 else "JAX and PyTorch deviate")
        rows.append(TensorRow(owner_block(key, blocks), "init", key, V.Errors(*[z[V.JAX]] * 3),
                              V.Errors(*[z[V.TORCH]] * 3), V.ZERO, True, verdict))
    return rows


# The inputs of each V2V block (torch's forward-hook names): the previous block, or a sum of two block outputs
# where EncoderDecoder adds its skips (v2v_torch_ref/model.py).
_ED = "encoder_decoder."
SOURCES = {
    "front_layers.0": (INPUT,), "front_layers.1": ("front_layers.0",), "front_layers.2": ("front_layers.1",),
    "front_layers.3": ("front_layers.2",), "front_layers.4": ("front_layers.3",),
    _ED + "skip_res1": ("front_layers.4",), _ED + "encoder_pool1": ("front_layers.4",),
    _ED + "encoder_res1": (_ED + "encoder_pool1",), _ED + "skip_res2": (_ED + "encoder_res1",),
    _ED + "encoder_pool2": (_ED + "encoder_res1",), _ED + "encoder_res2": (_ED + "encoder_pool2",),
    _ED + "mid_res": (_ED + "encoder_res2",), _ED + "decoder_res2": (_ED + "mid_res",),
    _ED + "decoder_upsample2": (_ED + "decoder_res2",),
    _ED + "decoder_res1": (_ED + "decoder_upsample2", _ED + "skip_res2"),
    _ED + "decoder_upsample1": (_ED + "decoder_res1",),
    "encoder_decoder": (_ED + "decoder_upsample1", _ED + "skip_res1"),
    "back_layers.0": ("encoder_decoder",), "back_layers.1": ("back_layers.0",), "back_layers.2": ("back_layers.1",),
    OUTPUT: ("back_layers.2",),
}


def block_input(acts: Mapping[str, np.ndarray], x: np.ndarray, block: str) -> np.ndarray:
    """The tensor a block received, rebuilt from the recorded outputs (a sum where a skip joins)."""
    return sum(x if s == INPUT else acts[s] for s in SOURCES[block])


def amplification(jax_runs, torch_runs, x: np.ndarray, dtype: str) -> dict[str, dict[str, float]]:
    """Per block and framework: the low-precision error of its output over that of its input (relative
    Frobenius, each against the framework's own aligned float64 run, or for float64 alone the perturbed run's
    against the plain one; the input error floored at `verdict.perturbation`)."""
    u = V.perturbation(dtype)
    scaled, truth = scaled_runs(dtype)
    out = {}
    for block in SOURCES:
        out[block] = {}
        for name, runs in ((V.JAX, jax_runs), (V.TORCH, torch_runs)):
            low, ref = runs[scaled].acts, runs[truth].acts
            e_in = V.errors(block_input(low, x, block), block_input(ref, x, block)).rel_fro
            out[block][name] = V.errors(low[block], ref[block]).rel_fro / max(e_in, u)
    return out


@dataclasses.dataclass(frozen=True)
class Site:
    """Where the first divergence lies, before the op-level localiser looks inside: the block, then the blocks
    whose backward feeds its gradients (a wrong gradient can come from a consumer's backward)."""

    blocks: tuple[str, ...]
    quantity: str
    framework: str | None  # from the rounding verdict; None for a float64 disagreement
    float64: bool


CONSUMERS = {b: tuple(c for c, srcs in SOURCES.items() if b in srcs) for b in (INPUT, *SOURCES)}

# The largest amplification ratio (either way) of unmodified code is 1.17 (docs/parity.md, "Calibration");
# 4 leaves room for the sizes not measured.
AMPLIFICATION_MULTIPLIER = 4.0


# A decision the low precision takes otherwise than float64 lies within FLIP_BOUND RMS errors of its boundary
# on unmodified code (docs/parity.md, "Decisions").
FLIP_BOUND = 16.0


def first_site(rows: list[TensorRow], amp: dict[str, dict[str, float]]) -> Site | None:
    """Where the frameworks first part.

    A float64 disagreement is a bug whatever the low precision does: the first block whose float64 output
    disagrees while its inputs agree (forward), else the loss (of an output that agrees), else the disagreeing
    gradient nearest the output (the first the backward pass meets), else the first disagreeing statistic or
    trained parameter. A low-precision deviation:
    the first block, in execution order, where one framework's amplification of its input error exceeds the
    other's beyond the calibrated band (so a block downstream of the culprit, which only carries its error along,
    is not blamed); else, for deviations that do not show in the forward pass, the deviating gradient nearest the
    output, then the first among the rest.
    """
    bad64 = [r for r in rows if not r.float64_ok]
    if bad64:
        forward = {r.block for r in bad64 if r.quantity == "activation"}
        for block in SOURCES:
            if block in forward and not forward & set(SOURCES[block]):
                return Site((block,), "activation", None, True)
        if any(r.quantity == "loss" for r in bad64):  # every output agrees, the loss does not: the loss
            return Site((OUTPUT,), "loss", None, True)
        return _later_site(bad64, None, True)
    m = AMPLIFICATION_MULTIPLIER
    for block, a in amp.items():
        for fw, other in ((V.JAX, V.TORCH), (V.TORCH, V.JAX)):
            if a[fw] > m * a[other] and any(r.block == block and r.verdict == V.deviates(fw) for r in rows):
                return Site((block,), "activation", fw, False)
    bad = [r for r in rows if r.verdict != V.WITHIN]
    return _later_site(bad, bad[0].verdict.removesuffix(" deviates"), False) if bad else None


def _later_site(bad: list[TensorRow], framework: str | None, float64: bool) -> Site:
    grads = [r for r in bad if r.quantity in ("parameter gradient", "input gradient")]
    if grads:  # rows are in execution order: the backward pass meets the last one first
        row = grads[-1]
        if not float64:
            framework = row.verdict.removesuffix(" deviates")
        return Site((row.block, *CONSUMERS.get(row.block, ())), row.quantity, framework, float64)
    return Site((bad[0].block,), bad[0].quantity, framework, float64)


def _after_step1(quantity: str) -> bool:
    return quantity == "init" or " after " in quantity and not quantity.startswith("BN batch") \
        or quantity.startswith("losses over")


def rmsprop_first_step(weights: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """torch.optim.RMSprop's first step with the authors' settings, in NumPy float64: the square average starts
    at 0, so it is (1 - alpha) g^2, and eps is added outside its square root."""
    alpha, eps = AUTHORS_RMSPROP["alpha"], AUTHORS_RMSPROP["eps"]
    return {k: np.asarray(weights[k], np.float64) - LR * g / (np.sqrt((1 - alpha) * g * g) + eps)
            for k, g in grads.items()}


def judged_alone(runs: Mapping[str, Mapping[str, Trace]], weights: Mapping[str, Mapping[str, np.ndarray]],
                 target: np.ndarray, op: str) -> list[str]:
    """The frameworks whose float64 `op` ('optimizer' or 'loss') is wrong, each judged on its own float64 run
    against NumPy, as the op localiser judges an op: the first step against `rmsprop_first_step` of its own
    gradients, the loss against the MSE of its own output."""
    bad = []
    for fw, by_dtype in runs.items():
        trace = by_dtype["float64"]
        if op == "optimizer":
            truth = rmsprop_first_step(weights[fw], trace.grads)
            keys = sorted(truth)
            got, want = ([d[k].ravel() for k in keys] for d in (trace.stepped, truth))
        else:
            got, want = [[trace.loss]], [[np.mean(np.square(trace.acts[OUTPUT] - target))]]
        if not V.errors(np.concatenate(got), np.concatenate(want)).rel_fro <= V.ALONE_BOUND:
            bad.append(fw)
    return bad


def _layer_kind(config: Config, layer: str) -> str:
    """The op kind of a parameterised layer (a torch key without its last part), from a shapes-only torch V2V."""
    with torch.device("meta"):
        module = tmodel.V2VModel(1, config.joints, config.width).get_submodule(layer)
    return {torch.nn.ConvTranspose3d: "upsample", torch.nn.Conv3d: "conv",
            torch.nn.BatchNorm3d: "BN normalise"}[type(module)]


def misloaded(runs: Mapping[str, Mapping[str, Trace]], weights: Mapping[str, Mapping[str, np.ndarray]],
              config: Config) -> Divergence | None:
    """The first parameter, in state_dict order, that a framework's float64 model does not hold as it was given
    (a converter's or a loader's bug, there before anything is computed), as a divergence; None if all hold."""
    for key in runs[V.TORCH]["float64"].loaded:
        bad = [fw for fw, by_dtype in runs.items()
               if not V.errors(by_dtype["float64"].loaded[key], weights[fw][key]).rel_fro <= V.ALONE_BOUND]
        if bad:
            layer = key.rpartition(".")[0]
            block = owner_block(layer, list(SOURCES))
            op = f"{layer if block == OUTPUT else layer.removeprefix(block + '.')} ({_layer_kind(config, layer)})"
            who = " and ".join(bad)
            return Divergence(block, op, who, "parameters as loaded",
                              f"{who} does not hold the weights it was given: first {key}, before any step")
    return None


def _op_blocks(blocks) -> list[str]:
    """The blocks whose ops may hold a site's fault, in execution order: each block of the site, preceded by the
    encoder-decoder where a skip join feeds it (the joins are the encoder-decoder's own ops, parity_tests/ops.py)."""
    out = []
    for block in blocks:
        for b in (["encoder_decoder"] if len(SOURCES.get(block, ())) > 1 else []) + [block]:
            if b != INPUT and b not in out:
                out.append(b)
    return out


def localise(site: Site, config: Config, inputs: Inputs, jax_patch: Callable, torch_patch: Callable,
             alone: Callable[[str], list[str]] = lambda op: []) -> Divergence:
    """The site named in words, with the op from `parity_tests.ops.localise_op` (fed the float64 truth of each
    candidate block's input and output cotangent, in turn, until one names an op), when that module is there; where
    the float64 runs disagree and every op is right alone, from `ops.composition_deviation` (each block run whole).
    `alone(op)`: the frameworks whose float64 optimizer or loss is wrong (`judged_alone`), asked when the float64
    runs first disagree after the first step, or at the loss of an output that agrees."""
    dtype = "float64" if site.float64 else config.dtype
    block, op, framework = site.blocks[0], None, site.framework
    try:
        from parity_tests import ops  # noqa: PLC0415 - the op-level localiser, optional
    except ImportError:
        ops = None
    if _after_step1(site.quantity):  # the first step's tensors agree: the difference lies in what follows
        op = "init" if site.quantity == "init" else "optimizer"
        if site.float64 and op == "optimizer":
            framework = " and ".join(alone(op)) or None
    elif site.float64 and site.quantity == "loss" and (wrong := alone("loss")):
        op, framework = "(loss) (loss)", " and ".join(wrong)
    elif ops is not None and dtype in ops.DTYPES:
        candidates = ops.truths_from_torch(inputs.weights, inputs.x, inputs.target, _op_blocks(site.blocks))
        numerics = dict(jax_patch=jax_patch, torch_patch=torch_patch, conv=config.conv, upsample=config.upsample)
        op_level = lambda c, t: ops.localise_op(  # noqa: E731
            c, inputs.weights, t.x, t.cotangent, dtype, target=inputs.target, seed=config.seed,
            tf32=config.rounding == "tf32", **numerics)
        composed = lambda c, t: ops.composition_deviation(c, inputs.weights, t.x, t.cotangent, **numerics)  # noqa: E731
        checks = (op_level, composed) if site.float64 else (op_level,)  # composition: where every op is right alone
        found = next((f for check in checks for c, t in candidates.items() if (f := check(c, t)) is not None), None)
        if found is not None:
            block, op, framework = found.block, f"{found.op} ({found.kind})", found.framework
    who = framework or "JAX or PyTorch (not attributed)"
    where = block + (f", op {op}" if op else "")
    if site.float64:
        words = (f"{who} computes a different function: the float64 runs first disagree at {where} "
                 f"({site.quantity}), beyond float64 rounding")
    elif op == "init":
        words = (f"{who}'s own init of {block} is off the authors' distribution (beyond {INIT_Z:g} sigma); the "
                 f"comparison itself gave both frameworks the same weights")
    else:
        words = (f"{who} rounds worse than the other framework beyond the calibrated band, first at {where} "
                 f"({site.quantity}, {config.dtype})")
    return Divergence(block, op, framework, site.quantity, words)


def overall(rows: list[TensorRow], divergence: Divergence | None, flips: Mapping[str, D.Flips] = {}) -> str:
    frameworks = {r.verdict.removesuffix(" deviates") for r in rows if r.verdict not in (V.WITHIN, DISAGREE)}
    frameworks |= {fw for fw, f in flips.items() if f.worst > FLIP_BOUND}
    if any(r.verdict == DISAGREE for r in rows):
        frameworks.add(divergence.framework if divergence and divergence.framework else None)
    if not frameworks:
        return V.WITHIN
    if None in frameworks:
        return DISAGREE
    return V.deviates(frameworks.pop()) if len(frameworks) == 1 else "JAX and PyTorch deviate"


def run_anchored(config: Config, *, jax_patch: Callable = contextlib.nullcontext,
                 torch_patch: Callable = contextlib.nullcontext, weights: Mapping[str, np.ndarray] | None = None,
                 jax_weights: Mapping[str, np.ndarray] | None = None) -> AnchoredReport:
    """The anchored comparison of one configuration (see the module docstring).

    `jax_patch` / `torch_patch`: zero-argument context-manager factories entered around each framework's runs.
    `weights`: a torch-keyed state_dict to use instead of the reference init (e.g. a user's checkpoint);
    `jax_weights`: JAX's own, where the user has two checkpoints that should hold the same function.
    """
    inputs = make_inputs(config, weights)
    jax_inputs = inputs if jax_weights is None else dataclasses.replace(inputs,
                                                                       weights=train_mode_weights(jax_weights))
    jax_runs = traces(V.JAX, config, jax_patch, None if weights is None and jax_weights is None else jax_inputs)
    torch_runs = traces(V.TORCH, config, torch_patch, None if weights is None else inputs)
    rows = judge(jax_runs, torch_runs, config) + init_rows(config, jax_patch, torch_patch)
    amp = amplification(jax_runs, torch_runs, inputs.x, config.rounding)
    flips = {fw: D.flip_scores(runs["low"].decisions[0], runs["aligned"].decisions[0])
             for fw, runs in ((V.JAX, jax_runs), (V.TORCH, torch_runs))}
    site = first_site(rows, amp)
    runs = {V.JAX: jax_runs, V.TORCH: torch_runs}
    weights = {V.JAX: jax_inputs.weights, V.TORCH: inputs.weights}
    divergence = None if site is None else misloaded(runs, weights, config) or localise(
        site, config, inputs, jax_patch, torch_patch, lambda op: judged_alone(runs, weights, inputs.target, op))
    return AnchoredReport(config, rows, overall(rows, divergence, flips), divergence, amp, flips)
