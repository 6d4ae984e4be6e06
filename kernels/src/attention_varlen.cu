// Bidirectional multi-head self-attention over packed variable-length cells, head_dim 64, flash-style:
// each block owns one query tile of one cell for one head, streams the cell's keys through shared memory
// in tiles and keeps an online softmax (running row max m, running sum l, rescaled accumulator O), so no
// L×L score matrix ever exists (cells are up to 4,096 tokens). CPU reference:
// `scinterp_engine::cpu::attention_varlen`.
//
// Layout (as the CPU reference): qkv [tokens, 3·H] row-major, columns [q | k | v], head h at columns
// h·64.. of each part; ctx [tokens, H] (heads concatenated). Cell c is rows offsets[c]..offsets[c+1].
// Grid: x = query tiles of all cells, y = heads. `tiles` holds 3 ints per x-block, built on the host by
// the wrapper (kernels/src/gpu/attention.rs): {first query row, cell start row, cell end row}. Optional
// key mask: one byte per token (nullptr = none); key j is left out when key_mask[j] == 0 (scGPT pad
// tokens). A query whose keys are all left out gets zeros, never NaN: the running max stays -inf, the
// exponent base is then taken as 0 so exp(-inf - base) = 0, and 1/l is replaced by 0 when l == 0. Keys
// that are left out (or past the cell's end) are stored as zeros in shared memory, so a NaN in a pad
// token's value row cannot leak into the weighted sum (0 · NaN).
//
// Per key tile, per query row: s = scale·q·k (-inf where left out); m' = max(m, max s);
// base = (m' == -inf ? 0 : m'); alpha = exp(m - base); p = exp(s - base); l = l·alpha + Σp;
// O = O·alpha + p·V; m = m'. At the end ctx = O / l (0 when l == 0).
//
// Bound: compute. Per token per head: QKᵀ and PV are 2·2·L·64 flops, so 4·L·d per token over all heads
// (18.9 MFLOP at L = 4,096, d = 1,152), against 2·3·d·2 B read + 2·d B written — hundreds of flops per
// byte, far above the H200's ridge point (~989 TFLOP/s bf16 / 4.8 TB/s ≈ 200 flop/B). K and V of a cell
// are re-read once per query tile, from L2 (a 4,096-token cell's K and V of one head are 1 MB in bf16).
//
// attention_varlen_bf16: tensor cores through raw `mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32`
// (sm_80+, no sm_90a needed), f32 scores, statistics and accumulators; P is rounded to bf16 for the PV
// product and l sums those rounded weights, so numerator and denominator use the same weights. Block =
// 4 warps = 128 threads, query tile BR = 64 (16 rows per warp, one m16 row block), key tile BC = 64.
// Per warp in registers: Q fragments 16 regs, S 8×4 f32, O 8×4 f32 (the FA2 arrangement: the S
// accumulator layout of m16n8 is exactly the A-operand layout of the next m16n8k16, so P never touches
// shared memory). Shared memory, static: Q 64×72 bf16 (9 KB), K 64×72 (9 KB), Vᵀ 64×72 (9 KB) and 64
// key flags = 27 KB, well inside 48 KB and small enough for several blocks per SM (NVRTC 13.0 gives
// 105 registers per thread, no spills, so registers allow 4 blocks = 16 warps per SM).
// Rows are padded 64 → 72 bf16 (144 B = 36 words) so that the fragment loads (row g = lane/4, word t =
// lane%4) hit 32 distinct banks. V is stored transposed (Vᵀ[dim][key]) so the B operand of PV is one
// 32-bit load, like K's; the transposing stores go key-fastest across lanes, conflict-free. Exponentials
// are exp2 with scale·log2(e) folded into the scores. Single-buffered K/V (load, barrier, compute,
// barrier): the other resident blocks hide the load latency; cp.async double buffering is the next step.
//
// attention_varlen_f32: plain SIMT f32 for exact parity with the CPU: 128 threads, query tile 32 rows,
// 4 lanes per query row (lane part p owns dims p, p+4, …, p+60, so the 4 lanes of a row read 4 banks and
// the 8 rows of a warp read the same K/V word: broadcast), key tile BC = 64 held as f32 K and V (16 KB
// each, 32 KB + 256 B static). Scores of a tile live in 64 registers per lane; q·k is reduced over the 4
// lanes by a butterfly, so the 4 lanes hold identical m, l and alpha. Exponentials are expf.
#include <cuda_bf16.h>

