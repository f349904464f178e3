"""The cost of the bad-frame checks (docs/reliability.md): reading frames with and without the empty-cube check
(`cube_mm`), and the one-off scan that `on_bad_frame='skip'` runs when a data set is opened.

    python bench/bad_frames.py [--frames 680] [--repeats 5]

Writes a synthetic MSRA-layout set (`v2v_jax.data.synth`) to a temporary folder; the files come from the page cache.
Both reading configurations run `--repeats` times interleaved; the best pass counts.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from v2v_jax.data import msra
from v2v_jax.data.synth import write_msra_dataset


def read_all(dataset) -> float:
    """Seconds to read every frame once."""
    start = time.perf_counter()
    for i in range(len(dataset)):
        dataset[i]
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=680)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_msra_dataset(Path(tmp) / "synth", frames=args.frames, seed=0, subjects=2)
        open_split = lambda **kw: msra.MSRA(root, root / "center", 1, "train", **kw)  # noqa: E731
        plain, checked = open_split(), open_split(cube_mm=200.0)
        best = {"no cube check": float("inf"), "cube check": float("inf")}
        for _ in range(args.repeats):
            best["no cube check"] = min(best["no cube check"], read_all(plain))
            best["cube check"] = min(best["cube check"], read_all(checked))
        start = time.perf_counter()
        scanned = open_split(cube_mm=200.0, on_bad_frame="skip")
        scan = time.perf_counter() - start
    n = len(plain)
    for name, seconds in best.items():
        print(f"{name:>14}: {n / seconds:8.0f} frames/s ({seconds / n * 1e3:.3f} ms/frame), "
              f"{best['no cube check'] / seconds:.2f}x the unchecked rate")
    print(f"on_bad_frame='skip' opening scan: {len(scanned)} frames in {scan:.2f} s ({len(scanned) / scan:.0f} "
          "frames/s, once per run)")


if __name__ == "__main__":
    main()
