// Shared device helpers of scinterp's kernels. NVRTC-only: no host code, no CUDA runtime headers needed.
#pragma once

// Dynamic shared memory (the launch's byte count) as an array `name` of `type`. The CPU emulator
// (kernels/emu, which defines SCINTERP_EMU) maps it to the launch's own allocation.
#ifdef SCINTERP_EMU
#define SCINTERP_DYNAMIC_SHARED(type, name) static type*& name = emu::dynamic_shared<type>()
#else
#define SCINTERP_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

// Full-warp butterfly sum: every lane ends with the warp total (no shared memory needed).
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    }
    return v;
}

// Block-wide sum for blockDim.x a multiple of 32 and at most 1024. `scratch` holds 32 floats in shared
// memory; every thread gets the total. Two warp reductions, one barrier pair.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int n_warps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) {
        scratch[warp] = v;
    }
    __syncthreads();
    v = lane < n_warps ? scratch[lane] : 0.0f;
    return warp_sum(v);
}
