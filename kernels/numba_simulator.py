"""Make numba's CUDA simulator as strict as the CPU emulator: warp primitives (it has none)
and shared memory that starts as NaN in every block (it reuses one array for all blocks).

numba-cuda (0.30.4, ``numba_cuda/numba/cuda/simulator/kernelapi.py``) compiles
``cuda.shfl_sync``, ``shfl_up_sync``, ``shfl_down_sync``, ``shfl_xor_sync``, ``all_sync``,
``any_sync``, ``eq_sync``, ``ballot_sync`` and ``syncwarp`` for a GPU, but its simulator's
``cuda`` module (``FakeCUDAModule``) defines none of them: a kernel that calls one fails with
an AttributeError. :func:`install` adds them, with the rules a GPU imposes:

* a warp is 32 threads of consecutive linear id ``x + bx*(y + by*z)``; lane = id % 32;
* the calling lane must be in ``mask``; every lane named in ``mask`` must make the same call
  with the same mask; the call returns once they all have (a rendezvous of the simulator's
  Python threads). A named lane that has exited, that waits in ``syncthreads``, that waits in
  another warp primitive whose mask names the caller, or that does not exist, raises
  ``RuntimeError`` ("divergent warp") -- on a GPU that is undefined behaviour or a hang;
* shuffles have numba's semantics (no ``width`` argument: always 32 lanes): ``shfl_sync``
  reads lane ``src_lane % 32``, ``shfl_up_sync`` lane - delta (own value below lane 0),
  ``shfl_down_sync`` lane + delta (own value past lane 31), ``shfl_xor_sync`` lane ^ mask;
  reading a lane outside ``mask`` (undefined on a GPU) returns NaN (-1 for integers).

Not added: ``activemask`` and ``lanemask_lt`` (they need the GPU's notion of which lanes run
converged), ``match_any_sync``/``match_all_sync`` (unused here).

Shared memory: the simulator keeps one NumPy array per ``cuda.shared.array`` line for the
whole launch (``np.empty``: often zeros) and one zeroed dynamic buffer, so a block reads what
the previous block left. :func:`install` gives every block fresh arrays filled with 0xFF bytes
(NaN as float, -1 as int), as the CPU emulator does (kernels/emulator/README.md).

``kernels.numba_backend`` installs all this when it runs the simulator
(``get_backend("numba", emulate=True)``).
"""
from __future__ import annotations

import math
import sys
import threading
import time

import numpy as np

FULL_MASK = 0xFFFFFFFF
WARP = 32
POLL_S = 0.02          # a waiting lane re-checks its partners this often
GRACE_S = 3.0          # a partner seen in syncthreads this long (not a release in progress)
TIMEOUT_S = 300.0      # nothing in a test kernel waits this long: report a hang, don't hang

_lock = threading.Lock()


