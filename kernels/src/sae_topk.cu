// Row-wise top-k of a TopK SAE's pre-activations (the encoder GEMM output, b_enc already added):
// pre [rows, n] row-major f32 -> indices [rows, k] u32 and values [rows, k] f32, per row sorted by value
// descending, ties to the lower index, ReLU applied to the values. Exactly the CPU's selection
// (`scinterp_engine::sae::top_k_rows` / `top_k_of_row`):
//   - -0.0 and +0.0 compare equal (so the lower index wins between them);
//   - NaN is never chosen while numbers remain; a row with fewer than k numbers is padded with its NaN
//     positions in ascending order, value 0 (the CPU pads with the lowest unused indices, which are
//     exactly those);
// The masked variant (AuxK) considers only latents with mask[i] != 0, which equals the CPU's top-k over
// the dead latents compacted in index order. When fewer than k latents are eligible, the remaining slots
// hold index 0xFFFFFFFF and value 0 (every SAE kernel skips such an index); the trainer passes
// k_aux = min(aux_k, dead) so this does not arise there.
//
// Algorithm (one block per row, blockDim a multiple of 32, at most 1024 (the wrapper uses 256 or 512);
// k <= 4096):
//   1. Map each value to an order-preserving u32 key (NaN -> 0, below every number; -0 -> +0).
//   2. Radix select, 8 bits per pass from the top: histogram the digit of the keys that still match the
//      prefix (warp-aggregated shared atomics), then one warp scans the 256 bins from the top to find the
//      digit holding the k-th largest key. Stop early once that digit's bin holds exactly the number of
//      keys still needed (then every key of the bin is taken and no tie-breaking is needed); at most 4
//      passes.
//   3. Gather, in index order (block-wide ballot scan per chunk of blockDim): every key above the
//      threshold prefix, and the first `need` keys equal to it (lowest indices: the CPU's tie rule).
//   4. Bitonic sort of the k (key, ~index) pairs as u64 in shared memory, descending: value descending,
//      index ascending. Shared memory: 8 B x next_pow2(k) (dynamic) + ~1.2 KB static.
//
// Bound: memory/L1. Per row it reads the row 2-5 times (4 B x n each; a 4,608-wide row is 18 KB, which
// stays in L1 between passes, so HBM sees ~one read) and writes 8 B x k. At n = 4,608 the HBM floor is
// ~18 KB per row (~0.26 M rows/ms at 4.8 TB/s); shared-atomic histogramming and the block barriers of the
// passes and of the sort (O(log^2 k)) add latency, hidden by running several blocks per SM.
#include "common.cuh"

#define SAE_TOPK_NO_INDEX 0xFFFFFFFFu

