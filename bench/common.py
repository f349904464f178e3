"""Shared harness of the JAX-vs-PyTorch benchmarks (bench/conv.py, bench/train_step.py, bench/inference.py).

Both frameworks run in one process on the same weights and inputs; calls are interleaved round by round, so
that the noise of a shared machine hits both alike, and every ratio is taken within a round before the median.
On CPU, torch gets as many threads as XLA's pool (one per core the process may run on). On a GPU, float32 runs
with TF32 on in both frameworks (JAX's default precision; torch's cudnn.allow_tf32 and cuda.matmul.allow_tf32)
and bfloat16 as JAX Numerics(dtype=bfloat16) on float32 parameters against torch autocast(bfloat16).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

# torch's OpenMP workers otherwise spin after every parallel region: on a CPU shared with other processes (or
# with XLA's thread pool in this same process) that made torch's convolutions up to 20x slower here. libgomp reads
# the variable when torch loads it, so this module must be imported first; an explicit setting wins.
if "torch" in sys.modules and "OMP_WAIT_POLICY" not in os.environ:
    raise ImportError("import bench/common.py before torch (it sets OMP_WAIT_POLICY for torch's OpenMP threads)")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Both frameworks share one GPU: JAX takes memory as it needs it instead of 75 % of the device up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from flax import nnx  # noqa: E402

from v2v_jax import convert, geometry  # noqa: E402
from v2v_jax.formulations import CONV_IMPLS, resolve_conv  # noqa: E402
from v2v_jax.model import V2VModel  # noqa: E402
from v2v_jax.train.optim import AUTHORS_RMSPROP, make_optimizer  # noqa: E402
from v2v_jax.train.step import init_state, make_update, numerics_for  # noqa: E402
from v2v_torch_ref import model as torch_model_lib  # noqa: E402
from v2v_torch_ref.backends import set_switches, torch_switches  # noqa: E402
from v2v_torch_ref.train import make_optimizer as torch_optimizer  # noqa: E402

import roofline  # noqa: E402
from tables import markdown_table  # noqa: E402, F401  (re-exported for the benchmarks)

JOINTS = 21
DTYPES = ("float32", "bfloat16")
# XLA debug options worth trying on the GPU step, passed per compilation (`Lowered.compile(compiler_options=...)`,
# so one process can sweep them). Every name is a DebugOptions field of jaxlib (an unknown one is an error at
# compile time, on any backend); GPU options compile unchanged, and do nothing, on CPU.
XLA_FLAG_SETS = {
    "default": {},
    "autotune0": {"xla_gpu_autotune_level": 0},               # no cuDNN/cuBLAS algorithm search
    "nhwc": {"xla_gpu_force_conv_nhwc": True},                # channels-last convolution layouts
    "nchw": {"xla_gpu_force_conv_nchw": True},                # channels-first convolution layouts
    "runtime_fusion": {"xla_gpu_use_runtime_fusion": True},   # cuDNN runtime-compiled conv + elementwise fusions
    "conv_fusion": {"xla_gpu_experimental_enable_conv_fusion": True},
    "no_triton_gemm": {"xla_gpu_enable_triton_gemm": False},  # cuBLAS for the products (1^3 convs, upsampling)
}


# --- machine --------------------------------------------------------------------------------------------------

def on_gpu() -> bool:
    return jax.default_backend() == "gpu"


def cpu_threads() -> int:
    return len(os.sched_getaffinity(0))


def setup_torch() -> torch.device:
    """torch on the same kind of device as JAX; TF32 on for float32 on GPU, as JAX does by default."""
    if on_gpu():
        set_switches(tf32=True, benchmark=True)
        return torch.device("cuda")
    torch.set_num_threads(cpu_threads())
    return torch.device("cpu")


def environment() -> dict:
    device = jax.devices()[0]
    return {
        "date": str(datetime.date.today()),
        "device": device.device_kind if on_gpu() else f"CPU {platform.machine()}, {cpu_threads()} cores",
        "jax": jax.__version__, "torch": torch.__version__,
        "torch_threads": None if on_gpu() else torch.get_num_threads(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "omp_wait_policy": None if on_gpu() else os.environ.get("OMP_WAIT_POLICY"),
        "tf32": on_gpu(),
    }


def sync(value):
    """Waits for the device: JAX arrays by blocking on them, torch by synchronising CUDA."""
    jax.block_until_ready([v for v in jax.tree.leaves(value) if isinstance(v, jax.Array)])
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return value


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- timing ---------------------------------------------------------------------------------------------------

def interleaved(calls: dict[str, Callable[[], object]], rounds: int, repeats: int) -> dict[str, dict]:
    """Median wall seconds per call of each entry, its CPU seconds, and per-round times.

    Each round runs every call `repeats` times in turn (after one untimed warm-up call each, which compiles).
    """
    for fn in calls.values():
        sync(fn())
    wall = {name: [] for name in calls}
    cpu = {name: [] for name in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            w, c = [], []
            for _ in range(repeats):
                c0, t0 = cpu_seconds(), time.perf_counter()
                sync(fn())
                w.append(time.perf_counter() - t0)
                c.append(cpu_seconds() - c0)
            wall[name].append(statistics.median(w))
            cpu[name].append(statistics.median(c))
    return {name: {"wall_s": statistics.median(wall[name]), "cpu_s": statistics.median(cpu[name]),
                   "rounds_wall_s": wall[name]} for name in calls}


def ratio(times: dict[str, dict], name: str, base: str) -> float:
    """Median over rounds of the per-round wall-time ratio name / base (robust to drifting machine load)."""
    return statistics.median(a / b for a, b in zip(times[name]["rounds_wall_s"], times[base]["rounds_wall_s"]))


# --- models and inputs ----------------------------------------------------------------------------------------

def model_pair(conv: str, dtype: str, device: torch.device, seed: int = 0, channels_last: bool = False, *,
               upsample: str = "einsum", precision: str = "default", width: int = 32):
    """(JAX V2VModel, torch V2VModel) with the same weights (the torch model's, copied). precision: 'default'
    (TF32 convolutions on Ampere+ GPUs) or 'highest' (full float32) for JAX's convolutions and products."""
    tmodel = torch_model(device, seed, channels_last, width)
    numerics = dataclasses.replace(numerics_for(dtype, conv=conv, upsample=upsample),
                                   precision=None if precision == "default" else jax.lax.Precision.HIGHEST)
    jmodel = V2VModel(1, JOINTS, width, numerics=numerics, rngs=nnx.Rngs(seed))
    convert.load_torch_state_dict(jmodel, {k: v.cpu() for k, v in tmodel.state_dict().items()})
    return jmodel, tmodel


def torch_model(device: torch.device, seed: int = 0, channels_last: bool = False, width: int = 32):
    """The reference model from `seed` (the same weights for every call with that seed) on `device`."""
    torch.manual_seed(seed)
    tmodel = torch_model_lib.V2VModel(1, JOINTS, width).to(device)
    return tmodel.to(memory_format=torch.channels_last_3d) if channels_last else tmodel


def inputs(batch: int, grid: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sparse binary occupancy (B, N, N, N, 1) and joint grid coordinates (B, J, 3) inside the cube."""
    rng = np.random.default_rng(seed)
    voxels = (rng.random((batch, grid, grid, grid, 1)) < 0.05).astype(np.float32)
    coords = rng.uniform(0.25 * grid, 0.75 * grid, (batch, JOINTS, 3)).astype(np.float32)
    return voxels, coords


def to_torch(volume: np.ndarray | jax.Array, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """NDHWC array -> NCDHW tensor on `device`."""
    t = torch.from_numpy(np.ascontiguousarray(np.asarray(volume, np.float32).transpose(0, 4, 1, 2, 3))).to(device)
    return t.contiguous(memory_format=torch.channels_last_3d) if channels_last else t


def target_heatmaps(coords: np.ndarray, grid: int) -> np.ndarray:
    """The heatmaps (B, M, M, M, J) that `geometry.heatmap_mse` builds on the device, for the torch side."""
    return np.asarray(jax.vmap(lambda c: geometry.gaussian_heatmaps(c, grid // 2))(jnp.asarray(coords)))


def autocast(dtype: str, device: torch.device):
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, dtype))


# --- steps ----------------------------------------------------------------------------------------------------

def jax_train_step(jmodel: V2VModel, voxels, coords, compiler_options: dict | None = None):
    """The project's update (`v2v_jax.train.step.make_update`, RMSprop as the authors), jitted with the state
    donated and compiled with `compiler_options` (XLA debug options, e.g. XLA_FLAG_SETS). Returns (call,
    compiled): call() runs one step in place on a held state."""
    tx = make_optimizer("rmsprop", AUTHORS_RMSPROP["lr"])
    train_def, _, state = init_state(jmodel, tx, seed=0)
    voxels, coords = jnp.asarray(voxels), jnp.asarray(coords)
    compiled = (jax.jit(make_update(train_def, tx), donate_argnums=0).lower(state, voxels, coords)
                .compile(compiler_options=compiler_options or None))
    holder = {"state": state}

    def call():
        holder["state"], metrics = compiled(holder["state"], voxels, coords)
        return metrics["loss"], holder["state"]  # waiting on all of it, not just the loss

    return call, compiled


# PyTorch configurations of the training step: what a user gets without tuning (`plain`: contiguous NCDHW,
# cudnn.benchmark off) and what a user tuning for speed picks (`best`: channels_last_3d, cudnn.benchmark on;
# `compiled`: the same under torch.compile).
TORCH_CONFIGS = ("plain", "best", "compiled")


def torch_train_step(tmodel: torch.nn.Module, voxels: torch.Tensor, heatmaps: torch.Tensor, dtype: str, *,
                     config: str = "plain", tf32: bool = True, compile_backend: str = "inductor"):
    """The reference's step (`v2v_torch_ref.train.train_step`: MSE mean, RMSprop 2.5e-4, alpha 0.99, eps 1e-8,
    BN in train mode), with the forward and loss under autocast for bfloat16. Each call runs under the backend
    switches of `config` and `tf32` (global in torch, restored after the call), so that configurations can be
    interleaved."""
    if config not in TORCH_CONFIGS:
        raise ValueError(f"torch config {config!r}; choose from {TORCH_CONFIGS}")
    opt = torch_optimizer(tmodel.parameters(), "rmsprop", AUTHORS_RMSPROP["lr"])
    tmodel.train()
    forward = torch.compile(tmodel, backend=compile_backend) if config == "compiled" else tmodel
    benchmark = config != "plain"

    def call():
        with torch_switches(benchmark=benchmark, tf32=tf32):
            opt.zero_grad(set_to_none=True)
            with autocast(dtype, voxels.device):
                loss = torch.nn.functional.mse_loss(forward(voxels).float(), heatmaps)
            loss.backward()
            opt.step()
            return loss.detach()

    return call


def jax_forward(jmodel: V2VModel, voxels):
    """Eval-mode (running-statistics BN) jitted forward."""
    jmodel.eval()
    graphdef, state = nnx.split(jmodel)
    forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
    voxels = jnp.asarray(voxels)
    return lambda: forward(state, voxels)


def torch_forward(tmodel: torch.nn.Module, voxels: torch.Tensor, dtype: str):
    tmodel.eval()

    def call():
        with torch.inference_mode(), autocast(dtype, voxels.device):
            return tmodel(voxels)

    return call


# --- memory and FLOPs -----------------------------------------------------------------------------------------

def jax_step_bytes(compiled) -> int | None:
    """Device memory one compiled call needs: arguments + outputs + temporaries - donated aliases (XLA's plan)."""
    m = compiled.memory_analysis()
    if m is None:
        return None
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)


def jax_peak_bytes() -> int | None:
    stats = jax.devices()[0].memory_stats()
    return None if not stats else int(stats.get("peak_bytes_in_use", 0))


@contextlib.contextmanager
def torch_peak_memory(record: dict, key: str):
    """Stores torch.cuda.max_memory_allocated over the block in record[key] (None on CPU)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    yield
    record[key] = int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None


def train_step_flops(grid: int, batch: int, width: int = 32) -> float:
    """FLOPs of a training step: forward + input and weight gradients = 3x the forward, 2 FLOPs per MAC."""
    return 3 * 2 * roofline.model_forward_macs(grid, width) * batch


def cpu_peak_gflops(size: int = 2048, repeats: int = 5) -> float:
    """float32 GEMM throughput of XLA on this machine, measured now: the CPU's practical peak."""
    a = jnp.ones((size, size), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    sync(matmul(a, a))
    best = min(_timed(lambda: sync(matmul(a, a))) for _ in range(repeats))
    return 2 * size ** 3 / best / 1e9


def peak_tflops(dtype: str, override: float | None, tf32: bool = True) -> float:
    """Override, else the GPU's dense data-sheet peak for the compute mode (bench/roofline.py; H100 SXM for GPUs
    not listed there), else on CPU a GEMM measured now."""
    if override is not None:
        return override
    if not on_gpu():
        return cpu_peak_gflops() / 1e3
    device = roofline.device_for(jax.devices()[0].device_kind) or "h100-sxm"
    return roofline.DEVICES[device].tflops[roofline.compute_mode(dtype, tf32)]


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# --- command line and results ---------------------------------------------------------------------------------

def base_parser(doc: str, conv_option: bool = True, layout_option: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cores", type=int, help="CPU: pin the process to this many cores before JAX starts (XLA's "
                   "pool and torch then use that many threads; 1 gives per-core figures robust to other load)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median over rounds)")
    p.add_argument("--repeats", type=int, default=2, help="timed calls per entry per round")
    if conv_option:
        p.add_argument("--conv", default="auto", choices=("auto",) + CONV_IMPLS,
                       help="JAX convolution formulation; auto = the per-backend default (v2v_jax.formulations.AUTO_CONV)")
    if layout_option:
        p.add_argument("--channels-last", action="store_true", help="torch in channels_last_3d memory format")
    p.add_argument("--out", type=Path, help="directory for NAME.json and NAME.md")
    return p


def parse(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parses the command line and applies --cores before JAX creates its CPU client."""
    args = parser.parse_args(argv)
    if args.cores is not None:
        allowed = sorted(os.sched_getaffinity(0))
        if not 1 <= args.cores <= len(allowed):
            raise SystemExit(f"--cores {args.cores}: this process may use {len(allowed)} cores")
        os.sched_setaffinity(0, allowed[:args.cores])
    return args


def xla_options(name: str) -> dict:
    """A named set of XLA_FLAG_SETS, or KEY=VALUE[,KEY=VALUE...] (values: true/false, integers or strings)."""
    if name in XLA_FLAG_SETS:
        return XLA_FLAG_SETS[name]
    options = {}
    for item in name.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("xla_"):
            raise SystemExit(f"--xla-flags {name!r}: not one of {sorted(XLA_FLAG_SETS)} nor xla_KEY=VALUE[,...]")
        low = value.lower()
        if low in ("true", "false"):
            options[key] = low == "true"
        else:
            options[key] = int(value) if value.lstrip("-").isdigit() else value
    return options


def check_dtypes(dtypes: list[str]) -> list[str]:
    """bfloat16 is measured on GPUs only: XLA's CPU 3D convolutions have no fast bfloat16 path."""
    for d in dtypes:
        if d not in DTYPES:
            raise SystemExit(f"--dtypes: unknown dtype {d!r}; choose from {DTYPES}")
    return dtypes if on_gpu() else [d for d in dtypes if d == "float32"]


def header(args) -> dict:
    env = environment()
    if "conv" in args:
        convs = args.conv if isinstance(args.conv, list) else [args.conv]
        env["conv"] = ", ".join(f"{c} -> {resolve_conv(c)}" for c in convs)
    if "channels_last" in args:
        env["torch_memory_format"] = "channels_last_3d" if args.channels_last else "contiguous (NCDHW)"
    return env


def write_result(out: Path | None, name: str, result: dict, markdown: str, echo: bool = True) -> None:
    if echo:
        print(markdown)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
        (out / f"{name}.md").write_text(markdown + "\n")


def describe(env: dict) -> str:
    keys = ("device", "date", "jax", "torch", "torch_threads", "omp_wait_policy", "conv", "torch_memory_format",
            "xla_flags", "glibc_tunables")
    return "; ".join(f"{k}: {env[k]}" for k in keys if env.get(k) not in (None, ""))