#include "common.cuh"

#define HEAD_DIM 64
#define BF_BR 64
#define BF_BC 64
#define BF_THREADS 128
// Padded shared-memory row, in bf16 elements (see the head comment).
#define BF_LDS 72

#define F_BR 32
#define F_BC 64
#define F_THREADS 128

// -inf as a compile-time constant (NVRTC has no <cmath> INFINITY).
#define NEG_INF (-__int_as_float(0x7f800000))

__device__ __forceinline__ bool key_kept(const unsigned char* __restrict__ key_mask, int key, int end) {
    return key < end && (key_mask == nullptr || key_mask[key] != 0);
}

// D = A·B + D for one m16n8k16 bf16 tile (f32 accumulate). Fragment layouts (PTX ISA, mma.m16n8k16,
// g = lane/4, t = lane%4): a0 = A[g][2t..2t+1], a1 = A[g+8][2t..], a2 = A[g][2t+8..], a3 = A[g+8][2t+8..];
// b0 = B[2t..2t+1][g], b1 = B[2t+8..2t+9][g]; d0,d1 = D[g][2t], D[g][2t+1]; d2,d3 = D[g+8][2t], D[g+8][2t+1].
// In every packed pair the lower column (or row, for B) is in the low 16 bits.
__device__ __forceinline__ void mma_bf16_m16n8k16(float d[4], const unsigned a[4], unsigned b0, unsigned b1) {
#ifdef SCINTERP_EMU  // the CPU emulator's model of the instruction (kernels/emu)
    emu::mma_m16n8k16_bf16_f32(EMU_SITE, d, a, b0, b1);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// Two consecutive bf16 of shared memory as one 32-bit register (the element at the lower address in the
// low half). `p` is 4-byte aligned: every use is at an even column of a row of even length.
__device__ __forceinline__ unsigned ld_pair(const __nv_bfloat16* p) {
    return *reinterpret_cast<const unsigned*>(p);
}

// (lo, hi) rounded to bf16 (nearest even) and packed, lo in the low half; also returns the rounded values.
__device__ __forceinline__ unsigned pack_bf16(float lo, float hi, float& lo_r, float& hi_r) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    lo_r = __low2float(v);
    hi_r = __high2float(v);
    unsigned bits;
    memcpy(&bits, &v, sizeof bits);  // a register move, without type punning through a pointer
    return bits;
}

