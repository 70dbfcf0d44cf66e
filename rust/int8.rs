//! The int8 pre-score engine: a cheap approximate inner product with a *proven* error bound,
//! used by the blocked top-k ([`crate::topk`]) and by `dedup` to pick the candidates that are then
//! re-scored with the canonical dot ([`crate::dot`]). A row can only beat a threshold `t` on its
//! canonical score if its pre-score is >= `t - eps`, so nothing is lost.
//!
//! # Performance notes
//!
//! * Rows are quantized with a per-row scale `s = max|x| / 127`, so each element is off by at most
//!   `s/2` and `|q~.c~ - q.c| <= (s_q ||c~||_1 + s_c ||q||_1) / 2`; the f32 rounding of the
//!   canonical dot and of the pre-score are added on top (see [`Int8Bound`]).
//! * On AVX-512 VNNI CPUs the kernel is `vpdpbusd` (64 multiply-adds per instruction, 4x the f32
//!   FMA rate). Queries are stored as `u8 = q + 128` (vpdpbusd multiplies unsigned by signed bytes);
//!   the accumulators start at `-128 * sum(c)`, which removes the offset exactly in integer
//!   arithmetic.
//! * The corpus is packed in groups of 16 rows, interleaved by 4 dimensions, so one 64-byte load
//!   holds 4 dimensions of 16 rows, and one broadcast query word feeds 16 rows: the VNNI
//!   micro-kernel keeps an 8-query x 48-row tile of i32 accumulators in 24 zmm registers.
//! * On AVX2 CPUs (and AVX-512 CPUs without VNNI) the same packed data is scored by an AVX2 kernel
//!   (`vpsignb` + `vpmaddubsw` + `vpmaddwd`, 32 multiply-adds per three instructions) that
//!   produces the same exact integers, so pre-scores are bit-identical to the VNNI path.
//! * On aarch64 the packed data is scored by a NEON kernel with the same exact integers: `sdot`
//!   (16 signed multiply-adds per instruction) where the CPU has the dotprod extension, else
//!   `smull`/`smull2` + `addp` + `sadalp` (16 per four instructions, exact for the same reason as
//!   the AVX2 kernel); both take the queries as signed bytes, so their accumulators start at 0.
//! * Without AVX2 (x86-64) or NEON (aarch64) there is no int8 kernel ([`int8_available`] is false)
//!   and the callers score every pair with the canonical dot.

use std::ops::Range;

use rayon::prelude::*;

use crate::dot::{canonical_rel_err, U32};
use crate::simd::{extensions, isa, Isa};

/// Half a quantization step, with a margin for the f32 rounding of `x * (127 / max|x|)`.
pub(crate) const HALF_STEP: f64 = 0.5001;

/// One quantized row: `x ~= s * q`, `q` in [-127, 127].
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct QuantRow {
    /// Scale.
    pub(crate) s: f32,
    /// `sum |q_i|` (so `||x~||_1 = s * l1`).
    pub(crate) l1: i64,
    /// `sum q_i`.
    pub(crate) sum: i64,
}

impl QuantRow {
    /// What a corpus slot keeps of the row: scale, accumulator start `-128 * sum(q)` and `||c~||_1`.
    #[inline]
    pub(crate) fn slot_terms(&self) -> (f32, i32, f64) {
        // |sum| <= 127 d; `d * 255 * 127 < 2^31` is checked by the callers (int8 path).
        (self.s, (-128 * self.sum) as i32, self.s as f64 * self.l1 as f64)
    }
}

/// Quantizes `x` into `out` (same length) with a per-row scale.
#[inline(always)]
fn quantize_row_impl(x: &[f32], out: &mut [i8]) -> QuantRow {
    let mut mx = [0.0f32; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for l in 0..16 {
            let a = c[l].abs();
            mx[l] = if a > mx[l] { a } else { mx[l] };
        }
    }
    for (l, v) in chunks.remainder().iter().enumerate() {
        let a = v.abs();
        mx[l] = if a > mx[l] { a } else { mx[l] };
    }
    let m = mx.iter().fold(0.0f32, |m, &v| if v > m { v } else { m });
    if m == 0.0 {
        out.iter_mut().for_each(|o| *o = 0);
        return QuantRow { s: 0.0, l1: 0, sum: 0 };
    }
    let s = m / 127.0;
    let inv = 127.0 / m;
    let (mut l1, mut sum) = (0i32, 0i32);
    for (o, &v) in out.iter_mut().zip(x) {
        let q = (v * inv).round_ties_even().clamp(-127.0, 127.0) as i32;
        *o = q as i8;
        l1 += q.abs();
        sum += q;
    }
    // |l1|, |sum| <= 127 d < 2^31 for d <= INT8_MAX_D (checked by the int8 callers).
    QuantRow {
        s,
        l1: l1 as i64,
        sum: sum as i64,
    }
}

/// Quantizes `x` into `out` (same length) with a per-row scale (vectorized where the CPU allows;
/// the result does not depend on the ISA).
pub(crate) fn quantize_row(x: &[f32], out: &mut [i8]) -> QuantRow {
    #[cfg(target_arch = "x86_64")]
    if isa() == Isa::Avx512 {
        // SAFETY: AVX-512F/BW/VL were detected on this CPU.
        return unsafe { x86::quantize_row_avx512(x, out) };
    }
    quantize_row_impl(x, out)
}

/// Query side of the int8 pre-score: row-major `u8 = q + 128`, padded to `dp` (a multiple of 4)
/// with 128 (= 0).
pub(crate) struct QuantQueries {
    pub(crate) dp: usize,
    pub(crate) data: Vec<u8>,
    pub(crate) s: Vec<f32>,
    /// `||q||_1` of the original row.
    pub(crate) l1: Vec<f64>,
}

