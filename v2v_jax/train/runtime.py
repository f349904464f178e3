"""Process-wide switches that must precede the first computation of a run (training or inference)."""

from __future__ import annotations

import os

import jax

from v2v_jax.config import Config
from v2v_jax.train import parallel


def configure_runtime(cfg: Config) -> None:
    if cfg.deterministic:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_gpu_deterministic_ops=true").strip()
    if cfg.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    if cfg.coordinator:
        parallel.initialize_distributed(cfg.coordinator, cfg.num_processes, cfg.process_id)
