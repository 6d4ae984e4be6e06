// The f16 names scinterp's kernels use, for the CPU emulator (emu.h). Storage is the raw 16 bits.
#pragma once
#include "../emu.h"

struct __half {
    unsigned short __x;
};
inline __half __float2half_rn(float f) { return {emu::f32_to_f16_rn(f)}; }
inline __half __float2half(float f) { return {emu::f32_to_f16_rn(f)}; }
inline float __half2float(__half h) { return emu::f16_to_f32(h.__x); }
inline __half __ushort_as_half(unsigned short h) { return {h}; }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
