// Element-wise precision conversions: weights to bf16/f16 once at load, activations back to f32 for the
// stores and the CPU-side statistics. Round-to-nearest-even, as `half::bf16::from_f32` on the CPU.
//
// Bound: memory (6 B moved per element, one instruction of work); grid-stride loops.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

extern "C" __global__ void f32_to_bf16(const float* __restrict__ src, __nv_bfloat16* __restrict__ dst,
                                       unsigned long long n) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        dst[i] = __float2bfloat16_rn(src[i]);
    }
}

extern "C" __global__ void bf16_to_f32(const __nv_bfloat16* __restrict__ src, float* __restrict__ dst,
                                       unsigned long long n) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        dst[i] = __bfloat162float(src[i]);
    }
}

extern "C" __global__ void f32_to_f16(const float* __restrict__ src, __half* __restrict__ dst,
                                      unsigned long long n) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        dst[i] = __float2half_rn(src[i]);
    }
}

extern "C" __global__ void f16_to_f32(const __half* __restrict__ src, float* __restrict__ dst,
                                      unsigned long long n) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        dst[i] = __half2float(src[i]);
    }
}
