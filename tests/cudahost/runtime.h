// cudahost: run the CUDA C kernels of cupy_kernels/ on the CPU, from their own source.
//
// The .cu file is compiled by g++ as C++17 with this header forced in front of it
// (and cuda_fp16.h from this folder). Every CUDA thread of a block is a fiber (its
// own stack and registers); the scheduler runs the fibers of one block until each
// reaches a synchronisation point, then completes it the way the hardware would:
//   * __syncthreads(): released when every thread of the block waits at it; a thread
//     that waits at another __syncthreads, or has exited, is reported (barrier
//     divergence is undefined behaviour in CUDA, a hang or a silent miss on a GPU);
//   * __shfl_*_sync(mask, ...): completed when every lane named in the mask waits at
//     the same shuffle; each lane gets the value its source lane passed in. A mask
//     that names an exited lane, or a source lane outside the mask, is reported.
// Blocks run one after another. Shared memory (__shared__ becomes a static in a
// dedicated section) is filled with 0xFF bytes (NaN as float) before each block,
// so a read of a word no thread wrote in that block shows up as NaN.
//
// cch_launch() runs the whole grid in a forked child so that a memory fault, an
// UBSan report (misaligned vector loads, out-of-range shared-array indices, bad
// shifts) or a hang ends that launch, not the test process. Buffers come from
// cch_alloc(): each ends on a page that is followed by an inaccessible guard page
// (reads or writes past the end fault), starts 16-byte aligned like a cudaMalloc
// pointer (the 0..15 bytes of slack after the data are 0xFF), and can be made
// read-only (a store to a `const T*` input faults).
//
// The thread order inside each phase is a parameter (forward, reverse or a seeded
// shuffle): a kernel that is free of data races gives bit-identical output for
// every order, so running two orders exposes a missing barrier.
#pragma once
#include <csetjmp>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <cmath>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include "cuda_fp16.h"

// ---- the CUDA dialect, as plain C++ ------------------------------------------------
#ifdef CCH_SCAN  // signature scan: keep a marker in front of every kernel
#define __global__ __cch_kernel__
#else
#define __global__
#endif
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static __attribute__((section("cch_shared")))

struct uint3 { unsigned x, y, z; };
struct dim3 {
    unsigned x, y, z;
    dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct alignas(8) int2 { int x, y; };
struct alignas(16) int4 { int x, y, z, w; };
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };

