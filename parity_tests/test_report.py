"""The report tool's options and output, without running the models (test_anchored.py runs them)."""

import dataclasses
import json

import numpy as np
import pytest

from parity_tests import report as R
from parity_tests import verdict as V
from parity_tests.anchored import AnchoredReport, Divergence, first_site, judge
from parity_tests.decisions import Flips
from parity_tests.test_verdict import CONFIG, _runs


@pytest.mark.parametrize("argv,message", [
    (["--grid", "30"], "--grid 30: must be a positive multiple of 4"),
    (["--width", "0", "--batch", "0"], "--width 0: must be a positive even number; --batch 0"),
    (["--tf32", "maybe"], "argument --tf32: invalid choice"),
    (["--dtype", "float16"], "argument --dtype: invalid choice"),
    (["--torch-checkpoint", "no/such.pth"], "--torch-checkpoint no/such.pth: not a readable PyTorch checkpoint"),
    (["--jax-run", "no/such/run"], "--jax-run no/such/run: no training run here"),
    (["--json", "no/such/dir/x.json"], "--json no/such/dir/x.json: directory no/such/dir does not exist"),
])
def test_bad_options_are_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        R.parse_args(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and "Traceback" not in "\n".join(err)


def test_defaults_are_the_real_size():
    c = R.parse_args([]).config
    assert (c.width, c.grid, c.dtype, c.device, c.tf32, c.cudnn, c.joints) == (32, 32, "float32", "cpu", False,
                                                                               True, 21)


def test_a_checkpoint_sets_the_model_shape(tmp_path):
    import torch

    from v2v_torch_ref import model as tmodel
    path = tmp_path / "port.pth"
    torch.save(tmodel.V2VModel(1, 3, 8).state_dict(), path)
    args = R.parse_args(["--torch-checkpoint", str(path)])
    assert (args.config.width, args.config.joints) == (8, 3) and args.jax_weights is None
    assert set(args.weights) == set(tmodel.V2VModel(1, 3, 8).state_dict())


def _report(jax_noise):
    rng = np.random.default_rng(0)
    rows = judge(_runs(rng, 1e-4, grad_noise=jax_noise), _runs(rng, 1e-4), CONFIG)
    site = first_site(rows, {})
    divergence = None if site is None else Divergence(site.blocks[0], None, site.framework, site.quantity, "words")
    overall = V.WITHIN if site is None else V.deviates(site.framework)
    flips = {V.JAX: Flips(100, 1, 0.3, "025 relu"), V.TORCH: Flips(100, 0, 0.0, "")}
    return AnchoredReport(CONFIG, rows, overall, divergence, {}, flips)


def test_render_and_json(tmp_path):
    clean, bad = _report(1e-4), _report(1e-2)
    text = R.render(clean, {"wall": 1.0, "cpu": 2.0})
    assert "verdict: both within rounding" in text and "first divergence" not in text
    assert "JAX took 1 of 100 ReLU and pool decisions otherwise than float64" in text
    assert "PyTorch took all 100 ReLU and pool decisions as float64 does" in text
    assert f"note: {R.FLIPS_EXPLAINED}" in text
    no_flips = dataclasses.replace(clean, flips={V.JAX: Flips(100, 0, 0.0, ""), V.TORCH: Flips(100, 0, 0.0, "")})
    assert R.FLIPS_EXPLAINED not in R.render(no_flips, {"wall": 1.0, "cpu": 2.0})
    assert "| front_layers.0 | activation | 1 |" in text
    text = R.render(bad, {"wall": 1.0, "cpu": 2.0})
    assert "verdict: JAX deviates" in text and "first divergence: words" in text
    assert "| (output) | parameter gradient | 1 | 1.00e-02 | 1.00e-04 | 100.00 |" in text
    data = json.loads(json.dumps(R.to_json(bad, {"wall": 1.0, "cpu": 2.0})))
    assert data["overall"] == "JAX deviates" and data["first_divergence"]["framework"] == "JAX"
    assert len(data["rows"]) == len(bad.rows) and data["rows"][0]["jax"]["rel_fro"] > 0
