//! Instruction-set selection: detected once, overridable (downwards only) by `BLIP2_CPU_ISA`.

use std::sync::OnceLock;

/// A SIMD instruction set a kernel can be compiled for.
///
/// `Scalar` is portable Rust compiled for the build target's baseline (the compiler may still
/// auto-vectorise it with the baseline's SIMD, e.g. SSE2); it is always available and is the
/// reference path the others are tested against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable code, no runtime-detected features.
    Scalar,
    /// x86-64 AVX2 + FMA (+ F16C for half conversions).
    Avx2Fma,
    /// x86-64 AVX-512F+BW+VL (with AVX2, FMA and F16C, which every such CPU has).
    Avx512,
    /// aarch64 Advanced SIMD (baseline on aarch64).
    Neon,
}

impl Isa {
    /// Every variant, best first within each architecture.
    pub const ALL: [Isa; 4] = [Isa::Avx512, Isa::Avx2Fma, Isa::Neon, Isa::Scalar];

    /// The name accepted by `BLIP2_CPU_ISA`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2Fma => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
        }
    }

    /// Parses a `BLIP2_CPU_ISA` value (case-insensitive).
    pub fn parse(s: &str) -> Option<Isa> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scalar" => Some(Isa::Scalar),
            "avx2" | "avx2fma" | "avx2+fma" => Some(Isa::Avx2Fma),
            "avx512" | "avx512f" => Some(Isa::Avx512),
            "neon" => Some(Isa::Neon),
            _ => None,
        }
    }

    /// Whether this CPU can run kernels compiled for `self`.
    pub fn is_supported(self) -> bool {
        let s = supported_mask();
        s & (1 << self as u8) != 0
    }

    /// The next lower instruction set (`Scalar` stays `Scalar`).
    fn lower(self) -> Isa {
        match self {
            Isa::Avx512 => Isa::Avx2Fma,
            _ => Isa::Scalar,
        }
    }

    /// `self` if supported, otherwise the best supported set below it. Every public `*_with`
    /// kernel passes its `isa` through this, so asking for an ISA the CPU lacks is never unsafe.
    pub fn resolve(self) -> Isa {
        let mut i = self;
        while !i.is_supported() {
            i = i.lower();
        }
        i
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn detect_mask() -> u8 {
    #[allow(unused_mut)]
    let mut m = 1u8 << Isa::Scalar as u8;
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c");
        if avx2 {
            m |= 1 << Isa::Avx2Fma as u8;
            // BW/VL come with every AVX-512 core CPU (not Xeon Phi); the half-precision tails use them.
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
            {
                m |= 1 << Isa::Avx512 as u8;
            }
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("neon") {
            m |= 1 << Isa::Neon as u8;
        }
    }
    m
}

fn supported_mask() -> u8 {
    static MASK: OnceLock<u8> = OnceLock::new();
    *MASK.get_or_init(detect_mask)
}

/// The best instruction set this CPU supports, ignoring `BLIP2_CPU_ISA`.
pub fn best_isa() -> Isa {
    Isa::ALL
        .into_iter()
        .find(|i| i.is_supported())
        .unwrap_or(Isa::Scalar)
}

/// Every instruction set this CPU supports, best first (always ends with `Scalar`).
pub fn supported_isas() -> Vec<Isa> {
    Isa::ALL.into_iter().filter(|i| i.is_supported()).collect()
}

/// The instruction set the kernels use by default: [`best_isa`], or `BLIP2_CPU_ISA`
/// (`scalar|avx2|avx512|neon`) when that names a supported set. The variable can only lower
/// the choice: an unsupported or unknown value falls back to the best supported set.
/// Read once per process.
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        choose(
            std::env::var("BLIP2_CPU_ISA")
                .ok()
                .as_deref()
                .and_then(Isa::parse),
            best_isa(),
        )
    })
}