class _Block:
    """The lanes of one simulated block: started/exited threads and one rendezvous per warp."""

    def __init__(self, nthreads):
        self.nthreads = nthreads
        self.threads = {}        # linear id -> BlockThread (once started)
        self.exited = set()
        self.started = 0
        nwarps = -(-nthreads // WARP)
        self.cond = [threading.Condition() for _ in range(nwarps)]
        self.arrived = [dict() for _ in range(nwarps)]   # lane -> (op, mask, value, arg)
        self.results = [dict() for _ in range(nwarps)]   # lane -> result
        self.failed = None       # the first divergence found in this block


def _block_of(thread, create=True):
    mgr = thread._manager
    key = tuple(thread.blockIdx)
    with _lock:
        blocks = mgr.__dict__.setdefault("_scae_np_blocks", {})
        blk = blocks.get(key)
        if blk is None and create:
            blk = blocks[key] = _Block(int(np.prod(mgr._block_dim)))
        return blk


def _started(thread):
    blk = _block_of(thread)
    with _lock:
        blk.threads[thread.thread_id] = thread
        blk.started += 1


def _exited(thread):
    blk = _block_of(thread)
    w = thread.thread_id // WARP
    with blk.cond[w]:
        with _lock:
            blk.exited.add(thread.thread_id)
            if len(blk.exited) == blk.nthreads:       # the block is over: forget it
                thread._manager.__dict__.get("_scae_np_blocks", {}).pop(
                    tuple(thread.blockIdx), None)
        blk.cond[w].notify_all()


def _poison(value):
    kind = np.asarray(value).dtype.kind
    if kind == "f":
        return type(value)(math.nan) if isinstance(value, float) else np.asarray(value).dtype.type(np.nan)
    return type(value)(-1)


def _source(op, lane, arg):
    """(source lane, True) or (lane, False) when the shuffle returns the caller's own value."""
    if op == "shfl_sync":
        return int(arg) & 31, True
    j = {"shfl_up_sync": lane - int(arg), "shfl_down_sync": lane + int(arg),
         "shfl_xor_sync": lane ^ int(arg)}[op]
    return (j, True) if 0 <= j < WARP else (lane, False)


def _complete(blk, w, mask):
    """Compute the results of the group ``mask`` of warp ``w`` (all of it has arrived)."""
    arrived, results = blk.arrived[w], blk.results[w]
    lanes = [k for k in range(WARP) if mask >> k & 1]
    preds = {k: bool(arrived[k][2]) for k in lanes}
    for k in lanes:
        op, _, value, arg = arrived[k]
        if op == "ballot_sync":
            r = sum(1 << j for j in lanes if preds[j])
        elif op == "any_sync":
            r = any(preds.values())
        elif op == "all_sync":
            r = all(preds.values())
        elif op == "eq_sync":
            r = len(set(preds.values())) == 1
        elif op == "syncwarp":
            r = None
        else:
            j, ok = _source(op, k, arg)
            if not ok:
                r = value
            elif not mask >> j & 1:
                r = _poison(value)
            else:
                r = arrived[j][2]
        results[k] = r
    for k in lanes:
        del arrived[k]


def _diagnose(blk, w, lane, op, mask):
    """(message, definitive) if some lane named in ``mask`` may never arrive, else None.

    Exited, missing and cross-waiting lanes are definitive. A lane seen in ``syncthreads``
    is not: the simulator's manager releases a barrier thread by thread, so a lane may still
    look blocked for a moment after the others (us among them) have passed the barrier."""
    for k in range(WARP):
        if not mask >> k & 1 or k == lane:
            continue
        tid = w * WARP + k
        if tid >= blk.nthreads:
            return (f"divergent warp: lane {lane} calls cuda.{op} with mask 0x{mask:08x}, which "
                    f"names lane {k}, but the block has only {blk.nthreads} threads"), True
        other = blk.arrived[w].get(k)
        # A lane at another call waits for its own mask; only if that names us too can it
        # never come here (it waits for us, we wait for it). Otherwise it may still come.
        if other is not None and (other[0], other[1]) != (op, mask) and other[1] >> lane & 1:
            return (f"divergent warp: lane {lane} waits in cuda.{op} (mask 0x{mask:08x}) for "
                    f"lane {k}, which waits in cuda.{other[0]} with mask 0x{other[1]:08x}: the "
                    f"lanes named in a mask must all make the same call"), True
        if other is None:
            if tid in blk.exited:
                return (f"divergent warp: lane {lane} waits in cuda.{op} (mask 0x{mask:08x}) for "
                        f"lane {k}, which has exited: a lane named in the mask never arrives"), True
            t = blk.threads.get(tid)
            if t is not None and t.syncthreads_blocked:
                return (f"divergent warp: lane {lane} waits in cuda.{op} (mask 0x{mask:08x}) for "
                        f"lane {k}, which waits in cuda.syncthreads(): neither can go on"), False
    return None


def _rendezvous(op, mask, value, arg=0):
    me = threading.current_thread()
    mask = int(mask) & FULL_MASK
    tid = me.thread_id
    w, lane = tid // WARP, tid % WARP
    if not mask >> lane & 1:
        raise RuntimeError(f"warp mask error: lane {lane} calls cuda.{op} with mask "
                           f"0x{mask:08x}, which does not name the calling lane")
    blk = _block_of(me)
    cond = blk.cond[w]
    start = time.monotonic()
    suspect = None          # when a non-definitive diagnosis was first seen
    with cond:
        blk.arrived[w][lane] = (op, mask, value, arg)
        if all(k in blk.arrived[w] and blk.arrived[w][k][:2] == (op, mask)
               for k in range(WARP) if mask >> k & 1):
            _complete(blk, w, mask)
            cond.notify_all()
        while lane not in blk.results[w]:
            cond.wait(POLL_S)
            if lane in blk.results[w]:
                break
            if getattr(me, "abort", False):
                raise RuntimeError("abort flag set while waiting in a warp primitive")
            with _lock:
                found = _diagnose(blk, w, lane, op, mask)
            now = time.monotonic()
            why = None
            if found is not None:
                why, definitive = found
                suspect = suspect if suspect is not None else now
                if not definitive and now - suspect < GRACE_S:
                    why = None
            else:
                suspect = None
            if why is None and now - start > TIMEOUT_S:
                why = f"cuda.{op} waited {TIMEOUT_S:.0f} s for its warp: a hang"
            if blk.failed is not None:      # another lane found the divergence first:
                why = blk.failed                # report that one, whichever the manager shows
            if why is not None:
                blk.arrived[w].pop(lane, None)
                blk.failed = blk.failed or why
                raise RuntimeError(why)
        return blk.results[w].pop(lane)


def shfl_sync(self, mask, value, src_lane):
    return _rendezvous("shfl_sync", mask, value, src_lane)


def shfl_up_sync(self, mask, value, delta):
    return _rendezvous("shfl_up_sync", mask, value, delta)


def shfl_down_sync(self, mask, value, delta):
    return _rendezvous("shfl_down_sync", mask, value, delta)


def shfl_xor_sync(self, mask, value, lane_mask):
    return _rendezvous("shfl_xor_sync", mask, value, lane_mask)


def ballot_sync(self, mask, predicate):
    return _rendezvous("ballot_sync", mask, predicate)


def any_sync(self, mask, predicate):
    return _rendezvous("any_sync", mask, predicate)


def all_sync(self, mask, predicate):
    return _rendezvous("all_sync", mask, predicate)


def eq_sync(self, mask, predicate):
    return _rendezvous("eq_sync", mask, predicate)


def syncwarp(self, mask=FULL_MASK):
    _rendezvous("syncwarp", mask, 0)


def shared_array(self, shape, dtype, alignment=None):
    """``FakeCUDAShared.array``, but fresh for every block and filled with 0xFF bytes."""
    from numba.core import types
    from numba.np import numpy_support
    if alignment is not None:
        raise RuntimeError("Array alignment is not supported in cudasim")
    if isinstance(dtype, types.Type):
        dtype = numpy_support.as_dtype(dtype)
    dtype = np.dtype(dtype)
    block = tuple(threading.current_thread().blockIdx)
    caller = sys._getframe(1)
    key = (caller.f_code.co_filename, caller.f_lineno)
    with _lock:
        if self.__dict__.get("_scae_np_block") != block:   # a new block: new shared memory
            self._scae_np_block = block
            self._allocations = {}
            self._dynshared = np.full(self._dynshared_size, 0xFF, dtype=np.uint8)
        if shape == 0:      # dynamic shared memory: one buffer for all its views, as before
            return np.frombuffer(self._dynshared.data, dtype=dtype,
                                 count=self._dynshared_size // dtype.itemsize)
        res = self._allocations.get(key)
        if res is None:
            res = np.empty(shape, dtype)
            res.view(np.uint8)[...] = 0xFF
            self._allocations[key] = res
        return res


PRIMITIVES = {f.__name__: f for f in (shfl_sync, shfl_up_sync, shfl_down_sync, shfl_xor_sync,
                                      ballot_sync, any_sync, all_sync, eq_sync, syncwarp)}


def install():
    """Add the warp primitives to numba's simulator (idempotent). The simulator must be the
    active numba.cuda (NUMBA_ENABLE_CUDASIM=1 at numba's import)."""
    from numba.cuda.simulator import kernel, kernelapi
    fake = kernelapi.FakeCUDAModule
    if getattr(fake, "_scae_np_warp", False):
        return
    for name, fn in PRIMITIVES.items():
        if not hasattr(fake, name):      # a later numba-cuda may bring its own: keep that
            setattr(fake, name, fn)
    run = kernel.BlockThread.run

    def tracked_run(self):
        _started(self)
        try:
            run(self)
        finally:
            _exited(self)

    kernel.BlockThread.run = tracked_run
    kernelapi.FakeCUDAShared.array = shared_array
    fake._scae_np_warp = True
