// cuda_emu.h -- run CUDA C kernels, unchanged, on the CPU (g++ 12, -std=c++20), and be as
// strict as a GPU about what a GPU punishes.
//
// The loader (kernels/emulator/loader.py) compiles a .cu file with
//     g++ -std=c++20 -O2 -fPIC -shared -include cuda_emu.h -x c++ file.cu
// after rewriting every shared-memory declaration (below), and appends one
// `__emu_launch_<kernel>` wrapper per `__global__` function that calls emu::launch() with the
// grid, block, argument pointers, dynamic shared-memory size and thread order.
//
// The execution model, mapped onto the CPU:
//   * blocks    -> taken from a shared counter by W worker threads (std::thread); a block runs
//                  start to finish on one worker;
//   * threads   -> if the kernel reaches no barrier and no warp primitive: a plain loop calling
//                  the kernel once per thread (the fast path). Otherwise one fiber per CUDA
//                  thread (a 64 KiB stack above a guard page, created with makecontext once per
//                  worker and launch, then switched with _setjmp/_longjmp, no system call per
//                  switch). A fiber runs until it blocks -- at __syncthreads(), at a warp
//                  primitive, or at its end -- and a scheduler decides, when no fiber can run,
//                  what may pass: a barrier once every thread of the block waits at the same
//                  __syncthreads() call, a warp primitive once every lane named in its mask
//                  waits at it. Anything else is a divergence: an EmulatorError, never a hang;
//   * thread order -> between two blocking points the threads of a block run one after
//                  another in an order the launch chooses: index order (the default), reverse,
//                  or a seeded shuffle drawn anew for every block and every barrier interval.
//                  The loader's race check (SCAE_NP_EMU_RACECHECK=1) runs a launch under all
//                  three and compares the outputs: a result that depends on the order is a race;
//   * threadIdx/blockIdx/blockDim/gridDim -> thread_local variables set by the scheduler;
//   * __shared__          -> the loader rewrites `__shared__ T name[...];` into a reference to
//                            a slot of the running block's shared memory (emu::static_smem);
//   * extern __shared__   -> a per-worker buffer of the launch's dynamic shared-memory size;
//                  both are filled with 0xFF bytes (NaN as float, -1 as int) at the start of
//                  EVERY block, so a read of shared memory this block has not written shows;
//   * warp primitives     -> __shfl*_sync, __ballot_sync, __any_sync, __all_sync,
//                            __activemask, __syncwarp: warps of 32 consecutive linear thread
//                            ids, a rendezvous among the lanes named in the mask (below);
//   * atomicAdd & co.     -> std::atomic_ref (workers really run in parallel).
// What it cannot emulate (deprecated mask-less shuffles, __match_*, __reduce_*_sync,
// cooperative groups) fails at COMPILE time with a message that says so: a wrong number is
// never an option. kernels/emulator/README.md lists every check and what stays invisible.
#pragma once
#if !defined(__cplusplus) || __cplusplus < 202002L
#error "cuda_emu.h needs C++20: compile with g++ -std=c++20"
#endif

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <climits>
#include <cmath>
#include <csetjmp>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <source_location>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include <sys/mman.h>
#include <ucontext.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN_START(save, bottom, size) __sanitizer_start_switch_fiber((save), (bottom), (size))
#define EMU_ASAN_FINISH(save, bottom, size) __sanitizer_finish_switch_fiber((save), (bottom), (size))
#else
#define EMU_ASAN_START(save, bottom, size) ((void)0)
#define EMU_ASAN_FINISH(save, bottom, size) ((void)0)
#endif

// ------------------------------------------------------------------ built-in variables
struct uint3 { unsigned int x, y, z; };
struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};
inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;
static constexpr int warpSize = 32;

// ------------------------------------------------------------------ qualifiers
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
// The loader rewrites every `__shared__` declaration it finds; one it could not parse reaches
// g++ as this name, so it fails to compile instead of silently sharing memory between blocks.
#define __shared__ __emu_the_loader_could_not_rewrite_this___shared___declaration
#define __constant__ static

// ------------------------------------------------------------------ device functions
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }
inline unsigned int max(unsigned int a, unsigned int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
template <class T> inline T __ldg(const T* p) { return *p; }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }
inline int __popc(unsigned int v) { return __builtin_popcount(v); }
inline int __ffs(int v) { return __builtin_ffs(v); }
inline int __clz(int v) { return v == 0 ? 32 : __builtin_clz(unsigned(v)); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }

// ------------------------------------------------------------------ atomics
template <class T> inline T atomicAdd(T* a, T v) { return std::atomic_ref<T>(*a).fetch_add(v); }
template <class T> inline T atomicSub(T* a, T v) { return std::atomic_ref<T>(*a).fetch_sub(v); }
template <class T> inline T atomicExch(T* a, T v) { return std::atomic_ref<T>(*a).exchange(v); }
template <class T> inline T atomicCAS(T* a, T expected, T desired) {
    std::atomic_ref<T>(*a).compare_exchange_strong(expected, desired);
    return expected;  // the old value, as CUDA returns it
}
template <class T> inline T atomicMax(T* a, T v) {
    std::atomic_ref<T> r(*a); T old = r.load();
    while (old < v && !r.compare_exchange_weak(old, v)) {}
    return old;
}
template <class T> inline T atomicMin(T* a, T v) {
    std::atomic_ref<T> r(*a); T old = r.load();
    while (v < old && !r.compare_exchange_weak(old, v)) {}
    return old;
}

