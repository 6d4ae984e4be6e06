// Sparse decode and sparse backward of a TopK SAE (layouts of scinterp_engine::sae::TopKSae: W_enc and
// W_dec are [d_sae, d] row-major, one row per latent; codes are k (index, value) pairs per row). Index
// 0xFFFFFFFF (or any index >= d_sae) marks an empty slot and is skipped everywhere, as is a value of 0
// where the CPU skips it. Accumulation is f32 throughout. The kernels mirror `TrainState::step` in
// engine/src/sae/train.rs (residual e = x − x̂, the CPU's sign; gradients scaled by the caller's
// coefficient, −2/(B·d) for the main loss and −2·aux_coef/(B·d) for AuxK). The weight gradients are
// dense GEMMs over a scattered copy of the codes (below), so no kernel here adds with atomics except
// the dead-latent count.
#include <cuda_bf16.h>

#include "common.cuh"

#define SAE_NO_INDEX 0xFFFFFFFFu

// Dynamic shared memory of every kernel here that stages a row's codes (one declaration, file scope).
SCINTERP_DYNAMIC_SHARED(unsigned int, s_codes);

__device__ __forceinline__ float sae_load(const float* w, size_t i) { return w[i]; }
__device__ __forceinline__ float sae_load(const __nv_bfloat16* w, size_t i) { return __bfloat162float(w[i]); }

// Stage a row's k codes in shared memory (k x 8 B of dynamic shared memory); empty slots get value 0.
__device__ __forceinline__ void sae_stage_codes(const unsigned int* idx, const float* val, int k, int d_sae,
                                                unsigned int* s_idx, float* s_val) {
    for (int j = threadIdx.x; j < k; j += blockDim.x) {
        const unsigned int f = idx[j];
        const bool ok = f < (unsigned int)d_sae;
        s_idx[j] = ok ? f : 0u;
        s_val[j] = ok ? val[j] : 0.0f;
    }
    __syncthreads();
}

// out[c] = base[c] + sign · Σ_j v_j · W[f_j, c], j in slot order, slots with v = 0 skipped.
template <typename W>
__device__ __forceinline__ void sae_gather_row(const W* __restrict__ w, const unsigned int* s_idx,
                                               const float* s_val, int k, int d, float sign,
                                               const float* base_a, const float* base_b, float* out) {
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        float acc = base_a[c];
        if (base_b != nullptr) {
            acc -= base_b[c];
        }
        for (int j = 0; j < k; ++j) {
            const float v = s_val[j];  // uniform across the block: no divergence
            if (v != 0.0f) {
                acc += (sign * v) * sae_load(w, (size_t)s_idx[j] * (size_t)d + (size_t)c);
            }
        }
        out[c] = acc;
    }
}

// ---------------------------------------------------------------------------------------------------
// Sparse decode: out[r] = b_dec + Σ_j values[r, j] · W_dec[indices[r, j]]. CPU reference:
// TopKSae::decode. One block per row, threads over the d columns (coalesced W_dec row reads).
// Bound: L2 bandwidth. Per row it gathers k decoder rows (k·d·4 B in f32, k·d·2 B in bf16; W_dec is
// 21 MB f32 / 10.6 MB bf16 at d 1,152, F 4,608, resident in the 50 MB L2) and writes d·4 B; 2·k·d flops,
// 0.5 flop/B (f32), far below the ridge point. Dynamic shared memory: 8 B x k.
template <typename W>
__device__ __forceinline__ void sae_decode_impl(const unsigned int* __restrict__ indices,
                                                const float* __restrict__ values, const W* __restrict__ w_dec,
                                                const float* __restrict__ b_dec, float* __restrict__ out,
                                                int rows, int k, int d, int d_sae) {
    unsigned int* s_idx = s_codes;
    float* s_val = reinterpret_cast<float*>(s_codes + k);
    const int row = blockIdx.x;
    if (row >= rows) {
        return;
    }
    sae_stage_codes(indices + (size_t)row * k, values + (size_t)row * k, k, d_sae, s_idx, s_val);
    sae_gather_row(w_dec, s_idx, s_val, k, d, 1.0f, b_dec, nullptr, out + (size_t)row * d);
}