/// Whether the CPU's vendor is AMD (CPUID leaf 0 says "AuthenticAMD"). Some kernel choices
/// differ by vendor where the same instructions have other costs (docs/cpu.md). Asked once:
/// CPUID traps to the hypervisor in a VM.
pub fn cpu_is_amd() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AMD: OnceLock<bool> = OnceLock::new();
        *AMD.get_or_init(|| {
            let v = std::arch::x86_64::__cpuid(0);
            let mut id = [0u8; 12];
            id[..4].copy_from_slice(&v.ebx.to_le_bytes());
            id[4..8].copy_from_slice(&v.edx.to_le_bytes());
            id[8..].copy_from_slice(&v.ecx.to_le_bytes());
            &id == b"AuthenticAMD"
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The CPU's family on AMD (CPUID leaf 1: base family plus extended family; 0x19 is Zen 3
/// and Zen 4, 0x1A Zen 5), `None` elsewhere. Where two AMD generations measured opposite
/// costs for one choice (docs/cpu.md). Asked once.
pub fn cpu_amd_family() -> Option<u32> {
    #[cfg(target_arch = "x86_64")]
    {
        static FAMILY: OnceLock<Option<u32>> = OnceLock::new();
        *FAMILY.get_or_init(|| {
            cpu_is_amd().then(|| {
                let eax = std::arch::x86_64::__cpuid(1).eax;
                let base = (eax >> 8) & 0xF;
                if base == 0xF {
                    base + ((eax >> 20) & 0xFF)
                } else {
                    base
                }
            })
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

/// The `BLIP2_CPU_ISA` rule: a supported request wins; otherwise never enable what the CPU
/// lacks — the best supported set at or below the request.
fn choose(req: Option<Isa>, best: Isa) -> Isa {
    match req {
        Some(r) if r.is_supported() => r,
        Some(r) if best.rank() <= r.rank() => best,
        Some(r) => r.resolve(),
        None => best,
    }
}

impl Isa {
    fn rank(self) -> u8 {
        match self {
            Isa::Scalar => 0,
            Isa::Avx2Fma | Isa::Neon => 1,
            Isa::Avx512 => 2,
        }
    }
}

/// Defines `fn $name(isa: Isa, args..)` that runs the `#[inline(always)]` portable body
/// `$body(args..)` compiled once per instruction set, so the compiler auto-vectorises it with
/// that set's registers. `isa` must already be resolved (supported); the public wrappers do that.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($a:ident : $t:ty),* $(,)?) $(-> $r:ty)? = $body:path;) => {
        $(#[$m])*
        $vis fn $name(isa: $crate::Isa, $($a: $t),*) $(-> $r)? {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
            unsafe fn v_avx512($($a: $t),*) $(-> $r)? { $body($($a),*) }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn v_avx2($($a: $t),*) $(-> $r)? { $body($($a),*) }
            match isa {
                // SAFETY: callers pass a resolved ISA, so the CPU has these features.
                #[cfg(target_arch = "x86_64")]
                $crate::Isa::Avx512 => unsafe { v_avx512($($a),*) },
                #[cfg(target_arch = "x86_64")]
                $crate::Isa::Avx2Fma => unsafe { v_avx2($($a),*) },
                // NEON is the aarch64 baseline: the portable body is already compiled with it.
                _ => $body($($a),*),
            }
        }
    };
}
pub(crate) use multiversion;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_override_only_lowers() {
        let best = best_isa();
        assert_eq!(choose(None, best), best);
        assert_eq!(choose(Some(Isa::Scalar), best), Isa::Scalar);
        for req in Isa::ALL {
            let got = choose(Some(req), best);
            assert!(got.is_supported(), "{req} -> {got}");
            assert!(got.rank() <= best.rank());
            if req.is_supported() {
                assert_eq!(got, req);
            }
        }
    }

    /// The family from CPUID matches what Linux reports ("cpu family" in /proc/cpuinfo),
    /// and there is one exactly on AMD.
    #[test]
    fn amd_family_matches_the_kernel() {
        let family = cpu_amd_family();
        assert_eq!(family.is_some(), cpu_is_amd());
        let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
            return;
        };
        let linux: Option<u32> = info
            .lines()
            .find(|l| l.starts_with("cpu family"))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|v| v.trim().parse().ok());
        if let (Some(f), Some(l)) = (family, linux) {
            assert_eq!(f, l);
        }
    }
}