inline int4 make_int4(int x, int y, int z, int w) { return int4{x, y, z, w}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }
inline int2 make_int2(int x, int y) { return int2{x, y}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return uint2{x, y}; }
inline float2 make_float2(float x, float y) { return float2{x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

static uint3 threadIdx, blockIdx;
static dim3 blockDim, gridDim;
static const int warpSize = 32;

// Read-only loads: a plain load of the (aligned) type; UBSan checks the alignment.
template <class T> inline T __ldg(const T* p) { return *p; }

// ---- fibers and the scheduler ------------------------------------------------------
namespace cch {
enum State { RUNNING, AT_BARRIER, AT_SHUFFLE, EXITED };
enum Shuffle { SHFL_XOR, SHFL_DOWN, SHFL_UP, SHFL_IDX };

struct Fiber {
    jmp_buf jb;
    ucontext_t uc;
    int started, state, line;
    int kind, arg, width;
    unsigned mask;
    uint64_t value, result;
};

struct Shared {  // lives in a MAP_SHARED page: the child reports through it
    int code;
    int signal;
    unsigned long long fault_addr;
    char message[1024];
};

enum { MAX_THREADS = 1024, STACK_BYTES = 1 << 17 };
static Fiber* fibers;
static int nthreads, current, order, round_no;
static unsigned block_dim[3];
static jmp_buf scheduler;
static ucontext_t scheduler_uc;
static void (*entry)(void**);
static void** entry_args;
static Shared* shared;
static int perm[MAX_THREADS];

inline char* stack_area() { return (char*)fibers + (sizeof(Fiber) * MAX_THREADS + 4095) / 4096 * 4096; }
}  // namespace cch

extern "C" char __start_cch_shared[] __attribute__((weak));
extern "C" char __stop_cch_shared[] __attribute__((weak));

namespace cch {
[[noreturn]] static void fail(int code, const char* fmt, int a = 0, int b = 0, int c = 0, int d = 0, int e = 0)
{
    shared->code = code;
    snprintf(shared->message, sizeof shared->message, fmt, a, b, c, d, e);
    _exit(71);
}

__attribute__((noinline)) static void yield_to_scheduler()
{
    if (!_setjmp(fibers[current].jb)) _longjmp(scheduler, 1);
}

static void fiber_main()
{
    entry(entry_args);
    fibers[current].state = EXITED;
    _longjmp(scheduler, 1);
}

template <class T> inline T shuffle(int kind, unsigned mask, T v, int arg, int width, int line)
{
    static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
    Fiber& f = fibers[current];
    f.value = 0;
    std::memcpy(&f.value, &v, sizeof(T));
    f.kind = kind, f.mask = mask, f.arg = arg, f.width = width, f.line = line;
    f.state = AT_SHUFFLE;
    yield_to_scheduler();
    T out;
    std::memcpy(&out, &f.result, sizeof(T));
    return out;
}

static void resume(int t)
{
    current = t;
    threadIdx = uint3{t % block_dim[0], (t / block_dim[0]) % block_dim[1], t / (block_dim[0] * block_dim[1])};
    Fiber& f = fibers[t];
    if (_setjmp(scheduler)) return;
    if (!f.started) {
        f.started = 1;
        swapcontext(&scheduler_uc, &f.uc);  // the fiber comes back through _longjmp(scheduler)
    }
    _longjmp(f.jb, 1);
}

// The order in which this round resumes the threads: forward, reverse, or (order >= 2)
// an affine bijection with an odd multiplier modulo the next power of two that
// changes every round, skipping values outside [0, nthreads).
static void plan_round()
{
    if (order < 2) {
        for (int i = 0; i < nthreads; ++i) perm[i] = order == 0 ? i : nthreads - 1 - i;
        return;
    }
    unsigned p2 = 1;
    while ((int)p2 < nthreads) p2 <<= 1;
    const unsigned a = (2u * (unsigned)(order * 7919 + round_no * 104729) + 1u) & (p2 - 1);
    const unsigned c = (unsigned)(order * 31 + round_no * 17) & (p2 - 1);
    int n = 0;
    for (unsigned j = 0; j < p2; ++j) {
        const unsigned v = (a * j + c) & (p2 - 1);
        if ((int)v < nthreads) perm[n++] = (int)v;
    }
}

// Complete every shuffle whose mask lanes have all arrived. Returns how many lanes moved on.
static int complete_shuffles()
{
    int released = 0;
    for (int w = 0; w * 32 < nthreads; ++w) {
        const int base = w * 32, lanes = nthreads - base < 32 ? nthreads - base : 32;
        for (int l = 0; l < lanes; ++l) {
            Fiber& f = fibers[base + l];
            if (f.state != AT_SHUFFLE) continue;
            const unsigned mask = f.mask;
            if (!(mask >> l & 1u)) fail(1, "warp %d lane %d calls a shuffle (line %d) with a mask that excludes itself", w, l, f.line);
            bool ready = true;
            for (int s = 0; s < 32 && ready; ++s) {
                if (!(mask >> s & 1u)) continue;
                if (s >= lanes) fail(1, "shuffle at line %d names lane %d, which does not exist in warp %d", f.line, s, w);
                const Fiber& g = fibers[base + s];
                if (g.state == EXITED) fail(1, "shuffle at line %d (warp %d) names lane %d, which has exited", f.line, w, s);
                if (g.state != AT_SHUFFLE) ready = false;
                else if (g.line != f.line || g.mask != mask)
                    fail(1, "warp %d: lanes %d and %d wait at different shuffles (lines %d and %d)", w, l, s, f.line, g.line);
            }
            if (!ready) continue;
            for (int s = 0; s < 32; ++s) {
                if (!(mask >> s & 1u)) continue;
                Fiber& g = fibers[base + s];
                const int width = g.width, seg = s / width * width;
                int src = s;
                if (g.kind == SHFL_XOR) src = s ^ g.arg;
                else if (g.kind == SHFL_DOWN) src = (s - seg) + g.arg < width ? s + g.arg : s;
                else if (g.kind == SHFL_UP) src = (s - seg) - g.arg >= 0 ? s - g.arg : s;
                else src = seg + ((g.arg % width) + width) % width;
                if (g.kind == SHFL_XOR && src / width > s / width) src = s;
                if (!(mask >> src & 1u))
                    fail(1, "shuffle at line %d: lane %d of warp %d reads lane %d, which is not in the mask", g.line, s, w, src);
                g.result = fibers[base + src].value;
            }
            for (int s = 0; s < 32; ++s)
                if (mask >> s & 1u) fibers[base + s].state = RUNNING, ++released;
        }
    }
    return released;
}

static void run_block()
{
    for (int t = 0; t < nthreads; ++t) {
        Fiber& f = fibers[t];
        f.started = 0, f.state = RUNNING;
        getcontext(&f.uc);
        f.uc.uc_stack.ss_sp = stack_area() + (size_t)t * (STACK_BYTES + 4096) + 4096;
        f.uc.uc_stack.ss_size = STACK_BYTES;
        f.uc.uc_link = nullptr;
        makecontext(&f.uc, fiber_main, 0);
    }
    if (__start_cch_shared != __stop_cch_shared) memset(__start_cch_shared, 0xFF, __stop_cch_shared - __start_cch_shared);
    for (round_no = 0;; ++round_no) {
        plan_round();
        for (int i = 0; i < nthreads; ++i)
            if (fibers[perm[i]].state == RUNNING) resume(perm[i]);
        if (complete_shuffles()) continue;
        int exited = 0, at_barrier = 0, first = -1;
        for (int t = 0; t < nthreads; ++t) {
            const Fiber& f = fibers[t];
            if (f.state == EXITED) ++exited;
            else if (f.state == AT_SHUFFLE)
                fail(1, "deadlock: thread %d waits at the shuffle on line %d for lanes that never arrive", t, f.line);
            else if (f.state == AT_BARRIER) {
                ++at_barrier;
                if (first < 0) first = t;
                else if (f.line != fibers[first].line)
                    fail(1, "barrier divergence: thread %d waits at __syncthreads on line %d, thread %d on line %d",
                         first, fibers[first].line, t, f.line);
            }
        }
        if (at_barrier == 0) return;  // every thread has exited
        if (exited) {
            int gone = 0;
            while (fibers[gone].state != EXITED) ++gone;
            fail(1, "thread %d exited while %d threads wait at __syncthreads on line %d", gone, at_barrier, fibers[first].line);
        }
        for (int t = 0; t < nthreads; ++t) fibers[t].state = RUNNING;
    }
}

static void on_fault(int sig, siginfo_t* info, void*)
{
    shared->code = 2;
    shared->signal = sig;
    shared->fault_addr = (unsigned long long)(uintptr_t)info->si_addr;
    _exit(72);
}

[[noreturn]] static void child(const unsigned* grid, const unsigned* block, const char* log_path)
{
    const int fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd >= 0) dup2(fd, 2);
    static char altstack[1 << 16];
    stack_t ss = {};
    ss.ss_sp = altstack, ss.ss_size = sizeof altstack;
    sigaltstack(&ss, nullptr);
    struct sigaction sa = {};
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigaction(SIGSEGV, &sa, nullptr);
    sigaction(SIGBUS, &sa, nullptr);

    // fiber records, then one stack per thread, each above an inaccessible guard page
    const size_t bytes = (sizeof(Fiber) * MAX_THREADS + 4095) / 4096 * 4096 + (size_t)MAX_THREADS * (STACK_BYTES + 4096);
    void* mem = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mem == MAP_FAILED) fail(1, "cannot map %d fiber stacks", nthreads);
    fibers = (Fiber*)mem;
    for (int t = 0; t < nthreads; ++t)
        mprotect(stack_area() + (size_t)t * (STACK_BYTES + 4096), 4096, PROT_NONE);
    gridDim = dim3(grid[0], grid[1], grid[2]);
    blockDim = dim3(block[0], block[1], block[2]);
    const long nblocks = (long)grid[0] * grid[1] * grid[2];
    for (long i = 0; i < nblocks; ++i) {
        const long b = order == 1 ? nblocks - 1 - i : i;
        blockIdx = uint3{(unsigned)(b % grid[0]), (unsigned)(b / grid[0] % grid[1]), (unsigned)(b / grid[0] / grid[1])};
        run_block();
    }
    _exit(0);
}
}  // namespace cch

