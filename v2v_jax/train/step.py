"""The jitted training and evaluation steps, as pure functions of an explicit TrainState.

Geometry (augmentation, voxelisation, targets) runs inside the step, on the device; only depth maps, centres and
joints travel from the host.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from v2v_jax import geometry
from v2v_jax.data.cameras import DatasetSpec
from v2v_jax.dtypes import PRECISIONS
from v2v_jax.layers import Numerics
from v2v_jax.model import V2VModel


@dataclasses.dataclass(frozen=True)
class GeometryConfig:
    """Static description of how samples become voxels, targets and joints."""

    spec: DatasetSpec
    grid: int
    cube_mm: float
    augment: bool = True
    decode: str = "argmax"
    max_translation: float = geometry.MAX_TRANSLATION_VOXELS  # voxels of this grid
    loss: str = "mse"           # mse (the paper's) | integral (mse + integral_weight * integral_l1)
    integral_weight: float = 0.0
    beta: float = 30.0          # softmax sharpness of the integral loss and of soft-argmax decoding
    geometry: str = "ours"      # pixel numbering and voxel rounding (geometry.GEOMETRIES); last: it names the module


def training_loss(geo: GeometryConfig) -> Callable:
    """loss(pred heatmaps, joint grid coordinates) -> scalar, the training loss `geo` names."""
    if geo.loss == "mse":
        return geometry.heatmap_mse
    if geo.loss == "integral":
        return lambda pred, coords: (geometry.heatmap_mse(pred, coords)
                                     + geo.integral_weight * geometry.integral_l1(pred, coords, geo.beta))
    raise ValueError(f"unknown loss {geo.loss!r}")


class TrainState(flax.struct.PyTreeNode):
    step: jax.Array          # int32 scalar: steps taken
    params: nnx.State
    batch_stats: nnx.State
    opt_state: Any
    key: jax.Array           # base PRNG key; step s draws from fold_in(key, s)
    skipped: jax.Array       # int32 scalar: steps skipped for non-finite values
    ema_params: Any = None   # moving averages of params and batch_stats (`ema_update`); None without --ema-decay
    ema_batch_stats: Any = None


def numerics_for(dtype: str, batchnorm: str = "torch", init: str = "original", conv: str = "auto",
                 upsample: str = "einsum") -> Numerics:
    """The model's Numerics for the precision named `dtype` (v2v_jax/dtypes.py) and the other options."""
    compute, param = PRECISIONS[dtype]
    return Numerics(dtype=compute, param_dtype=param, batchnorm=batchnorm, init=init, conv=conv, upsample=upsample)


def init_state(model: V2VModel, tx: optax.GradientTransformation, seed: int, ema: bool = False):
    """Splits a model into (train graphdef, eval graphdef, TrainState); with `ema`, the moving averages start at
    the initial variables."""
    model.train()
    train_def, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    model.eval()
    eval_def = nnx.graphdef(model)
    model.train()
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                       opt_state=tx.init(params), key=jax.random.key(seed), skipped=jnp.zeros((), jnp.int32))
    if ema:
        copy = lambda tree: jax.tree.map(jnp.copy, tree)  # noqa: E731  (own buffers: the train step donates them)
        state = state.replace(ema_params=copy(params), ema_batch_stats=copy(batch_stats))
    return train_def, eval_def, state


def ema_update(average, new, step: jax.Array, decay: float):
    """The moving average after `step` steps: rate * average + (1 - rate) * new for every float leaf, with
    rate = min(decay, (1 + step) / (10 + step)) so the initial weights fade within the first steps (the decay of
    tf.train.ExponentialMovingAverage with num_updates); integer leaves (BatchNorm's counter) take the new value."""
    rate = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
    blend = lambda a, x: (rate * a + (1 - rate) * x).astype(x.dtype) if jnp.issubdtype(x.dtype, jnp.inexact) else x  # noqa: E731
    return jax.tree.map(blend, average, new)


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.stack(leaves).all()


def make_update(train_def, tx: optax.GradientTransformation, *, on_nonfinite: str = "stop",
                objective: Callable = geometry.heatmap_mse, ema_decay: float = 0.0) -> Callable:
    """update(state, voxels, joint_coords) -> (state, metrics): one optimiser step on given inputs and targets,
    minimising objective(heatmaps, joint_coords), and of the moving averages if the state has them (`ema_decay`).
    metrics['loss'] is the objective, metrics['heatmap_mse'] the heatmap MSE (the same number for the paper's
    objective)."""

    def loss_fn(params, batch_stats, voxels, coords):
        model = nnx.merge(train_def, params, batch_stats, copy=True)
        pred = model(voxels)
        return objective(pred, coords), (nnx.state(model, nnx.BatchStat), geometry.heatmap_mse(pred, coords))

    def update(state: TrainState, voxels, coords):
        (loss, (batch_stats, mse)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.batch_stats, voxels, coords)
        finite = jnp.isfinite(loss) & _all_finite(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
        if state.ema_params is not None:
            new = new.replace(ema_params=ema_update(state.ema_params, params, new.step, ema_decay),
                              ema_batch_stats=ema_update(state.ema_batch_stats, batch_stats, new.step, ema_decay))
        if on_nonfinite == "skip":
            keep = lambda a, b: jax.tree.map(lambda x, y: jnp.where(finite, x, y), a, b)  # noqa: E731
            new = new.replace(params=keep(new.params, state.params),
                              batch_stats=keep(new.batch_stats, state.batch_stats),
                              opt_state=keep(new.opt_state, state.opt_state),
                              ema_params=keep(new.ema_params, state.ema_params),
                              ema_batch_stats=keep(new.ema_batch_stats, state.ema_batch_stats),
                              skipped=state.skipped + (~finite).astype(jnp.int32))
        return new, {"loss": loss, "heatmap_mse": mse, "finite": finite, "grad_norm": optax.global_norm(grads)}

    return update


def make_train_step(train_def, tx, geo: GeometryConfig, **update_options) -> Callable:
    """train_step(state, batch) -> (state, metrics); batch = {'depth', 'center', 'joints'} as arrays."""
    update = make_update(train_def, tx, objective=training_loss(geo), **update_options)

    def train_step(state: TrainState, batch):
        key = jax.random.fold_in(state.key, state.step) if geo.augment else None
        voxels, coords = geometry.encode_batch(batch["depth"], batch["center"], batch["joints"], key, geo.spec,
                                               geo.grid, geo.cube_mm, geometry=geo.geometry,
                                               max_translation=geo.max_translation)
        return update(state, voxels, coords)

    return jax.jit(train_step, donate_argnums=0)


def make_eval_step(eval_def, geo: GeometryConfig) -> Callable:
    """eval_step(params, batch_stats, batch) -> (predicted joints (B, J, 3) mm, per-sample heatmap loss (B,))."""

    def eval_step(params, batch_stats, batch):
        voxels, coords = geometry.encode_batch(batch["depth"], batch["center"], batch["joints"], None, geo.spec,
                                               geo.grid, geo.cube_mm, geometry=geo.geometry)
        model = nnx.merge(eval_def, params, batch_stats, copy=True)
        heatmaps = model(voxels)
        joints = geometry.decode_heatmaps(heatmaps, batch["center"], geo.cube_mm, geo.grid, method=geo.decode,
                                          beta=geo.beta)
        per_sample = jax.vmap(lambda h, c: geometry.heatmap_mse(h[None], c[None]))(heatmaps, coords)
        return joints, per_sample

    return jax.jit(eval_step)
