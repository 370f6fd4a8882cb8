//! Quantized weights (`q8`, `q4`) on AVX512-BF16 for more rows than the integer kernels
//! take, on CPUs without AMX (AMD Zen 4/5): W is dequantized per call, one pair of 16-row
//! blocks and one chunk of K at a time, into the packed bf16 layout in a per-thread scratch
//! that every row tile of A then reads, and A is rounded to bf16 once: the `vdpbf16ps`
//! register tiles of the bf16 weights (`x86_dpbf16.rs`) on the dequantized values.
//!
//! The same operands as the AMX path (`amx_quant.rs`, whose dequantization it shares: a
//! B tile there is a chunk of the packed layout here), so the same precision: d·q exact in
//! f32, rounded once to bf16; A rounded to bf16; products exact in f32, f32 sums. Each
//! product within 2·2^-8 + 2^-16 of |a·w| of the f32 path's on the same quantized W.
//!
//! Why it pays: without it these CPUs dequantize W into f32 blocks for the f32 GEMM
//! (4 bytes written and read per weight and call, and half the products per instruction of
//! `vdpbf16ps`).

use crate::gemm::{linear_trivial, resolve_threads};
use crate::quant::QMatrix;

/// Whether [`matmul_q_dpbf16_with`] can run on this CPU: AVX512-BF16 with F/BW/VL
/// ([`crate::dpbf16_available`], which `BLIP2_CPU_DPBF16=0` turns off) and AVX512-VBMI for
/// the byte permutes of the dequantization (Zen 4 and 5 have both).
pub fn quant_dpbf16_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ON.get_or_init(|| {
            crate::x86_dpbf16::dpbf16_available()
                && is_x86_feature_detected!("avx512vbmi")
                && is_x86_feature_detected!("avx2")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Up to this many rows `matmul_q` takes this path on any CPU without AMX that can run it
/// (the Intel machine here, AMX off, OPT-2.7B's fc1 in q8, 2026-12-07: 0.78× the
/// dequantized f32 path's time at 17 rows, 0.90× at 33, 0.97× at 64); above, only where
/// `vdpbf16ps` out-runs the FMAs ([`dpbf16_doubles_fma`]). Intel's runs on one of the two FMA
/// ports, so at 257 rows, where the f32 GEMM is bound by its FMAs, it took 1.03–1.08× (the
/// whole ViT 1.12×).
pub const DPBF16_ANY_MAX_M: usize = 64;

/// Whether this CPU's `vdpbf16ps` does twice the products of an f32 FMA per cycle: AMD's
/// (Zen 4/5 issue both at one 512-bit instruction a cycle; their bf16 tiles ran the ViT's
/// layers in 0.41× the f32 weights' time, docs/performance.md). Intel's runs on one of the
/// two ports that run FMAs, so the products per cycle are the same.
pub fn dpbf16_doubles_fma() -> bool {
    crate::isa::cpu_is_amd()
}

/// C[m×n] = A[m×k]·Wᵀ (+ bias) for a quantized W on AVX512-BF16, whatever `m` and whether
/// or not the CPU has AMX, over `threads` tasks (0 = the rayon pool, 1 = the calling
/// thread). Returns false, writing nothing, where the CPU cannot run it
/// ([`quant_dpbf16_available`]).
///
/// Preconditions (asserted): as [`crate::matmul_q`].
pub fn matmul_q_dpbf16_with(
    threads: usize,
    a: &[f32],
    w: &QMatrix,
    bias: Option<&[f32]>,
    c: &mut [f32],
    m: usize,
) -> bool {
    if !quant_dpbf16_available() {
        return false;
    }
    let (n, k) = (w.rows, w.cols);
    if linear_trivial("matmul_q_dpbf16", w.is_consistent(), a, bias, c, m, k, n) {
        return true;
    }
    #[cfg(target_arch = "x86_64")]
    {
        use crate::amx_quant::x86::{dequant_pair, scratch_len};
        let threads = resolve_threads(threads);
        crate::bf16::dpbf16_rounded(
            crate::isa(),
            threads,
            a,
            m,
            k,
            n,
            bias,
            c,
            &|pair, k0, len, scratch| {
                let steps = len / 32;
                let need = scratch_len(steps);
                if scratch.len() < need {
                    scratch.resize_for_overwrite(need);
                }
                // SAFETY: quant_dpbf16_available() includes AVX512-F/BW/VL/BF16/VBMI and
                // AVX2; the walk asks for pairs below ⌈n/32⌉ and chunks inside the padded
                // K, whose 32-value steps are W's quantization blocks; the scratch holds
                // both blocks' pairs and scales.
                unsafe { dequant_pair(w, pair, k0 / 32, steps, &mut scratch[..need]) };
                (scratch.as_ptr(), steps * 512)
            },
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (threads, resolve_threads);
    true
}
