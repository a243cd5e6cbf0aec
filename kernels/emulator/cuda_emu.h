// cuda_emu.h -- run CUDA C kernels, unchanged, on the CPU (g++ 12, -std=c++20).
//
// The loader (kernels/emulator/loader.py) compiles a .cu file with
//     g++ -std=c++20 -O2 -fPIC -shared -include cuda_emu.h -x c++ file.cu
// after rewriting `extern __shared__ T name[];` into a pointer to a per-block buffer, and
// appends one `__emu_launch_<kernel>` wrapper per `__global__` function that calls
// emu::launch() below with the grid, block, argument pointers and dynamic shared-memory size
// (the same void** argument array cudaLaunchKernel takes).
//
// The execution model, mapped onto the CPU:
//   * blocks    -> taken from a shared counter by W worker threads (std::thread); a block runs
//                  start to finish on one worker, so `static thread_local` is per-block memory;
//   * threads   -> if the kernel has no __syncthreads(): a plain loop calling the kernel once
//                  per thread (the fast path). Otherwise one fiber per CUDA thread (a 64 KiB
//                  stack, created with makecontext once per worker and launch, then switched
//                  with _setjmp/_longjmp, no system call per switch); __syncthreads() switches
//                  back to a round-robin scheduler, which resumes every thread of the block in
//                  turn, so all threads reach the barrier before any passes it;
//   * threadIdx/blockIdx/blockDim/gridDim -> thread_local variables set by the scheduler;
//   * __shared__          -> `static thread_local` (one copy per worker = per running block);
//   * extern __shared__   -> a per-worker buffer of the launch's shared-memory size, filled
//                            with 0xFF bytes (NaN as float) so reading before writing shows;
//   * atomicAdd & co.     -> std::atomic_ref (workers really run in parallel).
// What it cannot emulate (warp shuffles, votes, __syncwarp, cooperative groups) fails at
// COMPILE time with a static_assert that says so: a wrong number is never an option.
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
#define __shared__ static thread_local
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
// Warp-level operations need 32 threads executing in lockstep; the emulator runs the threads of
// a warp one after another, so it refuses them instead of returning made-up values.
template <class...> inline constexpr bool emu_cannot_emulate = false;
#define EMU_REFUSE(fn, what)                                                                  \
    template <class... A> inline int fn(A...) {                                               \
        static_assert(emu_cannot_emulate<A...>, "cuda_emu: " #fn " (" what ") cannot be "     \
                      "emulated on the CPU: threads of a warp do not run in lockstep here. "  \
                      "Write the kernel with __shared__ memory and __syncthreads() instead, " \
                      "or test it on a real GPU (pytest -m gpu).");                           \
        return 0;                                                                             \
    }
EMU_REFUSE(__shfl_sync, "warp shuffle")
EMU_REFUSE(__shfl_up_sync, "warp shuffle")
EMU_REFUSE(__shfl_down_sync, "warp shuffle")
EMU_REFUSE(__shfl_xor_sync, "warp shuffle")
EMU_REFUSE(__shfl, "warp shuffle")
EMU_REFUSE(__shfl_up, "warp shuffle")
EMU_REFUSE(__shfl_down, "warp shuffle")
EMU_REFUSE(__shfl_xor, "warp shuffle")
EMU_REFUSE(__ballot_sync, "warp vote")
EMU_REFUSE(__any_sync, "warp vote")
EMU_REFUSE(__all_sync, "warp vote")
EMU_REFUSE(__uni_sync, "warp vote")
EMU_REFUSE(__activemask, "warp vote")
EMU_REFUSE(__match_any_sync, "warp match")
EMU_REFUSE(__match_all_sync, "warp match")
EMU_REFUSE(__reduce_add_sync, "warp reduction")
EMU_REFUSE(__reduce_min_sync, "warp reduction")
EMU_REFUSE(__reduce_max_sync, "warp reduction")
EMU_REFUSE(__syncwarp, "warp barrier")
#undef EMU_REFUSE