extern "C" __global__ void attention_varlen_bf16(const __nv_bfloat16* __restrict__ qkv, const int* __restrict__ tiles,
                          const unsigned char* __restrict__ key_mask, __nv_bfloat16* __restrict__ ctx,
                          int n_heads, float scale) {
    __shared__ __align__(16) __nv_bfloat16 s_q[BF_BR * BF_LDS];
    __shared__ __align__(16) __nv_bfloat16 s_k[BF_BC * BF_LDS];
    __shared__ __align__(16) __nv_bfloat16 s_vt[HEAD_DIM * BF_LDS];  // Vᵀ: [dim][key]
    __shared__ unsigned char s_kept[BF_BC];                            // key of the tile is used

    const int q0 = tiles[3 * blockIdx.x];
    const int start = tiles[3 * blockIdx.x + 1];
    const int end = tiles[3 * blockIdx.x + 2];
    const int head = blockIdx.y;
    const size_t hidden = (size_t)n_heads * HEAD_DIM;
    const size_t stride = 3 * hidden;
    const __nv_bfloat16* q_base = qkv + (size_t)head * HEAD_DIM;
    const __nv_bfloat16* k_base = q_base + hidden;
    const __nv_bfloat16* v_base = k_base + hidden;
    const int tid = threadIdx.x;
    const int warp = tid >> 5;
    const int lane = tid & 31;
    const int g = lane >> 2;
    const int t = lane & 3;
    const int n_q = min(BF_BR, end - q0);
    const float scale_log2 = scale * 1.4426950408889634f;
    const uint4 zero = make_uint4(0u, 0u, 0u, 0u);

    // Q tile: 64 rows × 8 chunks of 8 bf16 (16 B); rows past the cell are zeros (computed, never written).
    for (int c = tid; c < BF_BR * 8; c += BF_THREADS) {
        const int r = c >> 3;
        const int col = (c & 7) * 8;
        uint4 v = zero;
        if (r < n_q) {
            v = *reinterpret_cast<const uint4*>(q_base + (size_t)(q0 + r) * stride + col);
        }
        *reinterpret_cast<uint4*>(s_q + r * BF_LDS + col) = v;
    }
    __syncthreads();

    // This warp's 16 query rows as A fragments, one per 16-dim chunk.
    const int r0 = warp * 16 + g;
    unsigned qf[4][4];
#pragma unroll
    for (int kc = 0; kc < 4; ++kc) {
        const __nv_bfloat16* row_lo = s_q + r0 * BF_LDS + kc * 16 + 2 * t;
        const __nv_bfloat16* row_hi = row_lo + 8 * BF_LDS;
        qf[kc][0] = ld_pair(row_lo);
        qf[kc][1] = ld_pair(row_hi);
        qf[kc][2] = ld_pair(row_lo + 8);
        qf[kc][3] = ld_pair(row_hi + 8);
    }

    // Rows r0 (suffix 0) and r0 + 8 (suffix 1) of this lane.
    float m0 = NEG_INF, m1 = NEG_INF, l0 = 0.0f, l1 = 0.0f;
    float o[8][4];
#pragma unroll
    for (int dt = 0; dt < 8; ++dt) {
        o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.0f;
    }

    for (int kv0 = start; kv0 < end; kv0 += BF_BC) {
        __syncthreads();  // every warp is done with the previous K and Vᵀ
        // K tile, row-major, 16 B per thread per step; left-out keys are zeros.
        for (int c = tid; c < BF_BC * 8; c += BF_THREADS) {
            const int r = c >> 3;
            const int col = (c & 7) * 8;
            uint4 v = zero;
            if (key_kept(key_mask, kv0 + r, end)) {
                v = *reinterpret_cast<const uint4*>(k_base + (size_t)(kv0 + r) * stride + col);
            }
            *reinterpret_cast<uint4*>(s_k + r * BF_LDS + col) = v;
        }
        // V tile, transposed into Vᵀ[dim][key]: keys vary fastest across lanes so that the 16-bit stores
        // of a warp fall in distinct words or share one (no bank conflict).
        for (int c = tid; c < BF_BC * 8; c += BF_THREADS) {
            const int r = c & (BF_BC - 1);
            const int col = (c / BF_BC) * 8;
            uint4 v = zero;
            if (key_kept(key_mask, kv0 + r, end)) {
                v = *reinterpret_cast<const uint4*>(v_base + (size_t)(kv0 + r) * stride + col);
            }
            const unsigned words[4] = {v.x, v.y, v.z, v.w};  // dims col + 2w (low half), col + 2w + 1
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                s_vt[(col + i) * BF_LDS + r] = __ushort_as_bfloat16((unsigned short)(words[i / 2] >> (16 * (i % 2))));
            }
        }
        if (tid < BF_BC) {
            s_kept[tid] = key_kept(key_mask, kv0 + tid, end) ? 1 : 0;
        }
        __syncthreads();

        // S = Q·Kᵀ over 8 key groups of 8 (B[k = dim][n = key] = K[key][dim]).
        float s[8][4];
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
            const __nv_bfloat16* krow = s_k + (nt * 8 + g) * BF_LDS + 2 * t;
#pragma unroll
            for (int kc = 0; kc < 4; ++kc) {
                mma_bf16_m16n8k16(s[nt], qf[kc], ld_pair(krow + kc * 16), ld_pair(krow + kc * 16 + 8));
            }
        }

        // Scale (log2 domain), mask, row max over this tile. Lane holds keys nt·8 + 2t, +1 of rows r0, r0+8.
        float mx0 = NEG_INF, mx1 = NEG_INF;
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const bool kept = s_kept[nt * 8 + 2 * t + e] != 0;
                s[nt][e] = kept ? s[nt][e] * scale_log2 : NEG_INF;
                s[nt][2 + e] = kept ? s[nt][2 + e] * scale_log2 : NEG_INF;
                mx0 = fmaxf(mx0, s[nt][e]);
                mx1 = fmaxf(mx1, s[nt][2 + e]);
            }
        }
        // The 4 lanes of a row (same g) hold its 64 keys.
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
        const float mn0 = fmaxf(m0, mx0);
        const float mn1 = fmaxf(m1, mx1);
        const float base0 = mn0 == NEG_INF ? 0.0f : mn0;
        const float base1 = mn1 == NEG_INF ? 0.0f : mn1;
        const float alpha0 = exp2f(m0 - base0);
        const float alpha1 = exp2f(m1 - base1);
        m0 = mn0;
        m1 = mn1;

        // P = exp2(S - base), rounded to bf16 and packed straight into A fragments (16 keys per chunk:
        // key groups 2kc and 2kc+1); the row sums add the rounded weights.
        unsigned pf[4][4];
        float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll
        for (int kc = 0; kc < 4; ++kc) {
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const int nt = 2 * kc + half;
                float a, b, c, d;
                pf[kc][2 * half] = pack_bf16(exp2f(s[nt][0] - base0), exp2f(s[nt][1] - base0), a, b);
                pf[kc][2 * half + 1] = pack_bf16(exp2f(s[nt][2] - base1), exp2f(s[nt][3] - base1), c, d);
                sum0 += a + b;
                sum1 += c + d;
            }
        }
        sum0 += __shfl_xor_sync(0xffffffffu, sum0, 1);
        sum0 += __shfl_xor_sync(0xffffffffu, sum0, 2);
        sum1 += __shfl_xor_sync(0xffffffffu, sum1, 1);
        sum1 += __shfl_xor_sync(0xffffffffu, sum1, 2);
        l0 = l0 * alpha0 + sum0;
        l1 = l1 * alpha1 + sum1;

        // O = O·alpha + P·V over 8 dim groups of 8 (B[k = key][n = dim] = Vᵀ[dim][key]).