impl QuantQueries {
    pub(crate) fn new(x: &[f32], d: usize) -> Self {
        let n = x.len() / d;
        let dp = d.div_ceil(4) * 4;
        let mut data = vec![128u8; n * dp];
        let meta: Vec<(f32, f64)> = data
            .par_chunks_mut(dp)
            .zip(x.par_chunks(d))
            .with_min_len(64)
            .map_init(
                || vec![0i8; d],
                |tmp, (o, r)| {
                    let q = quantize_row(r, tmp);
                    for (b, &v) in o.iter_mut().zip(tmp.iter()) {
                        *b = (v as i16 + 128) as u8;
                    }
                    (q.s, r.iter().map(|v| v.abs() as f64).sum())
                },
            )
            .collect();
        let (s, l1) = meta.into_iter().unzip();
        QuantQueries { dp, data, s, l1 }
    }

    /// Appends the rows of `x` (quantized exactly as [`QuantQueries::new`] would).
    pub(crate) fn append(&mut self, x: &[f32], d: usize) {
        let more = QuantQueries::new(x, d);
        self.data.extend_from_slice(&more.data);
        self.s.extend_from_slice(&more.s);
        self.l1.extend_from_slice(&more.l1);
    }

    #[inline]
    pub(crate) fn row(&self, i: usize) -> &[u8] {
        &self.data[i * self.dp..(i + 1) * self.dp]
    }
}

/// Corpus side of the int8 pre-score: groups of 16 rows, interleaved by 4 dimensions
/// (`[group][dp / 4][16 rows][4 bytes]`), with per-row scale, offset correction and bound terms.
/// Slots past `n` (and any slot marked invalid by the caller) are zero rows.
pub(crate) struct PackedCorpus {
    pub(crate) dp: usize,
    pub(crate) groups: usize,
    pub(crate) data: Vec<i8>,
    /// Per slot: scale.
    pub(crate) sc: Vec<f32>,
    /// Per slot: `-128 * sum(q)`, the accumulator start that removes the query offset.
    pub(crate) init: Vec<i32>,
    /// Per slot: `||c~||_1 = s * sum |q|`.
    pub(crate) l1: Vec<f64>,
}

impl PackedCorpus {
    pub(crate) fn empty(d: usize) -> Self {
        PackedCorpus {
            dp: d.div_ceil(4) * 4,
            groups: 0,
            data: Vec::new(),
            sc: Vec::new(),
            init: Vec::new(),
            l1: Vec::new(),
        }
    }

    /// Bytes of one 16-row group.
    #[inline]
    pub(crate) fn group_bytes(&self) -> usize {
        self.dp * 16
    }

    /// `slots` zero slots (rounded up to a multiple of 16), to be set by [`PackedCorpus::put`].
    pub(crate) fn zeroed(slots: usize, d: usize) -> Self {
        let mut pk = Self::empty(d);
        pk.reset(slots);
        pk
    }

    /// Grows it to `slots` slots (rounded up to a multiple of 16), the new ones zero, keeping the
    /// slots it has (the layout is group after group, so the groups are appended).
    pub(crate) fn grow(&mut self, slots: usize) {
        let groups = slots.div_ceil(16).max(self.groups);
        let gb = self.group_bytes();
        self.groups = groups;
        self.data.resize(groups * gb, 0);
        self.sc.resize(groups * 16, 0.0);
        self.init.resize(groups * 16, 0);
        self.l1.resize(groups * 16, 0.0);
    }

    /// Makes it `slots` zero slots (rounded up to a multiple of 16), keeping the buffers.
    fn reset(&mut self, slots: usize) {
        self.groups = 0;
        self.data.clear();
        self.sc.clear();
        self.init.clear();
        self.l1.clear();
        self.grow(slots);
    }

    /// Writes one quantized row (`codes`: `dp` bytes from [`quantize_row`], zero past `d`) into lane
    /// `lane` of a group's bytes `group` (`[dp / 4][16 rows][4 bytes]`).
    #[inline]
    pub(crate) fn put_lane(group: &mut [i8], lane: usize, codes: &[i8]) {
        for (t, c) in codes.chunks_exact(4).enumerate() {
            group[t * 64 + lane * 4..t * 64 + lane * 4 + 4].copy_from_slice(c);
        }
    }

    /// Sets slot `slot` to a quantized row: its `codes` (as [`PackedCorpus::put_lane`]) and terms `q`.
    pub(crate) fn put(&mut self, slot: usize, codes: &[i8], q: &QuantRow) {
        let gb = self.group_bytes();
        let (g, lane) = (slot / 16, slot % 16);
        Self::put_lane(&mut self.data[g * gb..(g + 1) * gb], lane, codes);
        (self.sc[slot], self.init[slot], self.l1[slot]) = q.slot_terms();
    }

    /// Re-fills with `slots` rows; `row(slot)` gives the f32 row for a slot or `None` for a zero slot.
    /// `slots` is rounded up to a multiple of 16.
    pub(crate) fn fill<'a, F>(&mut self, slots: usize, d: usize, row: F)
    where
        F: Fn(usize) -> Option<&'a [f32]> + Sync,
    {
        self.reset(slots);
        let gb = self.group_bytes();
        let dp = self.dp;
        self.data
            .par_chunks_mut(gb)
            .zip(self.sc.par_chunks_mut(16))
            .zip(self.init.par_chunks_mut(16))
            .zip(self.l1.par_chunks_mut(16))
            .enumerate()
            .with_min_len(4)
            .for_each(|(g, (((out, sc), init), l1))| {
                let mut tmp = vec![0i8; dp];
                for lane in 0..16 {
                    let Some(r) = row(g * 16 + lane) else { continue };
                    let q = quantize_row(r, &mut tmp[..d]);
                    (sc[lane], init[lane], l1[lane]) = q.slot_terms();
                    Self::put_lane(out, lane, &tmp);
                }
            });
    }
}

/// Largest `d` for which the int8 accumulators cannot overflow: `d * 255 * 127 < 2^31`.
pub(crate) const INT8_MAX_D: usize = 65_536;