// ------------------------------------------------------------------ refused at compile time
template <class...> inline constexpr bool emu_cannot_emulate = false;
#define EMU_REFUSE(fn, what)                                                                  \
    template <class... A> inline int fn(A...) {                                               \
        static_assert(emu_cannot_emulate<A...>, "cuda_emu: " #fn " (" what ") cannot be "     \
                      "emulated on the CPU. The emulator emulates __shfl_sync, "              \
                      "__shfl_up_sync, __shfl_down_sync, __shfl_xor_sync, __ballot_sync, "    \
                      "__any_sync, __all_sync, __activemask and __syncwarp; use those, or "   \
                      "test this kernel on a real GPU (pytest -m gpu).");                     \
        return 0;                                                                             \
    }
EMU_REFUSE(__shfl, "mask-less warp shuffle, removed for sm_70+: use __shfl_sync")
EMU_REFUSE(__shfl_up, "mask-less warp shuffle, removed for sm_70+: use __shfl_up_sync")
EMU_REFUSE(__shfl_down, "mask-less warp shuffle, removed for sm_70+: use __shfl_down_sync")
EMU_REFUSE(__shfl_xor, "mask-less warp shuffle, removed for sm_70+: use __shfl_xor_sync")
EMU_REFUSE(__any, "mask-less warp vote, removed for sm_70+: use __any_sync")
EMU_REFUSE(__all, "mask-less warp vote, removed for sm_70+: use __all_sync")
EMU_REFUSE(__ballot, "mask-less warp vote, removed for sm_70+: use __ballot_sync")
EMU_REFUSE(__uni_sync, "warp vote: not implemented by the emulator")
EMU_REFUSE(__match_any_sync, "warp match: not implemented by the emulator")
EMU_REFUSE(__match_all_sync, "warp match: not implemented by the emulator")
EMU_REFUSE(__reduce_add_sync, "warp reduction: not implemented by the emulator")
EMU_REFUSE(__reduce_min_sync, "warp reduction: not implemented by the emulator")
EMU_REFUSE(__reduce_max_sync, "warp reduction: not implemented by the emulator")
#undef EMU_REFUSE