extern "C" __global__ void sae_decode_f32(const unsigned int* __restrict__ indices,
                                          const float* __restrict__ values, const float* __restrict__ w_dec,
                                          const float* __restrict__ b_dec, float* __restrict__ out, int rows,
                                          int k, int d, int d_sae) {
    sae_decode_impl(indices, values, w_dec, b_dec, out, rows, k, d, d_sae);
}

// W_dec in bf16 (raw bits), accumulation and output in f32.
extern "C" __global__ void sae_decode_bf16(const unsigned int* __restrict__ indices,
                                           const float* __restrict__ values,
                                           const __nv_bfloat16* __restrict__ w_dec,
                                           const float* __restrict__ b_dec, float* __restrict__ out, int rows,
                                           int k, int d, int d_sae) {
    sae_decode_impl(indices, values, w_dec, b_dec, out, rows, k, d, d_sae);
}

// ---------------------------------------------------------------------------------------------------
// Residuals. Main: e[r] = x[r] − b_dec − Σ_j v_j · W_dec[f_j] (the CPU's `residual`, e = x − x̂).
// AuxK: a[r] = e[r] − Σ_j v_aux_j · W_dec[f_aux_j] (the CPU's `aux_residual`).
// Same shape, bound and launch as sae_decode_f32 (plus one read of x or e: 4·d B per row).
extern "C" __global__ void sae_residual_f32(const float* __restrict__ x, const float* __restrict__ b_dec,
                                            const unsigned int* __restrict__ indices,
                                            const float* __restrict__ values, const float* __restrict__ w_dec,
                                            float* __restrict__ out, int rows, int k, int d, int d_sae) {
    unsigned int* s_idx = s_codes;
    float* s_val = reinterpret_cast<float*>(s_codes + k);
    const int row = blockIdx.x;
    if (row >= rows) {
        return;
    }
    sae_stage_codes(indices + (size_t)row * k, values + (size_t)row * k, k, d_sae, s_idx, s_val);
    sae_gather_row(w_dec, s_idx, s_val, k, d, -1.0f, x + (size_t)row * d, b_dec, out + (size_t)row * d);
}

extern "C" __global__ void sae_aux_residual_f32(const float* __restrict__ e,
                                                const unsigned int* __restrict__ indices,
                                                const float* __restrict__ values,
                                                const float* __restrict__ w_dec, float* __restrict__ out,
                                                int rows, int k, int d, int d_sae) {
    unsigned int* s_idx = s_codes;
    float* s_val = reinterpret_cast<float*>(s_codes + k);
    const int row = blockIdx.x;
    if (row >= rows) {
        return;
    }
    sae_stage_codes(indices + (size_t)row * k, values + (size_t)row * k, k, d_sae, s_idx, s_val);
    sae_gather_row(w_dec, s_idx, s_val, k, d, -1.0f, e + (size_t)row * d, nullptr, out + (size_t)row * d);
}

