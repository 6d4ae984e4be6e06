// Small element-wise pieces of the GPU SAE trainer, each the exact arithmetic of the CPU trainer
// (engine/src/sae/train.rs): centring the batch, the Adam update, and the f64 sums of squares behind the
// reported losses.
//
// Bound: memory, every one (a few flops per element read). Grid-stride loops over flat arrays.

// out[r, c] = x[r, c] - v[c]: the CPU trainer's `xc` (x − b_dec), the encoder GEMM's input.
extern "C" __global__ void sub_row_vector_f32(const float* __restrict__ x, const float* __restrict__ v,
                                              float* __restrict__ out, unsigned long long rows,
                                              int cols) {
    const unsigned long long n = rows * (unsigned long long)cols;
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        out[i] = x[i] - v[i % (unsigned long long)cols];
    }
}

// Adam with bias correction, as `TrainState::adam`: m = b1·m + (1−b1)·g; v = b2·v + (1−b2)·g²;
// p −= lr · (m·c1) / (sqrt(v·c2) + eps), with c1 = 1/(1−b1^t) and c2 = 1/(1−b2^t) computed on the host.
// Written without fused multiply-adds where the CPU has none (__fmul_rn/__fadd_rn), so that one step
// matches the CPU bit for bit given equal gradients.
extern "C" __global__ void adam_f32(float* __restrict__ p, float* __restrict__ m, float* __restrict__ v,
                                    const float* __restrict__ g, unsigned long long n, float lr, float b1,
                                    float b2, float c1, float c2, float eps) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        const float gi = g[i];
        const float mi = __fadd_rn(__fmul_rn(b1, m[i]), __fmul_rn(1.0f - b1, gi));
        const float vi = __fadd_rn(__fmul_rn(b2, v[i]), __fmul_rn(__fmul_rn(1.0f - b2, gi), gi));
        m[i] = mi;
        v[i] = vi;
        const float step = __fdiv_rn(__fmul_rn(lr, __fmul_rn(mi, c1)), __fadd_rn(sqrtf(__fmul_rn(vi, c2)), eps));
        p[i] = __fsub_rn(p[i], step);
    }
}

// partial[blockIdx.x] = Σ x[i]² (in f64) over the block's grid-stride share; the host adds the
// partials (gridDim.x of them) in order, so the total does not depend on scheduling.
extern "C" __global__ void sum_squares_f64(const float* __restrict__ x, unsigned long long n,
                                           double* __restrict__ partial) {
    __shared__ double scratch[256];
    double s = 0.0;
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        const double xi = (double)x[i];
        s += xi * xi;
    }
    scratch[threadIdx.x] = s;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half >>= 1) {
        if (threadIdx.x < half) {
            scratch[threadIdx.x] += scratch[threadIdx.x + half];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        partial[blockIdx.x] = scratch[0];
    }
}
