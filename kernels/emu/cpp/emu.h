// CPU emulation of the CUDA device features scinterp's kernels use, so that the real kernels/src/*.cu
// sources compile as C++ and run on the CPU in tests. Included before a kernel source (with
// SCINTERP_EMU defined). What it models and checks:
//   - one fiber per CUDA thread, one block at a time; a fiber runs until it reaches a barrier or exits;
//   - __syncthreads: every live (not exited) thread of the block must be at the same call site;
//   - warp collectives (__shfl*_sync, __ballot_sync, __match_any_sync, mma.sync, WMMA): every lane of the
//     mask must be live and at the same call site with the same mask (an exited lane in the mask is an
//     error, as is a lane waiting elsewhere); WMMA pointers and strides must be warp-uniform and aligned;
//   - static shared memory is one memory per block, refilled with 0xFF bytes (NaN for every float type)
//     before each block, so a read before a write shows up as NaN; dynamic shared memory is a heap
//     allocation of exactly the launch's size (AddressSanitizer sees overruns);
//   - bf16/f16 conversions bit-exact round-to-nearest-even; no FMA contraction (built -ffp-contract=off);
//   - mma.sync m16n8k16 bf16 through a register-layout model written from the PTX ISA fragment tables.
// Anything failing a check ends the process with exit status 3 and a message naming the site.
#pragma once

#include <cmath>
#include <math.h>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
struct alignas(16) uint4 {
    unsigned x, y, z, w;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return {a, b, c, d}; }
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }

namespace emu {

// The state of one emulated CUDA thread (defined in runtime.cpp; kernels only read thread_idx).
struct Thread;
struct ThreadView {
    dim3 thread_idx;
};
extern ThreadView* g_current;
extern dim3 g_block_idx, g_block_dim, g_grid_dim;
extern unsigned char* g_dynamic_shared;

// A site: the source position of a barrier or collective (file, line).
struct Site {
    const char* file;
    int line;
};

[[noreturn]] void fail(Site site, const char* what);

void syncthreads(Site site);

// A warp collective: deposits `payload` and `mask`, waits until every lane of the mask is at the same
// site, then `resolve(lanes payloads)` runs once for the group (payloads of non-members are null).
using Resolver = void (*)(void* const payloads[32], unsigned mask);
void warp_collective(Site site, unsigned mask, Resolver resolve, void* payload);

unsigned lane_id();

// ---- shuffles, votes ----
struct ShflPayload {
    uint64_t value;
    int src;  // source lane, or -1: keep own value
    uint64_t result;
};
void resolve_shfl(void* const payloads[32], unsigned mask);

template <class T>
inline T shfl(Site site, unsigned mask, T v, int src_lane) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffle of a 1-8 byte value");
    ShflPayload p{};
    std::memcpy(&p.value, &v, sizeof(T));
    p.src = src_lane;
    warp_collective(site, mask, resolve_shfl, &p);
    T r;
    std::memcpy(&r, &p.result, sizeof(T));
    return r;
}
template <class T>
inline T shfl_idx(Site site, unsigned mask, T v, int src, int width = 32) {
    const int base = (int)lane_id() & ~(width - 1);
    return shfl(site, mask, v, base + (src & (width - 1)));
}
template <class T>
inline T shfl_xor(Site site, unsigned mask, T v, int lane_mask, int width = 32) {
    const int me = (int)lane_id();
    int src = me ^ lane_mask;
    if ((src & ~(width - 1)) != (me & ~(width - 1))) src = me;
    return shfl(site, mask, v, src);
}
template <class T>
inline T shfl_up(Site site, unsigned mask, T v, unsigned delta, int width = 32) {
    const int me = (int)lane_id();
    const int src = me - (int)delta;
    return shfl(site, mask, v, src < (me & ~(width - 1)) ? me : src);
}
template <class T>
inline T shfl_down(Site site, unsigned mask, T v, unsigned delta, int width = 32) {
    const int me = (int)lane_id();
    const int src = me + (int)delta;
    return shfl(site, mask, v, src >= (me & ~(width - 1)) + width ? me : src);
}
unsigned ballot(Site site, unsigned mask, bool p);
unsigned match_any(Site site, unsigned mask, uint64_t v);
void syncwarp(Site site, unsigned mask = 0xffffffffu);

