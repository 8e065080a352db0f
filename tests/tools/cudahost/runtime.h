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
//   * __syncwarp(mask), mma.sync and ldmatrix (the wrappers in cupy_kernels/ptx.cuh):
//     completed when all 32 lanes wait at the same instruction (mma.sync and ldmatrix
//     are .aligned: every lane must execute them); mma computes D = A * B + C from the
//     lanes' fragments per the PTX ISA's fragment layout, ldmatrix gathers the 8x8
//     matrices from the row addresses the lanes give (shared memory, 16-byte aligned);
//   * cp.async: a copy only takes effect when its thread waits for its group
//     (cp.async.wait_group); at issue the destination is filled with 0xFF bytes, so a
//     read before the wait (or by another thread before a barrier follows that wait)
//     sees NaN / garbage and the test fails.
// Blocks run one after another. Shared memory (__shared__ becomes a function-local
// static; the library's symbol table says where they are) is filled with 0xFF bytes
// (NaN as float) before each block,
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
#define __shared__ static
#define __CUDAHOST__ 1

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
enum Shuffle { SHFL_XOR, SHFL_DOWN, SHFL_UP, SHFL_IDX, WARP_SYNC, WARP_MMA, WARP_LDMATRIX };

struct AsyncCopy {
    unsigned char* dst;
    const unsigned char* src;
    int bytes, src_bytes, group;  // group -1: not committed yet
};
enum { MAX_COPIES = 64 };

struct Fiber {
    jmp_buf jb;
    ucontext_t uc;
    int started, state, line;
    int kind, arg, width;
    unsigned mask;
    uint64_t value, result;
    AsyncCopy copies[MAX_COPIES];
    int ncopies, groups_committed, groups_done;
};

struct MmaArgs { float* d; const unsigned* a; const unsigned* b; const float* c; };
struct LdmatrixArgs { unsigned* r; int x; const unsigned char* row; };

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

static void land_copies(Fiber& f, int n);

