// nvcuda::wmma for the CPU emulator (emu.h): the 16x16x16 bf16 shape with f32 accumulators, the one
// scinterp uses. Fragments hold each lane's elements in the layout of two mma.m16n8k16 (PTX ISA
// fragment tables), so that a kernel reading fragment elements directly sees a realistic layout.
// load/store/mma are warp collectives: all 32 lanes, the same call site, warp-uniform pointer and
// stride, 256-bit aligned pointer, stride a multiple of 16 bytes (the WMMA rules).
#pragma once
#include "../emu.h"
#include "cuda_bf16.h"

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
    static_assert(M == 16 && N == 16 && K == 16, "the emulator models wmma 16x16x16 only");
    static constexpr int num_elements = 8;
    T x[8];
};

// (row, col) of element i of a lane's fragment, per use (see the head comment).
inline void a_pos(unsigned lane, int i, int& r, int& c) {
    const int g = (int)lane >> 2, t = (int)lane & 3;
    r = g + 8 * ((i >> 1) & 1);
    c = 2 * t + (i & 1) + 8 * (i >= 4);
}
inline void b_pos(unsigned lane, int i, int& k, int& n) {
    const int g = (int)lane >> 2, t = (int)lane & 3, j = i & 3;
    k = 2 * t + (j & 1) + 8 * (j >= 2);
    n = g + 8 * (i >> 2);
}
inline void acc_pos(unsigned lane, int i, int& r, int& c) {
    const int g = (int)lane >> 2, t = (int)lane & 3, j = i & 3;
    r = g + 8 * (j >= 2);
    c = 2 * t + (j & 1) + 8 * (i >> 2);
}

struct MemPayload {
    const void* ptr;
    unsigned ldm;
    size_t elem;
};
void resolve_uniform_mem(void* const payloads[32], unsigned mask);

inline void check_mem(emu::Site site, const void* p, unsigned ldm, size_t elem) {
    MemPayload m{p, ldm, elem};
    emu::warp_collective(site, 0xffffffffu, resolve_uniform_mem, &m);
}

template <class Layout>
inline void load_matrix_sync_impl(emu::Site site, fragment<matrix_a, 16, 16, 16, __nv_bfloat16, Layout>& f,
                                  const __nv_bfloat16* p, unsigned ldm) {
    check_mem(site, p, ldm, 2);
    const unsigned lane = emu::lane_id();
    for (int i = 0; i < 8; ++i) {
        int r, c;
        a_pos(lane, i, r, c);
        f.x[i] = std::is_same_v<Layout, row_major> ? p[(size_t)r * ldm + c] : p[(size_t)c * ldm + r];
    }
}
template <class Layout>
inline void load_matrix_sync_impl(emu::Site site, fragment<matrix_b, 16, 16, 16, __nv_bfloat16, Layout>& f,
                                  const __nv_bfloat16* p, unsigned ldm) {
    check_mem(site, p, ldm, 2);
    const unsigned lane = emu::lane_id();
    for (int i = 0; i < 8; ++i) {
        int k, n;
        b_pos(lane, i, k, n);
        f.x[i] = std::is_same_v<Layout, row_major> ? p[(size_t)k * ldm + n] : p[(size_t)n * ldm + k];
    }
}
inline void store_matrix_sync_impl(emu::Site site, float* p, const fragment<accumulator, 16, 16, 16, float>& f,
                                   unsigned ldm, layout_t layout) {
    check_mem(site, p, ldm, 4);
    const unsigned lane = emu::lane_id();
    for (int i = 0; i < 8; ++i) {
        int r, c;
        acc_pos(lane, i, r, c);
        p[layout == mem_row_major ? (size_t)r * ldm + c : (size_t)c * ldm + r] = f.x[i];
    }
}

template <class T, class U>
inline void fill_fragment(fragment<accumulator, 16, 16, 16, T>& f, U v) {
    for (int i = 0; i < 8; ++i) f.x[i] = (T)v;
}

struct MmaPayload {
    const __nv_bfloat16* a;
    const __nv_bfloat16* b;
    const float* c;
    float d[8];
};
void resolve_wmma(void* const payloads[32], unsigned mask);

template <class LA, class LB>
inline void mma_sync_impl(emu::Site site, fragment<accumulator, 16, 16, 16, float>& d,
                          const fragment<matrix_a, 16, 16, 16, __nv_bfloat16, LA>& a,
                          const fragment<matrix_b, 16, 16, 16, __nv_bfloat16, LB>& b,
                          const fragment<accumulator, 16, 16, 16, float>& c) {
    MmaPayload p{a.x, b.x, c.x, {}};
    emu::warp_collective(site, 0xffffffffu, resolve_wmma, &p);
    for (int i = 0; i < 8; ++i) d.x[i] = p.d[i];
}

}  // namespace wmma
}  // namespace nvcuda

#define load_matrix_sync(...) load_matrix_sync_impl(EMU_SITE, __VA_ARGS__)
#define store_matrix_sync(...) store_matrix_sync_impl(EMU_SITE, __VA_ARGS__)
#define mma_sync(...) mma_sync_impl(EMU_SITE, __VA_ARGS__)
