"""The workloads every kernel is run on: named layer shapes, their inputs, the napkin maths
(flop and minimum bytes per call) and the reference a result is validated against.

One source for ``python -m kernels`` (:mod:`kernels.runner`) and the benchmark suite
(``bench/benchlib.py``).

* **Shapes** are named after the paper's layers (Masci et al. 2011) and *derived* from the
  models that train them, not retyped: the CNN's maps, kernels and pools
  (``scae_np.models.PAPER_*``) on MNIST's 1x28x28 and CIFAR-10's 3x32x32 inputs
  (``scae_np.data.SPECS``), and the Fig. 1 CAE of ``python -m scae_np.run`` (its
  ``cae_maps``/``cae_kernel``/``cae_pool``). ``tiny-conv``/``tiny-pool`` are shapes at which
  the explicit-loop NumPy ``naive`` versions (and numba's simulator) take well under a second.
* **Napkin maths**: flop = 2 per multiply-add (1 per add for the bias); bytes = every
  input read once and every output written once (the minimum traffic a kernel can have).
  Pooling counts no flop (it only compares and moves values): it is measured in GB/s.
* **Reference**: the NumPy ``naive`` loops (the definition) in float64 when they are cheap,
  else the NumPy ``fast`` version in float64 -- or ``im2col``/``argmax`` when the version
  under test *is* NumPy's ``fast``, so that no version is ever checked against itself.
  Checked with :func:`kernels.testing.assert_op_close` (pooling exact, convolutions within
  the float32 bound of ``kernels/testing.py``).
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np

from .contract import conv2d_output_hw, maxpool2d_output_hw
from .testing import CONV_OPS, POOL_OPS, assert_op_close, distinct_values

#: batch of the named shapes (the benchmarks' batch; ``--batch`` overrides it)
BATCH = 128
#: the explicit-loop ``naive`` NumPy reference is used up to this many terms (products,
#: or elements moved for pooling); about half a second of Python loops
NAIVE_REFERENCE_TERMS = 300_000


# ----------------------------------------------------------------------------- shapes
@dataclass(frozen=True)
class ConvLayer:
    """A convolution: ``c`` -> ``f`` maps, ``k`` x ``k`` kernel, on ``h`` x ``w`` inputs."""
    name: str            # "mnist-conv1"
    c: int
    f: int
    h: int
    w: int
    k: int
    n: int = BATCH
    note: str = ""       # where the layer comes from

    kind = "conv"

    @property
    def ohw(self):
        return conv2d_output_hw((self.h, self.w), (self.k, self.k))

    def x_shape(self):
        return (self.n, self.c, self.h, self.w)

    def w_shape(self):
        return (self.f, self.c, self.k, self.k)

    def y_shape(self):
        return (self.n, self.f) + self.ohw

    def describe(self):
        return f"{self.c}->{self.f} {self.k}x{self.k} on {self.h}x{self.w}, N={self.n}"


@dataclass(frozen=True)
class PoolLayer:
    """A ``k`` x ``k`` max-pooling (stride ``k``) of ``c`` planes of ``h`` x ``w``."""
    name: str            # "mnist-pool1"
    c: int
    h: int
    w: int
    k: int = 2
    n: int = BATCH
    note: str = ""

    kind = "pool"

    def x_shape(self):
        return (self.n, self.c, self.h, self.w)

    def y_shape(self):
        return (self.n, self.c) + maxpool2d_output_hw((self.h, self.w), self.k)

    def describe(self):
        return f"{self.k}x{self.k} of {self.c}x{self.h}x{self.w}, N={self.n}"


def with_batch(layer, n):
    """The same layer at batch ``n``."""
    return dataclasses.replace(layer, n=int(n))


def _network_layers(prefix, chw, maps, kernels, pools, what):
    """Conv and pool layers of a CNN/CAE stack on ``chw`` inputs, named prefix-conv1, ..."""
    convs, poolings = [], []
    c, h, w = chw
    for i, (f, k, p) in enumerate(zip(maps, kernels, pools), start=1):
        convs.append(ConvLayer(f"{prefix}-conv{i}", c, f, h, w, k, note=f"{what} conv{i}"))
        h, w = conv2d_output_hw((h, w), (k, k))
        if p > 1:
            poolings.append(PoolLayer(f"{prefix}-pool{i}", f, h, w, p,
                                      note=f"{what} pool{i}, after conv{i}"))
            h, w = maxpool2d_output_hw((h, w), p)
        c = f
    return convs, poolings


@functools.lru_cache(maxsize=None)
def _named():
    # Imported here: scae_np builds on kernels, so kernels may not import it at load time.
    from scae_np.data import SPECS
    from scae_np.models import PAPER_KERNELS, PAPER_MAPS, PAPER_POOLS
    from scae_np.run import FIG1_VARIANTS, QUICK
    convs, pools = [], []
    for prefix, dataset, what in (("mnist", "mnist", "the paper's MNIST CNN (Table 1)"),
                                  ("cifar", "cifar10", "the paper's CIFAR-10 CNN (Table 2)")):
        cv, pl = _network_layers(prefix, SPECS[dataset].shape, PAPER_MAPS, PAPER_KERNELS,
                                 PAPER_POOLS, what)
        convs += cv
        pools += pl
    paper_cnn = (tuple(convs), tuple(pools))
    f1c, f1p = _network_layers("fig1", SPECS["mnist"].shape, (QUICK["cae_maps"],),
                               (QUICK["cae_kernel"],), (max(v[2] for v in FIG1_VARIANTS),), "")
    fig1 = (dataclasses.replace(f1c[0], name="fig1-cae",
                                note="the Fig. 1 CAEs' encoder on MNIST (python -m scae_np.run)"),
            dataclasses.replace(f1p[0], name="fig1-pool",
                                note="the pooled Fig. 1 CAEs' max-pooling"))
    small = "N=2: small enough for the naive loops and numba's simulator"
    tiny = (ConvLayer("tiny-conv", 3, 4, 10, 10, 3, n=2, note=small),
            PoolLayer("tiny-pool", 3, 10, 10, 2, n=2, note=small))
    return paper_cnn, fig1, tiny


def paper_cnn_layers():
    """(conv layers, pool layers) of the paper's CNN on MNIST and CIFAR-10, batch 128."""
    return _named()[0]