// ------------------------------------------------------------------ the runtime
namespace emu {

constexpr size_t kStackBytes = 64 * 1024;       // one fiber stack (CUDA threads use little)
constexpr size_t kGuardBytes = 4096;            // an inaccessible page below each stack
constexpr size_t kStride = kStackBytes + kGuardBytes;
constexpr unsigned kMaxThreadsPerBlock = 1024;  // the limits a real launch would enforce
constexpr size_t kMaxSharedPerBlock = 48 * 1024;  // static + dynamic, without an opt-in
constexpr unsigned kWarp = 32;

// Thread orders between blocking points (the race check runs all three).
enum Order : int { kForward = 0, kReverse = 1, kShuffle = 2 };

using Thunk = void (*)(void* const* args, void* kernel);

struct Launch {
    Thunk thunk; void* kernel; void* const* args;
    dim3 grid, block; size_t smem; bool fibers; int order; unsigned long long seed;
    std::atomic<unsigned long long>* next;   // the next block to take
    std::atomic<bool>* failed;               // set by the first error; every worker stops
};

// Where a thread of a block stands, as the scheduler sees it.
enum State : unsigned char { kRunnable, kAtBarrier, kAtWarp, kDone };
// Warp primitives, and the barrier flavours (a value reduced over the block).
enum Op : unsigned char { kShflIdx, kShflUp, kShflDown, kShflXor, kBallot, kAny, kAll,
                          kActiveMask, kSyncWarp, kSync, kSyncCount, kSyncAnd, kSyncOr };
inline const char* op_name(unsigned char op) {
    static const char* names[] = {"__shfl_sync", "__shfl_up_sync", "__shfl_down_sync",
                                  "__shfl_xor_sync", "__ballot_sync", "__any_sync",
                                  "__all_sync", "__activemask", "__syncwarp",
                                  "__syncthreads", "__syncthreads_count", "__syncthreads_and",
                                  "__syncthreads_or"};
    return names[op];
}

struct Site {   // a call site in the .cu file (the loader's #line keeps its name and lines)
    const char* file; unsigned line, col;
    bool operator==(const Site& o) const {
        return line == o.line && col == o.col && (file == o.file || !std::strcmp(file, o.file));
    }
};

struct Fiber {
    jmp_buf jb;
    void* fake;
    State state;
    unsigned char op;
    unsigned char size;      // bytes of the shuffled value
    Site site;
    unsigned mask;
    int arg, width;          // srcLane / delta / laneMask; shuffle width
    unsigned long long val, res;
};

struct Slot { char* p = nullptr; size_t size = 0, align = 0; };

struct Worker {
    const Launch* L = nullptr;
    Fiber* fib = nullptr;
    char* stacks = nullptr;
    size_t stacks_bytes = 0;
    unsigned nthreads = 0;
    jmp_buf sched;                    // the scheduler, waiting for a round of fibers to end
    jmp_buf abort_fast;               // worker_main, for errors raised on the fast path
    unsigned cur = 0, starting = 0;
    std::vector<unsigned> runq;       // this round's runnable threads, in the launch's order
    size_t rq_pos = 0;
    bool aborted = false;
    char* dyn = nullptr;              // dynamic shared memory
    std::vector<Slot> slots;          // static __shared__ variables (by emu::slot index)
    std::vector<unsigned> used;       // the slots this worker has allocated
    size_t static_bytes = 0;
    unsigned long long block = 0;     // linear index of the running block
    void* sched_fake = nullptr;
    const void* main_bottom = nullptr;
    size_t main_size = 0;
};
inline thread_local Worker* tls_worker = nullptr;
inline char g_error[2048];

inline void* dyn_smem() { return tls_worker->dyn; }

inline char* stack_of(Worker* w, unsigned t) { return w->stacks + size_t(t) * kStride; }

inline void set_thread(unsigned t, const dim3& b) {
    threadIdx.x = t % b.x;
    threadIdx.y = (t / b.x) % b.y;
    threadIdx.z = t / (b.x * b.y);
}

// "thread (x, y, z) of block (x, y, z)" for error messages.
struct Who { char s[96]; };
inline Who who(const Worker* w, unsigned t) {
    Who r;
    const dim3& b = w->L->block;
    std::snprintf(r.s, sizeof r.s, "thread (%u, %u, %u) of block (%u, %u, %u)", t % b.x,
                  (t / b.x) % b.y, t / (b.x * b.y), blockIdx.x, blockIdx.y, blockIdx.z);
    return r;
}

// The first error of a launch wins; it also tells every worker to stop taking blocks.
template <class... A> inline void fail(const Worker* w, const char* fmt, A... a) {
    bool expected = false;
    if (w->L->failed->compare_exchange_strong(expected, true))
        std::snprintf(g_error, sizeof g_error, fmt, a...);
}

// Abandon the running block after fail(): from a fiber, jump to the scheduler (the fiber is
// never resumed; all fibers are freed at the end of the launch); on the fast path, jump out of
// the kernel to worker_main.
[[noreturn]] inline void abort_thread(Worker* w) {
    w->aborted = true;
    if (w->fib) {
        EMU_ASAN_START(nullptr, w->main_bottom, w->main_size);
        _longjmp(w->sched, 1);
    }
    _longjmp(w->abort_fast, 1);
}

// Park the running fiber t (blocked, or finished) and switch straight to the next thread of
// this round; after the last one, back to the scheduler (one jump per thread per round).
inline void park(Worker* w, unsigned t) {
    if (!_setjmp(w->fib[t].jb)) {
        const size_t k = ++w->rq_pos;
        if (k < w->runq.size()) {
            const unsigned u = w->runq[k];
            w->cur = u;
            set_thread(u, w->L->block);
            EMU_ASAN_START(&w->fib[t].fake, stack_of(w, u), kStackBytes);
            _longjmp(w->fib[u].jb, 1);
        }
        EMU_ASAN_START(&w->fib[t].fake, w->main_bottom, w->main_size);
        _longjmp(w->sched, 1);
    }
    EMU_ASAN_FINISH(w->fib[t].fake, w->main_bottom ? nullptr : &w->main_bottom,
                    w->main_bottom ? nullptr : &w->main_size);
}

inline void fiber_entry() {
    Worker* w = tls_worker;
    const unsigned t = w->starting;
    EMU_ASAN_FINISH(nullptr, &w->main_bottom, &w->main_size);
    for (;;) {
        park(w, t);                           // the scheduler resumes us to run a block
        w->L->thunk(w->L->args, w->L->kernel);
        w->fib[t].state = kDone;              // then loop: park until the next block
    }
}

inline void make_fibers(Worker* w, unsigned n) {
    w->nthreads = n;
    w->fib = new Fiber[n];
    // One mapping: [guard page][stack 0][guard page][stack 1]... -- a kernel that overflows its
    // 64 KiB stack (huge local arrays) faults on a guard page instead of corrupting a neighbour.
    w->stacks_bytes = size_t(n) * kStride + kGuardBytes;
    void* p = mmap(nullptr, w->stacks_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) { std::perror("cuda_emu: mmap of fiber stacks"); std::abort(); }
    w->stacks = static_cast<char*>(p) + kGuardBytes;
    for (unsigned t = 0; t <= n; ++t) mprotect(stack_of(w, t) - kGuardBytes, kGuardBytes, PROT_NONE);
    for (unsigned t = 0; t < n; ++t) { w->fib[t].state = kDone; w->fib[t].fake = nullptr; }
    w->runq.clear();
    w->rq_pos = 0;
    for (unsigned t = 0; t < n; ++t) {
        ucontext_t uc;
        getcontext(&uc);
        uc.uc_stack.ss_sp = stack_of(w, t);
        uc.uc_stack.ss_size = kStackBytes;
        uc.uc_link = nullptr;
        makecontext(&uc, fiber_entry, 0);
        w->starting = t;
        if (!_setjmp(w->sched)) {             // run the fiber until it parks, then come back
            EMU_ASAN_START(&w->sched_fake, uc.uc_stack.ss_sp, kStackBytes);
            setcontext(&uc);
        }
        EMU_ASAN_FINISH(w->sched_fake, nullptr, nullptr);
    }
}

inline void free_fibers(Worker* w) {
    if (w->stacks) munmap(w->stacks - kGuardBytes, w->stacks_bytes);
    delete[] w->fib;
    w->fib = nullptr; w->stacks = nullptr;
}

// ---- thread orders
inline unsigned long long splitmix(unsigned long long& s) {
    unsigned long long z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
// Put v (the runnable threads, ascending) into the launch's order. The shuffle depends only on
// (seed, block, round), not on which worker runs the block: a race it finds reproduces.
inline void order_threads(const Worker* w, std::vector<unsigned>& v, unsigned round) {
    if (w->L->order == kReverse) {
        std::reverse(v.begin(), v.end());
    } else if (w->L->order == kShuffle) {
        unsigned long long s = w->L->seed * 0x100000001B3ull ^ (w->block << 20) ^ round;
        for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[splitmix(s) % i]);
    }
}

// ---- the scheduler: what may pass once no fiber can run
inline bool same_warp_call(const Fiber& a, const Fiber& b) {
    if (a.op != b.op || a.mask != b.mask) return false;
    if (a.op == kSyncWarp) return true;       // any __syncwarp(mask) matches (bar.warp.sync)
    return a.site == b.site && a.width == b.width;
}

inline unsigned long long poison_bits(unsigned size) {
    return size >= 8 ? ~0ull : ((1ull << (8 * size)) - 1);
}

// The value lane l of a shuffle group receives (PTX shfl.sync: segments of `width` lanes).
inline unsigned long long shuffle_result(const Worker* w, unsigned base, unsigned l, const Fiber& f) {
    const int lane = int(l), width = f.width;
    const int seg = (kWarp - width) & 31;                 // c[12:8] of shfl.sync
    const int min_lane = lane & seg;
    const int max_lane = f.op == kShflUp ? min_lane : (min_lane | (31 & ~seg));
    int j = lane;
    bool ok = true;
    switch (f.op) {
        case kShflUp:   j = lane - f.arg; ok = j >= max_lane; break;
        case kShflDown: j = lane + f.arg; ok = j <= max_lane; break;
        case kShflXor:  j = lane ^ f.arg; ok = j <= max_lane; break;
        default:        j = min_lane | (f.arg & 31 & ~seg); ok = j <= max_lane; break;
    }
    if (j < 0 || j > 31 || ((f.op == kShflUp || f.op == kShflDown) && f.arg < 0)) ok = false;
    if (!ok) return f.val;                                // outside the segment: own value
    if (!(f.mask >> j & 1u)) return poison_bits(f.size);  // not participating: undefined on a GPU
    return w->fib[base + unsigned(j)].val;
}

// Release every complete warp rendezvous. Returns true if any lane may run again.
inline bool release_warps(Worker* w) {
    const unsigned n = w->nthreads;
    bool progress = false;
    for (unsigned base = 0; base < n; base += kWarp) {
        const unsigned m = std::min(kWarp, n - base);
        for (unsigned l = 0; l < m; ++l) {
            Fiber& f = w->fib[base + l];
            if (f.state != kAtWarp) continue;
            unsigned group = 0;
            if (f.op == kActiveMask) {    // the lanes that reached this call together
                for (unsigned k = l; k < m; ++k) {
                    const Fiber& g = w->fib[base + k];
                    if (g.state == kAtWarp && g.op == kActiveMask && g.site == f.site) group |= 1u << k;
                }
                for (unsigned k = l; k < m; ++k)
                    if (group >> k & 1u) w->fib[base + k].res = group;
            } else {
                bool complete = true;
                for (unsigned k = 0; k < kWarp && complete; ++k)
                    if (f.mask >> k & 1u)
                        complete = k < m && w->fib[base + k].state == kAtWarp &&
                                   same_warp_call(w->fib[base + k], f);
                if (!complete) continue;
                group = f.mask;
                unsigned ballot = 0;
                for (unsigned k = 0; k < m; ++k)
                    if ((group >> k & 1u) && w->fib[base + k].val) ballot |= 1u << k;
                for (unsigned k = 0; k < m; ++k) {
                    if (!(group >> k & 1u)) continue;
                    Fiber& g = w->fib[base + k];
                    switch (g.op) {
                        case kBallot: g.res = ballot; break;
                        case kAny: g.res = ballot != 0; break;
                        case kAll: g.res = ballot == group; break;
                        case kSyncWarp: g.res = 0; break;
                        default: g.res = shuffle_result(w, base, k, g); break;
                    }
                }
            }
            for (unsigned k = 0; k < m; ++k)
                if (group >> k & 1u) w->fib[base + k].state = kRunnable;
            progress = true;
        }
    }
    return progress;
}

inline void site_str(char* buf, size_t n, const Fiber& f) {
    std::snprintf(buf, n, "%s at %s:%u:%u", op_name(f.op), f.site.file, f.site.line, f.site.col);
}

// No fiber can run and no warp rendezvous is complete: name the lane that never arrives.
inline void fail_warp(Worker* w) {
    const unsigned n = w->nthreads;
    for (unsigned t = 0; t < n; ++t) {
        const Fiber& f = w->fib[t];
        if (f.state != kAtWarp) continue;
        const unsigned base = t - t % kWarp, m = std::min(kWarp, n - base);
        for (unsigned k = 0; k < kWarp; ++k) {
            if (!(f.mask >> k & 1u)) continue;
            char here[256], there[256] = "";
            site_str(here, sizeof here, f);
            const Who a = who(w, t);
            if (k >= m) {
                fail(w, "divergent warp: %s calls %s with mask 0x%08x, which names lane %u of "
                     "its warp, but the block has only %u threads: that lane does not exist and "
                     "never arrives (on a GPU: undefined behaviour)", a.s, here, f.mask, k, n);
                return;
            }
            const Fiber& g = w->fib[base + k];
            const Who b = who(w, base + k);
            if (g.state == kDone) {
                fail(w, "divergent warp: %s waits in %s (mask 0x%08x) for lane %u, %s, which "
                     "has exited: a lane named in the mask never arrives (on a GPU: undefined "
                     "behaviour; a value shuffled from it is garbage)", a.s, here, f.mask, k, b.s);
                return;
            }
            if (g.state == kAtBarrier) {
                site_str(there, sizeof there, g);
                fail(w, "divergent warp: %s waits in %s (mask 0x%08x) for lane %u, %s, which "
                     "waits at barrier %s instead: neither can pass (on a GPU: a hang)",
                     a.s, here, f.mask, k, b.s, there);
                return;
            }
            if (g.state == kAtWarp && !same_warp_call(g, f)) {
                site_str(there, sizeof there, g);
                fail(w, "divergent warp: %s waits in %s (mask 0x%08x) for lane %u, %s, which is "
                     "at %s with mask 0x%08x%s: the lanes named in a mask must all call the "
                     "same primitive with the same mask (on a GPU: undefined behaviour)", a.s,
                     here, f.mask, k, b.s, there, g.mask,
                     g.op == f.op && g.mask == f.mask && g.width != f.width ? " and another width" : "");
                return;
            }
        }
    }
    fail(w, "divergent warp: the lanes of a warp wait for each other in a cycle (internal)");
}

// After a round: 0 = the block has finished, 1 = some threads may run again, -1 = error.
inline int resolve(Worker* w) {
    const unsigned n = w->nthreads;
    {   // the common case first: every thread waits at the same __syncthreads()
        const Fiber& f0 = w->fib[0];
        unsigned t = 0;
        if (f0.state == kAtBarrier && f0.op == kSync)
            while (t < n && w->fib[t].state == kAtBarrier && w->fib[t].op == kSync &&
                   w->fib[t].site == f0.site) ++t;
        if (t == n && n) {
            for (unsigned u = 0; u < n; ++u) w->fib[u].state = kRunnable;
            return 1;
        }
    }
    unsigned at_warp = 0, at_barrier = 0, done = 0, first_barrier = n, first_done = n;
    for (unsigned t = 0; t < n; ++t) {
        switch (w->fib[t].state) {
            case kAtWarp: ++at_warp; break;
            case kAtBarrier: ++at_barrier; if (first_barrier == n) first_barrier = t; break;
            case kDone: ++done; if (first_done == n) first_done = t; break;
            default: break;
        }
    }
    if (at_warp) {
        if (release_warps(w)) return 1;
        fail_warp(w);
        return -1;
    }
    if (!at_barrier) return 0;
    const Fiber& f = w->fib[first_barrier];
    char here[256], there[256];
    site_str(here, sizeof here, f);
    if (done) {
        const Who a = who(w, first_done), b = who(w, first_barrier);
        fail(w, "divergent barrier: %s has finished while %s waits at %s. Every thread of a "
             "block must reach the same __syncthreads() calls: a barrier in conditional code "
             "(or after an early return) needs a condition that is the same for the whole "
             "block (on a GPU: undefined behaviour, often a hang)", a.s, b.s, here);
        return -1;
    }
    for (unsigned t = first_barrier + 1; t < n; ++t) {
        const Fiber& g = w->fib[t];
        if (g.site == f.site && g.op == f.op) continue;
        site_str(there, sizeof there, g);
        const Who a = who(w, first_barrier), b = who(w, t);
        fail(w, "divergent barrier: %s waits at %s while %s waits at %s. Every thread of a "
             "block must reach the same __syncthreads() calls, in the same order (on a GPU: "
             "undefined behaviour, often a hang or a silently wrong result)", a.s, here, b.s, there);
        return -1;
    }
    unsigned long long count = 0;
    for (unsigned t = 0; t < n; ++t) count += w->fib[t].val != 0;
    for (unsigned t = 0; t < n; ++t) {
        Fiber& g = w->fib[t];
        g.res = g.op == kSyncCount ? count : g.op == kSyncAnd ? count == n : count != 0;
        g.state = kRunnable;
    }
    return 1;
}

// Run all threads of the current block as fibers until every one has finished. Each round
// resumes the runnable threads in the launch's order; they hand over to each other (park) and
// the last one returns here; then resolve() decides who may pass. False on error.
inline bool run_block_fibers(Worker* w) {
    const unsigned n = w->nthreads;
    for (unsigned t = 0; t < n; ++t) w->fib[t].state = kRunnable;
    for (unsigned round = 0;; ++round) {
        w->runq.clear();
        for (unsigned t = 0; t < n; ++t)
            if (w->fib[t].state == kRunnable) w->runq.push_back(t);
        order_threads(w, w->runq, round);
        w->rq_pos = 0;
        const unsigned t = w->runq[0];
        w->cur = t;
        set_thread(t, w->L->block);
        if (!_setjmp(w->sched)) {
            EMU_ASAN_START(&w->sched_fake, stack_of(w, t), kStackBytes);
            _longjmp(w->fib[t].jb, 1);
        }
        EMU_ASAN_FINISH(w->sched_fake, nullptr, nullptr);
        if (w->aborted) return false;
        const int r = resolve(w);
        if (r <= 0) return r == 0;
    }
}

inline void poison_shared(Worker* w) {
    if (w->L->smem) std::memset(w->dyn, 0xFF, w->L->smem);
    for (unsigned i : w->used) std::memset(w->slots[i].p, 0xFF, w->slots[i].size);
}

// Block k of the launch's order: index order, reversed, or a seeded stride permutation.
inline unsigned long long block_of(const Launch* L, unsigned long long k, unsigned long long nblocks) {
    if (L->order == kReverse) return nblocks - 1 - k;
    if (L->order == kShuffle && nblocks > 1) {
        unsigned long long s = L->seed, p = splitmix(s) % nblocks | 1;
        auto gcd = [](unsigned long long a, unsigned long long b) { while (b) { a %= b; std::swap(a, b); } return a; };
        while (gcd(p, nblocks) != 1) p += 2;
        return (unsigned long long)((unsigned __int128)k * p % nblocks);
    }
    return k;
}

inline void run_blocks(Worker* w) {
    const Launch* L = w->L;
    const unsigned nthreads = L->block.x * L->block.y * L->block.z;
    const unsigned long long nblocks = 1ull * L->grid.x * L->grid.y * L->grid.z;
    std::vector<unsigned> perm;
    for (;;) {
        if (L->failed->load(std::memory_order_relaxed)) return;
        const unsigned long long k = L->next->fetch_add(1);
        if (k >= nblocks) return;
        const unsigned long long b = block_of(L, k, nblocks);
        w->block = b;
        blockIdx.x = unsigned(b % L->grid.x);
        blockIdx.y = unsigned((b / L->grid.x) % L->grid.y);
        blockIdx.z = unsigned(b / (1ull * L->grid.x * L->grid.y));
        poison_shared(w);
        if (L->fibers) {
            if (!run_block_fibers(w)) return;
        } else {
            perm.resize(nthreads);
            for (unsigned t = 0; t < nthreads; ++t) perm[t] = t;
            order_threads(w, perm, 0);
            for (unsigned t : perm) {
                w->cur = t;
                set_thread(t, L->block);
                L->thunk(L->args, L->kernel);
            }
        }
    }
}

inline void worker_main(const Launch* L) {
    Worker* const w = new Worker;
    w->L = L;
    tls_worker = w;
    blockDim = L->block;
    gridDim = L->grid;
    const unsigned nthreads = L->block.x * L->block.y * L->block.z;
    std::vector<char> dyn(L->smem);   // exact size: ASan sees overruns
    w->dyn = dyn.data();
    if (L->fibers) make_fibers(w, nthreads);
    if (!_setjmp(w->abort_fast)) run_blocks(w);
    if (L->fibers) free_fibers(w);
    for (unsigned i : w->used) ::operator delete(w->slots[i].p, std::align_val_t(w->slots[i].align));
    delete w;
    tls_worker = nullptr;
}

inline unsigned num_workers(unsigned long long nblocks) {
    unsigned n = std::thread::hardware_concurrency();
    if (const char* s = std::getenv("SCAE_NP_EMU_THREADS")) n = unsigned(std::atoi(s));
    if (n < 1) n = 1;
    if (nblocks < n) n = unsigned(nblocks);
    return n;
}

inline int run(Launch& L) {
    const unsigned long long nthreads = 1ull * L.block.x * L.block.y * L.block.z;
    if (L.grid.x == 0 || L.grid.y == 0 || L.grid.z == 0 || nthreads == 0) {
        std::snprintf(g_error, sizeof g_error, "invalid configuration: grid (%u, %u, %u), block (%u, %u, %u) "
                      "has a zero dimension", L.grid.x, L.grid.y, L.grid.z, L.block.x, L.block.y, L.block.z);
        return 1;
    }
    if (nthreads > kMaxThreadsPerBlock || L.block.z > 64) {
        std::snprintf(g_error, sizeof g_error, "too many threads per block: (%u, %u, %u) = %llu; CUDA allows "
                      "at most %u (and block.z <= 64)", L.block.x, L.block.y, L.block.z, nthreads, kMaxThreadsPerBlock);
        return 1;
    }
    if (L.grid.y > 65535 || L.grid.z > 65535) {
        std::snprintf(g_error, sizeof g_error, "grid (%u, %u, %u): grid.y and grid.z must be <= 65535",
                      L.grid.x, L.grid.y, L.grid.z);
        return 1;
    }
    if (L.smem > kMaxSharedPerBlock) {
        std::snprintf(g_error, sizeof g_error, "dynamic shared memory of %zu bytes exceeds the %zu bytes a "
                      "kernel gets without an opt-in", L.smem, kMaxSharedPerBlock);
        return 1;
    }
    const unsigned long long nblocks = 1ull * L.grid.x * L.grid.y * L.grid.z;
    std::atomic<unsigned long long> next{0};
    std::atomic<bool> failed{false};
    L.next = &next;
    L.failed = &failed;
    const unsigned nw = num_workers(nblocks);
    if (nw == 1) {
        worker_main(&L);
    } else {
        std::vector<std::thread> pool;
        for (unsigned i = 0; i < nw; ++i) pool.emplace_back(worker_main, &L);
        for (auto& th : pool) th.join();
    }
    return failed.load() ? 1 : 0;
}

template <class... A, std::size_t... I>
inline void call(void (*k)(A...), void* const* args, std::index_sequence<I...>) {
    k(*static_cast<std::remove_cv_t<A>*>(args[I])...);
}
template <class... A> inline void thunk(void* const* args, void* kernel) {
    call(reinterpret_cast<void (*)(A...)>(kernel), args, std::index_sequence_for<A...>{});
}

// One letter per kernel parameter, for the loader's argument check:
// p = pointer, i = int32, u = uint32, l = int64, f = float32, d = float64, ? = other.
template <class T> constexpr char kind() {
    if constexpr (std::is_pointer_v<T>) return 'p';
    else if constexpr (std::is_same_v<T, int>) return 'i';
    else if constexpr (std::is_same_v<T, unsigned int>) return 'u';
    else if constexpr (std::is_same_v<T, long long> || std::is_same_v<T, long>) return 'l';
    else if constexpr (std::is_same_v<T, float>) return 'f';
    else if constexpr (std::is_same_v<T, double>) return 'd';
    else return '?';
}
template <class... A> inline const char* signature(void (*)(A...)) {
    static const char s[] = {kind<std::remove_cv_t<A>>()..., '\0'};
    return s;
}

template <class... A>
inline int launch(void (*k)(A...), void* const* args, unsigned gx, unsigned gy, unsigned gz,
                  unsigned bx, unsigned by, unsigned bz, unsigned long long smem, int fibers,
                  int order, unsigned long long seed) {
    Launch L{&thunk<A...>, reinterpret_cast<void*>(k), args, dim3(gx, gy, gz), dim3(bx, by, bz),
             size_t(smem), fibers != 0, order, seed, nullptr, nullptr};
    return run(L);
}

// ---- static __shared__: the loader rewrites   __shared__ T name[...];   into
//     using __emu_shared_t<Id> = T[...];
//     __emu_shared_t<Id>& name = ::emu::static_smem<__emu_shared_t<Id>, Id, Align>();
// Each (declaration, type) pair gets a slot; each worker allocates it once per launch (exact
// size, so ASan sees overruns) and fills it with 0xFF bytes at the start of every block.
inline std::atomic<unsigned> g_slots{0};
template <class T, int Id, size_t Align> inline T& static_smem() {
    static const unsigned index = g_slots.fetch_add(1);
    Worker* w = tls_worker;
    if (index >= w->slots.size()) w->slots.resize(index + 1);
    Slot& s = w->slots[index];
    if (!s.p) {
        s.size = sizeof(T);
        s.align = std::max<size_t>({Align, alignof(T), 16});
        s.p = static_cast<char*>(::operator new(s.size, std::align_val_t(s.align)));
        std::memset(s.p, 0xFF, s.size);
        w->used.push_back(index);
        w->static_bytes += s.size;
        if (w->static_bytes + w->L->smem > kMaxSharedPerBlock) {
            fail(w, "%zu bytes of static __shared__ memory plus %zu of dynamic shared memory "
                 "exceed the %zu bytes a block gets without an opt-in", w->static_bytes,
                 w->L->smem, kMaxSharedPerBlock);
            abort_thread(w);
        }
    }
    return *reinterpret_cast<T*>(s.p);
}

inline Worker* fiber_worker(const char* what, const Site& s) {
    Worker* w = tls_worker;
    if (!w->fib) {
        fail(w, "%s at %s:%u was reached by a kernel the loader launched without fibers (it "
             "found no barrier or warp primitive in the kernel's body or the functions it "
             "calls: is it hidden behind a macro or a function pointer?)", what, s.file, s.line);
        abort_thread(w);
    }
    return w;
}

// Block the running fiber at a barrier or warp primitive until the scheduler releases it.
inline unsigned long long block_at(Worker* w, State st, unsigned char op, const Site& s,
                                   unsigned mask, unsigned long long val, unsigned size,
                                   int arg, int width) {
    const unsigned t = w->cur;
    Fiber& f = w->fib[t];
    f.state = st; f.op = op; f.site = s; f.mask = mask; f.val = val; f.size = (unsigned char)size;
    f.arg = arg; f.width = width;
    park(w, t);
    return w->fib[t].res;
}

inline unsigned long long barrier(unsigned char op, unsigned long long val, const Site& s) {
    Worker* w = fiber_worker(op_name(op), s);
    return block_at(w, kAtBarrier, op, s, 0, val, 0, 0, 0);
}

inline unsigned long long warp_op(unsigned char op, unsigned mask, unsigned long long val,
                                  unsigned size, int arg, int width, const Site& s) {
    Worker* w = fiber_worker(op_name(op), s);
    const unsigned t = w->cur, lane = t % kWarp;
    if (op != kActiveMask && !(mask >> lane & 1u)) {
        const Who a = who(w, t);
        fail(w, "warp mask error: %s (lane %u) calls %s at %s:%u:%u with mask 0x%08x, which "
             "does not name the calling lane (on a GPU: undefined behaviour)", a.s, lane,
             op_name(op), s.file, s.line, s.col, mask);
        abort_thread(w);
    }
    if (op <= kShflXor && (width < 1 || width > 32 || (width & (width - 1)))) {
        const Who a = who(w, t);
        fail(w, "warp shuffle error: %s calls %s at %s:%u:%u with width %d: width must be a "
             "power of two from 1 to 32", a.s, op_name(op), s.file, s.line, s.col, width);
        abort_thread(w);
    }
    return block_at(w, kAtWarp, op, s, mask, val, size, arg, width);
}

template <class T> inline unsigned long long bits_of(T v) {
    static_assert(std::is_trivially_copyable_v<T> && (sizeof(T) == 4 || sizeof(T) == 8),
                  "cuda_emu: warp shuffles take 32- or 64-bit values (int, unsigned, long long, "
                  "float, double, ...)");
    unsigned long long b = 0;
    std::memcpy(&b, &v, sizeof(T));
    return b;
}
template <class T> inline T from_bits(unsigned long long b) {
    T v;
    std::memcpy(&v, &b, sizeof(T));
    return v;
}

}  // namespace emu

