// Sigmoid of a logit s = scale * (q . k) + bias, from the raw dot product `qk`.
// Both forms fold the scale and bias into one FMA whose coefficients are computed once per tile.
#pragma once
#include "ptx.cuh"

namespace sa {

/// Coefficients for `sigmoid_from_qk`: the logit is turned into the argument of the hardware
/// function with one FMA, `qk * mul + add`.
struct SigmoidCoef {
    float mul;
    float add;
};

#if defined(SA_ACCURATE)
/// accurate: 1 / (1 + 2^(-s log2 e)) with ex2.approx and rcp.approx (2 MUFU, a few ulp relative
/// error over the whole range; s -> -inf gives +0, s -> +inf gives 1).
__device__ __forceinline__ SigmoidCoef sigmoid_coef(float scale, float bias) {
    const float log2e = 1.4426950408889634f;
    return SigmoidCoef{-scale * log2e, -bias * log2e};
}
__device__ __forceinline__ float sigmoid_from_qk(float qk, SigmoidCoef c) {
    return rcp_approx(1.0f + ex2_approx(fmaf(qk, c.mul, c.add)));
}
#else
/// fast: 0.5 * tanh(0.5 s) + 0.5 with one tanh.approx (1 MUFU). PTX bounds tanh.approx by 2^-11
/// relative, so P within ~2.5e-4; measured on an H200 (kernels/dev/sigmoid_error.py), P is
/// within 3.9e-6 for every logit in [-30, 30] and the error averaged over 0.5-wide logit
/// buckets stays below 6e-7. Relative error grows for very negative logits (see the crate docs).
__device__ __forceinline__ SigmoidCoef sigmoid_coef(float scale, float bias) {
    return SigmoidCoef{0.5f * scale, 0.5f * bias};
}
__device__ __forceinline__ float sigmoid_from_qk(float qk, SigmoidCoef c) {
    return fmaf(0.5f, tanh_approx(fmaf(qk, c.mul, c.add)), 0.5f);
}
#endif

}  // namespace sa
