"""Broken (and correct) numba kernels for tests/test_numba_simulator.py. A module of its
own: numba's simulator swaps the module global named ``cuda`` while a kernel runs, and this
module is imported only after the test has put numba in simulator mode."""
from numba import cuda, float32


@cuda.jit
def shuffles(y, x, a):
    t = cuda.threadIdx.x
    v = x[t]
    y[0, t] = cuda.shfl_sync(0xFFFFFFFF, v, a[t])
    y[1, t] = cuda.shfl_up_sync(0xFFFFFFFF, v, a[t] & 31)
    y[2, t] = cuda.shfl_down_sync(0xFFFFFFFF, v, a[t] & 31)
    y[3, t] = cuda.shfl_xor_sync(0xFFFFFFFF, v, a[t] & 31)

@cuda.jit
def votes(y, p):
    t = cuda.threadIdx.x
    y[0, t] = cuda.ballot_sync(0xFFFFFFFF, p[t])
    y[1, t] = cuda.any_sync(0xFFFFFFFF, p[t])
    y[2, t] = cuda.all_sync(0xFFFFFFFF, p[t])
    y[3, t] = cuda.eq_sync(0xFFFFFFFF, p[t])
    cuda.syncwarp(0xFFFFFFFF)

@cuda.jit
def after_return(y, x, n):
    i = cuda.grid(1)
    if i >= n:
        return                              # BUG: exited lanes are in the full mask
    y[i] = cuda.shfl_down_sync(0xFFFFFFFF, x[i], 1)

@cuda.jit
def wrong_mask(y, x):
    t = cuda.threadIdx.x
    y[t] = cuda.shfl_down_sync(0x0000FFFF, x[t], 1)   # BUG: lanes 16..31 call it too

@cuda.jit
def outside_mask(y, x):
    t = cuda.threadIdx.x
    if t < 16:
        y[t] = cuda.shfl_down_sync(0x0000FFFF, x[t], 4)   # lanes 12..15 read 16..19

@cuda.jit
def cross_wait(y, x):
    t = cuda.threadIdx.x
    v = x[t]
    if t < 16:
        v = cuda.shfl_xor_sync(0xFFFFFFFF, v, 1)    # BUG: the two halves wait for each
    else:                                           # other at different calls
        v = cuda.shfl_down_sync(0xFFFFFFFF, v, 1)
    y[t] = v

@cuda.jit
def shared_from_block0(y):
    s = cuda.shared.array(32, float32)
    t = cuda.threadIdx.x
    if cuda.blockIdx.x == 0:
        s[t] = 1.0                            # BUG: the other blocks never write s
    cuda.syncthreads()
    y[cuda.blockIdx.x, t] = s[t]

