"""The version ladders and defaults the two GPU backends (CUDA C via cupy, numba-cuda) must
have, written out here -- not read from the backends' own tables -- so that a version that
goes missing, appears untested or changes its place or the default fails a test. The two
dialects share one ladder per op (kernels/README.md: the CUDA C and numba versions of one
name are translations of each other). Used by tests/test_{conv2d,pool2d}_{cupy,numba}.py."""

CONV_LADDER = {
    "conv2d_forward": ("naive", "tiled", "implicit_gemm"),
    "conv2d_backward_input": ("naive", "tiled", "implicit_gemm"),
    "conv2d_backward_weight": ("naive", "atomic", "reduce", "warp", "implicit_gemm"),
    "conv2d_backward_bias": ("naive", "reduce", "warp"),
}

POOL_LADDER = {
    "maxpool2d_forward": ("naive",),
    "maxpool2d_backward": ("naive", "gather"),
    "unpool2d_forward": ("naive", "gather"),
    "unpool2d_backward": ("naive",),
}

DEFAULTS = {
    "conv2d_forward": "implicit_gemm",
    "conv2d_backward_input": "implicit_gemm",
    "conv2d_backward_weight": "implicit_gemm",
    "conv2d_backward_bias": "reduce",
    "maxpool2d_forward": "naive",
    "maxpool2d_backward": "gather",
    "unpool2d_forward": "gather",
    "unpool2d_backward": "naive",
}



def check_ladder(be, ladder):
    """``be`` has exactly the pinned versions of every op of ``ladder`` (CONV_LADDER or
    POOL_LADDER), in ladder order, and the pinned default."""
    for op, versions in ladder.items():
        assert be.versions(op) == versions, op
        assert be.default_version(op) == DEFAULTS[op], op