/// The micro-kernel that computes the int8 pre-score. All give the same i32 dot products (exact
/// integers), hence bit-identical pre-scores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Int8Kernel {
    /// AVX-512 VNNI `vpdpbusd`: 64 u8 x i8 multiply-adds per instruction.
    #[cfg(target_arch = "x86_64")]
    Vnni,
    /// AVX2 `vpsignb` + `vpmaddubsw` + `vpmaddwd`: 32 multiply-adds per three instructions. With
    /// `|q|, |c| <= 127` (the quantizer never produces -128), a pair sum is at most
    /// `2 * 127 * 127 < 2^15`, so `vpmaddubsw` never saturates and the result is exact.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// aarch64 NEON + dotprod `sdot`: 16 i8 x i8 multiply-adds per instruction.
    #[cfg(target_arch = "aarch64")]
    Sdot,
    /// aarch64 NEON `smull`/`smull2` + `addp` + `sadalp`: 16 multiply-adds per four instructions;
    /// the pair sums of `addp` are exact 16-bit integers for the same reason as with the AVX2 kernel.
    #[cfg(target_arch = "aarch64")]
    Neon,
}

/// The best int8 kernel of this CPU, if any.
pub(crate) fn int8_kernel() -> Option<Int8Kernel> {
    #[cfg(target_arch = "x86_64")]
    {
        match isa() {
            Isa::Avx512 if extensions().vnni => return Some(Int8Kernel::Vnni),
            Isa::Avx2 => return Some(Int8Kernel::Avx2),
            Isa::Avx512 if is_x86_feature_detected!("avx2") => return Some(Int8Kernel::Avx2),
            _ => {}
        }
    }
    #[cfg(target_arch = "aarch64")]
    if isa() == Isa::Neon {
        return Some(if extensions().dotprod {
            Int8Kernel::Sdot
        } else {
            Int8Kernel::Neon
        });
    }
    None
}

/// Whether an int8 pre-score kernel is available on this CPU.
pub(crate) fn int8_available() -> bool {
    int8_kernel().is_some()
}

/// Whether the int8 pre-score serves rows of `d` columns on this CPU: a kernel is available and
/// `d <= INT8_MAX_D` (so its integer sums cannot overflow).
pub(crate) fn int8_serves(d: usize) -> bool {
    d <= INT8_MAX_D && int8_available()
}

/// The error bound of the int8 pre-score against the canonical dot, for one query (or row)
/// against any row of a set, from maxima over that set.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Int8Bound {
    /// max `||c~||_1`.
    pub(crate) m_l1: f64,
    /// max `s_c`.
    pub(crate) m_s: f64,
    /// max `||c||`.
    pub(crate) m_norm: f64,
    /// `sqrt(d)`.
    pub(crate) sqrt_d: f64,
    /// relative error of the canonical dot.
    pub(crate) rel: f64,
}

impl Int8Bound {
    pub(crate) fn new(d: usize, sc: &[f32], l1: &[f64], norms: impl Iterator<Item = f64>) -> Self {
        let m_s = sc.iter().fold(0.0f64, |m, &v| m.max(v as f64));
        let m_l1 = l1.iter().fold(0.0f64, |m, &v| m.max(v));
        let m_norm = norms.fold(0.0f64, f64::max);
        Int8Bound {
            m_l1,
            m_s,
            m_norm,
            sqrt_d: (d as f64).sqrt(),
            rel: canonical_rel_err(d),
        }
    }

    /// The bound of the union of two sets (maxima of maxima, as [`Int8Bound::new`] over both).
    pub(crate) fn merge(&self, other: &Self) -> Self {
        Int8Bound {
            m_l1: self.m_l1.max(other.m_l1),
            m_s: self.m_s.max(other.m_s),
            m_norm: self.m_norm.max(other.m_norm),
            ..*self
        }
    }

    /// `eps` such that `|prescore - canonical| <= eps` for a query with scale `s_q`, `||q||_1 = l1_q`
    /// and `||q|| = norm_q`:
    /// * quantization: `|q~.c~ - q.c| <= h (s_q ||c~||_1 + s_c ||q||_1)` with `h` = [`HALF_STEP`];
    /// * the pre-score `fl(fl(fl(I) s_c) s_q)`: 3 roundings of a value `<= ||q~|| ||c~||`, with
    ///   `||x~|| <= ||x|| + h s sqrt(d)`;
    /// * the canonical dot: `<= rel ||q|| ||c||`.
    pub(crate) fn eps(&self, s_q: f32, l1_q: f64, norm_q: f64) -> f64 {
        let s_q = s_q as f64;
        let quant = HALF_STEP * (s_q * self.m_l1 + self.m_s * l1_q);
        let nq = norm_q + HALF_STEP * s_q * self.sqrt_d;
        let nc = self.m_norm + HALF_STEP * self.m_s * self.sqrt_d;
        let round = 3.001 * U32 * nq * nc;
        let canon = self.rel * norm_q * self.m_norm;
        (quant + round + canon) * (1.0 + 1e-6) + 1e-37
    }
}

/// Query tile height of the int8 micro-kernel.
pub(crate) const QT: usize = 8;

/// Runs the int8 pre-score of up to [`QT`] queries (`qrows`, rows of `qz`) against groups
/// `g0..g1` of `pk`. For every (query slot, corpus slot) whose pre-score is >= `thr[slot]`,
/// `cand(slot, corpus_slot, prescore)` is called and returns the slot's new threshold. Only slots
/// `< qrows.len()` are ever reported, whatever the pre-scores (+inf and NaN included).
pub(crate) fn scan_int8<F>(
    qz: &QuantQueries,
    qrows: &[usize],
    pk: &PackedCorpus,
    g0: usize,
    g1: usize,
    thr: &mut [f32; QT],
    cand: F,
) where
    F: FnMut(usize, usize, f32) -> f32,
{
    let kernel = int8_kernel().expect("callers check int8_available() first");
    scan_int8_using(kernel, Scan::new(qz, qrows, pk, g0..g1), thr, cand)
}

/// The arguments of one [`scan_int8`]: the queries `qrows` of `qz` against the groups `groups` of
/// `pk`, checked by [`Scan::new`] to be in bounds (which the kernels' raw pointer reads rely on).
pub(crate) struct Scan<'a> {
    qz: &'a QuantQueries,
    qrows: &'a [usize],
    pk: &'a PackedCorpus,
    groups: Range<usize>,
}