def named_shapes():
    """Every named shape, by name: the paper's CNN layers, the Fig. 1 CAE and its pooling,
    and the tiny shapes."""
    (convs, pools), fig1, tiny = _named()
    return {L.name: L for L in (*convs, fig1[0], *pools, fig1[1], *tiny)}


# ------------------------------------------------------------------------ napkin maths
def metric(op):
    """How an op's speed is best read: 'GFLOP/s' (compute-bound convolutions) or 'GB/s'
    (the bias gradient and pooling, which are memory-bound)."""
    return "GFLOP/s" if op in CONV_OPS and op != "conv2d_backward_bias" else "GB/s"


def conv_napkin(op, L: ConvLayer, itemsize=4):
    """(flop, bytes) of one op: flop = 2 per multiply-add term (1 per add for the bias);
    bytes = each input read once + the output written once (the minimum traffic)."""
    x = int(np.prod(L.x_shape()))
    w = int(np.prod(L.w_shape()))
    y = int(np.prod(L.y_shape()))
    macs = y * L.c * L.k * L.k
    if op == "conv2d_forward":
        return 2 * macs, (x + w + L.f + y) * itemsize
    if op == "conv2d_backward_input":
        return 2 * macs, (y + w + x) * itemsize
    if op == "conv2d_backward_weight":
        return 2 * macs, (x + y + w) * itemsize
    if op == "conv2d_backward_bias":
        return y, (y + L.f) * itemsize
    raise ValueError(f"not a convolution op: {op!r}")


def pool_napkin(op, L: PoolLayer, itemsize=4):
    """(flop, bytes): comparisons are not counted as flop (pooling is memory-bound);
    bytes = minimum traffic (input read once, output written once, switches int32)."""
    x = int(np.prod(L.x_shape()))
    y = int(np.prod(L.y_shape()))
    if op == "maxpool2d_forward":
        return 0, x * itemsize + y * (itemsize + 4)
    if op in ("maxpool2d_backward", "unpool2d_forward"):
        return 0, y * (itemsize + 4) + x * itemsize
    if op == "unpool2d_backward":
        return 0, x * itemsize + y * (itemsize + 4)      # a k x k gather touches all of dx
    raise ValueError(f"not a pooling op: {op!r}")


def napkin(op, L):
    """(flop, bytes) of one call of ``op`` on layer ``L``."""
    return conv_napkin(op, L) if op in CONV_OPS else pool_napkin(op, L)