// ---------------------------------------------------------------------------------------------------
// Gradient at the active pre-activations: grad_pre[r, offset + j] = v_j > 0 ? coef · (t[r] · W_dec[f_j]) : 0
// (t = e with coef −2/(B·d), or the AuxK residual with coef −2·aux_coef/(B·d); the CPU's `gp_row`).
// With coef = 1 it is the plain dot e·W_dec[f_j] gated by the ReLU. grad_pre is [rows, stride].
// One block per row, one warp per slot (warp-shuffle dot, no block barrier).
// Bound: L2 bandwidth, as the decode: k decoder rows (k·d·4 B) plus t (d·4 B, L1-resident) per row.
extern "C" __global__ void sae_grad_pre_f32(const float* __restrict__ t, const unsigned int* __restrict__ indices,
                                            const float* __restrict__ values, const float* __restrict__ w_dec,
                                            float coef, float* __restrict__ grad_pre, int rows, int k, int d,
                                            int d_sae, int stride, int offset) {
    const int row = blockIdx.x;
    if (row >= rows) {
        return;
    }
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int n_warps = blockDim.x >> 5;
    const float* tr = t + (size_t)row * d;
    for (int j = warp; j < k; j += n_warps) {
        const unsigned int f = indices[(size_t)row * k + j];
        const float v = values[(size_t)row * k + j];
        float g = 0.0f;
        if (f < (unsigned int)d_sae && v > 0.0f) {
            const float* wr = w_dec + (size_t)f * d;
            float s = 0.0f;
            for (int c = lane; c < d; c += 32) {
                s += tr[c] * wr[c];
            }
            g = coef * warp_sum(s);
        }
        if (lane == 0) {
            grad_pre[(size_t)row * stride + offset + j] = g;
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Weight gradients of the active latents, as dense GEMMs (the wrapper `Kernels::sae_weight_grads`):
//   g_W_dec = C_mainᵀ·e + C_auxᵀ·a     C[r, f] = coef · v   (the slot's value; CPU: `axpy(gd, coef·v, e or a)`)
//   g_W_enc = Gᵀ·(x − b_dec)           G[r, f] = Σ gp       (main and AuxK slots; CPU: `axpy(ge, gp, xc)`)
//   g_b_enc = Σ_r G[r, ·]                                   (CPU: `gbe += gp`)
// The sparse codes are first scattered into a dense [rows, d_sae] matrix (sae_dense_scatter_*), then
// cuBLASLt multiplies (`CublasLt::weight_grad`, deterministic for a fixed plan) and a column reduction
// gives the bias gradient (sae_col_sum_*). No atomics anywhere: every step gives the same bits.

// Dense scatter of up to two code sets into one row-major [rows, d_sae] matrix, every element written:
//   out[r, :] = 0; out[r, f_j] = coef_a · w_a[r, j] for set a; then out[r, f_j] += coef_b · w_b[r, j]
// for set b (k_b = 0: no set b). A set's indices are [rows, k] (row stride k), its weights [rows, stride]
// at columns offset.. (the values themselves, or the ∂L/∂pre slots). Slots with index ≥ d_sae are skipped.
// Within one set the indices of a row are distinct (top-k output), so each element is written by at
// most one thread per phase; the two phases are separated by a barrier: deterministic. Set b's add
// is an f32 add without contraction (then rounded once to T), so both phases use plain IEEE ops.
// One block per row, threads over the d_sae columns (coalesced zero fill), then over the slots.
// Bound: memory, the write of the dense row (d_sae · sizeof(T) per row: 37.7 MB at 8,192 rows, F 4,608,
// bf16) plus k reads of (index, weight) per set; no compute.
template <typename T>
__device__ __forceinline__ T sae_dense_from_float(float v);
template <>
__device__ __forceinline__ float sae_dense_from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 sae_dense_from_float<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}

template <typename T>
__device__ __forceinline__ void sae_dense_scatter_impl(
    const unsigned int* __restrict__ idx_a, const float* __restrict__ w_a, int k_a, int stride_a, int offset_a,
    float coef_a, const unsigned int* __restrict__ idx_b, const float* __restrict__ w_b, int k_b, int stride_b,
    int offset_b, float coef_b, T* __restrict__ out, int rows, int d_sae) {
    const int row = blockIdx.x;
    if (row >= rows) {
        return;
    }
    T* o = out + (size_t)row * (size_t)d_sae;
    for (int c = threadIdx.x; c < d_sae; c += blockDim.x) {
        o[c] = sae_dense_from_float<T>(0.0f);
    }
    __syncthreads();
    for (int j = threadIdx.x; j < k_a; j += blockDim.x) {
        const unsigned int f = idx_a[(size_t)row * k_a + j];
        if (f < (unsigned int)d_sae) {
            o[f] = sae_dense_from_float<T>(
                __fmul_rn(coef_a, w_a[(size_t)row * stride_a + offset_a + j]));
        }
    }
    if (k_b > 0) {
        __syncthreads();
        for (int j = threadIdx.x; j < k_b; j += blockDim.x) {
            const unsigned int f = idx_b[(size_t)row * k_b + j];
            if (f < (unsigned int)d_sae) {
                const float add = __fmul_rn(coef_b, w_b[(size_t)row * stride_b + offset_b + j]);
                o[f] = sae_dense_from_float<T>(__fadd_rn(sae_load(o, f), add));
            }
        }
    }
}

extern "C" __global__ void sae_dense_scatter_f32(const unsigned int* __restrict__ idx_a,
                                                 const float* __restrict__ w_a, int k_a, int stride_a,
                                                 int offset_a, float coef_a,
                                                 const unsigned int* __restrict__ idx_b,
                                                 const float* __restrict__ w_b, int k_b, int stride_b,
                                                 int offset_b, float coef_b, float* __restrict__ out, int rows,
                                                 int d_sae) {
    sae_dense_scatter_impl(idx_a, w_a, k_a, stride_a, offset_a, coef_a, idx_b, w_b, k_b, stride_b, offset_b,
                           coef_b, out, rows, d_sae);
}

// bf16 output (the GEMM operand of the bf16 mode): each element rounded once (set b: after the f32 add).
extern "C" __global__ void sae_dense_scatter_bf16(const unsigned int* __restrict__ idx_a,
                                                  const float* __restrict__ w_a, int k_a, int stride_a,
                                                  int offset_a, float coef_a,
                                                  const unsigned int* __restrict__ idx_b,
                                                  const float* __restrict__ w_b, int k_b, int stride_b,
                                                  int offset_b, float coef_b, __nv_bfloat16* __restrict__ out,
                                                  int rows, int d_sae) {
    sae_dense_scatter_impl(idx_a, w_a, k_a, stride_a, offset_a, coef_a, idx_b, w_b, k_b, stride_b, offset_b,
                           coef_b, out, rows, d_sae);
}

// Column sums of a row-major [rows, n] matrix in f32: out[c] = Σ_r m[r, c] (overwritten; g_b_enc from G).
// Deterministic, as sae_grad_b_dec_f32: block (32, Y ≤ 32), 32 columns per block; warp y sums rows y,
// y + Y, … in order, then row 0 of the block adds the Y partials in order (the wrapper uses Y = 16).
// Bound: memory, one coalesced read of the matrix (rows · n · sizeof(T)).
template <typename T>
__device__ __forceinline__ void sae_col_sum_impl(const T* __restrict__ m, int rows, int n, float* __restrict__ out,
                                                 float (*partial)[33]) {
    const int c = blockIdx.x * 32 + threadIdx.x;
    const int y = threadIdx.y;
    const int ny = blockDim.y;
    float acc = 0.0f;
    if (c < n) {
        for (int r = y; r < rows; r += ny) {
            acc += sae_load(m, (size_t)r * (size_t)n + (size_t)c);
        }
    }
    partial[y][threadIdx.x] = acc;
    __syncthreads();
    if (y == 0 && c < n) {
        float s = 0.0f;
        for (int w = 0; w < ny; ++w) {
            s += partial[w][threadIdx.x];
        }
        out[c] = s;
    }
}

extern "C" __global__ void sae_col_sum_f32(const float* __restrict__ m, int rows, int n, float* __restrict__ out) {
    __shared__ float partial[32][33];
    sae_col_sum_impl(m, rows, n, out, partial);
}

extern "C" __global__ void sae_col_sum_bf16(const __nv_bfloat16* __restrict__ m, int rows, int n,
                                            float* __restrict__ out) {
    __shared__ float partial[32][33];
    sae_col_sum_impl(m, rows, n, out, partial);
}

// ---------------------------------------------------------------------------------------------------
// b_dec gradient (overwrites g_b_dec): g[c] = Σ_r coef · e[r, c] − Σ_f g_b_enc[f] · W_enc[f, c]
// (the CPU's decoder side `bdec += grad_main * e` plus its encoder side `axpy(g.b_dec, -gb, W_enc[f])`).
// Deterministic: block (32, Y ≤ 32), 32 columns per block; warp y sums rows y, y+Y, … and latents y,
// y+Y, … in order, then row 0 adds the Y partials in order (the wrapper uses Y = 16).
// Bound: memory. Reads e once (rows·d·4 B) and W_enc once (d_sae·d·4 B, rows with g_b_enc = 0 skipped);
// 128-byte coalesced reads per warp.
extern "C" __global__ void sae_grad_b_dec_f32(const float* __restrict__ e, int rows, int d, float coef,
                                              const float* __restrict__ g_b_enc, const float* __restrict__ w_enc,
                                              int d_sae, float* __restrict__ g_b_dec) {
    __shared__ float partial[32][33];
    const int c = blockIdx.x * 32 + threadIdx.x;
    const int y = threadIdx.y;
    const int ny = blockDim.y;
    float acc = 0.0f;
    if (c < d) {
#pragma unroll 4
        for (int r = y; r < rows; r += ny) {
            acc += coef * e[(size_t)r * d + c];
        }
        for (int f = y; f < d_sae; f += ny) {
            const float gb = g_b_enc[f];
            if (gb != 0.0f) {
                acc -= gb * w_enc[(size_t)f * d + c];
            }
        }
    }
    partial[y][threadIdx.x] = acc;
    __syncthreads();
    if (y == 0 && c < d) {
        float s = 0.0f;
        for (int w = 0; w < ny; ++w) {
            s += partial[w][threadIdx.x];
        }
        g_b_dec[c] = s;
    }
}

// ---------------------------------------------------------------------------------------------------
// Remove from each decoder row's gradient its component along the row: g[f] −= (g[f]·w[f]) · w[f]
// (the CPU's `let along = dot(gd, w); axpy(gd, -along, w)`; a zero gradient row stays zero, so running
// it on untouched latents is the same as the CPU's skipping them). One warp per latent.
// Bound: memory, 12·d B per latent (read g and w, write g); 4·d flops.
extern "C" __global__ void sae_remove_parallel_grad_f32(float* __restrict__ g_w_dec,
                                                        const float* __restrict__ w_dec, int d_sae, int d) {
    const int lane = threadIdx.x & 31;
    const int f = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (f >= d_sae) {
        return;
    }
    float* g = g_w_dec + (size_t)f * d;
    const float* w = w_dec + (size_t)f * d;
    float s = 0.0f;
    for (int c = lane; c < d; c += 32) {
        s += g[c] * w[c];
    }
    const float along = warp_sum(s);
    if (along != 0.0f) {
        for (int c = lane; c < d; c += 32) {
            g[c] += -along * w[c];
        }
    }
}

// Unit-norm decoder rows: w[f] /= ‖w[f]‖ when the norm is > 0 (the CPU's `normalise`, applied to every
// row of W_dec after the Adam step). One warp per row; IEEE sqrt and division.
// Bound: memory, 8·d B per row (read, write; the second read hits L1); 3·d flops.
extern "C" __global__ void sae_renormalise_rows_f32(float* __restrict__ w, int n_rows, int d) {
    const int lane = threadIdx.x & 31;
    const int f = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (f >= n_rows) {
        return;
    }
    float* r = w + (size_t)f * d;
    float s = 0.0f;
    for (int c = lane; c < d; c += 32) {
        s += r[c] * r[c];
    }
    const float norm = sqrtf(warp_sum(s));
    if (norm > 0.0f) {
        for (int c = lane; c < d; c += 32) {
            r[c] = r[c] / norm;
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Dead-latent tracking (the CPU's `tokens_since_fired[f] = fired ? 0 : t + B`), in two launches on one
// stream: first every counter += B, then every latent that fired in this batch (a slot with value > 0)
// is set to 0. Equivalent to the CPU update; the reset writes are idempotent, so races are benign.
// Bound: memory; d_sae·16 B plus rows·k·8 B.
extern "C" __global__ void sae_fire_counters_add(unsigned long long* __restrict__ tokens_since_fired, int d_sae,
                                                 unsigned long long batch_rows) {
    const int f = blockIdx.x * blockDim.x + threadIdx.x;
    if (f < d_sae) {
        tokens_since_fired[f] += batch_rows;
    }
}

extern "C" __global__ void sae_fire_counters_reset(const unsigned int* __restrict__ indices,
                                                   const float* __restrict__ values, long long n_slots,
                                                   unsigned long long* __restrict__ tokens_since_fired,
                                                   int d_sae) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n_slots; i += stride) {
        const unsigned int f = indices[i];
        if (f < (unsigned int)d_sae && values[i] > 0.0f) {
            tokens_since_fired[f] = 0ull;
        }
    }
}

// The AuxK mask: dead[f] = tokens_since_fired[f] >= threshold, and n_dead[0] += the number of dead
// latents (n_dead zeroed by the caller). Bound: memory, d_sae·9 B.
extern "C" __global__ void sae_dead_mask(const unsigned long long* __restrict__ tokens_since_fired, int d_sae,
                                         unsigned long long threshold, unsigned char* __restrict__ dead,
                                         unsigned int* __restrict__ n_dead) {
    const int f = blockIdx.x * blockDim.x + threadIdx.x;
    const bool is_dead = f < d_sae && tokens_since_fired[f] >= threshold;
    if (f < d_sae) {
        dead[f] = is_dead ? 1 : 0;
    }
    const unsigned int ballot = __ballot_sync(0xFFFFFFFFu, is_dead);
    if ((threadIdx.x & 31) == 0 && ballot != 0u) {
        atomicAdd(n_dead, (unsigned int)__popc(ballot));
    }
}