impl<'a> Scan<'a> {
    /// Panics unless `1 <= qrows.len() <= QT`, every `qrows` entry is a row of `qz`, `groups` lies
    /// within `pk` and both sides have the same padded dimension.
    pub(crate) fn new(qz: &'a QuantQueries, qrows: &'a [usize], pk: &'a PackedCorpus, groups: Range<usize>) -> Self {
        assert!(!qrows.is_empty() && qrows.len() <= QT && qz.dp == pk.dp);
        assert!(groups.start <= groups.end && groups.end <= pk.groups);
        assert!(qrows.iter().all(|&q| q < qz.s.len()));
        Scan { qz, qrows, pk, groups }
    }
}

/// [`scan_int8`] with a given kernel (tests compare the kernels). Panics if the CPU lacks it.
pub(crate) fn scan_int8_using<F>(kernel: Int8Kernel, scan: Scan, thr: &mut [f32; QT], cand: F)
where
    F: FnMut(usize, usize, f32) -> f32,
{
    #[cfg(target_arch = "x86_64")]
    match kernel {
        Int8Kernel::Vnni => {
            assert!(int8_kernel() == Some(Int8Kernel::Vnni));
            // SAFETY: checked AVX-512F/BW/VL + VNNI on this CPU just above; `Scan::new` checked
            // that every query row and group index is in bounds of `qz` and `pk` (which is what
            // the kernel's raw pointer reads rely on).
            unsafe { x86::scan_int8(scan, thr, cand) }
        }
        Int8Kernel::Avx2 => {
            assert!(is_x86_feature_detected!("avx2"));
            // SAFETY: AVX2 checked just above; bounds as for the VNNI kernel.
            unsafe { x86::scan_int8_avx2(scan, thr, cand) }
        }
    }
    #[cfg(target_arch = "aarch64")]
    match kernel {
        Int8Kernel::Sdot => {
            assert!(int8_kernel() == Some(Int8Kernel::Sdot));
            // SAFETY: checked NEON + dotprod on this CPU just above; `Scan::new` checked that every
            // query row and group index is in bounds of `qz` and `pk`.
            unsafe { neon::scan_int8_sdot(scan, thr, cand) }
        }
        Int8Kernel::Neon => {
            assert!(int8_kernel().is_some());
            // SAFETY: NEON checked just above (any aarch64 int8 kernel implies it); bounds as above.
            unsafe { neon::scan_int8_neon(scan, thr, cand) }
        }
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = (kernel, scan, thr, cand);
        unreachable!("no int8 pre-score kernel on this architecture")
    }
}

// ---------------------------------------------------------------------------------------------
// What the kernels of both architectures share
// ---------------------------------------------------------------------------------------------

/// The query row of every slot of a tile: `qrows[i]`, and for the padding slots past
/// `qrows.len()` the last query again, with threshold +inf. The kernels finish only the real
/// slots all the same: a pre-score can overflow to +inf when the rows hold huge values (e.g.
/// written by another thread after the callers' checks), so +inf does not keep them out.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[inline(always)]
fn slot_rows(qrows: &[usize], thr: &mut [f32; QT]) -> [usize; QT] {
    let nq = qrows.len();
    for t in &mut thr[nq..] {
        *t = f32::INFINITY;
    }
    std::array::from_fn(|i| qrows[i.min(nq - 1)])
}

/// One register of i32 accumulators (one per corpus slot) as the kernels finish it.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
trait Slots {
    /// The accumulator register.
    type Acc: Copy;
    /// The pre-scores `fl(fl(I * s_c) * s_q)` of the register's slots (`sc`: their scales), as
    /// the bit mask of the slots whose pre-score is >= `t`, and, where any is, the pre-scores
    /// in `out`.
    ///
    /// # Safety
    /// `sc` has a readable f32 per slot; the CPU has the register's features.
    unsafe fn prescore(acc: Self::Acc, sc: *const f32, sq: f32, t: f32, out: &mut [f32; 16]) -> u32;
}

/// Finishes one register of accumulators of query slot `qi` (scale `sq`, threshold `thr`)
/// against the corpus slots from `slot0` (one per lane of the register): `cand` for each slot
/// whose pre-score passes the threshold, in slot order, each time with the threshold that
/// `cand` last returned.
/// Inlined into each kernel, so the register operations run with its target features.
///
/// # Safety
/// `pk.sc` has a slot per lane of the register from `slot0`; the CPU has the features of `S`.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[inline(always)]
unsafe fn report<S: Slots, F>(
    acc: S::Acc,
    pk: &PackedCorpus,
    slot0: usize,
    sq: f32,
    qi: usize,
    thr: &mut f32,
    cand: &mut F,
) where
    F: FnMut(usize, usize, f32) -> f32,
{
    let mut vals = [0.0f32; 16];
    // SAFETY: the slots of `sc` from `slot0` are in bounds per the contract, as are the features.
    let mut m = unsafe { S::prescore(acc, pk.sc.as_ptr().add(slot0), sq, *thr, &mut vals) };
    while m != 0 {
        let lane = m.trailing_zeros() as usize;
        m &= m - 1;
        *thr = cand(qi, slot0 + lane, vals[lane]);
    }
}

