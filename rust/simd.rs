//! Run-time CPU feature detection, shared by every kernel: each kernel has a scalar reference
//! path (the test oracle) and SIMD paths chosen once per process from what the CPU reports.
//!
//! Soundness: [`Isa`] is a plain enum that any caller can name, so it proves nothing about the CPU.
//! Every safe function that takes an `Isa` and dispatches to `#[target_feature]` code passes it
//! through [`clamp`] first; this module is the only place that runs CPU detection and reads
//! `TOKVEC_FORCE_SCALAR`, so forcing scalar code applies to every kernel and every list of levels.
//!
//! The levels of both architectures share one order (`Scalar < Neon < Avx2 < Avx512`); a CPU only
//! ever reports levels of its own architecture, and [`clamp`] lowers a level of the other one to
//! `Scalar` (an x86-64 CPU asked for `Neon`) or to the best native level below it (an aarch64 CPU
//! asked for `Avx2` runs `Neon`), so every kernel's dispatch sees a level it can run.

use std::sync::OnceLock;

/// The instruction-set level a kernel may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Portable Rust, no explicit intrinsics. The reference for tests.
    Scalar,
    /// aarch64 Advanced SIMD (NEON, part of the base architecture; plus optional dotprod, queried
    /// separately).
    // Each architecture's build names the other's levels (so that any level is safe to pass) but
    // never detects them.
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    Neon,
    /// x86-64 AVX2 + FMA + F16C.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx2,
    /// x86-64 AVX-512 F/BW/VL (plus optional BF16/VNNI/VPOPCNTDQ, queried separately).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx512,
}

impl Isa {
    /// Whether the level belongs to the architecture this crate was compiled for.
    const fn native(self) -> bool {
        match self {
            Isa::Scalar => true,
            Isa::Neon => cfg!(target_arch = "aarch64"),
            Isa::Avx2 | Isa::Avx512 => cfg!(target_arch = "x86_64"),
        }
    }
}

/// Optional extensions, detected at run time: AVX-512 ones (x86-64) and dotprod (aarch64).
#[derive(Debug, Clone, Copy, Default)]
pub struct Extensions {
    /// `vdpbf16ps` (AVX512_BF16).
    pub bf16: bool,
    /// `vpdpbusd` (AVX512_VNNI).
    pub vnni: bool,
    /// `vpopcntq` (AVX512_VPOPCNTDQ).
    pub vpopcntdq: bool,
    /// `sdot`/`udot` (aarch64 FEAT_DotProd).
    pub dotprod: bool,
}

/// The environment variable that forces the scalar paths (read once, at the first kernel call).
pub const FORCE_SCALAR_VAR: &str = "TOKVEC_FORCE_SCALAR";

/// Detection given whether scalar code is forced (split out of [`isa`] so that both outcomes are
/// testable in one process: the environment is read only once).
fn detect_with(force_scalar: bool) -> (Isa, Extensions) {
    if force_scalar {
        return (Isa::Scalar, Extensions::default());
    }
    #[cfg(target_arch = "x86_64")]
    {
        let ext = Extensions {
            bf16: is_x86_feature_detected!("avx512bf16"),
            vnni: is_x86_feature_detected!("avx512vnni"),
            vpopcntdq: is_x86_feature_detected!("avx512vpopcntdq"),
            dotprod: false,
        };
        if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
        {
            return (Isa::Avx512, ext);
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c") {
            return (Isa::Avx2, Extensions::default());
        }
    }
    #[cfg(target_arch = "aarch64")]
    if std::arch::is_aarch64_feature_detected!("neon") {
        let ext = Extensions {
            dotprod: std::arch::is_aarch64_feature_detected!("dotprod"),
            ..Extensions::default()
        };
        return (Isa::Neon, ext);
    }
    (Isa::Scalar, Extensions::default())
}

fn detect() -> (Isa, Extensions) {
    detect_with(std::env::var_os(FORCE_SCALAR_VAR).is_some())
}

static DETECTED: OnceLock<(Isa, Extensions)> = OnceLock::new();

/// The best ISA level of this CPU (or `Scalar` when `TOKVEC_FORCE_SCALAR` is set at first use).
pub fn isa() -> Isa {
    DETECTED.get_or_init(detect).0
}

/// `level`, lowered to what this CPU runs (and to `Scalar` when scalar code is forced). Safe
/// functions that accept an `Isa` call this before choosing a `#[target_feature]` kernel.
#[inline]
pub fn clamp(level: Isa) -> Isa {
    clamp_to(level, isa())
}

/// `level` lowered to `best` (a level this CPU runs), then to `Scalar` if it is of another
/// architecture.
#[inline]
fn clamp_to(level: Isa, best: Isa) -> Isa {
    let l = level.min(best);
    if l.native() {
        l
    } else {
        Isa::Scalar
    }
}

