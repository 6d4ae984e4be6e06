// Causal tracing on the GPU (kernels part; CPU reference: `scinterp_engine::trace`).
//
// trace_ablate_f32: replicated ablation. From the clean residual of ONE packed batch of cells, clean
// [tokens, d], and B ablations (source feature f_b, rows r with activations a_f(r) > 0), write B edited
// copies out[b·tokens + t, :] = clean[t, :] − Σ_{entries of b at row t} a · W_dec[f_b, :]: the
// AddDirection ablation with scales −a_f(row) at the rows where f fires, which keeps the SAE's error term
// (trace.rs: `*x -= v * w`). Each ablation's entries are sorted by row on the host (stable, so a repeated
// row keeps its order); a block owns one output row (t, b), finds its entries by binary search and
// applies them in order. An ablation with no entries yields a clean copy (the "clean row in the same
// batch" control). The subtraction is __fsub_rn(v, __fmul_rn(a, w)), no FMA contraction, so every copy
// equals the CPU tracer's state bit for bit.
// Bound: memory, 8 B per output element (read clean, L2-resident after the first copy, and write out);
// W_dec rows are gathered for the edited rows only.
//
// trace_reduce: per-(source slot, target latent) statistics over cells, the math of
// `TraceAccumulator::add_cell`. Input per (copy k, cell c): the sums over the ablation's active positions
// of the clean and the ablated target codes, clean_sum / ablated_sum [copies, cells, F] (f32), the number
// of active positions n_active [copies, cells] (0: the source did not fire in that cell, no ablation) and
// the sign-flip hash of (feature, cell tokens) [copies, cells]. The cell's observation is
// x = (ablated_sum − clean_sum) / n in f64, and only x ≠ 0 is pushed (the zeros are implicit).
// One thread owns one (k, g) edge: it loads its state, pushes the cells in order with Welford's update in
// f64 (n, mean, M2, as `RunningStats::push`, each operation explicitly rounded, no FMA contraction), and
// counts signs; for each of the P permutations it adds s·x to the flipped sum and counts the flipped
// signs. No atomics, no reduction tree: every edge's values are pushed in cell order within a launch and
// in stream order across launches, the same order as the CPU tracer, so results are bitwise
// reproducible and equal the CPU's Welford for equal x. State layout: [copies, F] for the edge sums and
// [copies, P, F] for the null, so that neighbouring threads (neighbouring g) touch neighbouring words.
// Bound: memory (reads 8 B per (k, c, g); the null costs 16 B of read-modify-write per permutation per
// non-zero observation only). With `slots` (not null), input copy k updates the state of edge slot
// slots[k] instead of k: the resident tracer reduces the few source features ablated in one cell into
// the statistics of every traced feature; a launch's slots are distinct, so no two threads share an
// edge.
//
// trace_gather_rows_f32: out[i, :] = src[rows[i], :], the SAE positions of the tail's captures that the
// target SAEs encode. A copy, exact.
//
// trace_code_sums: per segment s (one ablation's clean or ablated rows), the dense sum over its rows
// of their top-k codes, out[s, g] = Σ_{r in segment s} Σ_j [idx[r, j] = g]·val[r, j], in f32, the rows
// in order. One block owns one segment: it zeroes the output row, then adds row after row (a row's k
// indices are distinct, so its k threads write distinct words), with a barrier between rows. No
// atomics: the sums are the same bits on every run.
// Bound: memory (writes F floats per segment; reads 8 B per code).
#include "common.cuh"

extern "C" __global__ void trace_ablate_f32(const float* __restrict__ clean, int tokens, int d,
                                            const float* __restrict__ w_dec, int n_features,
                                            const unsigned int* __restrict__ features,
                                            const unsigned int* __restrict__ starts,
                                            const unsigned int* __restrict__ rows,
                                            const float* __restrict__ acts, int copies,
                                            float* __restrict__ out) {
    const int t = blockIdx.x;
    const int b = blockIdx.y;
    if (t >= tokens || b >= copies) {
        return;
    }
    const unsigned int f = features[b];
    int lo = (int)starts[b];
    int hi = (int)starts[b + 1];
    // lower_bound of t in the sorted rows of ablation b
    while (lo < hi) {
        const int mid = lo + ((hi - lo) >> 1);
        if (rows[mid] < (unsigned int)t) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    int end = lo;
    const int stop = (int)starts[b + 1];
    while (end < stop && rows[end] == (unsigned int)t) {
        ++end;
    }
    if (f >= (unsigned int)n_features) {
        end = lo;  // the host validates features; never read outside W_dec
    }
    const float* src = clean + (size_t)t * (size_t)d;
    const float* w = w_dec + (size_t)f * (size_t)d;
    float* dst = out + ((size_t)b * (size_t)tokens + (size_t)t) * (size_t)d;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        float v = src[c];
        for (int e = lo; e < end; ++e) {
            v = __fsub_rn(v, __fmul_rn(acts[e], w[c]));
        }
        dst[c] = v;
    }
}

