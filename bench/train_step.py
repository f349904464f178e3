"""Training step, JAX vs the PyTorch reference: time per step, ratio, fraction of peak FLOP/s, memory; a sweep of
JAX's formulations and XLA options against PyTorch's configurations, side by side.

    python bench/train_step.py                                   # CPU: 32^3 batch 4 and 88^3 batch 1, float32
    python bench/train_step.py --grids 32 --batches 4 --cores 1  # per core
    python bench/train_step.py --grids 88 --batches 8 --conv xla folded_stem --upsample einsum pad_conv phases \
        --xla-flags default autotune0 nhwc --torch plain best compiled --tf32 on off --out DIR  # GPU

One step = forward, MSE against Gaussian heatmaps (mean over B*J*(N/2)^3), backward, RMSprop(2.5e-4, alpha 0.99,
eps 1e-8) update, BatchNorm in train mode: `v2v_jax.train.step.make_update` (targets built on the device from
joint coordinates, state donated) against `v2v_torch_ref.train`'s step (targets given). Same weights and inputs.
FLOPs per step are counted as 3x the forward's multiply-accumulates (bench/roofline.py) x 2.

Row groups (--rows), in this order, each row written to DIR as soon as it is measured; no new row starts after
--budget-s:
baseline: for each precision (float32 with TF32 on, bfloat16, float32 with TF32 off, as requested), JAX with the
   first --conv, --upsample and --xla-flags against every --torch configuration but `compiled`, interleaved;
compiled: torch.compile (`compiled` in --torch) against the JAX baseline, for each precision;
large: the baseline at the largest batch that both frameworks' steps fit side by side in device memory
   (extrapolated from the baseline's memory; on CPU twice the first batch, to exercise the path);
variants: each other --conv, --upsample and --xla-flags value alone, against the fastest torch configuration of
   that precision's baseline, then the combination of the variants that beat the baseline.
"""

from __future__ import annotations

import common  # noqa: F401, I001  (first: it configures torch's OpenMP threads before torch loads)
import gc
import os
import time
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np
import torch

from common import (TORCH_CONFIGS, XLA_FLAG_SETS, base_parser, describe, header, inputs, interleaved,
                    jax_peak_bytes, jax_step_bytes, jax_train_step, markdown_table, model_pair, on_gpu, parse,
                    peak_tflops, ratio, setup_torch, sync, target_heatmaps, to_torch, torch_model,
                    torch_peak_memory, torch_train_step, train_step_flops, write_result, xla_options)
from v2v_jax.formulations import CONV_IMPLS, UPSAMPLE_IMPLS


class JaxConfig(NamedTuple):
    conv: str
    upsample: str
    flags: str

    def label(self) -> str:
        return f"conv {self.conv}, upsample {self.upsample}, xla {self.flags}"


class Precision(NamedTuple):
    dtype: str
    tf32: bool

    def label(self) -> str:
        return self.dtype if self.dtype == "bfloat16" else f"float32 TF32 {'on' if self.tf32 else 'off'}"