// ------------------------------------------------------------------ the runtime
namespace emu {

constexpr size_t kStackBytes = 64 * 1024;       // one fiber stack (CUDA threads use little)
constexpr size_t kGuardBytes = 4096;            // an inaccessible page below each stack
constexpr size_t kStride = kStackBytes + kGuardBytes;
constexpr unsigned kMaxThreadsPerBlock = 1024;  // the limits a real launch would enforce
constexpr size_t kMaxDynamicSmem = 48 * 1024;   // without cudaFuncSetAttribute opt-in

using Thunk = void (*)(void* const* args, void* kernel);

struct Launch {
    Thunk thunk; void* kernel; void* const* args;
    dim3 grid, block; size_t smem; bool fibers;
};

struct Fiber { jmp_buf jb; bool done; void* fake; };

struct Worker {
    const Launch* L = nullptr;
    Fiber* fib = nullptr;
    char* stacks = nullptr;
    size_t stacks_bytes = 0;
    unsigned nthreads = 0;
    jmp_buf sched;
    unsigned cur = 0, starting = 0;
    char* dyn = nullptr;
    void* sched_fake = nullptr;
    const void* main_bottom = nullptr;
    size_t main_size = 0;
};
inline thread_local Worker* tls_worker = nullptr;
inline char g_error[512];

inline void* dyn_smem() { return tls_worker->dyn; }

inline void set_thread(unsigned t, const dim3& b) {
    threadIdx.x = t % b.x;
    threadIdx.y = (t / b.x) % b.y;
    threadIdx.z = t / (b.x * b.y);
}

// Park the running fiber t (at a barrier, or after it finished the block) and switch straight
// to the next thread of the block that has not finished; after the last one, back to the
// scheduler, which starts the next round (one jump per thread per barrier, not two).
inline void yield_to_scheduler(Worker* w, unsigned t) {
    if (!_setjmp(w->fib[t].jb)) {
        unsigned u = t + 1;
        while (u < w->nthreads && w->fib[u].done) ++u;
        if (u < w->nthreads) {
            w->cur = u;
            set_thread(u, w->L->block);
            EMU_ASAN_START(&w->fib[t].fake, w->stacks + size_t(u) * kStride, kStackBytes);
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
        yield_to_scheduler(w, t);             // park: the scheduler resumes us to run a block
        w->L->thunk(w->L->args, w->L->kernel);
        w->fib[t].done = true;                // then loop: park again until the next block
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
    for (unsigned t = 0; t <= n; ++t) mprotect(w->stacks + size_t(t) * kStride - kGuardBytes, kGuardBytes, PROT_NONE);
    for (unsigned t = 0; t < n; ++t) { w->fib[t].done = true; w->fib[t].fake = nullptr; }
    for (unsigned t = 0; t < n; ++t) {
        ucontext_t uc;
        getcontext(&uc);
        uc.uc_stack.ss_sp = w->stacks + size_t(t) * kStride;
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

// Run all threads of the current block as fibers, round robin, until every one has finished.
// Each round resumes the first unfinished thread; the threads hand over to each other in
// order (yield_to_scheduler) and the last one returns here.
inline void run_block_fibers(Worker* w) {
    const unsigned n = w->nthreads;
    for (unsigned t = 0; t < n; ++t) w->fib[t].done = false;
    for (;;) {
        unsigned t = 0;
        while (t < n && w->fib[t].done) ++t;
        if (t == n) break;
        w->cur = t;
        set_thread(t, w->L->block);
        if (!_setjmp(w->sched)) {
            EMU_ASAN_START(&w->sched_fake, w->stacks + size_t(t) * kStride, kStackBytes);
            _longjmp(w->fib[t].jb, 1);
        }
        EMU_ASAN_FINISH(w->sched_fake, nullptr, nullptr);
    }
}

inline void worker_main(const Launch* L, std::atomic<unsigned long long>* next) {
    Worker w;
    w.L = L;
    tls_worker = &w;
    blockDim = L->block;
    gridDim = L->grid;
    const unsigned nthreads = L->block.x * L->block.y * L->block.z;
    std::vector<char> dyn(L->smem, char(0xFF));   // exact size: ASan sees overruns
    w.dyn = dyn.data();
    if (L->fibers) make_fibers(&w, nthreads);
    const unsigned long long nblocks = 1ull * L->grid.x * L->grid.y * L->grid.z;
    for (;;) {
        unsigned long long b = next->fetch_add(1);
        if (b >= nblocks) break;
        blockIdx.x = unsigned(b % L->grid.x);
        blockIdx.y = unsigned((b / L->grid.x) % L->grid.y);
        blockIdx.z = unsigned(b / (1ull * L->grid.x * L->grid.y));
        if (L->fibers) {
            run_block_fibers(&w);
        } else {
            for (unsigned t = 0; t < nthreads; ++t) {
                set_thread(t, L->block);
                L->thunk(L->args, L->kernel);
            }
        }
    }
    if (L->fibers) free_fibers(&w);
    tls_worker = nullptr;
}

inline unsigned num_workers(unsigned long long nblocks) {
    unsigned n = std::thread::hardware_concurrency();
    if (const char* s = std::getenv("SCAE_NP_EMU_THREADS")) n = unsigned(std::atoi(s));
    if (n < 1) n = 1;
    if (nblocks < n) n = unsigned(nblocks);
    return n;
}

inline int run(const Launch& L) {
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
    if (L.smem > kMaxDynamicSmem) {
        std::snprintf(g_error, sizeof g_error, "dynamic shared memory of %zu bytes exceeds the %zu bytes a "
                      "kernel gets without an opt-in", L.smem, kMaxDynamicSmem);
        return 1;
    }
    const unsigned long long nblocks = 1ull * L.grid.x * L.grid.y * L.grid.z;
    std::atomic<unsigned long long> next{0};
    const unsigned nw = num_workers(nblocks);
    if (nw == 1) {
        worker_main(&L, &next);
    } else {
        std::vector<std::thread> pool;
        for (unsigned i = 0; i < nw; ++i) pool.emplace_back(worker_main, &L, &next);
        for (auto& th : pool) th.join();
    }
    return 0;
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
                  unsigned bx, unsigned by, unsigned bz, unsigned long long smem, int fibers) {
    Launch L{&thunk<A...>, reinterpret_cast<void*>(k), args, dim3(gx, gy, gz), dim3(bx, by, bz),
             size_t(smem), fibers != 0};
    return run(L);
}

}  // namespace emu

// A barrier for the threads of one block: switch back to the scheduler, which resumes this
// thread only after every other thread of the block has arrived here (or finished).
inline void __syncthreads() {
    emu::Worker* w = emu::tls_worker;
    if (!w || !w->fib) {
        std::fprintf(stderr, "cuda_emu: __syncthreads() was called by a kernel the loader launched "
                             "without fibers (it found no __syncthreads in the kernel's body: is "
                             "it in a __device__ helper?). Aborting rather than computing wrong numbers.\n");
        std::abort();
    }
    emu::yield_to_scheduler(w, w->cur);
}

extern "C" const char* __emu_last_error() { return emu::g_error; }