// ---- bf16 / f16 bits ----
inline float bits_to_f32(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline uint32_t f32_to_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}
// Round to nearest even; NaN -> the canonical NaN 0x7FFF (what cvt.rn.bf16.f32 produces).
inline uint16_t f32_to_bf16_rn(float f) {
    const uint32_t u = f32_to_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
inline float bf16_to_f32(uint16_t h) { return bits_to_f32((uint32_t)h << 16); }
uint16_t f32_to_f16_rn(float f);
float f16_to_f32(uint16_t h);

// ---- mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 ----
void mma_m16n8k16_bf16_f32(Site site, float d[4], const unsigned a[4], unsigned b0, unsigned b1);

// Dynamic shared memory as `T*` (the launch's allocation; a reference, so each use sees the current block).
template <class T>
inline T*& dynamic_shared() {
    return reinterpret_cast<T*&>(g_dynamic_shared);
}

}  // namespace emu

#define EMU_SITE (emu::Site{__FILE__, __LINE__})

// ---- CUDA keywords ----
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __align__(n) __attribute__((aligned(n)))
// Static shared memory: one object per program (blocks run one at a time), in a section the runtime
// refills with 0xFF before each block.
#define __shared__ static __attribute__((section("emu_shared")))
#define threadIdx (emu::g_current->thread_idx)
#define blockIdx (emu::g_block_idx)
#define blockDim (emu::g_block_dim)
#define gridDim (emu::g_grid_dim)

#define __syncthreads() emu::syncthreads(EMU_SITE)
#define __syncwarp(...) emu::syncwarp(EMU_SITE, ##__VA_ARGS__)
#define __shfl_sync(m, v, s, ...) emu::shfl_idx(EMU_SITE, (m), (v), (int)(s), ##__VA_ARGS__)
#define __shfl_xor_sync(m, v, o, ...) emu::shfl_xor(EMU_SITE, (m), (v), (int)(o), ##__VA_ARGS__)
#define __shfl_up_sync(m, v, d, ...) emu::shfl_up(EMU_SITE, (m), (v), (unsigned)(d), ##__VA_ARGS__)
#define __shfl_down_sync(m, v, d, ...) emu::shfl_down(EMU_SITE, (m), (v), (unsigned)(d), ##__VA_ARGS__)
#define __ballot_sync(m, p) emu::ballot(EMU_SITE, (m), (p))
#define __match_any_sync(m, v) emu::match_any(EMU_SITE, (m), (uint64_t)(v))

// ---- device functions ----
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __popcll(unsigned long long v) { return __builtin_popcountll(v); }
inline int __ffs(int v) { return __builtin_ffs(v); }
inline int __ffs(unsigned v) { return __builtin_ffs((int)v); }
inline int __clz(int v) { return v == 0 ? 32 : __builtin_clz((unsigned)v); }
inline float __int_as_float(int i) { return emu::bits_to_f32((uint32_t)i); }
inline int __float_as_int(float f) { return (int)emu::f32_to_bits(f); }
inline float __uint_as_float(unsigned u) { return emu::bits_to_f32(u); }
inline unsigned __float_as_uint(float f) { return emu::f32_to_bits(f); }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline float fmaxf(float a, float b) { return std::fmax(a, b); }
inline float fminf(float a, float b) { return std::fmin(a, b); }
// The GPU's rsqrtf is an approximation; IEEE 1/sqrt here (tests compare with tolerances).
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }

// Atomics: blocks and threads run one at a time, so a plain read-modify-write is atomic.
template <class T>
inline T atomicAdd(T* p, T v) {
    const T old = *p;
    *p = old + v;
    return old;
}
inline float4 atomicAdd(float4* p, float4 v) {
    const float4 old = *p;
    *p = make_float4(old.x + v.x, old.y + v.y, old.z + v.z, old.w + v.w);
    return old;
}
template <class T>
inline T atomicMax(T* p, T v) {
    const T old = *p;
    *p = old > v ? old : v;
    return old;
}
