//! Row gather: add `w × row` of an on-disk table (F16, BF16, F32, F64, I8; little-endian, possibly
//! unaligned bytes inside a memory map) into an f32 accumulator.
//!
//! Performance notes:
//! - Tables stay in their on-disk dtype; conversion happens per row, per pooled token, into an
//!   accumulator that stays in L1. A 256-d F16 row is 512 bytes: one cache line pair per 32 lanes.
//! - Rows are read with unaligned loads: safetensors does not guarantee any alignment for data
//!   offsets (the header length is arbitrary), so no `&[f16]` is ever formed from the map.
//! - AVX-512: 16 lanes per step (`vcvtph2ps`, or zero-extend + shift for bf16), fused multiply-add.
//!   AVX2+F16C: 8 lanes. NEON (aarch64): 8 lanes per step in two registers (`fcvtl`/`fcvtl2` for
//!   f16, `shll` by 16 for bf16), fused multiply-add. The scalar path is the reference the tests
//!   compare against; SIMD results differ from it only by FMA's single rounding (≤ 1 ulp per step).

use crate::simd::{self, Isa};

/// The element type of a table row: rows of the [`crate::dtype::ElemType`]s that are `gatherable()`
/// (F16, BF16, F32, F64, I8) are pooled here.
pub use crate::dtype::ElemType as RowType;

