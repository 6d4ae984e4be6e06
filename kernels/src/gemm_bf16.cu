// In-house linear layer for hosts without cuBLASLt: y[M,N] = epilogue(x[M,K] · W[N,K]^T + bias[N]),
// row-major (PyTorch weight layout), x and W in bf16, f32 accumulation on tensor cores (WMMA 16x16x16),
// y in f32 or bf16. Epilogue: 0 none, 1 bias, 2 bias + ReLU.
//
// Tiling: one 128-thread block per 64x64 tile of y; 4 warps in a 2x2 grid, each owning 32x32 = 2x2
// accumulator fragments; K advances 32 at a time through shared memory (x tile 64x32 row-major, W tile
// 64x32 row-major = a 32x64 col-major B operand). Rows are padded to 40 bf16 (80 B) so that the 16-row
// fragment loads spread over banks and every fragment pointer stays 32-byte aligned, as WMMA requires.
// The accumulators go through shared memory (64x68 f32) for the epilogue and the bounds-checked store,
// so any M, N, K work (edges are zero-filled on load).
//
// Bound: compute (2·M·N·K flops against (M·K + N·K)·2 + M·N·4 bytes; at M = 32,768, N = K = 1,152 that is
// ~170 flop/B, far above the H200's ridge point). This kernel is single-buffered and loads with scalar
// bf16 reads: expect well under cuBLASLt's throughput. It exists so the GPU path runs without
// libcublasLt; the forward pass uses cuBLASLt when present.
#include <cuda_bf16.h>
#include <mma.h>

using namespace nvcuda;

namespace {

constexpr int TILE = 64;
constexpr int BK = 32;
constexpr int LDS = BK + 8;        // bf16 elements per shared row (multiple of 8, 80 B)
constexpr int LDC = TILE + 4;      // f32 elements per shared accumulator row (multiple of 4)
constexpr int THREADS = 128;

__device__ __forceinline__ float apply_epilogue(float v, const float* bias, int col, int epilogue) {
    if (epilogue >= 1) {
        v += bias[col];
    }
    if (epilogue == 2) {
        v = fmaxf(v, 0.0f);
    }
    return v;
}

// Loads rows [row0, row0 + 64) x columns [k0, k0 + 32) of a row-major [rows, K] bf16 matrix into
// shared memory, zero-filling outside the matrix.
__device__ __forceinline__ void load_tile(__nv_bfloat16 (*dst)[LDS], const __nv_bfloat16* __restrict__ src,
                                          int rows, int K, int row0, int k0) {
    const __nv_bfloat16 zero = __float2bfloat16(0.0f);
    for (int i = threadIdx.x; i < TILE * BK; i += THREADS) {
        const int r = i / BK;
        const int c = i % BK;
        const int gr = row0 + r;
        const int gc = k0 + c;
        dst[r][c] = (gr < rows && gc < K) ? src[(size_t)gr * (size_t)K + gc] : zero;
    }
}

template <typename Out>
__device__ __forceinline__ Out to_out(float v);

template <>
__device__ __forceinline__ float to_out<float>(float v) {
    return v;
}

template <>
__device__ __forceinline__ __nv_bfloat16 to_out<__nv_bfloat16>(float v) {
    return __float2bfloat16(v);
}

template <typename Out>
__device__ void linear_bf16(const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* __restrict__ w,
                            const float* __restrict__ bias, Out* __restrict__ y, int M, int N, int K,
                            int epilogue) {
    __shared__ __align__(32) __nv_bfloat16 xs[TILE][LDS];
    __shared__ __align__(32) __nv_bfloat16 ws[TILE][LDS];
    __shared__ __align__(32) float cs[TILE][LDC];

    const int row0 = blockIdx.y * TILE;  // rows of x and y
    const int col0 = blockIdx.x * TILE;  // rows of W = columns of y
    const int warp = threadIdx.x >> 5;
    const int warp_m = (warp >> 1) * 32;
    const int warp_n = (warp & 1) * 32;

    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            wmma::fill_fragment(acc[i][j], 0.0f);
        }
    }

    for (int k0 = 0; k0 < K; k0 += BK) {
        load_tile(xs, x, M, K, row0, k0);
        load_tile(ws, w, N, K, col0, k0);
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < BK; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a[2];
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> b[2];
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                wmma::load_matrix_sync(a[i], &xs[warp_m + 16 * i][kk], LDS);
                // B(k, n) = W[n][k]: W's shared rows are B's columns, i.e. B is col-major with ld LDS.
                wmma::load_matrix_sync(b[i], &ws[warp_n + 16 * i][kk], LDS);
            }
#pragma unroll
            for (int i = 0; i < 2; ++i) {
#pragma unroll
                for (int j = 0; j < 2; ++j) {
                    wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
                }
            }
        }
        __syncthreads();  // the next iteration overwrites xs and ws
    }

#pragma unroll
    for (int i = 0; i < 2; ++i) {
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            wmma::store_matrix_sync(&cs[warp_m + 16 * i][warp_n + 16 * j], acc[i][j], LDC,
                                    wmma::mem_row_major);
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < TILE * TILE; i += THREADS) {
        const int r = i / TILE;
        const int c = i % TILE;
        const int gr = row0 + r;
        const int gc = col0 + c;
        if (gr < M && gc < N) {
            y[(size_t)gr * (size_t)N + gc] = to_out<Out>(apply_epilogue(cs[r][c], bias, gc, epilogue));
        }
    }
}

}  // namespace

extern "C" __global__ void linear_bf16_f32out(const __nv_bfloat16* __restrict__ x,
                                              const __nv_bfloat16* __restrict__ w,
                                              const float* __restrict__ bias, float* __restrict__ y,
                                              int M, int N, int K, int epilogue) {
    linear_bf16<float>(x, w, bias, y, M, N, K, epilogue);
}

extern "C" __global__ void linear_bf16_bf16out(const __nv_bfloat16* __restrict__ x,
                                               const __nv_bfloat16* __restrict__ w,
                                               const float* __restrict__ bias,
                                               __nv_bfloat16* __restrict__ y, int M, int N, int K,
                                               int epilogue) {
    linear_bf16<__nv_bfloat16>(x, w, bias, y, M, N, K, epilogue);
}