#pragma unroll
        for (int dt = 0; dt < 8; ++dt) {
            o[dt][0] *= alpha0;
            o[dt][1] *= alpha0;
            o[dt][2] *= alpha1;
            o[dt][3] *= alpha1;
            const __nv_bfloat16* vrow = s_vt + (dt * 8 + g) * BF_LDS + 2 * t;
#pragma unroll
            for (int kc = 0; kc < 4; ++kc) {
                mma_bf16_m16n8k16(o[dt], pf[kc], ld_pair(vrow + kc * 16), ld_pair(vrow + kc * 16 + 8));
            }
        }
    }

    // ctx rows r0 and r0 + 8 of the tile, dims dt·8 + 2t, +1; zeros for a row with no key kept.
    const float inv0 = l0 > 0.0f ? 1.0f / l0 : 0.0f;
    const float inv1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
    __nv_bfloat16* out_base = ctx + (size_t)head * HEAD_DIM + 2 * t;
    float unused_a, unused_b;
    if (r0 < n_q) {
        __nv_bfloat16* out = out_base + (size_t)(q0 + r0) * hidden;
#pragma unroll
        for (int dt = 0; dt < 8; ++dt) {
            *reinterpret_cast<unsigned*>(out + dt * 8) =
                pack_bf16(o[dt][0] * inv0, o[dt][1] * inv0, unused_a, unused_b);
        }
    }
    if (r0 + 8 < n_q) {
        __nv_bfloat16* out = out_base + (size_t)(q0 + r0 + 8) * hidden;
#pragma unroll
        for (int dt = 0; dt < 8; ++dt) {
            *reinterpret_cast<unsigned*>(out + dt * 8) =
                pack_bf16(o[dt][2] * inv1, o[dt][3] * inv1, unused_a, unused_b);
        }
    }
}