/// The levels of this architecture up to `best`, lowest first.
#[cfg(any(test, feature = "internals"))]
fn levels_up_to(best: Isa) -> Vec<Isa> {
    [Isa::Scalar, Isa::Neon, Isa::Avx2, Isa::Avx512]
        .into_iter()
        .filter(|&l| l <= best && l.native())
        .collect()
}

/// The ISA levels this process may run, best last (always starts with `Scalar`; only `Scalar`
/// when `TOKVEC_FORCE_SCALAR` is set). For tests and benches that compare paths.
#[cfg(any(test, feature = "internals"))]
pub fn available() -> Vec<Isa> {
    levels_up_to(isa())
}

/// The optional extensions of this CPU (all false below `Isa::Avx512` on x86-64, and under
/// `TOKVEC_FORCE_SCALAR`).
pub fn extensions() -> Extensions {
    DETECTED.get_or_init(detect).1
}

/// A human-readable summary, e.g. "avx512+bf16+vnni+vpopcntdq" or "neon+dotprod".
pub fn describe() -> String {
    let (isa, ext) = *DETECTED.get_or_init(detect);
    let mut s = match isa {
        Isa::Scalar => "scalar".to_string(),
        Isa::Neon => "neon".to_string(),
        Isa::Avx2 => "avx2".to_string(),
        Isa::Avx512 => "avx512".to_string(),
    };
    for (on, name) in [
        (ext.bf16, "bf16"),
        (ext.vnni, "vnni"),
        (ext.vpopcntdq, "vpopcntdq"),
        (ext.dotprod, "dotprod"),
    ] {
        if on {
            s.push('+');
            s.push_str(name);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forcing_scalar_gives_scalar_and_no_extensions() {
        let (level, ext) = detect_with(true);
        assert_eq!(level, Isa::Scalar);
        assert!(!ext.bf16 && !ext.vnni && !ext.vpopcntdq && !ext.dotprod);
        assert_eq!(levels_up_to(level), vec![Isa::Scalar]);
    }

    #[test]
    fn levels_and_clamp_follow_detection() {
        let (level, _) = detect_with(false);
        assert_eq!(levels_up_to(level).last(), Some(&level));
        #[cfg(target_arch = "x86_64")]
        assert_eq!(levels_up_to(Isa::Avx512), vec![Isa::Scalar, Isa::Avx2, Isa::Avx512]);
        #[cfg(target_arch = "aarch64")]
        assert_eq!(levels_up_to(Isa::Avx512), vec![Isa::Scalar, Isa::Neon]);
        assert_eq!(available(), levels_up_to(isa()));
        for l in [Isa::Scalar, Isa::Neon, Isa::Avx2, Isa::Avx512] {
            assert!(clamp(l) <= isa());
            assert!(clamp(l) <= l);
            assert!(clamp(l).native(), "{l:?} -> {:?}", clamp(l));
        }
    }

    /// A level of the other architecture never reaches a kernel's dispatch: it is lowered to the
    /// best native level below it, or to `Scalar`.
    #[test]
    fn foreign_levels_clamp_to_native_ones() {
        assert_eq!(clamp_to(Isa::Avx2, Isa::Scalar), Isa::Scalar);
        assert_eq!(clamp_to(Isa::Neon, Isa::Scalar), Isa::Scalar);
        #[cfg(target_arch = "x86_64")]
        {
            assert_eq!(clamp_to(Isa::Neon, Isa::Avx512), Isa::Scalar);
            assert_eq!(clamp_to(Isa::Neon, Isa::Avx2), Isa::Scalar);
            assert_eq!(clamp_to(Isa::Avx2, Isa::Avx512), Isa::Avx2);
        }
        #[cfg(target_arch = "aarch64")]
        {
            assert_eq!(clamp_to(Isa::Avx2, Isa::Neon), Isa::Neon);
            assert_eq!(clamp_to(Isa::Avx512, Isa::Neon), Isa::Neon);
        }
    }

    /// On aarch64, NEON is part of the base architecture: detection always reports it (unless
    /// scalar code is forced), and dotprod only with it.
    #[cfg(target_arch = "aarch64")]
    #[test]
    fn aarch64_reports_neon_and_dotprod_as_the_cpu_has_them() {
        let (level, ext) = detect_with(false);
        assert_eq!(level, Isa::Neon);
        assert_eq!(ext.dotprod, std::arch::is_aarch64_feature_detected!("dotprod"));
        assert!(describe().starts_with("neon") || std::env::var_os(FORCE_SCALAR_VAR).is_some());
        // scripts/test_aarch64.sh checks this line: each emulated CPU ran the paths it should.
        println!("cpu features: {}", describe());
    }
}
