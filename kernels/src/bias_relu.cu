// Bias + ReLU epilogue after a GEMM: y[r, c] = max(x[r, c] + bias[c], 0), row-major [rows, cols], f32, in
// place allowed (x == y). Grid-stride loop over all elements.
//
// Bound: memory. Per element it reads x (4 B) and writes y (4 B) = 8 B, bias cached; 2 flops per element,
// 0.25 flop/B. cuBLASLt's RELU_BIAS epilogue does this inside the GEMM; this kernel is the fallback when
// cuBLASLt is absent or the GEMM is an in-house kernel.
#include "common.cuh"

extern "C" __global__ void bias_relu_f32(const float* x, const float* __restrict__ bias, float* y, int rows,
                                         int cols) {
    const size_t n = (size_t)rows * (size_t)cols;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float v = x[i] + bias[i % (size_t)cols];
        y[i] = v > 0.0f ? v : 0.0f;
    }
}