/// Scalar reference: `acc[i] += w * row[i]` for `i < acc.len()`.
///
/// Panics if `row` is shorter than `acc.len() * ty.size()` bytes (callers slice it exactly). A
/// type that is not gatherable adds nothing (the model refuses such tables at load).
pub fn accumulate_scalar(acc: &mut [f32], row: &[u8], w: f32, ty: RowType) {
    debug_assert!(ty.gatherable(), "{} rows are not pooled", ty.name());
    let n = acc.len();
    match ty {
        RowType::F16 => {
            for (a, c) in acc.iter_mut().zip(row[..2 * n].chunks_exact(2)) {
                *a += w * half::f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        RowType::BF16 => {
            for (a, c) in acc.iter_mut().zip(row[..2 * n].chunks_exact(2)) {
                *a += w * half::bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        RowType::F32 => {
            for (a, c) in acc.iter_mut().zip(row[..4 * n].chunks_exact(4)) {
                *a += w * f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        RowType::F64 => {
            for (a, c) in acc.iter_mut().zip(row[..8 * n].chunks_exact(8)) {
                *a += w * f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32;
            }
        }
        RowType::I8 => {
            for (a, &c) in acc.iter_mut().zip(row[..n].iter()) {
                *a += w * (c as i8) as f32;
            }
        }
        _ => {}
    }
}

/// `acc[i] += w * row[i]` with the given ISA level, clamped to what this CPU runs (so any `isa`
/// is safe to pass; `TOKVEC_FORCE_SCALAR` gives the scalar path). Falls back to scalar for dtypes
/// without a SIMD path.
///
/// Panics if `row` is shorter than `acc.len() * ty.size()` bytes; that length check is what makes
/// the unaligned SIMD loads below stay inside `row`.
#[inline]
pub fn accumulate(acc: &mut [f32], row: &[u8], w: f32, ty: RowType, isa: Isa) {
    let need = acc.len() * ty.size();
    assert!(row.len() >= need, "row slice shorter than the accumulator");
    #[cfg(target_arch = "x86_64")]
    if let Some(kernel) = x86::kernel(simd::clamp(isa), ty) {
        // SAFETY: `x86::kernel` gives a kernel only for the level `simd::clamp` returned, which run-time
        // detection found on this CPU (avx512f/bw/vl for Avx512; avx2, fma and f16c for Avx2), and the
        // row length is checked above.
        return unsafe { kernel(acc, row, w) };
    }
    #[cfg(target_arch = "aarch64")]
    if let Some(kernel) = neon::kernel(simd::clamp(isa), ty) {
        // SAFETY: `neon::kernel` gives a kernel only for Neon, which `simd::clamp` returns only when
        // run-time detection found NEON on this CPU, and the row length is checked above.
        return unsafe { kernel(acc, row, w) };
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let _ = isa;
    accumulate_scalar(acc, row, w, ty)
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use std::arch::aarch64::*;
    use std::arch::asm;

    use crate::simd::Isa;

    /// A kernel: `acc[i] += w * row[i]`; unsafe because it needs NEON and a long enough row.
    pub(super) type Kernel = unsafe fn(&mut [f32], &[u8], f32);

    /// The kernel for an ISA level and a row type, if there is one (else the scalar path serves).
    pub(super) fn kernel(isa: Isa, ty: super::RowType) -> Option<Kernel> {
        use super::RowType::{BF16, F16, F32};
        let k: Kernel = match (isa, ty) {
            (Isa::Neon, F16) => acc_f16_neon,
            (Isa::Neon, BF16) => acc_bf16_neon,
            (Isa::Neon, F32) => acc_f32_neon,
            _ => return None,
        };
        Some(k)
    }

    /// Eight f16 values to f32, exactly (`fcvtl` and `fcvtl2`). Inline assembly because the
    /// intrinsics that take `float16x4_t` are not stable Rust. `lo` is a plain output so that it
    /// does not share a register with `h`, which the second instruction still reads.
    #[inline]
    #[target_feature(enable = "neon")]
    fn f16x8_to_f32(h: uint16x8_t) -> (float32x4_t, float32x4_t) {
        let (lo, hi): (float32x4_t, float32x4_t);
        // SAFETY: two register-only conversions (no memory access, no flags), NEON per this
        // function's target feature.
        unsafe {
            asm!(
                "fcvtl {lo:v}.4s, {h:v}.4h",
                "fcvtl2 {hi:v}.4s, {h:v}.8h",
                h = in(vreg) h,
                lo = out(vreg) lo,
                hi = lateout(vreg) hi,
                options(pure, nomem, nostack, preserves_flags)
            );
        }
        (lo, hi)
    }

    /// One kernel per element type, all the same loop: 8 elements per step, loaded from `$bytes`
    /// bytes each and widened to two registers of f32 by `$load` (`$p` is the row pointer at the
    /// step), then `acc += w * x` with one fused multiply-add per register; the tail goes to the
    /// scalar reference.
    macro_rules! acc_kernel {
        ($name:ident, $ty:ident, $bytes:literal, |$p:ident| $load:expr) => {
            /// # Safety
            #[doc = concat!("CPU must have NEON; `row.len() >= ", $bytes, " * acc.len()`.")]
            #[target_feature(enable = "neon")]
            pub unsafe fn $name(acc: &mut [f32], row: &[u8], w: f32) {
                let n = acc.len();
                let mut i = 0;
                while i + 8 <= n {
                    // SAFETY: i + 8 <= n, and row holds `bytes` bytes per accumulator float, so
                    // both the loaded row bytes and the accumulator floats lie in their slices
                    // (byte loads: no alignment needed).
                    unsafe {
                        let $p = row.as_ptr().add($bytes * i);
                        let (x0, x1): (float32x4_t, float32x4_t) = $load;
                        let a = acc.as_mut_ptr().add(i);
                        vst1q_f32(a, vfmaq_n_f32(vld1q_f32(a), x0, w));
                        vst1q_f32(a.add(4), vfmaq_n_f32(vld1q_f32(a.add(4)), x1, w));
                    }
                    i += 8;
                }
                super::accumulate_scalar(&mut acc[i..], &row[$bytes * i..], w, super::RowType::$ty);
            }
        };
    }

    acc_kernel!(acc_f16_neon, F16, 2, |p| f16x8_to_f32(vreinterpretq_u16_u8(vld1q_u8(
        p
    ))));
    // bf16 is the top half of an f32: widen each u16 to u32 shifted left by 16.
    acc_kernel!(acc_bf16_neon, BF16, 2, |p| {
        let h = vreinterpretq_u16_u8(vld1q_u8(p));
        (
            vreinterpretq_f32_u32(vshll_n_u16::<16>(vget_low_u16(h))),
            vreinterpretq_f32_u32(vshll_high_n_u16::<16>(h)),
        )
    });
    acc_kernel!(acc_f32_neon, F32, 4, |p| (
        vreinterpretq_f32_u8(vld1q_u8(p)),
        vreinterpretq_f32_u8(vld1q_u8(p.add(16)))
    ));
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use crate::simd::Isa;
    use std::arch::x86_64::*;

    /// A kernel: `acc[i] += w * row[i]`; unsafe because it needs its CPU features and a long enough row.
    pub(super) type Kernel = unsafe fn(&mut [f32], &[u8], f32);

    /// The kernel for an ISA level and a row type, if there is one (else the scalar path serves).
    pub(super) fn kernel(isa: Isa, ty: super::RowType) -> Option<Kernel> {
        use super::RowType::{BF16, F16, F32};
        let k: Kernel = match (isa, ty) {
            (Isa::Avx512, F16) => acc_f16_avx512,
            (Isa::Avx512, BF16) => acc_bf16_avx512,
            (Isa::Avx512, F32) => acc_f32_avx512,
            (Isa::Avx2, F16) => acc_f16_avx2,
            (Isa::Avx2, BF16) => acc_bf16_avx2,
            (Isa::Avx2, F32) => acc_f32_avx2,
            _ => return None,
        };
        Some(k)
    }

    /// One kernel per (ISA, element type), all the same loop: `lanes` elements per step, loaded
    /// from `$bytes` bytes each and widened to f32 by `$load` (`$p` is the row pointer at the step),
    /// then `acc += w * x` with one fused multiply-add; the tail goes to the scalar reference.
    macro_rules! acc_kernel {
        (avx512, $name:ident, $features:literal, $ty:ident, $bytes:literal, |$p:ident| $load:expr) => {
            acc_kernel!(@loop $name, $features, $ty, $bytes, 16, _mm512_set1_ps, _mm512_loadu_ps, _mm512_storeu_ps,
                _mm512_fmadd_ps, |$p| $load);
        };
        (avx2, $name:ident, $features:literal, $ty:ident, $bytes:literal, |$p:ident| $load:expr) => {
            acc_kernel!(@loop $name, $features, $ty, $bytes, 8, _mm256_set1_ps, _mm256_loadu_ps, _mm256_storeu_ps,
                _mm256_fmadd_ps, |$p| $load);
        };
        (@loop $name:ident, $features:literal, $ty:ident, $bytes:literal, $lanes:literal, $set1:ident,
         $loadu:ident, $storeu:ident, $fmadd:ident, |$p:ident| $load:expr) => {
            /// # Safety
            #[doc = concat!("CPU must have ", $features, "; `row.len() >= ", $bytes, " * acc.len()`.")]
            #[target_feature(enable = $features)]
            pub unsafe fn $name(acc: &mut [f32], row: &[u8], w: f32) {
                let n = acc.len();
                let wv = $set1(w);
                let mut i = 0;
                while i + $lanes <= n {
                    // SAFETY: i + lanes <= n, and row holds `bytes` bytes per accumulator float,
                    // so both the loaded row bytes and the accumulator floats lie in their slices.
                    unsafe {
                        let $p = row.as_ptr().add($bytes * i);
                        let x = $load;
                        let a = $loadu(acc.as_ptr().add(i));
                        $storeu(acc.as_mut_ptr().add(i), $fmadd(wv, x, a));
                    }
                    i += $lanes;
                }
                super::accumulate_scalar(&mut acc[i..], &row[$bytes * i..], w, super::RowType::$ty);
            }
        };
    }

    // f16 through vcvtph2ps (F16C on AVX2), bf16 by zero-extending to 32 bits and shifting left 16.
    acc_kernel!(avx512, acc_f16_avx512, "avx512f", F16, 2, |p| _mm512_cvtph_ps(
        _mm256_loadu_si256(p.cast())
    ));
    acc_kernel!(avx512, acc_bf16_avx512, "avx512f", BF16, 2, |p| _mm512_castsi512_ps(
        _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm256_loadu_si256(p.cast())))
    ));
    acc_kernel!(avx512, acc_f32_avx512, "avx512f", F32, 4, |p| _mm512_loadu_ps(p.cast()));
    acc_kernel!(avx2, acc_f16_avx2, "avx2,fma,f16c", F16, 2, |p| _mm256_cvtph_ps(
        _mm_loadu_si128(p.cast())
    ));
    acc_kernel!(avx2, acc_bf16_avx2, "avx2,fma", BF16, 2, |p| _mm256_castsi256_ps(
        _mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast())))
    ));
    acc_kernel!(avx2, acc_f32_avx2, "avx2,fma", F32, 4, |p| _mm256_loadu_ps(p.cast()));
}

/// The ISA levels this process may run, best last (always starts with `Scalar`; only `Scalar`
/// under `TOKVEC_FORCE_SCALAR`). For tests and benches.
#[cfg(any(test, feature = "internals"))]
pub fn available_isas() -> Vec<Isa> {
    simd::available()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(vals: &[f32], ty: RowType) -> Vec<u8> {
        let mut out = Vec::new();
        for &v in vals {
            match ty {
                RowType::F16 => out.extend_from_slice(&half::f16::from_f32(v).to_le_bytes()),
                RowType::BF16 => out.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
                RowType::F32 => out.extend_from_slice(&v.to_le_bytes()),
                RowType::F64 => out.extend_from_slice(&(v as f64).to_le_bytes()),
                RowType::I8 => out.push((v * 100.0).clamp(-127.0, 127.0) as i8 as u8),
                other => panic!("{other:?} is not gatherable"),
            }
        }
        out
    }

    #[test]
    fn simd_matches_scalar_all_types_lengths_and_offsets() {
        let types = [RowType::F16, RowType::BF16, RowType::F32, RowType::F64, RowType::I8];
        for &ty in &types {
            for n in [0usize, 1, 7, 8, 15, 16, 17, 31, 64, 100, 256, 384] {
                let vals: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 37.0).collect();
                // misalign the row by one byte to exercise unaligned loads
                let mut bytes = vec![0u8];
                bytes.extend(encode(&vals, ty));
                let row = &bytes[1..];
                let init: Vec<f32> = (0..n).map(|i| i as f32 * 0.01).collect();
                let mut reference = init.clone();
                accumulate_scalar(&mut reference, row, 0.75, ty);
                for isa in available_isas() {
                    let mut got = init.clone();
                    accumulate(&mut got, row, 0.75, ty, isa);
                    for (a, b) in got.iter().zip(&reference) {
                        assert!(
                            (a - b).abs() <= 1e-6 * (1.0 + b.abs()),
                            "{ty:?} {isa:?} n={n}: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }

    /// Every f16 and bf16 value but NaN (subnormals, both zeros, the largest values, infinities)
    /// decodes to the same f32 on every level: with `w = 1` into zeros, the fused multiply-add
    /// of the SIMD paths rounds nothing, so any difference is a conversion error.
    #[test]
    fn every_half_value_decodes_exactly_on_every_level() {
        for (ty, exp) in [(RowType::F16, 0x7C00u16), (RowType::BF16, 0x7F80)] {
            let bits: Vec<u16> = (0..=u16::MAX)
                .filter(|b| b & exp != exp || b & !(exp | 0x8000) == 0)
                .collect();
            let row: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
            let mut want = vec![0.0f32; bits.len()];
            accumulate_scalar(&mut want, &row, 1.0, ty);
            for isa in available_isas() {
                let mut got = vec![0.0f32; bits.len()];
                accumulate(&mut got, &row, 1.0, ty, isa);
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(a.to_bits(), b.to_bits(), "{ty:?} {isa:?} {:#06x}", bits[i]);
                }
            }
        }
    }

    #[test]
    fn scalar_decodes_exactly() {
        let vals = [1.0f32, -2.5, 0.0, 65504.0, -0.000061035156];
        let row = encode(&vals, RowType::F16);
        let mut acc = vec![0.0; vals.len()];
        accumulate_scalar(&mut acc, &row, 1.0, RowType::F16);
        assert_eq!(acc, vals);
        let row = encode(&[1.0, -3.0, 0.5], RowType::BF16);
        let mut acc = vec![1.0; 3];
        accumulate_scalar(&mut acc, &row, 2.0, RowType::BF16);
        assert_eq!(acc, vec![3.0, -5.0, 2.0]);
    }

    /// Values for which `w * x + a` rounded once (FMA, the SIMD paths) differs from the scalar
    /// path's two roundings, so a SIMD kernel running where scalar was asked for shows.
    fn fma_sensitive(n: usize) -> (Vec<f32>, Vec<u8>) {
        let init: Vec<f32> = (0..n).map(|i| 1.0 + i as f32 * 1e-3).collect();
        let vals: Vec<f32> = (0..n).map(|i| (i as f32 + 0.1) / 3.0).collect();
        (init, encode(&vals, RowType::F32))
    }

    /// Run by [`forced_scalar_applies_to_accumulate_and_levels`] in a child process with
    /// `TOKVEC_FORCE_SCALAR=1` (the variable is read once per process).
    #[test]
    #[ignore = "run in a child process with TOKVEC_FORCE_SCALAR set"]
    fn forced_scalar_child() {
        assert!(std::env::var_os(simd::FORCE_SCALAR_VAR).is_some());
        assert_eq!(available_isas(), vec![Isa::Scalar]);
        let (init, row) = fma_sensitive(64);
        let mut want = init.clone();
        accumulate_scalar(&mut want, &row, 0.7, RowType::F32);
        for level in [Isa::Neon, Isa::Avx2, Isa::Avx512] {
            let mut got = init.clone();
            accumulate(&mut got, &row, 0.7, RowType::F32, level);
            let gb: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
            let wb: Vec<u32> = want.iter().map(|v| v.to_bits()).collect();
            assert_eq!(gb, wb, "{level:?} ran a SIMD kernel although scalar code is forced");
        }
    }

    #[test]
    fn forced_scalar_applies_to_accumulate_and_levels() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "gather::tests::forced_scalar_child",
                "--ignored",
                "--test-threads=1",
            ])
            .env(simd::FORCE_SCALAR_VAR, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains("1 passed"), "{text}");
    }

    #[test]
    fn fma_sensitive_values_tell_the_paths_apart() {
        // the child test above only proves something if a SIMD kernel would change the result
        let (init, row) = fma_sensitive(64);
        let mut scalar = init.clone();
        accumulate_scalar(&mut scalar, &row, 0.7, RowType::F32);
        let fused: Vec<f32> = init
            .iter()
            .zip(row.chunks_exact(4))
            .map(|(&a, c)| 0.7f32.mul_add(f32::from_le_bytes([c[0], c[1], c[2], c[3]]), a))
            .collect();
        assert!(scalar.iter().zip(&fused).any(|(a, b)| a.to_bits() != b.to_bits()));
    }

    #[test]
    fn any_level_is_safe_to_pass() {
        // a level above this CPU's is clamped: same result as the detected level
        let (init, row) = fma_sensitive(100);
        let mut best = init.clone();
        accumulate(&mut best, &row, 0.7, RowType::F32, simd::isa());
        let mut top = init.clone();
        accumulate(&mut top, &row, 0.7, RowType::F32, Isa::Avx512);
        assert_eq!(top, best);
    }

    #[test]
    #[should_panic]
    fn short_row_panics_instead_of_reading_out_of_bounds() {
        let mut acc = vec![0.0f32; 32];
        accumulate(&mut acc, &[0u8; 10], 1.0, RowType::F16, crate::simd::isa());
    }
}
