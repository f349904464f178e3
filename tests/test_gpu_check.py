"""scripts/gpu_check.sh --dry-run: every step of the GPU script runs at tiny sizes on the CPU, exits 0 and writes
its result file, so that the script is not found broken on the rare call that has a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Every step the script runs, in its order; a step missing from the summary would mean one silently dropped.
STEPS = ("environment", "parity_float32_tf32off_cudnn", "parity_float32_tf32on_cudnn", "parity_float32_tf32off_nocudnn",
         "mutations", "train_step", "train_step_compile", "train_step_large", "blocks", "e2e_jax", "e2e_torch",
         "study_precision")


# About 7 minutes on 2 cores (three parity reports, the planted-bug table, every benchmark, two trainers): too long
# for the default run, so it is marked slow and .ci/run runs it as a step of its own.
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_dry_run_runs_every_step(tmp_path):
    env = {**os.environ, "DEADLINE": "1700", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("OUT", None)
    env.pop("STEPS", None)
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry-run", str(tmp_path / "results")], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=1780)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = tmp_path / "results"
    lines = [json.loads(line) for line in (results / "summary.jsonl").read_text().splitlines()]
    names = [line["step"] for line in lines]
    assert tuple(names) == STEPS, names
    for line in lines:
        log = results / f"{line['step']}.log"
        tail = log.read_text()[-3000:] if log.exists() else "(no log)"
        assert line["status"] == "ok" and line["rc"] == 0 and line["present"], (line, tail)
        assert (results / line["result"]).stat().st_size > 0
    assert "done in" in (results / "summary.txt").read_text()
    # The sweep's own results: its first row measured both frameworks.
    sweep = json.loads((results / "train_step" / "train_step.json").read_text())
    first = sweep["rows"][0]
    assert first["label"] == "baseline" and not first["errors"], first["errors"]
    assert set(first["jax_over_torch"]["jax"]) == {"plain", "best"}