static void fiber_main()
{
    entry(entry_args);
    land_copies(fibers[current], -1);
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

// The __shared__ variables of the loaded kernels (function-local statics), found in the
// library's symbol table by tests/tools/cudahost/__init__.py and registered with cch_set_shared.
struct Region { char* p; size_t n; };
enum { MAX_REGIONS = 256 };
static Region regions[MAX_REGIONS];
static int nregions;

// Copies that have landed (their thread waited) but that no barrier has published yet:
// only the thread that waited may read them. ldmatrix, whose rows reach every lane, is
// checked against this list; a __syncwarp publishes its lanes' copies, __syncthreads all.
struct Landed { const unsigned char* dst; int bytes, owner; };
enum { MAX_LANDED = 8192 };
static Landed landed[MAX_LANDED];
static int nlanded;

inline bool in_shared(const void* p, size_t n)
{
    const char* c = (const char*)p;
    for (int i = 0; i < nregions; ++i)
        if (c >= regions[i].p && c + n <= regions[i].p + regions[i].n) return true;
    return false;
}

inline float h2f(unsigned short h)
{
    __half x;
    x.__x = h;
    return __half2float(x);
}

// D = A * B + C for the warp. Products of halves are exact in double; the sum of the 16
// products and C is formed in double and rounded once to fp32 (the hardware's summation
// order and internal precision are not specified by the PTX ISA).
static void complete_mma(int base)
{
    float A[16][16], B[16][8], C[16][8];
    for (int l = 0; l < 32; ++l) {
        const MmaArgs* m = (const MmaArgs*)(uintptr_t)fibers[base + l].value;
        const int g = l >> 2, t = l & 3;
        for (int i = 0; i < 8; ++i) {  // a_i: row g (+8 for i in 2,3,6,7), col 2t + (i & 1) (+8 for i >= 4)
            const unsigned short h = (unsigned short)(m->a[i >> 1] >> (16 * (i & 1)));
            A[g + ((i >> 1) & 1) * 8][2 * t + (i & 1) + (i >= 4) * 8] = h2f(h);
        }
        for (int i = 0; i < 4; ++i)  // b_i: row 2t + (i & 1) (+8 for i >= 2), col g
            B[2 * t + (i & 1) + (i >= 2) * 8][g] = h2f((unsigned short)(m->b[i >> 1] >> (16 * (i & 1))));
        for (int i = 0; i < 4; ++i) C[g + (i >= 2) * 8][2 * t + (i & 1)] = m->c[i];  // c_i: row g (+8), col 2t + (i & 1)
    }
    for (int l = 0; l < 32; ++l) {
        MmaArgs* m = (MmaArgs*)(uintptr_t)fibers[base + l].value;
        const int g = l >> 2, t = l & 3;
        for (int i = 0; i < 4; ++i) {
            const int r = g + (i >= 2) * 8, c = 2 * t + (i & 1);
            double acc = C[r][c];
            for (int k = 0; k < 16; ++k) acc += (double)A[r][k] * (double)B[k][c];
            m->d[i] = (float)acc;
        }
    }
}

static void complete_ldmatrix(int base, int w)
{
    unsigned out[32][4];
    const int x = ((const LdmatrixArgs*)(uintptr_t)fibers[base].value)->x;
    for (int l = 0; l < 32; ++l) {
        const LdmatrixArgs* m = (const LdmatrixArgs*)(uintptr_t)fibers[base + l].value;
        if (m->x != x) fail(1, "warp %d: lanes disagree on the ldmatrix shape", w);
        if (l < 8 * x && (!in_shared(m->row, 16) || ((uintptr_t)m->row & 15)))
            fail(1, "warp %d lane %d: ldmatrix row address is not a 16-byte aligned row of shared memory", w, l);
    }
    for (int l = 0; l < 8 * x; ++l) {
        const unsigned char* row = ((const LdmatrixArgs*)(uintptr_t)fibers[base + l].value)->row;
        for (int i = 0; i < nlanded; ++i)
            if (row < landed[i].dst + landed[i].bytes && landed[i].dst < row + 16)
                fail(1, "warp %d: ldmatrix reads shared memory that thread %d's cp.async wrote, with no barrier after "
                        "that thread's wait_group", w, landed[i].owner);
    }
    for (int l = 0; l < 32; ++l)
        for (int i = 0; i < x; ++i) {
            const LdmatrixArgs* src = (const LdmatrixArgs*)(uintptr_t)fibers[base + 8 * i + (l >> 2)].value;
            std::memcpy(&out[l][i], src->row + 4 * (l & 3), 4);
        }
    for (int l = 0; l < 32; ++l) {
        const LdmatrixArgs* m = (const LdmatrixArgs*)(uintptr_t)fibers[base + l].value;
        for (int i = 0; i < x; ++i) m->r[i] = out[l][i];
    }
}

__attribute__((noinline)) static void collective(int kind, unsigned mask, const void* args)
{
    Fiber& f = fibers[current];
    f.value = (uint64_t)(uintptr_t)args;
    f.kind = kind, f.mask = mask, f.arg = 0, f.width = 32;
    f.line = (int)(uintptr_t)__builtin_return_address(0);  // the call site tells instructions apart
    f.state = AT_SHUFFLE;
    yield_to_scheduler();
}

inline void mma_m16n8k16(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2], const float (&c)[4])
{
    float out[4];
    MmaArgs m{out, a, b, c};
    collective(WARP_MMA, 0xFFFFFFFFu, &m);
    for (int i = 0; i < 4; ++i) d[i] = out[i];
}

template <int X> inline void ldmatrix(unsigned (&r)[X], int x, const void* row)
{
    unsigned out[4];
    LdmatrixArgs m{out, x, (const unsigned char*)row};
    collective(WARP_LDMATRIX, 0xFFFFFFFFu, &m);
    for (int i = 0; i < X; ++i) r[i] = out[i];
}

static void finish_copy(const AsyncCopy& c)
{
    if (c.src_bytes) std::memcpy(c.dst, c.src, c.src_bytes);
    std::memset(c.dst + c.src_bytes, 0, c.bytes - c.src_bytes);
    if (nlanded == MAX_LANDED) fail(1, "more than %d cp.async copies landed with no barrier after them", MAX_LANDED);
    landed[nlanded++] = Landed{c.dst, c.bytes, current};
}

static void publish(int first, int count, unsigned mask)  // threads first..first+count-1, lanes in mask
{
    int kept = 0;
    for (int i = 0; i < nlanded; ++i) {
        const int o = landed[i].owner;
        const bool covered = o >= first && o < first + count && (mask >> ((o - first) & 31) & 1u);
        if (!covered) landed[kept++] = landed[i];
    }
    nlanded = kept;
}

