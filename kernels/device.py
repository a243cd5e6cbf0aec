"""A small device model and per-launch accounting: is a launch big enough to fill the GPU?

Numbers (NVIDIA H100 / H200 datasheets and the Hopper architecture whitepaper):

* **H100 SXM5**: 132 SMs; fp32 (non-tensor) 67 TFLOP/s; HBM3 3.35 TB/s; 80 GB.
* **H200 SXM**: the same GH100 die, 132 SMs, fp32 67 TFLOP/s; HBM3e 4.8 TB/s; 141 GB.

So on either card a launch with fewer than 132 blocks leaves SMs idle for its whole life
(one block runs on one SM). :func:`record_launches` collects what a backend launches
(kernel, grid, block, dynamic shared memory, and the op's napkin FLOPs and bytes) without
running anything when ``dry=True``: the geometry of a batch-128 launch is read on a laptop
in milliseconds. ``tests/test_launch_geometry.py`` applies :func:`fills_device` to every
default launch at the paper's shapes.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Device:
    name: str
    sms: int              # streaming multiprocessors
    fp32_tflops: float    # non-tensor-core fp32 peak, TFLOP/s
    hbm_tbs: float        # memory bandwidth, TB/s

    def roofline_us(self, flops, nbytes):
        """Lower bound on a launch's time (µs): max(flops / peak, bytes / bandwidth)."""
        return max(flops / (self.fp32_tflops * 1e12), nbytes / (self.hbm_tbs * 1e12)) * 1e6


H100_SXM = Device("H100 SXM5", 132, 67.0, 3.35)
H200 = Device("H200 SXM", 132, 67.0, 4.8)
#: the model the geometry test and the reports use (the GPU this project targets)
DEFAULT = H200


@dataclass
class Launch:
    """One kernel launch as a backend issued it."""
    kernel: str
    grid: tuple
    block: tuple
    shared_mem: int = 0
    flops: int = 0        # the op's useful FLOPs (napkin maths, kernels/workloads.py)
    nbytes: int = 0       # the op's minimum traffic

    @property
    def blocks(self):
        return math.prod(int(g) for g in self.grid)

    @property
    def threads_per_block(self):
        return math.prod(int(b) for b in self.block)

    def waves(self, device=DEFAULT):
        return self.blocks / device.sms


def fills_device(launch, device=DEFAULT):
    """True when ``launch`` has at least one block per SM of ``device``."""
    return launch.blocks >= device.sms


@dataclass
class LaunchLog:
    launches: list = field(default_factory=list)
    dry: bool = False
    flops: int = 0
    nbytes: int = 0

    def add(self, kernel, grid, block, shared_mem=0):
        grid = tuple(grid) if isinstance(grid, (tuple, list)) else (grid,)
        block = tuple(block) if isinstance(block, (tuple, list)) else (block,)
        self.launches.append(Launch(kernel, grid, block, int(shared_mem), self.flops,
                                    self.nbytes))


@contextlib.contextmanager
def record_launches(backend, dry=False):
    """Collect every launch ``backend`` (cupy or numba, emulated or not) makes inside the
    ``with`` block. ``dry=True``: record only, run nothing (outputs stay uninitialised)."""
    log = LaunchLog(dry=dry)
    old = getattr(backend, "_launch_log", None)
    backend._launch_log = log
    rt = getattr(backend, "_rt", None)
    if rt is not None:
        rt.launch_log = log
    try:
        yield log
    finally:
        backend._launch_log = old
        if rt is not None:
            rt.launch_log = old


def plan(backend, op, layer, version=None):
    """The launches of one call of ``op`` (its default version, or ``version``) on a
    ``kernels.workloads`` layer, without running them. Returns [Launch]."""
    import numpy as np

    from . import workloads
    flops, nbytes = workloads.napkin(op, layer)
    args = [np.empty(a.shape, a.dtype) if isinstance(a, np.ndarray) else a
            for a in _shaped_inputs(op, layer)]
    with record_launches(backend, dry=True) as log:
        log.flops, log.nbytes = flops, nbytes
        backend.get_op(op, version)(*args)
    return log.launches


def _shaped_inputs(op, L):
    """Arguments of ``op`` on layer ``L`` with the right shapes and dtypes (contents unset:
    a dry plan never reads them)."""
    import numpy as np
    f32 = np.float32
    if L.kind == "conv":
        x, w = np.empty(L.x_shape(), f32), np.empty(L.w_shape(), f32)
        b, dy = np.empty(L.f, f32), np.empty(L.y_shape(), f32)
        return {"conv2d_forward": (x, w, b), "conv2d_backward_input": (dy, w),
                "conv2d_backward_weight": (x, dy), "conv2d_backward_bias": (dy,)}[op]
    x, y = np.empty(L.x_shape(), f32), np.empty(L.y_shape(), f32)
    sw = np.zeros(L.y_shape(), np.int32)
    hw = (L.h, L.w)
    return {"maxpool2d_forward": (x, L.k), "maxpool2d_backward": (y, sw, hw),
            "unpool2d_forward": (y, sw, hw), "unpool2d_backward": (x, sw)}[op]


def launch_table(backend, ops, layers, device=DEFAULT):
    """Markdown rows: op, shape, batch, kernel, grid, blocks, blocks/SM, roofline µs."""
    rows = ["| op | shape | N | kernel | grid | blocks | blocks/SM | roofline µs |",
            "|---|---|---|---|---|---|---|---|"]
    for L in layers:
        for op in ops:
            if (op.startswith("conv")) != (L.kind == "conv"):
                continue
            for la in plan(backend, op, L):
                flag = "" if fills_device(la, device) else " **idle SMs**"
                rows.append(f"| {op} | {L.name} | {L.n} | `{la.kernel}` | {la.grid} | "
                            f"{la.blocks}{flag} | {la.waves(device):.2f} | "
                            f"{device.roofline_us(la.flops, la.nbytes):.1f} |")
    return "\n".join(rows)