extern "C" __global__ void attention_varlen_f32(const float* __restrict__ qkv, const int* __restrict__ tiles,
                         const unsigned char* __restrict__ key_mask, float* __restrict__ ctx, int n_heads,
                         float scale) {
    __shared__ __align__(16) float s_k[F_BC * HEAD_DIM];
    __shared__ __align__(16) float s_v[F_BC * HEAD_DIM];
    __shared__ float s_kept[F_BC];

    const int q0 = tiles[3 * blockIdx.x];
    const int start = tiles[3 * blockIdx.x + 1];
    const int end = tiles[3 * blockIdx.x + 2];
    const int head = blockIdx.y;
    const size_t hidden = (size_t)n_heads * HEAD_DIM;
    const size_t stride = 3 * hidden;
    const float* q_base = qkv + (size_t)head * HEAD_DIM;
    const float* k_base = q_base + hidden;
    const float* v_base = k_base + hidden;
    const int tid = threadIdx.x;
    const int row = tid >> 2;  // query row of the tile
    const int part = tid & 3;  // dims part, part + 4, …
    const bool row_live = q0 + row < end;

    float q[16], o[16];
#pragma unroll
    for (int i = 0; i < 16; ++i) {
        q[i] = row_live ? q_base[(size_t)(q0 + row) * stride + part + 4 * i] : 0.0f;
        o[i] = 0.0f;
    }
    float m = NEG_INF, l = 0.0f;

    for (int kv0 = start; kv0 < end; kv0 += F_BC) {
        __syncthreads();
        // K and V tiles, 4 floats per thread per step; left-out keys are zeros.
        for (int c = tid; c < F_BC * (HEAD_DIM / 4); c += F_THREADS) {
            const int r = c / (HEAD_DIM / 4);
            const int col = (c % (HEAD_DIM / 4)) * 4;
            float4 kv = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            float4 vv = kv;
            if (key_kept(key_mask, kv0 + r, end)) {
                const size_t off = (size_t)(kv0 + r) * stride + col;
                kv = *reinterpret_cast<const float4*>(k_base + off);
                vv = *reinterpret_cast<const float4*>(v_base + off);
            }
            *reinterpret_cast<float4*>(s_k + r * HEAD_DIM + col) = kv;
            *reinterpret_cast<float4*>(s_v + r * HEAD_DIM + col) = vv;
        }
        if (tid < F_BC) {
            s_kept[tid] = key_kept(key_mask, kv0 + tid, end) ? 1.0f : 0.0f;
        }
        __syncthreads();

        float s[F_BC];
        float mx = NEG_INF;
#pragma unroll
        for (int j = 0; j < F_BC; ++j) {
            float d = 0.0f;
#pragma unroll
            for (int i = 0; i < 16; ++i) {
                d = fmaf(q[i], s_k[j * HEAD_DIM + part + 4 * i], d);
            }
            d += __shfl_xor_sync(0xffffffffu, d, 1);
            d += __shfl_xor_sync(0xffffffffu, d, 2);
            s[j] = s_kept[j] != 0.0f ? d * scale : NEG_INF;
            mx = fmaxf(mx, s[j]);
        }
        const float mn = fmaxf(m, mx);
        const float base = mn == NEG_INF ? 0.0f : mn;
        const float alpha = expf(m - base);
        m = mn;
        float sum = 0.0f;
#pragma unroll
        for (int j = 0; j < F_BC; ++j) {
            s[j] = expf(s[j] - base);
            sum += s[j];
        }
        l = l * alpha + sum;
#pragma unroll
        for (int i = 0; i < 16; ++i) {
            o[i] *= alpha;
        }
#pragma unroll
        for (int j = 0; j < F_BC; ++j) {
#pragma unroll
            for (int i = 0; i < 16; ++i) {
                o[i] = fmaf(s[j], s_v[j * HEAD_DIM + part + 4 * i], o[i]);
            }
        }
    }

    if (row_live) {
        const float inv = l > 0.0f ? 1.0f / l : 0.0f;
        float* out = ctx + (size_t)(q0 + row) * hidden + (size_t)head * HEAD_DIM + part;
#pragma unroll
        for (int i = 0; i < 16; ++i) {
            out[4 * i] = o[i] * inv;
        }
    }
}
