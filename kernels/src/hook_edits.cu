// Hook edits applied in-kernel: many edits of one hook point, of all four kinds of
// `scinterp_engine::hooks::Edit`, in ONE launch over a row-major [tokens, d] tensor (f32, or bf16 bits).
//
// The edit list (built and validated on the host by `gpu::EditList`) is one 16-byte record per edited row,
//   record = { row, op, scale (f32 bits), offset }   (uint4)
// with `op` one of ADD (x[row] += scale · pool[offset .. offset + d]), ZERO (x[row] = 0),
// REPLACE / MEAN (x[row] = pool[offset .. offset + d]); vectors live in one shared f32 pool, a direction or
// mean once per edit, replacement values once per row. The host sorts the records by row with a STABLE
// sort, so the records of one row keep their list order (= the order in which the CPU applies them:
// edits in sequence, rows of an edit in order), and cuts them into segments, one per distinct row:
// `segments[s] .. segments[s + 1]` are the records of segment s. One thread block owns one segment (one
// row); each thread owns a strided set of that row's columns and runs the row's records in order on its
// register copy of x[row, c]: the result of every element is exactly the sequential CPU result. Records
// before the last overwrite (ZERO, REPLACE, MEAN) of a row cannot change the result and are dropped by the
// host; when a row's first remaining record is an overwrite, x is not read at all.
//
// Rounding: ADD is computed as __fadd_rn(v, __fmul_rn(scale, w)) so that NVRTC cannot contract it into an
// FMA: the f32 result equals `*v += s * w` on the CPU bit for bit. bf16: the row is loaded to f32 once,
// every record applies in f32, and the result is rounded once to bf16 (round to nearest even), i.e. the
// CPU reference is "to f32, Edit::apply in sequence, round to bf16".
//
// Bound: memory. Per edited row it reads and writes d elements (8 B per f32 element) plus the pool vectors
// (directions and means are shared by many rows and stay in L2; replacement rows are read once). No
// shared memory, no atomics, no inter-block dependence (distinct blocks own distinct rows).
#include "common.cuh"

#define EDIT_ADD 0u
#define EDIT_ZERO 1u
#define EDIT_REPLACE 2u
#define EDIT_MEAN 3u

__device__ __forceinline__ float bf16_bits_to_f32(unsigned short h) {
    return __uint_as_float(((unsigned int)h) << 16);
}

// Round to nearest even; NaN stays NaN (quiet bit forced so that truncation cannot make it infinite).
__device__ __forceinline__ unsigned short f32_to_bf16_bits(float f) {
    const unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return (unsigned short)((u >> 16) | 0x0040u);
    }
    const unsigned int rounding = 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)((u + rounding) >> 16);
}

// Applies records [first, last) of one row to the value `v` of column `col`.
__device__ __forceinline__ float apply_records(float v, const uint4* __restrict__ records, int first,
                                               int last, const float* __restrict__ pool, int col) {
    for (int r = first; r < last; ++r) {
        const uint4 rec = records[r];
        const size_t at = (size_t)rec.w + (size_t)col;
        switch (rec.y) {
            case EDIT_ADD:
                v = __fadd_rn(v, __fmul_rn(__uint_as_float(rec.z), pool[at]));
                break;
            case EDIT_ZERO:
                v = 0.0f;
                break;
            default:  // EDIT_REPLACE, EDIT_MEAN
                v = pool[at];
                break;
        }
    }
    return v;
}

extern "C" __global__ void hook_edits_f32(float* __restrict__ x, int tokens, int d,
                                          const uint4* __restrict__ records,
                                          const unsigned int* __restrict__ segments, int n_segments,
                                          const float* __restrict__ pool) {
    const int s = blockIdx.x;
    if (s >= n_segments) {
        return;
    }
    const int first = (int)segments[s];
    const int last = (int)segments[s + 1];
    if (first >= last) {
        return;
    }
    const unsigned int row = records[first].x;
    if (row >= (unsigned int)tokens) {
        return;  // the host validates rows; never write outside the tensor
    }
    const bool overwrites = records[first].y != EDIT_ADD;
    float* xr = x + (size_t)row * (size_t)d;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        const float v = overwrites ? 0.0f : xr[c];
        xr[c] = apply_records(v, records, first, last, pool, c);
    }
}

extern "C" __global__ void hook_edits_bf16(unsigned short* __restrict__ x, int tokens, int d,
                                           const uint4* __restrict__ records,
                                           const unsigned int* __restrict__ segments, int n_segments,
                                           const float* __restrict__ pool) {
    const int s = blockIdx.x;
    if (s >= n_segments) {
        return;
    }
    const int first = (int)segments[s];
    const int last = (int)segments[s + 1];
    if (first >= last) {
        return;
    }
    const unsigned int row = records[first].x;
    if (row >= (unsigned int)tokens) {
        return;
    }
    const bool overwrites = records[first].y != EDIT_ADD;
    unsigned short* xr = x + (size_t)row * (size_t)d;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        const float v = overwrites ? 0.0f : bf16_bits_to_f32(xr[c]);
        xr[c] = f32_to_bf16_bits(apply_records(v, records, first, last, pool, c));
    }
}
