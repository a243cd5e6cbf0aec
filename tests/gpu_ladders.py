"""The version ladders and defaults the two GPU backends (CUDA C via cupy, numba-cuda) must
have, written out here -- not read from the backends' own tables -- so that a version that
goes missing, appears untested or changes its place, or a default that changes, fails a
test. The two dialects share one ladder per op (kernels/README.md: the CUDA C and numba
versions of one name are translations of each other). Used by
tests/test_{conv2d,pool2d}_{cupy,numba}.py.

One row per op: its versions in ladder order (naive first), ``*`` on the default -- the
README's ladder table, where the default is bold.
"""

_TABLE = """
conv2d_forward          naive  tiled   implicit_gemm  *splitk
conv2d_backward_input   naive  tiled   implicit_gemm  *splitk
conv2d_backward_weight  naive  atomic  reduce  warp  implicit_gemm  *splitk
conv2d_backward_bias    naive  reduce  warp    *split
maxpool2d_forward       *naive
maxpool2d_backward      naive  *gather
unpool2d_forward        naive  *gather
unpool2d_backward       *naive
"""

_ROWS = [line.split() for line in _TABLE.strip().splitlines()]
LADDER = {op: tuple(v.lstrip("*") for v in versions) for op, *versions in _ROWS}
DEFAULTS = {op: next(v[1:] for v in versions if v.startswith("*")) for op, *versions in _ROWS}
CONV_LADDER = {op: v for op, v in LADDER.items() if op.startswith("conv2d")}
POOL_LADDER = {op: v for op, v in LADDER.items() if not op.startswith("conv2d")}


def check_ladder(be, ladder):
    """``be`` has exactly the pinned versions of every op of ``ladder`` (CONV_LADDER or
    POOL_LADDER), in ladder order, and the pinned default."""
    for op, versions in ladder.items():
        assert be.versions(op) == versions, op
        assert be.default_version(op) == DEFAULTS[op], op
