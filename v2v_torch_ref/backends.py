"""torch's process-wide backend switches that change a result or its speed: cuDNN on or off, cuDNN's algorithm
search, TF32 in cuDNN convolutions and cuBLAS matmuls. The one place that sets them (no effect on CPU)."""

from __future__ import annotations

import contextlib

import torch

# switch -> the (module, attribute) pairs it sets; tf32 covers both convolutions and matmuls, as JAX's default
# precision does on the GPU.
_SWITCHES = {
    "cudnn": ((torch.backends.cudnn, "enabled"),),
    "benchmark": ((torch.backends.cudnn, "benchmark"),),
    "tf32": ((torch.backends.cudnn, "allow_tf32"), (torch.backends.cuda.matmul, "allow_tf32")),
}


def set_switches(*, cudnn: bool | None = None, benchmark: bool | None = None, tf32: bool | None = None) -> list:
    """Sets the switches given (None leaves one as it is); returns the previous values, for `restore`."""
    saved = []
    for name, value in (("cudnn", cudnn), ("benchmark", benchmark), ("tf32", tf32)):
        if value is None:
            continue
        for module, attribute in _SWITCHES[name]:
            saved.append((module, attribute, getattr(module, attribute)))
            setattr(module, attribute, value)
    return saved


def restore(saved: list) -> None:
    for module, attribute, value in reversed(saved):
        setattr(module, attribute, value)


@contextlib.contextmanager
def torch_switches(*, cudnn: bool | None = None, benchmark: bool | None = None, tf32: bool | None = None):
    """The switches given for the duration of the block, restored afterwards."""
    saved = set_switches(cudnn=cudnn, benchmark=benchmark, tf32=tf32)
    try:
        yield
    finally:
        restore(saved)