__device__ __forceinline__ unsigned long long splitmix64(unsigned long long x) {
    unsigned long long z = x + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

extern "C" __global__ void trace_reduce(const float* __restrict__ clean_sum,
                                        const float* __restrict__ ablated_sum,
                                        const unsigned int* __restrict__ n_active,
                                        const unsigned long long* __restrict__ sign_hash, int copies,
                                        int cells, int n_targets, int permutations,
                                        double* __restrict__ mean, double* __restrict__ m2,
                                        unsigned int* __restrict__ positive,
                                        unsigned int* __restrict__ negative,
                                        double* __restrict__ null_sum,
                                        unsigned int* __restrict__ null_positive,
                                        unsigned int* __restrict__ null_negative,
                                        unsigned int* __restrict__ cells_active,
                                        const unsigned int* __restrict__ slots) {
    const int g = blockIdx.x * blockDim.x + threadIdx.x;
    const int k = blockIdx.y;
    if (k >= copies || g >= n_targets) {
        return;
    }
    // The state slot of input copy k (the host checks slots against the state's size).
    const size_t slot = slots ? (size_t)slots[k] : (size_t)k;
    const size_t F = (size_t)n_targets;
    const size_t edge = slot * F + (size_t)g;
    double mu = mean[edge];
    double ss = m2[edge];
    unsigned int pos = positive[edge];
    unsigned int neg = negative[edge];
    unsigned int active = 0;
    for (int c = 0; c < cells; ++c) {
        const size_t kc = (size_t)k * (size_t)cells + (size_t)c;
        const unsigned int n = n_active[kc];
        if (n == 0) {
            continue;
        }
        ++active;
        const double a = (double)ablated_sum[kc * F + (size_t)g];
        const double b = (double)clean_sum[kc * F + (size_t)g];
        const double x = __ddiv_rn(__dsub_rn(a, b), (double)n);
        if (x == 0.0) {
            continue;
        }
        // RunningStats::push: n += 1; delta = x − mean; mean += delta / n; m2 += delta · (x − mean)
        const double count = (double)(pos + neg + 1u);
        const double delta = __dsub_rn(x, mu);
        mu = __dadd_rn(mu, __ddiv_rn(delta, count));
        ss = __dadd_rn(ss, __dmul_rn(delta, __dsub_rn(x, mu)));
        if (x > 0.0) {
            ++pos;
        } else {
            ++neg;  // negative, or NaN (as on the CPU: not > 0)
        }
        if (permutations > 0) {
            const unsigned long long h = sign_hash[kc];
            for (int p = 0; p < permutations; ++p) {
                const bool plus =
                    (splitmix64(h ^ ((unsigned long long)p * 0x9E3779B97F4A7C15ull)) >> 63) == 0ull;
                const double sx = plus ? x : -x;
                const size_t at = (slot * (size_t)permutations + (size_t)p) * F + (size_t)g;
                null_sum[at] = __dadd_rn(null_sum[at], sx);
                if (sx > 0.0) {
                    null_positive[at] += 1u;
                } else {
                    null_negative[at] += 1u;
                }
            }
        }
    }
    mean[edge] = mu;
    m2[edge] = ss;
    positive[edge] = pos;
    negative[edge] = neg;
    if (g == 0) {
        cells_active[slot] += active;
    }
}

extern "C" __global__ void trace_gather_rows_f32(const float* __restrict__ src, int src_rows, int d,
                                                 const unsigned int* __restrict__ rows, int n,
                                                 float* __restrict__ out) {
    const int i = blockIdx.x;
    if (i >= n) {
        return;
    }
    const unsigned int r = rows[i];
    float* dst = out + (size_t)i * (size_t)d;
    if (r >= (unsigned int)src_rows) {
        return;  // the host validates rows; never read outside src
    }
    const float* from = src + (size_t)r * (size_t)d;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        dst[c] = from[c];
    }
}

extern "C" __global__ void trace_code_sums(const unsigned int* __restrict__ idx,
                                           const float* __restrict__ val, int k,
                                           const unsigned int* __restrict__ starts, int segments,
                                           int n_targets, float* __restrict__ out) {
    const int s = blockIdx.x;
    if (s >= segments) {
        return;  // uniform per block: no lane of a live block leaves before a barrier
    }
    float* row_out = out + (size_t)s * (size_t)n_targets;
    for (int g = threadIdx.x; g < n_targets; g += blockDim.x) {
        row_out[g] = 0.0f;
    }
    __syncthreads();
    const unsigned int end = starts[s + 1];
    for (unsigned int r = starts[s]; r < end; ++r) {
        for (int j = threadIdx.x; j < k; j += blockDim.x) {
            const size_t at = (size_t)r * (size_t)k + (size_t)j;
            const unsigned int g = idx[at];
            if (g < (unsigned int)n_targets) {
                row_out[g] = __fadd_rn(row_out[g], val[at]);
            }
        }
        // The next row may name a latent this row's thread j' < j wrote: finish the row first.
        __syncthreads();
    }
}