// ---------------------------------------------------------------------------------------------
// x86-64 kernels
// ---------------------------------------------------------------------------------------------

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{report, slot_rows, QuantRow, Scan, Slots, QT};

    /// [`super::quantize_row_impl`] compiled for AVX-512 (same result).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn quantize_row_avx512(x: &[f32], out: &mut [i8]) -> QuantRow {
        super::quantize_row_impl(x, out)
    }

    /// A register type for [`Slots`], its operations named for its width; `|$v, $t| $mask`
    /// gives the bit mask of the lanes of `$v` that are >= `$t`.
    macro_rules! slots {
        ($name:ident, $acc:ty, $lanes:literal, $cvt:ident, $load:ident, $mul:ident, $set1:ident, $store:ident,
         |$v:ident, $t:ident| $mask:expr) => {
            #[doc = concat!($lanes, " slots in one register.")]
            struct $name;
            impl Slots for $name {
                type Acc = $acc;
                #[inline(always)]
                unsafe fn prescore(acc: $acc, sc: *const f32, sq: f32, t: f32, out: &mut [f32; 16]) -> u32 {
                    // SAFETY: the features per the contract; `sc` has a readable f32 per slot and
                    // `out` holds 16 >= `$lanes`.
                    unsafe {
                        let ($v, $t) = ($mul($mul($cvt(acc), $load(sc)), $set1(sq)), $set1(t));
                        let m = $mask;
                        if m != 0 {
                            $store(out.as_mut_ptr(), $v);
                        }
                        m
                    }
                }
            }
        };
    }

    // The VNNI kernel's zmm registers (AVX-512F) and the AVX2 kernel's ymm registers.
    slots!(
        Zmm,
        __m512i,
        16,
        _mm512_cvtepi32_ps,
        _mm512_loadu_ps,
        _mm512_mul_ps,
        _mm512_set1_ps,
        _mm512_storeu_ps,
        |v, t| _mm512_cmp_ps_mask::<_CMP_GE_OQ>(v, t) as u32
    );
    slots!(
        Ymm,
        __m256i,
        8,
        _mm256_cvtepi32_ps,
        _mm256_loadu_ps,
        _mm256_mul_ps,
        _mm256_set1_ps,
        _mm256_storeu_ps,
        |v, t| _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(v, t)) as u32
    );

    /// The int8 micro-kernel: `Q` query rows (u8) x `R` groups of 16 corpus rows (i8), `steps` x 4
    /// dimensions. Returns the i32 accumulators (started at `init`).
    ///
    /// # Safety
    /// Each `q[i]` must have `4 * steps` readable bytes; `g + r * gstride + 64 * steps` must be
    /// readable for every `r < R`; the CPU must have AVX-512F/BW + VNNI.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tile<const Q: usize, const R: usize>(
        q: &[*const u8; Q],
        g: *const i8,
        gstride: usize,
        steps: usize,
        init: &[__m512i; R],
    ) -> [[__m512i; R]; Q] {
        let mut acc = [*init; Q];
        for t in 0..steps {
            let mut c = [_mm512_setzero_si512(); R];
            for (r, cr) in c.iter_mut().enumerate() {
                // SAFETY: in bounds per the function contract.
                *cr = unsafe { _mm512_loadu_si512(g.add(r * gstride + t * 64) as *const _) };
            }
            for (qi, a) in acc.iter_mut().enumerate() {
                // SAFETY: in bounds per the function contract.
                let w = unsafe { (q[qi].add(t * 4) as *const i32).read_unaligned() };
                let b = _mm512_set1_epi32(w);
                for r in 0..R {
                    a[r] = _mm512_dpbusd_epi32(a[r], b, c[r]);
                }
            }
        }
        acc
    }

    /// See [`super::scan_int8`].
    ///
    /// # Safety
    /// AVX-512F/BW/VL + VNNI.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn scan_int8<F>(scan: Scan, thr: &mut [f32; QT], mut cand: F)
    where
        F: FnMut(usize, usize, f32) -> f32,
    {
        const R: usize = 3;
        let Scan { qz, qrows, pk, groups } = scan;
        let (g0, g1) = (groups.start, groups.end);
        let nq = qrows.len();
        let rows = slot_rows(qrows, thr);
        let qp = rows.map(|q| qz.row(q).as_ptr());
        let sq = rows.map(|q| qz.s[q]);
        let gb = pk.group_bytes();
        let steps = pk.dp / 4;
        let base = pk.data.as_ptr();
        let mut g = g0;
        // Handles one tile's accumulators: pre-scores, threshold test, candidates (real slots only).
        macro_rules! finish {
            ($acc:expr, $rr:expr) => {
                for qi in 0..nq {
                    for r in 0..$rr {
                        // SAFETY: `g + r < pk.groups`, so 16 slots of `sc` from `(g + r) * 16` are in bounds.
                        unsafe { report::<Zmm, F>($acc[qi][r], pk, (g + r) * 16, sq[qi], qi, &mut thr[qi], &mut cand) };
                    }
                }
            };
        }
        while g + R <= g1 {
            let mut init = [_mm512_setzero_si512(); R];
            for (r, v) in init.iter_mut().enumerate() {
                // SAFETY: `g + r < g1 <= pk.groups`.
                *v = unsafe { _mm512_loadu_si512(pk.init.as_ptr().add((g + r) * 16) as *const _) };
            }
            // SAFETY: groups g..g+R are within `pk.data`; query rows have `dp = 4 * steps` bytes.
            let acc = unsafe { tile::<QT, R>(&qp, base.add(g * gb), gb, steps, &init) };
            finish!(acc, R);
            g += R;
        }
        while g < g1 {
            // SAFETY: `g < g1 <= pk.groups`.
            let init = [unsafe { _mm512_loadu_si512(pk.init.as_ptr().add(g * 16) as *const _) }];
            // SAFETY: group g is within `pk.data`; query rows have `dp = 4 * steps` bytes.
            let acc = unsafe { tile::<QT, 1>(&qp, base.add(g * gb), gb, steps, &init) };
            finish!(acc, 1);
            g += 1;
        }
    }

    /// The AVX2 micro-kernel: `Q` queries x one group of 16 corpus rows (two 8-row halves),
    /// `steps` x 4 dimensions. `qs` are the signed query bytes, `qa` their absolute values;
    /// `vpsignb` moves each query sign onto the corpus byte, so `vpmaddubsw(|q|, sign(c, q))` sums
    /// `q * c` over byte pairs (exact, see [`super::Int8Kernel::Avx2`]) and `vpmaddwd` with ones
    /// widens to one i32 per row and 4 dimensions, like `vpdpbusd`. Returns `sum(q * c)` per row.
    ///
    /// # Safety
    /// Each `qs[i]`, `qa[i]` must have `4 * steps` readable bytes; `g + 64 * steps` must be
    /// readable; the CPU must have AVX2.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn tile_avx2<const Q: usize>(
        qs: &[*const i8; Q],
        qa: &[*const i8; Q],
        g: *const i8,
        steps: usize,
    ) -> [[__m256i; 2]; Q] {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_si256(); 2]; Q];
        for t in 0..steps {
            // SAFETY: in bounds per the function contract.
            let (c0, c1) = unsafe {
                (
                    _mm256_loadu_si256(g.add(t * 64) as *const __m256i),
                    _mm256_loadu_si256(g.add(t * 64 + 32) as *const __m256i),
                )
            };
            for (qi, a) in acc.iter_mut().enumerate() {
                // SAFETY: in bounds per the function contract.
                let (ws, wa) = unsafe {
                    (
                        (qs[qi].add(t * 4) as *const i32).read_unaligned(),
                        (qa[qi].add(t * 4) as *const i32).read_unaligned(),
                    )
                };
                let (bs, ba) = (_mm256_set1_epi32(ws), _mm256_set1_epi32(wa));
                let p0 = _mm256_maddubs_epi16(ba, _mm256_sign_epi8(c0, bs));
                let p1 = _mm256_maddubs_epi16(ba, _mm256_sign_epi8(c1, bs));
                a[0] = _mm256_add_epi32(a[0], _mm256_madd_epi16(p0, ones));
                a[1] = _mm256_add_epi32(a[1], _mm256_madd_epi16(p1, ones));
            }
        }
        acc
    }

    /// See [`super::scan_int8`]: the AVX2 twin of [`scan_int8`], with bit-identical pre-scores
    /// (`fl(fl(I * s_c) * s_q)` from the same integer `I`).
    ///
    /// # Safety
    /// AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn scan_int8_avx2<F>(scan: Scan, thr: &mut [f32; QT], mut cand: F)
    where
        F: FnMut(usize, usize, f32) -> f32,
    {
        let Scan { qz, qrows, pk, groups } = scan;
        /// Queries per tile: 8 accumulators + 2 corpus + 2 query registers + temporaries fit
        /// the 16 ymm registers.
        const Q: usize = 4;
        let nq = qrows.len();
        let dp = qz.dp;
        let rows = slot_rows(qrows, thr);
        // Signed bytes (`u8 ^ 0x80 = q`) and their absolute values, once per call.
        let mut signed = vec![0i8; QT * dp];
        let mut absval = vec![0i8; QT * dp];
        for (i, &q) in rows.iter().enumerate() {
            for (j, &b) in qz.row(q).iter().enumerate() {
                let v = (b ^ 0x80) as i8;
                signed[i * dp + j] = v;
                // |v| <= 127: the quantizer's range is [-127, 127]
                absval[i * dp + j] = v.unsigned_abs() as i8;
            }
        }
        let gb = pk.group_bytes();
        let steps = dp / 4;
        let base = pk.data.as_ptr();
        let tiles = nq.div_ceil(Q);
        for g in groups {
            for tq in 0..tiles {
                let q0 = tq * Q;
                let mut ps = [std::ptr::null::<i8>(); Q];
                let mut pa = [std::ptr::null::<i8>(); Q];
                for i in 0..Q {
                    ps[i] = signed[(q0 + i) * dp..].as_ptr();
                    pa[i] = absval[(q0 + i) * dp..].as_ptr();
                }
                // SAFETY: group g < g1 <= pk.groups is within `pk.data`; query buffers hold
                // `QT * dp >= (q0 + Q) * dp` bytes (q0 + Q <= 8 = QT).
                let acc = unsafe { tile_avx2::<Q>(&ps, &pa, base.add(g * gb), steps) };
                for (i, a) in acc.iter().enumerate() {
                    let qi = q0 + i;
                    if qi >= nq {
                        break;
                    }
                    for (h, &ah) in a.iter().enumerate() {
                        // SAFETY: `g < pk.groups`, so 8 slots of `sc` from `g * 16 + h * 8` are in bounds.
                        unsafe {
                            report::<Ymm, F>(ah, pk, g * 16 + h * 8, qz.s[rows[qi]], qi, &mut thr[qi], &mut cand)
                        };
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// aarch64 kernels
// ---------------------------------------------------------------------------------------------

#[cfg(target_arch = "aarch64")]
mod neon {
    use std::arch::aarch64::*;
    use std::arch::asm;

    use super::{report, slot_rows, Scan, Slots, QT};

    /// Four slots (corpus rows) in one register.
    struct Q4;
    impl Slots for Q4 {
        type Acc = int32x4_t;
        #[inline(always)]
        unsafe fn prescore(acc: int32x4_t, sc: *const f32, sq: f32, t: f32, out: &mut [f32; 16]) -> u32 {
            const BIT: [u32; 4] = [1, 2, 4, 8];
            // SAFETY: `sc` has 4 readable f32s and `BIT` 4 u32s; `out` holds 16 >= 4.
            unsafe {
                let v = vmulq_f32(vmulq_f32(vcvtq_f32_s32(acc), vld1q_f32(sc)), vdupq_n_f32(sq));
                // lanes >= t (false for NaN, as `_CMP_GE_OQ`), as a bit mask
                let m = vaddvq_u32(vandq_u32(vcgeq_f32(v, vdupq_n_f32(t)), vld1q_u32(BIT.as_ptr())));
                if m != 0 {
                    vst1q_f32(out.as_mut_ptr(), v);
                }
                m
            }
        }
    }

    /// Queries per tile: 16 accumulators, 4 corpus registers and the query words fit the 32
    /// vector registers.
    const Q: usize = 4;

    /// One scan per multiply-add: `$madd(acc, c, q)` adds to each i32 lane of `acc` the dot
    /// product of its 4 bytes of `c` (4 dimensions of one corpus row) with the 4 bytes of `q`
    /// (the same 4 dimensions of the query, in every lane). `$tile` is the micro-kernel over `Q`
    /// queries x one group of 16 rows (four registers of 4 rows), `$scan` the whole scan: the
    /// queries as signed bytes (`u8 ^ 0x80 = q`), so every accumulator starts at 0 and ends at the
    /// exact integer dot product, the same as the x86-64 kernels'.
    macro_rules! neon_scan {
        ($scan:ident, $tile:ident, $features:literal, |$acc:ident, $c:ident, $q:ident| $madd:expr) => {
            /// # Safety
            /// Each `qp[i]` must have `4 * steps` readable bytes, `g + 64 * steps` must be readable;
            #[doc = concat!("the CPU must have ", $features, ".")]
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn $tile(qp: &[*const i8; Q], g: *const i8, steps: usize) -> [[int32x4_t; 4]; Q] {
                let mut acc = [[vdupq_n_s32(0); 4]; Q];
                for t in 0..steps {
                    let mut cs = [vdupq_n_s8(0); 4];
                    for (r, cr) in cs.iter_mut().enumerate() {
                        // SAFETY: in bounds per the function contract.
                        *cr = unsafe { vld1q_s8(g.add(t * 64 + r * 16)) };
                    }
                    for (qi, a) in acc.iter_mut().enumerate() {
                        // SAFETY: in bounds per the function contract (unaligned read).
                        let w = unsafe { (qp[qi].add(t * 4) as *const i32).read_unaligned() };
                        let $q = vreinterpretq_s8_s32(vdupq_n_s32(w));
                        for (r, &$c) in cs.iter().enumerate() {
                            let $acc = a[r];
                            a[r] = $madd;
                        }
                    }
                }
                acc
            }

            /// See [`super::scan_int8`].
            ///
            /// # Safety
            #[doc = concat!("The CPU must have ", $features, ".")]
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $scan<F>(scan: Scan, thr: &mut [f32; QT], mut cand: F)
            where
                F: FnMut(usize, usize, f32) -> f32,
            {
                let Scan {
                    qz,
                    qrows,
                    pk,
                    groups,
                } = scan;
                let nq = qrows.len();
                let dp = qz.dp;
                let rows = slot_rows(qrows, thr);
                let mut signed = vec![0i8; QT * dp];
                for (i, &q) in rows.iter().enumerate() {
                    for (s, &b) in signed[i * dp..(i + 1) * dp].iter_mut().zip(qz.row(q)) {
                        *s = (b ^ 0x80) as i8;
                    }
                }
                let gb = pk.group_bytes();
                let steps = dp / 4;
                let base = pk.data.as_ptr();
                for g in groups {
                    for q0 in (0..nq).step_by(Q) {
                        let qp: [*const i8; Q] = std::array::from_fn(|i| signed[(q0 + i) * dp..].as_ptr());
                        // SAFETY: group g < pk.groups is within `pk.data`; the query buffer holds
                        // `QT * dp >= (q0 + Q) * dp` bytes (q0 + Q <= 8 = QT).
                        let acc = unsafe { $tile(&qp, base.add(g * gb), steps) };
                        for (i, a) in acc.iter().enumerate().take(nq - q0) {
                            let qi = q0 + i;
                            for (r, &ar) in a.iter().enumerate() {
                                // SAFETY: `g < pk.groups`, so 4 slots of `sc` from `g * 16 + r * 4`
                                // are in bounds.
                                unsafe {
                                    report::<Q4, F>(
                                        ar,
                                        pk,
                                        g * 16 + r * 4,
                                        qz.s[rows[qi]],
                                        qi,
                                        &mut thr[qi],
                                        &mut cand,
                                    )
                                };
                            }
                        }
                    }
                }
            }
        };
    }

    // `sdot` by inline assembly: its intrinsic (`vdotq_s32`) is not stable Rust.
    neon_scan!(scan_int8_sdot, tile_sdot, "neon,dotprod", |acc, c, q| {
        let mut a = acc;
        // SAFETY: one register-only instruction; dotprod per the enclosing function's features.
        unsafe {
            asm!(
                "sdot {a:v}.4s, {c:v}.16b, {q:v}.16b",
                a = inout(vreg) a,
                c = in(vreg) c,
                q = in(vreg) q,
                options(pure, nomem, nostack, preserves_flags)
            )
        };
        a
    });
    // Rows 0-1 and 2-3 of the register times the query (i16 products), pairs of dimensions added
    // (`addp`: at most 2 * 127 * 127 < 2^15), then the two pair sums of each row into its i32 lane.
    neon_scan!(scan_int8_neon, tile_neon, "neon", |acc, c, q| {
        let lo = vmull_s8(vget_low_s8(c), vget_low_s8(q));
        let hi = vmull_high_s8(c, q);
        vpadalq_s16(acc, vpaddq_s16(lo, hi))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dot::tests::{gaussian, Rng};
    use crate::dot::{dot_scalar, row_norms};

    /// Scalar emulation of the int8 kernels: for every query of `qz` and every corpus slot of `pk`,
    /// the exact integer dot of the quantized rows (read from the packed layout), scaled as the
    /// kernels do, `fl(fl(I * s_c) * s_q)`. Runs on any CPU.
    fn emulated_prescores(qz: &QuantQueries, pk: &PackedCorpus) -> Vec<Vec<f32>> {
        let mut out = vec![vec![f32::NAN; pk.groups * 16]; qz.s.len()];
        for (qi, w) in out.iter_mut().enumerate() {
            let qrow: Vec<i32> = qz.row(qi).iter().map(|&b| b as i32 - 128).collect();
            for (slot, ws) in w.iter_mut().enumerate() {
                let (g, lane) = (slot / 16, slot % 16);
                let mut acc = 0i32;
                for t in 0..pk.dp / 4 {
                    for b in 0..4 {
                        let cb = pk.data[g * pk.group_bytes() + t * 64 + lane * 4 + b] as i32;
                        acc += qrow[t * 4 + b] * cb;
                    }
                }
                *ws = (acc as f32 * pk.sc[slot]) * qz.s[qi];
            }
        }
        out
    }

    /// Every int8 kernel this CPU can run.
    fn kernels() -> Vec<Int8Kernel> {
        let mut kernels = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if int8_kernel() == Some(Int8Kernel::Vnni) {
                kernels.push(Int8Kernel::Vnni);
            }
            if int8_kernel().is_some() && is_x86_feature_detected!("avx2") {
                kernels.push(Int8Kernel::Avx2);
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            if int8_kernel() == Some(Int8Kernel::Sdot) {
                kernels.push(Int8Kernel::Sdot);
            }
            if int8_kernel().is_some() {
                kernels.push(Int8Kernel::Neon);
            }
        }
        kernels
    }

    /// Every int8 kernel this CPU has gives the same pre-scores as the scalar emulation (so the
    /// AVX2 and VNNI kernels, and the two NEON ones, agree bit for bit).
    #[test]
    fn int8_kernels_match_integer_reference() {
        let kernels = kernels();
        // NEON is part of the base architecture: an aarch64 CPU always has an int8 kernel.
        assert!(!kernels.is_empty() || !cfg!(target_arch = "aarch64") || isa() == Isa::Scalar);
        for &(d, nq, nc) in &[(77usize, 8usize, 70usize), (256, 5, 48), (3, 1, 17), (64, 3, 16)] {
            let mut rng = Rng(d as u64 * 31 + 7);
            let c: Vec<f32> = (0..nc * d).map(|_| rng.normal()).collect();
            let q: Vec<f32> = (0..nq * d).map(|_| rng.normal()).collect();
            let qz = QuantQueries::new(&q, d);
            let mut pk = PackedCorpus::empty(d);
            pk.fill(nc, d, |s| (s < nc).then(|| &c[s * d..(s + 1) * d]));
            let want = emulated_prescores(&qz, &pk);
            for &k in &kernels {
                let qrows: Vec<usize> = (0..nq).collect();
                let mut got = vec![vec![f32::NAN; pk.groups * 16]; nq];
                let mut thr = [f32::NEG_INFINITY; QT];
                scan_int8_using(k, Scan::new(&qz, &qrows, &pk, 0..pk.groups), &mut thr, |qi, slot, v| {
                    got[qi][slot] = v;
                    f32::NEG_INFINITY
                });
                for qi in 0..nq {
                    for slot in 0..pk.groups * 16 {
                        assert_eq!(
                            got[qi][slot].to_bits(),
                            want[qi][slot].to_bits(),
                            "{k:?} d={d} q{qi} s{slot}"
                        );
                    }
                }
            }
        }
    }

    /// A partial query group never reports a padding slot, even when a row overflows the
    /// pre-score to +inf (the padding slots repeat the last query and have threshold +inf) or
    /// holds NaN: a caller indexes its query rows by the reported slot.
    #[test]
    fn padding_query_slots_are_never_reported() {
        let kernels = kernels();
        let (d, nc) = (40, 20);
        for nq in 1..QT {
            let mut q = gaussian(nq, d, 3);
            let mut c = gaussian(nc, d, 4);
            // the last real query and two corpus rows hold huge values: their pre-score is +inf
            q[(nq - 1) * d..].iter_mut().for_each(|v| *v = 3.0e38);
            c[5 * d..6 * d].iter_mut().for_each(|v| *v = 3.0e38);
            c[17 * d..18 * d].iter_mut().for_each(|v| *v = -3.0e38);
            c[9 * d + 3] = f32::NAN;
            c[11 * d + 7] = f32::INFINITY;
            let qz = QuantQueries::new(&q, d);
            let mut pk = PackedCorpus::empty(d);
            pk.fill(nc, d, |s| (s < nc).then(|| &c[s * d..(s + 1) * d]));
            let qrows: Vec<usize> = (0..nq).collect();
            for &k in &kernels {
                let mut inf_seen = false;
                for t in [f32::INFINITY, f32::NAN, 1.0e30, f32::NEG_INFINITY] {
                    let mut thr = [t; QT];
                    scan_int8_using(k, Scan::new(&qz, &qrows, &pk, 0..pk.groups), &mut thr, |slot, cs, v| {
                        assert!(
                            slot < nq,
                            "{k:?} nq={nq} thr={t}: slot {slot} reported (corpus {cs}, {v})"
                        );
                        inf_seen |= v == f32::INFINITY;
                        t
                    });
                }
                assert!(inf_seen, "{k:?} nq={nq}: the huge rows should overflow the pre-score");
            }
        }
    }

    /// The pre-score error stays within `eps` for every pair, including adversarial scales. The
    /// pre-scores come from the scalar emulation, so the bound is checked on every CPU; where an
    /// int8 kernel exists, its pre-scores are checked to be those same values.
    #[test]
    fn int8_bound_holds() {
        let d = 77;
        let mut rng = Rng(5);
        let mut c: Vec<f32> = (0..64 * d).map(|_| rng.normal()).collect();
        for (i, v) in c.iter_mut().enumerate() {
            if i % 13 == 0 {
                *v *= 40.0;
            }
        }
        let q = gaussian(8, d, 9);
        let qz = QuantQueries::new(&q, d);
        let mut pk = PackedCorpus::empty(d);
        pk.fill(64, d, |s| Some(&c[s * d..(s + 1) * d]));
        let cn = row_norms(&c, d, "c").unwrap();
        let qn = row_norms(&q, d, "q").unwrap();
        let bound = Int8Bound::new(d, &pk.sc, &pk.l1, cn.iter().copied());
        let pre = emulated_prescores(&qz, &pk);
        let mut tmp = vec![0i8; d];
        for qi in 0..8 {
            let eps = bound.eps(qz.s[qi], qz.l1[qi], qn[qi]);
            for cs in 0..64 {
                let cr = &c[cs * d..(cs + 1) * d];
                let exact = dot_scalar(&q[qi * d..(qi + 1) * d], cr) as f64;
                // the same pre-score from the row-major quantized rows (independent of the packing)
                let qr = quantize_row(cr, &mut tmp);
                let a = &qz.row(qi)[..d];
                let i: i64 = a.iter().zip(&tmp).map(|(&x, &y)| (x as i64 - 128) * y as i64).sum();
                let p = pre[qi][cs];
                assert_eq!(((i as f32 * qr.s) * qz.s[qi]).to_bits(), p.to_bits());
                assert!((p as f64 - exact).abs() <= eps, "pre {p} exact {exact} eps {eps}");
            }
        }
        if int8_available() {
            let qrows: Vec<usize> = (0..8).collect();
            let mut thr = [f32::NEG_INFINITY; QT];
            let mut seen = 0;
            // with thr = -inf every pair is a candidate
            scan_int8(&qz, &qrows, &pk, 0, pk.groups, &mut thr, |slot, cs, got| {
                assert_eq!(pre[slot][cs].to_bits(), got.to_bits());
                seen += 1;
                f32::NEG_INFINITY
            });
            assert_eq!(seen, 8 * 64);
        }
    }
}