inline void __syncthreads(int line = __builtin_LINE())
{
    cch::fibers[cch::current].line = line;
    cch::fibers[cch::current].state = cch::AT_BARRIER;
    cch::yield_to_scheduler();
}
template <class T> inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32, int line = __builtin_LINE())
{
    return cch::shuffle(cch::SHFL_XOR, mask, v, lane_mask, width, line);
}
template <class T> inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32, int line = __builtin_LINE())
{
    return cch::shuffle(cch::SHFL_DOWN, mask, v, (int)delta, width, line);
}
template <class T> inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32, int line = __builtin_LINE())
{
    return cch::shuffle(cch::SHFL_UP, mask, v, (int)delta, width, line);
}
template <class T> inline T __shfl_sync(unsigned mask, T v, int src, int width = 32, int line = __builtin_LINE())
{
    return cch::shuffle(cch::SHFL_IDX, mask, v, src, width, line);
}

// ---- the C interface used by tests/cudahost/__init__.py ---------------------------
extern "C" {
// A buffer of `nbytes` whose end is followed by a guard page; 16-byte aligned start.
void* cch_alloc(size_t nbytes)
{
    const size_t page = 4096, padded = (nbytes + 15) / 16 * 16, span = (padded + page - 1) / page * page;
    char* base = (char*)mmap(nullptr, span + 2 * page, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) return nullptr;
    mprotect(base, page, PROT_NONE);
    mprotect(base + page + span, page, PROT_NONE);
    char* data = base + page + span - padded;
    memset(data + nbytes, 0xFF, padded - nbytes);
    return data;
}

void cch_free(void* data, size_t nbytes)
{
    const size_t page = 4096, padded = (nbytes + 15) / 16 * 16, span = (padded + page - 1) / page * page;
    munmap((char*)data + padded - span - page, span + 2 * page);
}

int cch_protect(void* data, size_t nbytes, int readonly)
{
    const size_t page = 4096, padded = (nbytes + 15) / 16 * 16, span = (padded + page - 1) / page * page;
    return mprotect((char*)data + padded - span, span, readonly ? PROT_READ : PROT_READ | PROT_WRITE);
}

// Run the grid in a child process. Returns 0 when every block finished; 1 a CUDA
// semantics error (message), 2 a memory fault (fault_addr), 3 the timeout, 4 the
// child died otherwise (an UBSan report or abort; see the log file).
int cch_launch(void (*entry)(void**), void** args, const unsigned* grid, const unsigned* block, int order,
               double timeout_s, const char* log_path, char* message, size_t message_len,
               unsigned long long* fault_addr)
{
    using namespace cch;
    const int threads = (int)(block[0] * block[1] * block[2]);
    if (threads < 1 || threads > MAX_THREADS) {
        snprintf(message, message_len, "block of %d threads (CUDA allows 1..1024)", threads);
        return 1;
    }
    if (grid[0] < 1 || grid[1] < 1 || grid[2] < 1 || grid[1] > 65535 || grid[2] > 65535) {
        snprintf(message, message_len, "invalid grid (%u, %u, %u)", grid[0], grid[1], grid[2]);
        return 1;
    }
    Shared* sh = (Shared*)mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED) return 4;
    memset(sh, 0, sizeof *sh);
    cch::shared = sh, cch::entry = entry, cch::entry_args = args, cch::order = order, cch::nthreads = threads;
    memcpy(cch::block_dim, block, sizeof cch::block_dim);
    fflush(nullptr);
    const pid_t pid = fork();
    if (pid == 0) child(grid, block, log_path);
    int status = 0, rc = 0;
    timespec start, now, nap = {0, 200000};
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        const pid_t got = waitpid(pid, &status, WNOHANG);
        if (got == pid) break;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if ((now.tv_sec - start.tv_sec) + 1e-9 * (now.tv_nsec - start.tv_nsec) > timeout_s) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            snprintf(message, message_len, "did not finish in %.0f s (an endless loop, or a barrier that never opens)",
                     timeout_s);
            munmap(sh, sizeof *sh);
            return 3;
        }
        nanosleep(&nap, nullptr);
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) rc = 0;
    else if (sh->code == 1) rc = 1;
    else if (sh->code == 2) rc = 2, *fault_addr = sh->fault_addr;
    else rc = 4;
    if (rc == 1) snprintf(message, message_len, "%s", sh->message);
    else if (rc == 2) snprintf(message, message_len, "signal %d at address 0x%llx", sh->signal, sh->fault_addr);
    else if (rc == 4)
        snprintf(message, message_len, "the kernel process ended with %s %d", WIFSIGNALED(status) ? "signal" : "status",
                 WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
    munmap(sh, sizeof *sh);
    return rc;
}
}
