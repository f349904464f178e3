"""Run the PyTorch and the Flax V2V (or any block of it) side by side and measure where they differ.

The JAX model always gets the torch model's weights and BN statistics (through `v2v_jax.convert`), the same input
and the same MSE target; neither model passed in is modified. Errors are relative in the max norm,
max|a - b| / max|b| with b the torch value, computed in float64 on the host.

    rows = compare_models(torch_model, jax_model, x)   # x in torch layout (B, C, D, H, W)
    print(format_table(rows)); print(first_divergence(rows))
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import torch.nn.functional as F
from flax import nnx

from v2v_jax import convert
from v2v_jax.model import Block, record_intermediates
from v2v_jax.train.optim import AUTHORS_RMSPROP, make_optimizer
from v2v_torch_ref import model as tmodel

INPUT, OUTPUT = "(input)", "(output)"

# Per-block relative tolerances by compute dtype (see docs/parity.md for the derivation). The rounding error of
# one layer is about u * sqrt(K) for a reduction of K = I*k^3 <= 3456 terms (random-walk accumulation), and it
# adds up in quadrature over L <= 60 conv/BN layers: sqrt(L * K) * u ~ 455 u.
#   float64, u = 1.1e-16: 5e-14; 1e-10 leaves room for the worst case L * K * u = 2.3e-11.
#   float32, u = 6.0e-8: 2.7e-5; 1e-4 is that with a factor ~4 margin.
#   tf32 (GPU default, 10-bit mantissa inputs, u = 4.9e-4 on each product's inputs, float32 sums): the
#     per-layer error is ~u (input rounding does not grow with K); sqrt(L) * u = 3.8e-3, so 1e-2.
#   bfloat16 (8-bit mantissa, u = 3.9e-3, activations stored in bf16 after every layer): sqrt(L) * u = 3e-2,
#     so 1e-1; parameters and BN statistics stay float32.
TOLERANCES = {"float64": 1e-10, "float32": 1e-4, "tf32": 1e-2, "bfloat16": 1e-1}


def torch_rmsprop(params) -> torch.optim.Optimizer:
    """The authors' optimiser in torch, the side `make_optimizer("rmsprop", ...)` must equal."""
    return torch.optim.RMSprop(params, **AUTHORS_RMSPROP)


def tolerance(dtype: str, tf32: bool = False) -> float:
    return TOLERANCES["tf32" if tf32 and dtype == "float32" else dtype]


