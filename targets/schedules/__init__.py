"""slimcc's own CPU schedules for TVM 0.27 Relax (x86 AVX-512/AVX2, aarch64 NEON).

TVM 0.27 legalizes conv2d, pooling and element-wise ops into naive loops and ships no CPU
schedules for them. slimcc closes that gap in two steps, both in the compile pipeline and in
tuning (so tuned and untuned builds see the same kernels):

1. before legalization, `pack_weights.pack_conv_weights` turns every float conv2d with a constant
   weight into slimcc's own TIR conv whose weight is re-laid out at compile time for the
   target's vector width (`isa.CpuVector`);
2. after fusion, `apply.apply_cpu_schedules` schedules every kernel no tuning record covers:
   conv (register-blocked, vectorized over output channels, fused bias/activation/residual
   epilogue), depthwise conv, element-wise and pooling kernels, and TVM's own dlight rules for
   GEMV and reductions.
"""
