// The bf16 names scinterp's kernels use, for the CPU emulator (emu.h). Storage is the raw 16 bits.
#pragma once
#include "../emu.h"

struct __nv_bfloat16 {
    unsigned short __x;
};
struct __nv_bfloat162 {
    __nv_bfloat16 x, y;
};
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short h) { return {h}; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return {emu::f32_to_bf16_rn(f)}; }
inline __nv_bfloat16 __float2bfloat16(float f) { return {emu::f32_to_bf16_rn(f)}; }
inline float __bfloat162float(__nv_bfloat16 h) { return emu::bf16_to_f32(h.__x); }
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
    return {{emu::f32_to_bf16_rn(lo)}, {emu::f32_to_bf16_rn(hi)}};
}
inline float __low2float(__nv_bfloat162 v) { return emu::bf16_to_f32(v.x.__x); }
inline float __high2float(__nv_bfloat162 v) { return emu::bf16_to_f32(v.y.__x); }