def rel_error(a, b) -> float:
    """max|a - b| / max|b|: 0 when both are equal (also both zero), inf when b is 0 but a is not or when a
    non-finite value differs."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    if np.array_equal(a, b, equal_nan=True):
        return 0.0
    diff = np.abs(a - b)
    scale = np.abs(b).max() if b.size else 0.0
    if not np.all(np.isfinite(diff)) or scale == 0:
        return math.inf
    return float(diff.max() / scale)


def abs_error(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max()) if a.size else 0.0


def to_jax_layout(x: np.ndarray) -> np.ndarray:
    """(B, C, D, H, W) -> (B, D, H, W, C)."""
    return np.moveaxis(np.asarray(x), 1, -1)


def to_torch_layout(x: np.ndarray) -> np.ndarray:
    return np.moveaxis(np.asarray(x), -1, 1)


@dataclasses.dataclass(frozen=True)
class Row:
    """Errors of one block. grad_rel: over the block's own layers (each layer's weight and bias as one vector);
    stat_rel: its BN running mean/var after the step. None where the quantity does not apply."""

    path: str
    fwd_abs: float | None
    fwd_rel: float | None
    grad_rel: float | None
    stat_rel: float | None
    tol: float

    def failures(self, tol: float | None = None) -> list[str]:
        tol = self.tol if tol is None else tol
        named = (("forward", self.fwd_rel), ("gradient", self.grad_rel), ("running statistics", self.stat_rel))
        return [name for name, err in named if err is not None and not err <= tol]

    @property
    def ok(self) -> bool:
        return not self.failures()


@dataclasses.dataclass(frozen=True)
class Divergence:
    path: str
    quantity: str
    error: float
    tol: float

    def __str__(self):
        return f"first divergence: {self.path} ({self.quantity}: {self.error:.3e} > {self.tol:.0e})"


def first_divergence(rows: Sequence[Row], tol: float | None = None) -> Divergence | None:
    """The block where the frameworks first part.

    Errors propagate forward through activations and backward through gradients, so the culprit is the earliest
    forward failure in execution order; failing that, the gradient failure nearest the output (the first one the
    backward pass meets); failing that, the earliest running-statistics failure.
    """
    def find(ordered, quantity, attr):
        for row in ordered:
            if quantity in row.failures(tol):
                return Divergence(row.path, quantity, getattr(row, attr), row.tol if tol is None else tol)
        return None

    return (find(rows, "forward", "fwd_rel") or find(reversed(rows), "gradient", "grad_rel")
            or find(rows, "running statistics", "stat_rel"))


def format_table(rows: Sequence[Row]) -> str:
    """A markdown table of the rows."""
    def fmt(v):
        return "-" if v is None else f"{v:.2e}"

    lines = ["| block | fwd max abs | fwd max rel | grad max rel | BN stats max rel | tol | |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        verdict = "ok" if r.ok else "FAIL " + ", ".join(r.failures())
        lines.append(f"| {r.path} | {fmt(r.fwd_abs)} | {fmt(r.fwd_rel)} | {fmt(r.grad_rel)} | {fmt(r.stat_rel)} "
                     f"| {r.tol:.0e} | {verdict} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- running both


@dataclasses.dataclass
class Run:
    """What one framework computed, in torch layout and torch names, as float64 numpy arrays."""

    loss: float
    output: np.ndarray
    acts: dict[str, np.ndarray]
    input_grad: np.ndarray | None  # None (and grads empty) for a forward-only run
    grads: dict[str, np.ndarray]
    state: dict[str, np.ndarray]


def _numpy(t) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        return t.detach().cpu().to(torch.float64).numpy()
    return np.asarray(t, np.float64)


def torch_input(model: torch.nn.Module, x: np.ndarray) -> torch.Tensor:
    """x as a tensor of the model's dtype on its device (x's own dtype, on the CPU, for a model without state)."""
    tensors = [*model.parameters(), *model.buffers()]
    if not tensors:
        return torch.as_tensor(np.asarray(x))
    return torch.as_tensor(np.asarray(x), dtype=tensors[0].dtype, device=tensors[0].device)


def run_torch(model: torch.nn.Module, x: np.ndarray, target: np.ndarray | None, *, train: bool, grads: bool = True,
              memory_format: torch.memory_format = torch.contiguous_format, seed: int = 0) -> tuple[Run, np.ndarray]:
    """One forward (and backward) pass of a copy of `model`; also returns the target used (drawn from `seed` when
    None, uniform in [0, 1) like heatmaps)."""
    model = copy.deepcopy(model).train(train).to(memory_format=memory_format)
    xt = torch_input(model, x).contiguous(memory_format=memory_format).requires_grad_(grads)
    with torch.set_grad_enabled(grads):
        y, taps = tmodel.forward_with_intermediates(model, xt)
        if target is None:
            target = np.random.default_rng(seed).random(tuple(y.shape))
        loss = F.mse_loss(y, torch.as_tensor(target, dtype=y.dtype, device=y.device))
    if grads:
        loss.backward()
    run = Run(loss=loss.item(), output=_numpy(y), acts={k: _numpy(v) for k, v in taps.items()},
              input_grad=_numpy(xt.grad) if grads else None,
              grads={k: _numpy(v.grad) for k, v in model.named_parameters()} if grads else {},
              state={k: _numpy(v) for k, v in model.state_dict().items()})
    return run, target


def _mse(y, target):
    y = y.astype(jnp.promote_types(y.dtype, jnp.float32))
    return jnp.mean(optax.squared_error(y, target.astype(y.dtype)))


@nnx.jit
def _jax_forward_backward(model, x, target):
    def loss_fn(model, x):
        with record_intermediates() as taps:
            y = model(x)
        return _mse(y, target), (y, dict(taps))

    (loss, (y, taps)), (g_model, g_x) = nnx.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(model, x)
    return loss, y, taps, g_model, g_x


@nnx.jit
def _jax_forward(model, x, target):
    with record_intermediates() as taps:
        y = model(x)
    return _mse(y, target), y, dict(taps)


def _param_dtype(model: nnx.Module, default=jnp.float32):
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    return leaves[0].dtype if leaves else default


def label_blocks(module: nnx.Module) -> nnx.Module:
    """Names every block by its path inside `module` (as torch's named_modules does), so that a lone block or a
    sub-block of a model records its intermediates under the same keys as its torch twin."""
    for path, m in nnx.iter_graph(module):
        if isinstance(m, Block):
            m.path = ".".join(str(p) for p in path)
    return module


def run_jax(model: nnx.Module, x: np.ndarray, target: np.ndarray, *, train: bool, grads: bool = True) -> Run:
    """One forward (and backward) pass of a copy of `model`, results mapped to torch layout and keys."""
    model = label_blocks(nnx.clone(model))
    model.train() if train else model.eval()
    dtype = _param_dtype(model, default=np.asarray(x).dtype)
    xj, tj = jnp.asarray(to_jax_layout(x), dtype), jnp.asarray(to_jax_layout(target), dtype)
    if grads:
        loss, y, taps, g_model, g_x = _jax_forward_backward(model, xj, tj)
        grad_model = nnx.clone(model)
        nnx.update(grad_model, g_model)
        param_grads = {k: _numpy(v) for k, v in convert.torch_state_dict(grad_model).items()}
    else:
        (loss, y, taps), g_x, param_grads = _jax_forward(model, xj, tj), None, {}
    return Run(loss=float(loss), output=to_torch_layout(_numpy(y)),
               acts={k: to_torch_layout(_numpy(v)) for k, v in taps.items()},
               input_grad=None if g_x is None else to_torch_layout(_numpy(g_x)), grads=param_grads,
               state={k: _numpy(v) for k, v in convert.torch_state_dict(model).items()})


def with_torch_weights(jax_model: nnx.Module, torch_model: torch.nn.Module) -> nnx.Module:
    """A copy of the JAX model holding the torch model's parameters and BN statistics."""
    return convert.load_torch_state_dict(nnx.clone(jax_model), torch_model.state_dict(), source="torch model")


# ------------------------------------------------------------------------------------------------- comparing


def owner_block(key: str, blocks: Sequence[str]) -> str:
    """The innermost block whose path prefixes the key, else OUTPUT (e.g. V2V's output_layer)."""
    owners = [b for b in blocks if key.startswith(b + ".")]
    return max(owners, key=len) if owners else OUTPUT


def layer_errors(a: dict[str, np.ndarray], b: dict[str, np.ndarray], keys: Sequence[str]) -> dict[str, float]:
    """Relative error per layer, its tensors (weight and bias) taken as one vector.

    Per layer rather than per tensor because the exact gradient of a conv bias before a train-mode BN is 0 (BN
    removes the batch mean): on its own it compares rounding noise with rounding noise.
    """
    layers: dict[str, list[str]] = {}
    for k in keys:
        layers.setdefault(k.rsplit(".", 1)[0], []).append(k)
    return {layer: rel_error(np.concatenate([a[k].ravel() for k in ks]), np.concatenate([b[k].ravel() for k in ks]))
            for layer, ks in layers.items()}


def stat_errors(a: dict[str, np.ndarray], b: dict[str, np.ndarray], eps: float = 1e-5) -> dict[str, float]:
    """Error of each BN running statistic: the variance relative, the mean in units of the channel's running
    std sqrt(var + eps) (the scale on which BN uses it); inf where the batch counters differ.

    The mean is not taken relative to itself because it includes the preceding conv's bias, whose exact
    gradient is 0 in train mode: RMSprop moves it by lr/eps = 2.5e4 times its rounding-noise gradient.
    """
    out = {}
    for k in b:
        if k.endswith("running_mean"):
            std = np.sqrt(b[k.replace("running_mean", "running_var")] + eps)
            err = np.abs(a[k] - b[k]) / std
            out[k] = float(err.max()) if np.all(np.isfinite(err)) else math.inf
        elif k.endswith("running_var"):
            out[k] = rel_error(a[k], b[k])
        elif k.endswith("num_batches_tracked"):
            out[k] = 0.0 if np.array_equal(a[k], b[k]) else math.inf
    return out


def _max(values) -> float | None:
    values = list(values)
    return max(values) if values else None


def compare_runs(t: Run, j: Run, *, train: bool, tol: float) -> list[Row]:
    """Rows in execution order: the input gradient, every block (torch's forward-hook order), the output."""
    blocks = [p for p in t.acts if p != ""]
    if set(blocks) != set(j.acts) - {""}:
        raise ValueError(f"the models record different blocks: {sorted(set(blocks) ^ (set(j.acts) - {''}))}")
    grad_err = layer_errors(j.grads, t.grads, list(t.grads))
    stat_err = stat_errors(j.state, t.state) if train else {}

    def owned(errors, path):
        return _max(e for k, e in errors.items() if owner_block(k, blocks) == path) if errors else None

    input_err = None if t.input_grad is None else rel_error(j.input_grad, t.input_grad)
    rows = [Row(INPUT, None, None, input_err, None, tol)]
    for path in blocks:
        rows.append(Row(path, abs_error(j.acts[path], t.acts[path]), rel_error(j.acts[path], t.acts[path]),
                        owned(grad_err, path), owned(stat_err, path), tol))
    rows.append(Row(OUTPUT, abs_error(j.output, t.output), rel_error(j.output, t.output),
                    owned(grad_err, OUTPUT), owned(stat_err, OUTPUT), tol))
    return rows


def compare_models(torch_model: torch.nn.Module, jax_model: nnx.Module, x: np.ndarray, *, train: bool = True,
                   grads: bool = True, target: np.ndarray | None = None, tol: float | None = None,
                   memory_format: torch.memory_format = torch.contiguous_format, seed: int = 0) -> list[Row]:
    """Forward (per block), backward (input and every parameter; skipped when not `grads`) and, in train mode, BN
    running statistics of both models on the same input x (torch layout), the JAX model given the torch weights.

    The loss is MSE against `target` (torch layout; uniform [0, 1) drawn from `seed` when None). `tol` defaults to
    TOLERANCES of the JAX model's compute dtype. `memory_format` applies to the torch model and input.
    """
    t_run, target = run_torch(torch_model, x, target, train=train, grads=grads, memory_format=memory_format,
                              seed=seed)
    j_run = run_jax(with_torch_weights(jax_model, torch_model), x, target, train=train, grads=grads)
    if tol is None:
        tol = tolerance(compute_dtype(jax_model))
    return compare_runs(t_run, j_run, train=train, tol=tol)


def compute_dtype(jax_model: nnx.Module) -> str:
    """The name of the dtype the model's layers compute in (Numerics.dtype)."""
    for _, m in nnx.iter_graph(jax_model):
        numerics = getattr(m, "numerics", None)
        if numerics is not None:
            return jnp.dtype(numerics.dtype).name
    return jnp.dtype(_param_dtype(jax_model)).name


def calibrate_running_stats(torch_model: torch.nn.Module, x: np.ndarray) -> torch.nn.Module:
    """A copy whose BN running statistics are the batch statistics of x (so eval mode sees realistic scales)."""
    model = copy.deepcopy(torch_model).train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: after one batch, exactly its statistics
    with torch.no_grad():
        model(torch_input(model, x))
    for bn in bns:
        bn.momentum = 0.1
    return model


# -------------------------------------------------------------------------------------------------- training


@nnx.jit
def _jax_train_step(model, optimizer, x, target):
    loss, grads = nnx.value_and_grad(lambda m: _mse(m(x), target))(model)
    optimizer.update(model, grads)
    return loss


@dataclasses.dataclass
class TrainParity:
    torch_losses: list[float]
    jax_losses: list[float]
    param_errors: dict[str, float]  # per layer, weight and bias as one vector
    stat_errors: dict[str, float]  # per BN statistic

    @property
    def loss_error(self) -> float:
        return rel_error(self.jax_losses, self.torch_losses)

    def max_error(self) -> float:
        return max([self.loss_error, *self.param_errors.values(), *self.stat_errors.values()])


def train_both(torch_model: torch.nn.Module, jax_model: nnx.Module, batches: Sequence[np.ndarray],
               targets: Sequence[np.ndarray], *, optimizers: tuple[Any, Any] | None = None) -> TrainParity:
    """Trains copies of both models (JAX from the torch weights) on the same batches with MSE loss and the
    authors' RMSprop, one step per batch, and compares losses, parameters and BN statistics afterwards.

    `optimizers`: (torch optimizer factory taking parameters, optax transformation); default the authors'.
    """
    torch_model = copy.deepcopy(torch_model).train()
    jax_model = with_torch_weights(jax_model, torch_model)
    jax_model.train()
    make_torch_opt, tx = optimizers or (
        torch_rmsprop, make_optimizer("rmsprop", AUTHORS_RMSPROP["lr"]))
    opt = make_torch_opt(torch_model.parameters())
    optimizer = nnx.Optimizer(jax_model, tx, wrt=nnx.Param)
    dtype = _param_dtype(jax_model)
    torch_losses, jax_losses = [], []
    for x, target in zip(batches, targets, strict=True):
        opt.zero_grad()
        loss = F.mse_loss(torch_model(torch_input(torch_model, x)), torch_input(torch_model, target))
        loss.backward()
        opt.step()
        torch_losses.append(loss.item())
        jax_losses.append(float(_jax_train_step(jax_model, optimizer, jnp.asarray(to_jax_layout(x), dtype),
                                                jnp.asarray(to_jax_layout(target), dtype))))
    t_state = {k: _numpy(v) for k, v in torch_model.state_dict().items()}
    j_state = {k: _numpy(v) for k, v in convert.torch_state_dict(jax_model).items()}
    params = [k for k, _ in torch_model.named_parameters()]
    return TrainParity(torch_losses, jax_losses, layer_errors(j_state, t_state, params), stat_errors(j_state, t_state))
