//! Run-time CPU feature detection, shared by every kernel: each kernel has a scalar reference
//! path (the test oracle) and SIMD paths chosen once per process from what the CPU reports.

use std::sync::OnceLock;

/// The instruction-set level a kernel may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Portable Rust, no explicit intrinsics. The reference for tests.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// x86-64 AVX-512 F/BW/VL (plus optional BF16/VNNI/VPOPCNTDQ, queried separately).
    Avx512,
}

/// Optional AVX-512 extensions, detected at run time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Extensions {
    /// `vdpbf16ps` (AVX512_BF16).
    pub bf16: bool,
    /// `vpdpbusd` (AVX512_VNNI).
    pub vnni: bool,
    /// `vpopcntq` (AVX512_VPOPCNTDQ).
    pub vpopcntdq: bool,
}

fn detect() -> (Isa, Extensions) {
    if std::env::var_os("TOKVEC_FORCE_SCALAR").is_some() {
        return (Isa::Scalar, Extensions::default());
    }
    #[cfg(target_arch = "x86_64")]
    {
        let ext = Extensions {
            bf16: is_x86_feature_detected!("avx512bf16"),
            vnni: is_x86_feature_detected!("avx512vnni"),
            vpopcntdq: is_x86_feature_detected!("avx512vpopcntdq"),
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
    (Isa::Scalar, Extensions::default())
}

static DETECTED: OnceLock<(Isa, Extensions)> = OnceLock::new();

/// The best ISA level of this CPU (or `Scalar` when `TOKVEC_FORCE_SCALAR` is set at first use).
pub fn isa() -> Isa {
    DETECTED.get_or_init(detect).0
}

/// The optional extensions of this CPU (all false below `Isa::Avx512`).
pub fn extensions() -> Extensions {
    DETECTED.get_or_init(detect).1
}

/// A human-readable summary, e.g. "avx512+bf16+vnni+vpopcntdq".
pub fn describe() -> String {
    let (isa, ext) = *DETECTED.get_or_init(detect);
    let mut s = match isa {
        Isa::Scalar => "scalar".to_string(),
        Isa::Avx2 => "avx2".to_string(),
        Isa::Avx512 => "avx512".to_string(),
    };
    for (on, name) in [(ext.bf16, "bf16"), (ext.vnni, "vnni"), (ext.vpopcntdq, "vpopcntdq")] {
        if on {
            s.push('+');
            s.push_str(name);
        }
    }
    s
}