def measure(grid, batch, precision: Precision, jax_configs: dict[str, JaxConfig], torch_configs: list[str],
            args, device, trace_dir: Path | None = None) -> dict:
    """Every JAX and torch configuration of one row, interleaved; times, ratios to each torch one, memory; with
    trace_dir, a jax.profiler trace of three steps of the first JAX configuration after the timing."""
    voxels, coords = inputs(batch, grid)
    calls, memory, errors = {}, {}, {}
    for name, cfg in jax_configs.items():
        try:
            jmodel, _ = model_pair(cfg.conv, precision.dtype, torch.device("cpu"), upsample=cfg.upsample,
                                   precision="default" if precision.tf32 else "highest", width=args.width)
            calls[name], compiled = jax_train_step(jmodel, voxels, coords, xla_options(cfg.flags))
            memory[name] = jax_step_bytes(compiled)
        except Exception as e:  # noqa: BLE001  (a configuration that fails to compile is a result, not a crash)
            errors[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    tvox, theat = inputs_torch(voxels, coords, grid, device)
    for name in torch_configs:
        try:
            tmodel = torch_model(device, channels_last=name != "plain", width=args.width)
            voxels_t = tvox.contiguous(memory_format=torch.channels_last_3d) if name != "plain" else tvox
            calls[name] = torch_train_step(tmodel, voxels_t, theat, precision.dtype, config=name,
                                           tf32=precision.tf32, compile_backend=args.torch_compile_backend)
        except Exception as e:  # noqa: BLE001
            errors[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    record = {"grid": grid, "batch": batch, "precision": precision.label(), "dtype": precision.dtype,
              "tf32": precision.tf32, "jax_configs": {k: v._asdict() for k, v in jax_configs.items()},
              "jax_step_bytes": memory, "errors": errors}
    try:
        with torch_peak_memory(record, "torch_peak_bytes"):
            times = interleaved(calls, args.rounds, args.repeats)
    except Exception as e:  # noqa: BLE001  (e.g. out of memory at a large batch)
        record["errors"]["measurement"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        return record
    if trace_dir is not None and next(iter(jax_configs)) in calls:
        trace(calls[next(iter(jax_configs))], trace_dir)
    flops = train_step_flops(grid, batch, args.width)
    peak = peak_tflops(precision.dtype, args.peak_tflops, precision.tf32) * 1e12
    record.update({
        "times": times, "step_gflop": flops / 1e9, "peak_tflops": peak / 1e12,
        "samples_per_s": {k: batch / t["wall_s"] for k, t in times.items()},
        "fraction_of_peak": {k: flops / t["wall_s"] / peak for k, t in times.items()},
        "jax_over_torch": {j: {t: ratio(times, j, t) for t in torch_configs if t in times}
                           for j in jax_configs if j in times},
        "jax_peak_bytes_in_use": jax_peak_bytes(), "load_average": os.getloadavg()[0]})
    return record


def inputs_torch(voxels, coords, grid, device):
    return to_torch(voxels, device), to_torch(target_heatmaps(coords, grid), device)


def fastest_torch(record: dict, torch_configs: list[str]) -> str:
    timed = [t for t in torch_configs if t in record.get("times", {})]
    return min(timed, key=lambda t: record["times"][t]["wall_s"]) if timed else "best"


def max_batch(record: dict) -> int:
    """The largest multiple of 8 (of the first batch on CPU, doubled) whose steps fit side by side in 80 % of
    device memory, extrapolated linearly from this row's memory (JAX's XLA plan + torch's peak)."""
    batch = record["batch"]
    if not on_gpu():
        return 2 * batch
    used = sum(v for v in record["jax_step_bytes"].values() if v) + (record.get("torch_peak_bytes") or 0)
    total = torch.cuda.get_device_properties(0).total_memory
    per_sample = max(used / batch, 1)
    return max(batch, int(0.8 * total / per_sample) // 8 * 8)


def variants(base: JaxConfig, args) -> list[tuple[str, JaxConfig]]:
    out = [(f"conv {c}", base._replace(conv=c)) for c in args.conv[1:]]
    out += [(f"upsample {u}", base._replace(upsample=u)) for u in args.upsample[1:]]
    out += [(f"xla {f}", base._replace(flags=f)) for f in args.xla_flags[1:]]
    return out


class Sweep:
    """Runs rows in order under a time budget, writing everything measured after each row."""

    def __init__(self, args, device, env):
        self.args, self.device, self.env = args, device, env
        self.rows, self.skipped, self.start = [], [], time.perf_counter()

    def run(self, label: str, grid, batch, precision, jax_configs, torch_configs, trace_dir=None) -> dict | None:
        if self.args.budget_s is not None and time.perf_counter() - self.start > self.args.budget_s:
            self.skipped.append(f"{label} ({precision.label()}, batch {batch}): time budget spent")
            self.write()
            return None
        t0 = time.perf_counter()
        record = measure(grid, batch, precision, jax_configs, torch_configs, self.args, self.device, trace_dir)
        record.update(label=label, seconds=time.perf_counter() - t0)
        self.rows.append(record)
        print(f"[{time.perf_counter() - self.start:.0f} s] {label}, {precision.label()}, {grid}^3 batch {batch}: "
              f"{record.get('jax_over_torch', record['errors'])}", flush=True)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.write()
        return record

    def write(self):
        write_result(self.args.out, "train_step", {"environment": self.env, "rows": self.rows,
                                                   "skipped": self.skipped}, self.markdown(), echo=False)

    def markdown(self) -> str:
        lines = []
        for r in self.rows:
            for name, cfg in r["jax_configs"].items():
                for t in sorted(r.get("jax_over_torch", {}).get(name, {})):
                    lines.append([r["label"], f"{r['grid']}^3", r["batch"], r["precision"],
                                  JaxConfig(**cfg).label(), _t(r, name), t, _t(r, t), r["jax_over_torch"][name][t],
                                  " ".join(f"{a / b:.2f}" for a, b in zip(r["times"][name]["rounds_wall_s"],
                                                                        r["times"][t]["rounds_wall_s"])),
                                  r["times"][name]["cpu_s"] / r["times"][t]["cpu_s"], r["load_average"],
                                  r["samples_per_s"][name], r["samples_per_s"][t],
                                  100 * r["fraction_of_peak"][name], 100 * r["fraction_of_peak"][t],
                                  _mib(r["jax_step_bytes"].get(name)), _mib(r.get("torch_peak_bytes"))])
        table = markdown_table(
            ["row", "grid", "batch", "precision", "JAX configuration", "JAX s/step", "torch config", "torch s/step",
             "JAX / torch time", "per round", "JAX / torch CPU s", "load (1 min)", "JAX samples/s",
             "torch samples/s", "JAX % of peak", "torch % of peak",
             "JAX step MiB (XLA plan)", "torch peak MiB (row)"], lines)
        errors = [f"- {r['label']} ({r['precision']}, batch {r['batch']}): {k}: {v}"
                  for r in self.rows for k, v in r["errors"].items()]
        notes = errors + [f"- skipped: {s}" for s in self.skipped]
        peak = ("peak: a 2048^3 float32 GEMM under XLA, measured beside each row" if not on_gpu() else
                "peak: --peak-tflops or the device's dense data-sheet peak for the precision (bench/roofline.py)")
        return f"Training step. {describe(self.env)}; {peak}.\n\n{table}\n" + ("\n" + "\n".join(notes) if notes else "")


def trace(jax_call, directory: Path) -> None:
    """jax.profiler trace of three steps of an already compiled step."""
    sync(jax_call())
    with jax.profiler.trace(str(directory)):
        for _ in range(3):
            sync(jax_call())


ROW_GROUPS = ("baseline", "variants", "compiled", "large")


def sweep(args, device, env) -> Sweep:
    s = Sweep(args, device, env)
    base = JaxConfig(args.conv[0], args.upsample[0], args.xla_flags[0])
    plain_torch = [t for t in args.torch if t != "compiled"]
    precisions = [Precision(d, t == "on") for d in args.dtypes for t in (args.tf32 if d == "float32" else ["on"])]
    for grid, batch in zip(args.grids, args.batches):
        baselines = {}
        if {"baseline", "variants", "large"} & set(args.rows):  # the variants' reference, the large batch's memory
            for p in precisions:
                baselines[p] = s.run("baseline", grid, batch, p, {"jax": base}, plain_torch,
                                     args.trace if not s.rows else None)
        if "compiled" in args.rows and "compiled" in args.torch:
            for p in precisions:
                s.run("torch.compile", grid, batch, p, {"jax": base}, ["compiled"])
        if "large" in args.rows:
            for p in precisions:
                if baselines[p] and "times" in baselines[p]:
                    reference = fastest_torch(baselines[p], plain_torch)
                    s.run("largest batch", grid, max_batch(baselines[p]), p, {"jax": base}, [reference])
        if "variants" in args.rows:
            for p in precisions:
                variant_rows(s, grid, batch, p, base, baselines[p] or {}, plain_torch)
    return s


def variant_rows(s: Sweep, grid, batch, p: Precision, base: JaxConfig, baseline: dict, plain_torch):
    """Each variant against the baseline's fastest torch configuration; then the winners combined."""
    reference = fastest_torch(baseline, plain_torch)
    base_ratio = baseline.get("jax_over_torch", {}).get("jax", {}).get(reference)
    better = {}
    for label, cfg in variants(base, s.args):
        r = s.run(label, grid, batch, p, {"jax": cfg}, [reference])
        got = (r or {}).get("jax_over_torch", {}).get("jax", {}).get(reference)
        if got is not None and base_ratio is not None and got < base_ratio:
            field = {"conv": "conv", "upsample": "upsample", "xla": "flags"}[label.split()[0]]
            if field not in better or got < better[field][1]:
                better[field] = (getattr(cfg, field), got)
    if len(better) > 1:
        combined = base._replace(**{f: v for f, (v, _) in better.items()})
        s.run("best variants combined", grid, batch, p, {"jax": combined}, [reference])


def main(argv=None):
    p = base_parser(__doc__, conv_option=False, layout_option=False)
    p.add_argument("--grids", type=int, nargs="+", default=[32, 88])
    p.add_argument("--batches", type=int, nargs="+", help="one per grid (default CPU: 4 at 32^3, 1 at 88^3; GPU 8)")
    p.add_argument("--width", type=int, default=32, help="network width (V2V: 32)")
    p.add_argument("--dtypes", nargs="+", choices=("float32", "bfloat16"),
                   help="default float32 and bfloat16 on GPU, float32 on CPU (XLA's CPU has no fast bfloat16 "
                        "3D convolution; asked for, it runs)")
    p.add_argument("--tf32", nargs="+", choices=("on", "off"), default=["on"],
                   help="float32 with TF32 convolutions and products (JAX precision default, torch allow_tf32) "
                        "and/or without (JAX precision highest); identical on CPU")
    p.add_argument("--conv", nargs="+", default=["auto"], choices=("auto",) + CONV_IMPLS,
                   help="JAX convolution formulations, the first the baseline (auto = per backend, "
                        "v2v_jax.formulations.AUTO_CONV)")
    p.add_argument("--upsample", nargs="+", default=["einsum"], choices=UPSAMPLE_IMPLS,
                   help="JAX ConvTranspose3d formulations, the first the baseline")
    p.add_argument("--xla-flags", nargs="+", default=["default"],
                   help=f"XLA option sets, the first the baseline: {', '.join(XLA_FLAG_SETS)} or xla_KEY=VALUE[,...]")
    p.add_argument("--torch", nargs="+", default=["plain", "best"], choices=TORCH_CONFIGS,
                   help="PyTorch configurations (bench/common.py TORCH_CONFIGS)")
    p.add_argument("--torch-compile-backend", default="inductor",
                   help="torch.compile backend of the `compiled` configuration ('eager' only traces: quick)")
    p.add_argument("--rows", nargs="+", choices=ROW_GROUPS, default=["baseline", "variants", "compiled"],
                   help="row groups, run in the order baseline, compiled, large, variants (see above); `compiled` "
                        "runs only with `compiled` in --torch")
    p.add_argument("--budget-s", type=float, help="start no new row after this many seconds")
    p.add_argument("--peak-tflops", type=float, help="device peak (default: data sheet by device and precision; "
                                                     "CPU: measured)")
    p.add_argument("--trace", type=Path, help="directory for a jax.profiler trace of the first baseline's step")
    args = parse(p, argv)
    for name in args.xla_flags:
        xla_options(name)  # a bad name fails before anything is compiled
    device = setup_torch()
    args.dtypes = args.dtypes or (["float32", "bfloat16"] if device.type == "cuda" else ["float32"])
    args.batches = args.batches or [8 if device.type == "cuda" else (4 if g <= 32 else 1) for g in args.grids]
    if len(args.batches) != len(args.grids):
        p.error(f"--batches needs one value per grid ({len(args.grids)}), got {len(args.batches)}")
    if any(g % 8 for g in args.grids):
        p.error(f"--grids {args.grids}: each must be a multiple of 8 (the network halves the grid three times)")
    env = header(args)
    result = sweep(args, device, env)
    print(result.markdown())


def _t(record, name):
    return record["times"][name]["wall_s"]


def _mib(n):
    return None if n is None else n / 2 ** 20


if __name__ == "__main__":
    main()