// The call site of a barrier or warp primitive: a default argument, evaluated where it is called.
#define EMU_SITE std::source_location __emu_loc = std::source_location::current()
#define EMU_HERE ::emu::Site{__emu_loc.file_name(), unsigned(__emu_loc.line()), unsigned(__emu_loc.column())}

// ------------------------------------------------------------------ barriers
// Every thread of the block waits here until all of them wait at this same call.
inline void __syncthreads(EMU_SITE) { ::emu::barrier(::emu::kSync, 0, EMU_HERE); }
inline int __syncthreads_count(int pred, EMU_SITE) { return int(::emu::barrier(::emu::kSyncCount, pred != 0, EMU_HERE)); }
inline int __syncthreads_and(int pred, EMU_SITE) { return int(::emu::barrier(::emu::kSyncAnd, pred != 0, EMU_HERE)); }
inline int __syncthreads_or(int pred, EMU_SITE) { return int(::emu::barrier(::emu::kSyncOr, pred != 0, EMU_HERE)); }

// ------------------------------------------------------------------ warp primitives
// Lanes: linear thread id % 32; a warp: 32 consecutive linear thread ids. Each primitive waits
// until every lane named in `mask` has called the same primitive (same call site, same mask;
// __syncwarp: any call site); a named lane that exits or waits elsewhere is an error.
template <class T> inline T __shfl_sync(unsigned mask, T var, int srcLane, int width = warpSize, EMU_SITE) {
    return ::emu::from_bits<T>(::emu::warp_op(::emu::kShflIdx, mask, ::emu::bits_of(var), sizeof(T), srcLane, width, EMU_HERE));
}
template <class T> inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize, EMU_SITE) {
    return ::emu::from_bits<T>(::emu::warp_op(::emu::kShflUp, mask, ::emu::bits_of(var), sizeof(T), int(delta), width, EMU_HERE));
}
template <class T> inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize, EMU_SITE) {
    return ::emu::from_bits<T>(::emu::warp_op(::emu::kShflDown, mask, ::emu::bits_of(var), sizeof(T), int(delta), width, EMU_HERE));
}
template <class T> inline T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = warpSize, EMU_SITE) {
    return ::emu::from_bits<T>(::emu::warp_op(::emu::kShflXor, mask, ::emu::bits_of(var), sizeof(T), laneMask, width, EMU_HERE));
}
inline unsigned __ballot_sync(unsigned mask, int pred, EMU_SITE) {
    return unsigned(::emu::warp_op(::emu::kBallot, mask, pred != 0, 4, 0, 32, EMU_HERE));
}
inline int __any_sync(unsigned mask, int pred, EMU_SITE) {
    return int(::emu::warp_op(::emu::kAny, mask, pred != 0, 4, 0, 32, EMU_HERE));
}
inline int __all_sync(unsigned mask, int pred, EMU_SITE) {
    return int(::emu::warp_op(::emu::kAll, mask, pred != 0, 4, 0, 32, EMU_HERE));
}
// The lanes of the warp that reach this call together: those waiting at this call site once no
// lane of the block can run any further (lanes in another branch, or exited, are not active).
inline unsigned __activemask(EMU_SITE) {
    return unsigned(::emu::warp_op(::emu::kActiveMask, 0, 0, 4, 0, 32, EMU_HERE));
}
inline void __syncwarp(unsigned mask = 0xffffffffu, EMU_SITE) {
    ::emu::warp_op(::emu::kSyncWarp, mask, 0, 4, 0, 32, EMU_HERE);
}

extern "C" const char* __emu_last_error() { return emu::g_error; }