inline void cp_async(void* dst, const void* src, int bytes, int src_bytes)
{
    Fiber& f = fibers[current];
    if (!in_shared(dst, bytes) || ((uintptr_t)dst % bytes))
        fail(1, "thread %d: cp.async destination is not %d-byte aligned shared memory", current, bytes);
    if (src_bytes < 0 || src_bytes > bytes) fail(1, "thread %d: cp.async src-size %d outside 0..%d", current, src_bytes, bytes);
    if (src_bytes && ((uintptr_t)src % bytes))
        fail(1, "thread %d: cp.async source is not %d-byte aligned", current, bytes);
    if (f.ncopies == MAX_COPIES) fail(1, "thread %d: more than %d cp.async copies in flight", current, MAX_COPIES);
    f.copies[f.ncopies++] = AsyncCopy{(unsigned char*)dst, (const unsigned char*)src, bytes, src_bytes, -1};
    std::memset(dst, 0xFF, bytes);  // nothing has landed yet
}

inline void cp_async_commit()
{
    Fiber& f = fibers[current];
    for (int i = 0; i < f.ncopies; ++i)
        if (f.copies[i].group < 0) f.copies[i].group = f.groups_committed;
    ++f.groups_committed;
}

// Complete this thread's committed groups, oldest first, until at most n are pending
// (n < 0: every copy, committed or not: the thread has exited and its copies land).
static void land_copies(Fiber& f, int n)
{
    while (n < 0 ? f.ncopies > 0 : f.groups_committed - f.groups_done > n) {
        int kept = 0;
        for (int i = 0; i < f.ncopies; ++i) {
            if (n < 0 || f.copies[i].group == f.groups_done) finish_copy(f.copies[i]);
            else f.copies[kept++] = f.copies[i];
        }
        f.ncopies = kept;
        if (n >= 0) ++f.groups_done;
    }
}

inline void cp_async_wait(int n) { land_copies(fibers[current], n); }

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
            if (f.kind >= WARP_SYNC) {
                if (f.kind != WARP_SYNC && (mask != 0xFFFFFFFFu || lanes != 32))
                    fail(1, "warp %d: mma.sync / ldmatrix (site %d) executed by a partial warp (mask 0x%x)", w, f.line, (int)mask);
                if (f.kind == WARP_MMA) complete_mma(base);
                else if (f.kind == WARP_LDMATRIX) complete_ldmatrix(base, w);
                else publish(base, lanes, mask);  // __syncwarp
                for (int s = 0; s < 32; ++s)
                    if (mask >> s & 1u) fibers[base + s].state = RUNNING, ++released;
                continue;
            }
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
        f.ncopies = f.groups_committed = f.groups_done = 0;
        getcontext(&f.uc);
        f.uc.uc_stack.ss_sp = stack_area() + (size_t)t * (STACK_BYTES + 4096) + 4096;
        f.uc.uc_stack.ss_size = STACK_BYTES;
        f.uc.uc_link = nullptr;
        makecontext(&f.uc, fiber_main, 0);
    }
    for (int i = 0; i < nregions; ++i) memset(regions[i].p, 0xFF, regions[i].n);
    nlanded = 0;
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
        nlanded = 0;  // __syncthreads publishes every landed copy
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
inline void __syncwarp(unsigned mask = 0xFFFFFFFFu, int line = __builtin_LINE())
{
    cch::Fiber& f = cch::fibers[cch::current];
    f.kind = cch::WARP_SYNC, f.mask = mask, f.arg = 0, f.width = 32, f.line = line, f.value = 0;
    f.state = cch::AT_SHUFFLE;
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

// ---- the C interface used by tests/tools/cudahost/__init__.py ---------------------------
extern "C" {
void cch_set_shared(const unsigned long long* addr, const unsigned long long* size, int n)
{
    cch::nregions = n < cch::MAX_REGIONS ? n : cch::MAX_REGIONS;
    for (int i = 0; i < cch::nregions; ++i) cch::regions[i] = cch::Region{(char*)(uintptr_t)addr[i], (size_t)size[i]};
}

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
