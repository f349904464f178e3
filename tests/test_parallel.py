"""Data parallelism: 4 forced CPU devices give the single-device step; two processes on loopback train together.

Each check runs in a subprocess, because the device count and jax.distributed are fixed at JAX start-up.
"""

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

STEP_SCRIPT = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, numpy as np
    from flax import nnx
    from v2v_jax.data import cameras
    from v2v_jax.model import V2VModel
    from v2v_jax.train import parallel
    from v2v_jax.train.optim import make_optimizer
    from v2v_jax.train.step import GeometryConfig, init_state, make_train_step, numerics_for

    assert jax.device_count() == 4
    rng = np.random.default_rng(0)
    B = 8
    depth = np.zeros((B, 240, 320), np.float32)
    depth[:, 100:140, 140:180] = 300 + 30 * rng.random((B, 40, 40), np.float32)
    batch = {"depth": depth, "center": np.tile(np.float32([0, 0, 310]), (B, 1)),
             "joints": rng.normal(0, 20, (B, 21, 3)).astype(np.float32) + np.float32([0, 0, 310])}

    def one_step(mesh):
        model = V2VModel(1, 21, 4, numerics=numerics_for("float32"), rngs=nnx.Rngs(0))
        tx = make_optimizer("sgd", 1.0)
        train_def, _, state = init_state(model, tx, 0)
        step = make_train_step(train_def, tx, GeometryConfig(cameras.MSRA, 16, 200.0))
        before = jax.device_get(state.params)
        state, out = step(parallel.replicate(state, mesh), parallel.shard_batch(batch, mesh))
        grads = jax.tree.map(lambda a, b: a - b, before, jax.device_get(state.params))  # SGD, lr 1: the gradient
        return float(out["loss"]), grads, jax.device_get(state.batch_stats)

    loss1, grads1, stats1 = one_step(None)
    loss4, grads4, stats4 = one_step(parallel.data_mesh(B))
    # float32 sums over 8 x 16^3 voxels split 4 ways instead of 1: rounding ~ sqrt(n) eps relative; 1e-4 is loose.
    assert abs(loss4 - loss1) <= 1e-5 * abs(loss1), (loss1, loss4)
    g_scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(grads1))
    for a, b in zip(jax.tree.leaves(grads4), jax.tree.leaves(grads1)):
        # Conv biases before BatchNorm have analytically zero gradients (rounding noise): floor the scale.
        scale = max(float(np.abs(b).max()), 1e-3 * g_scale)
        assert float(np.abs(a - b).max()) <= 1e-4 * scale, (float(np.abs(a - b).max()), scale)
    for a, b in zip(jax.tree.leaves(stats4), jax.tree.leaves(stats1)):
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=1e-5, atol=1e-7)
    print("OK", loss1, loss4)
""")


def _env():
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env["PYTHONPATH"] = str(REPO)
    return env


@pytest.mark.slow  # ~41 s in a new JAX process; CI's second step runs it (.ci/run)
def test_four_cpu_devices_step_equals_single_device_step(tmp_path):
    script = tmp_path / "step.py"
    script.write_text(STEP_SCRIPT)
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "OK" in done.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_on_loopback_train_together(tmp_path):
    port = _free_port()
    env = {**_env(), "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    common = [sys.executable, str(REPO / "train.py"), "--root", str(tmp_path / "synth"), "--synth-frames", "85",
              "--out", str(tmp_path / "run"), "--grid", "16", "--width", "4", "--batch-size", "4",
              "--epochs", "1", "--max-steps", "2", "--eval-batches", "1", "--plots", "false",
              "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
    # Generate the data once, so that the two processes do not race to write it.
    from v2v_jax.data.synth import write_msra_dataset
    write_msra_dataset(tmp_path / "synth", frames=85, seed=0, subjects=5)
    procs = [subprocess.Popen(common + ["--process-id", str(i)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-4000:]
        assert "on 4 cpu device(s)" in out
    means = [line for out in outputs for line in out.splitlines() if line.startswith("MEAN")]
    assert len(means) == 2 and means[0] == means[1], means  # both processes evaluate the same replicated model
    assert (tmp_path / "run" / "checkpoints" / "2").is_dir()