def layer_kind(op):
    """'conv' or 'pool': the kind of shape ``op`` runs on."""
    if op in CONV_OPS:
        return "conv"
    if op in POOL_OPS:
        return "pool"
    raise ValueError(f"unknown op {op!r}")


# -------------------------------------------------------------------------- inputs
def conv_inputs(op, L: ConvLayer, dtype=np.float32, seed=0):
    """Arguments of a convolution op on layer ``L``: normal x and dy, w scaled by
    1/sqrt(fan-in), normal b."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(L.x_shape(), dtype=np.float32).astype(dtype)
    w = (rng.standard_normal(L.w_shape(), dtype=np.float32) /
         np.sqrt(L.c * L.k * L.k)).astype(dtype)
    b = rng.standard_normal(L.f, dtype=np.float32).astype(dtype)
    dy = rng.standard_normal(L.y_shape(), dtype=np.float32).astype(dtype)
    return {"conv2d_forward": (x, w, b), "conv2d_backward_input": (dy, w),
            "conv2d_backward_weight": (x, dy), "conv2d_backward_bias": (dy,)}[op]


def pool_inputs(op, L: PoolLayer, seed=0):
    """Arguments of a pooling op on layer ``L``: the pooled input has distinct values
    (:func:`kernels.testing.distinct_values`), so no argmax ever ties; switches come from
    the reference pooling."""
    from .pool2d import numpy_ops as pool_ops
    rng = np.random.default_rng(seed)
    x = distinct_values(rng, L.x_shape(), scale=0.5, dtype=np.float32)
    _, sw = pool_ops.maxpool2d_forward_argmax(x, L.k)
    dy = rng.standard_normal(L.y_shape(), dtype=np.float32)
    hw = (L.h, L.w)
    return {"maxpool2d_forward": (x, L.k), "maxpool2d_backward": (dy, sw, hw),
            "unpool2d_forward": (dy, sw, hw), "unpool2d_backward": (x, sw)}[op]


def inputs(op, L, seed=0):
    """Host (NumPy, float32) arguments of ``op`` on layer ``L``."""
    return conv_inputs(op, L, seed=seed) if op in CONV_OPS else pool_inputs(op, L, seed=seed)


# ------------------------------------------------------------------------ reference
def reference_terms(op, L):
    """Work of the naive loops on layer ``L``: multiply-adds (convolutions; adds for the
    bias) or input elements visited (pooling)."""
    if op in CONV_OPS:
        flop, _ = conv_napkin(op, L)
        return flop if op == "conv2d_backward_bias" else flop // 2
    return int(np.prod(L.x_shape()))


def reference_version(op, L, under_test=None):
    """Name of the NumPy version used as the reference for ``op`` on layer ``L``: ``naive``
    when cheap, else ``fast`` (``im2col``/``argmax`` when ``under_test`` is
    ``("numpy", "fast")`` or ``("numpy", "dft")``: never a version against itself, and the
    transform plan against a direct one)."""
    if reference_terms(op, L) <= NAIVE_REFERENCE_TERMS:
        return "naive"
    if under_test in (("numpy", "fast"), ("numpy", "dft")):
        return "im2col" if op in CONV_OPS else "argmax"
    return "fast"


def compute_reference(op, args, version):
    """The NumPy ``version`` of ``op`` on ``args``: convolutions in float64 (so that the
    reference's own rounding is negligible next to the float32 tolerance), pooling in the
    inputs' dtype (it is exact)."""
    from .conv2d import numpy_ops as conv_ops
    from .pool2d import numpy_ops as pool_ops
    if op in CONV_OPS:
        return conv_ops.VERSIONS[op][version](*[np.asarray(a, np.float64) for a in args])
    return pool_ops.VERSIONS[op][version](*args)


def validate(op, args, result, ref, dtype=np.float32, input_eps=0.0, mixed=False):
    """Raise AssertionError unless ``result`` (host arrays) matches ``ref`` on ``args``
    (``input_eps``: the implementation's input rounding, e.g. TF32; ``mixed``: a transform
    plan's plane-wide rounding, the NumPy ``dft`` plan; see
    :func:`kernels.testing.op_tolerance`)."""
    if op == "maxpool2d_forward":
        assert_op_close(op, result[0], ref[0])
        assert_op_close(op, result[1], ref[1])
    elif op in CONV_OPS:
        assert_op_close(op, result, ref, *args, dtype=dtype, input_eps=input_eps,
                        mixed=mixed)
    else:
        assert_op_close(op, result, ref)