// Order-preserving map of a float to u32: larger float -> larger key. NaN -> 0; -0 -> the key of +0.
__device__ __forceinline__ unsigned int topk_key(float v) {
    unsigned int b = __float_as_uint(v);
    if ((b & 0x7FFFFFFFu) > 0x7F800000u) {
        return 0u;  // NaN
    }
    if ((b & 0x7FFFFFFFu) == 0u) {
        b = 0u;  // -0 -> +0
    }
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// Inverse of topk_key followed by the ReLU; key 0 (NaN or padding) -> 0.
__device__ __forceinline__ float topk_relu_value(unsigned int key) {
    if (key == 0u) {
        return 0.0f;
    }
    const unsigned int b = (key & 0x80000000u) ? (key ^ 0x80000000u) : ~key;
    const float v = __uint_as_float(b);
    return v > 0.0f ? v : 0.0f;
}

template <bool MASKED>
__device__ __forceinline__ void topk_row(const float* __restrict__ pre, const unsigned char* __restrict__ mask,
                                         unsigned int* __restrict__ out_idx, float* __restrict__ out_val,
                                         int n, int k, int sort_len) {
    SCINTERP_DYNAMIC_SHARED(unsigned long long, sort_buf);  // sort_len entries: (key << 32) | ~index
    __shared__ unsigned int hist[256];
    __shared__ unsigned int warp_count[32];
    __shared__ unsigned int s_digit, s_need, s_bucket, s_all, s_gt;

    const int tid = threadIdx.x;
    const int nt = blockDim.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int n_warps = nt >> 5;

    unsigned int prefix = 0u;  // threshold digits found so far
    unsigned int pmask = 0u;   // which key bits the prefix fixes
    unsigned int need = (unsigned int)k;  // keys still to take among those matching the prefix
    unsigned int n_take = (unsigned int)k;  // slots filled with real latents

    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int b = tid; b < 256; b += nt) {
            hist[b] = 0u;
        }
        __syncthreads();
        // Uniform trip count, so that every lane takes part in __match_any_sync.
        for (int base = 0; base < n; base += nt) {
            const int i = base + tid;
            unsigned int digit = 256u;  // "no count"
            if (i < n && (!MASKED || mask[i] != 0)) {
                const unsigned int key = topk_key(pre[i]);
                if ((key & pmask) == prefix) {
                    digit = (key >> shift) & 255u;
                }
            }
            const unsigned int peers = __match_any_sync(0xFFFFFFFFu, digit);
            if (digit < 256u && lane == __ffs(peers) - 1) {
                atomicAdd(&hist[digit], (unsigned int)__popc(peers));
            }
        }
        __syncthreads();
        if (warp == 0) {
            // Lane l owns the 8 digits 255 - 8l down to 248 - 8l (scan from the largest keys).
            unsigned int c[8];
            unsigned int local = 0u;
#pragma unroll
            for (int t = 0; t < 8; ++t) {
                c[t] = hist[255 - 8 * lane - t];
                local += c[t];
            }
            unsigned int incl = local;
#pragma unroll
            for (int off = 1; off < 32; off <<= 1) {
                const unsigned int y = __shfl_up_sync(0xFFFFFFFFu, incl, off);
                if (lane >= off) {
                    incl += y;
                }
            }
            const unsigned int excl = incl - local;
            const unsigned int total = __shfl_sync(0xFFFFFFFFu, incl, 31);
            if (total < need) {
                // Fewer eligible keys than k (only possible on the first pass): take them all.
                if (lane == 0) {
                    s_all = 1u;
                    s_need = total;
                }
            } else if (excl < need && need <= incl) {
                unsigned int cum = excl;
#pragma unroll
                for (int t = 0; t < 8; ++t) {
                    if (cum + c[t] >= need) {
                        s_all = 0u;
                        s_digit = (unsigned int)(255 - 8 * lane - t);
                        s_need = need - cum;
                        s_bucket = c[t];
                        break;
                    }
                    cum += c[t];
                }
            }
        }
        __syncthreads();
        if (s_all) {
            // prefix = pmask = 0: every eligible key "equals" the prefix and all of them are taken.
            need = s_need;
            n_take = s_need;
            break;
        }
        prefix |= s_digit << shift;
        pmask |= 255u << shift;
        need = s_need;
        if (s_bucket == need) {
            break;  // the whole bucket is taken: no tie to break
        }
        // No barrier needed here: the next writes of hist/s_* come after the next pass's barriers, and
        // every thread has read s_* by then.
    }

    // Gather in index order. Keys above the prefix: any slot in [0, n_gt). Keys equal to it: the first
    // `need` in index order, slots n_gt + rank.
    const unsigned int n_gt = n_take - need;
    if (tid == 0) {
        s_gt = 0u;
    }
    __syncthreads();
    unsigned int eq_before = 0u;  // keys equal to the prefix in earlier chunks
    for (int base = 0; base < n; base += nt) {
        const int i = base + tid;
        bool eq = false;
        unsigned int key = 0u;
        if (i < n && (!MASKED || mask[i] != 0)) {
            key = topk_key(pre[i]);
            const unsigned int m = key & pmask;
            if (m > prefix) {
                const unsigned int slot = atomicAdd(&s_gt, 1u);
                sort_buf[slot] = ((unsigned long long)key << 32) | (unsigned long long)(~(unsigned int)i);
            } else if (m == prefix) {
                eq = true;
            }
        }
        const unsigned int ballot = __ballot_sync(0xFFFFFFFFu, eq);
        if (lane == 0) {
            warp_count[warp] = (unsigned int)__popc(ballot);
        }
        __syncthreads();
        unsigned int offset = 0u, chunk = 0u;
        for (int w = 0; w < n_warps; ++w) {
            const unsigned int cw = warp_count[w];
            offset += w < warp ? cw : 0u;
            chunk += cw;
        }
        if (eq) {
            const unsigned int rank = eq_before + offset + (unsigned int)__popc(ballot & ((1u << lane) - 1u));
            if (rank < need) {
                sort_buf[n_gt + rank] = ((unsigned long long)key << 32) | (unsigned long long)(~(unsigned int)i);
            }
        }
        eq_before += chunk;
        const bool done = eq_before >= need && s_gt == n_gt;  // uniform: read between two barriers
        __syncthreads();  // warp_count is rewritten by the next chunk
        if (done) {
            break;
        }
    }
    // Padding (fewer eligible than k, and the power-of-two tail of the sort): key 0, index 0xFFFFFFFF,
    // which sorts after every real entry (NaN entries have key 0 and a smaller index).
    for (int j = (int)n_take + tid; j < sort_len; j += nt) {
        sort_buf[j] = 0ull;
    }
    __syncthreads();

    // Bitonic sort, descending over the whole buffer.
    for (int size = 2; size <= sort_len; size <<= 1) {
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            for (int i = tid; i < sort_len; i += nt) {
                const int j = i ^ stride;
                if (j > i) {
                    const unsigned long long a = sort_buf[i];
                    const unsigned long long b = sort_buf[j];
                    const bool descending = (i & size) == 0;
                    if (descending ? (a < b) : (a > b)) {
                        sort_buf[i] = b;
                        sort_buf[j] = a;
                    }
                }
            }
            __syncthreads();
        }
    }

    for (int j = tid; j < k; j += nt) {
        const unsigned long long e = sort_buf[j];
        out_idx[j] = ~(unsigned int)(e & 0xFFFFFFFFull);
        out_val[j] = topk_relu_value((unsigned int)(e >> 32));
    }
}

// sort_len: a power of two >= k (dynamic shared memory: 8 B x sort_len).
extern "C" __global__ void sae_topk_f32(const float* __restrict__ pre, unsigned int* __restrict__ indices,
                                        float* __restrict__ values, int rows, int n, int k, int sort_len) {
    const int row = blockIdx.x;
    if (row >= rows) {
        return;
    }
    topk_row<false>(pre + (size_t)row * (size_t)n, nullptr, indices + (size_t)row * (size_t)k,
                    values + (size_t)row * (size_t)k, n, k, sort_len);
}

// AuxK: as sae_topk_f32 over the latents with mask[i] != 0 only (mask: n bytes, shared by all rows).
extern "C" __global__ void sae_topk_masked_f32(const float* __restrict__ pre,
                                               const unsigned char* __restrict__ mask,
                                               unsigned int* __restrict__ indices, float* __restrict__ values,
                                               int rows, int n, int k, int sort_len) {
    const int row = blockIdx.x;
    if (row >= rows) {
        return;
    }
    topk_row<true>(pre + (size_t)row * (size_t)n, mask, indices + (size_t)row * (size_t)k,
                   values + (size_t)row * (size_t)k, n, k, sort_len);
}
