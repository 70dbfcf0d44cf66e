//! Streaming extraction of one embedding table: rows are read in place from a memory-mapped
//! safetensors or GGUF file, dequantized / converted to f32 (or straight to the output dtype) in
//! chunks, and the source pages of each chunk are handed back to the OS once converted.
//!
//! Performance notes:
//! - Only the table's byte range is ever touched: the header parsers read headers, and `Table`
//!   reads rows `[r0, r1)` of one tensor. Nothing else of a multi-GB checkpoint is paged in.
//! - After a chunk is converted its source pages are dropped from this process with
//!   `madvise(MADV_DONTNEED)` (the map is read-only and shared, so the pages stay in the page cache
//!   and a later read simply faults them back in). Peak RSS is then one chunk of input plus one
//!   chunk of output, whatever the table's size, instead of the whole table.
//! - When the output dtype equals the source dtype (F16 → F16, BF16 → BF16, F32 → F32) rows are
//!   copied as bytes after an integer check for NaN/Inf; otherwise each row is decoded to f32 and
//!   encoded with round-to-nearest-even. Rows are converted in parallel (rayon), one scratch row
//!   per worker.
//! - Dequantization follows ggml's reference kernels (`dequantize_row_*` in ggml-quants.c) with
//!   the same float operation order, so the values equal llama.cpp's and the `gguf` package's.

use std::path::Path;
use std::sync::Arc;

use half::{bf16, f16};
use memmap2::{Mmap, UncheckedAdvice};
use rayon::prelude::*;

use crate::dtype::ElemType;
use crate::error::{CoreError, Result};
use crate::gguf::GgufFile;
use crate::header::SafetensorsFile;
#[cfg(target_arch = "x86_64")]
use crate::simd::{isa, Isa};

impl ElemType {
    /// Decodes whole blocks: `dst.len()` elements from `src`. Only complete blocks present in both
    /// are written (callers pass matching lengths, checked by `Table`), so no read is out of bounds.
    ///
    /// Panics if the type is not [`ElemType::decodable`] (`Table` checks it when it opens a tensor).
    pub fn decode(self, src: &[u8], dst: &mut [f32]) {
        assert!(self.decodable(), "{} tables are not decoded", self.name());
        let (e, b) = self.layout();
        for (s, d) in src.chunks_exact(b).zip(dst.chunks_exact_mut(e)) {
            match self {
                ElemType::F32 => d[0] = f32::from_le_bytes([s[0], s[1], s[2], s[3]]),
                ElemType::F16 => d[0] = f16::from_le_bytes([s[0], s[1]]).to_f32(),
                ElemType::BF16 => d[0] = bf16::from_le_bytes([s[0], s[1]]).to_f32(),
                ElemType::F64 => d[0] = f64::from_le_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]) as f32,
                ElemType::Q4_0 => dequant_q4_0(s, d),
                ElemType::Q4_1 => dequant_q4_1(s, d),
                ElemType::Q5_0 => dequant_q5_0(s, d),
                ElemType::Q5_1 => dequant_q5_1(s, d),
                ElemType::Q8_0 => dequant_q8_0(s, d),
                ElemType::Q4K => dequant_q4_k(s, d),
                ElemType::Q5K => dequant_q5_k(s, d),
                ElemType::Q6K => dequant_q6_k(s, d),
                _ => {}
            }
        }
    }
}

fn h(s: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([s[i], s[i + 1]]).to_f32()
}

fn dequant_q4_0(s: &[u8], y: &mut [f32]) {
    let d = h(s, 0);
    let qs = &s[2..18];
    for j in 0..16 {
        y[j] = ((qs[j] & 0x0F) as i32 - 8) as f32 * d;
        y[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
    }
}

fn dequant_q4_1(s: &[u8], y: &mut [f32]) {
    let (d, m) = (h(s, 0), h(s, 2));
    let qs = &s[4..20];
    for j in 0..16 {
        y[j] = (qs[j] & 0x0F) as f32 * d + m;
        y[j + 16] = (qs[j] >> 4) as f32 * d + m;
    }
}

fn dequant_q5_0(s: &[u8], y: &mut [f32]) {
    let d = h(s, 0);
    let qh = u32::from_le_bytes([s[2], s[3], s[4], s[5]]);
    let qs = &s[6..22];
    for j in 0..16 {
        let xh0 = (((qh >> j) << 4) & 0x10) as u8;
        let xh1 = ((qh >> (j + 12)) & 0x10) as u8;
        y[j] = (((qs[j] & 0x0F) | xh0) as i32 - 16) as f32 * d;
        y[j + 16] = (((qs[j] >> 4) | xh1) as i32 - 16) as f32 * d;
    }
}

fn dequant_q5_1(s: &[u8], y: &mut [f32]) {
    let (d, m) = (h(s, 0), h(s, 2));
    let qh = u32::from_le_bytes([s[4], s[5], s[6], s[7]]);
    let qs = &s[8..24];
    for j in 0..16 {
        let xh0 = (((qh >> j) << 4) & 0x10) as u8;
        let xh1 = ((qh >> (j + 12)) & 0x10) as u8;
        y[j] = ((qs[j] & 0x0F) | xh0) as f32 * d + m;
        y[j + 16] = ((qs[j] >> 4) | xh1) as f32 * d + m;
    }
}

fn dequant_q8_0(s: &[u8], y: &mut [f32]) {
    let d = h(s, 0);
    for (v, &q) in y.iter_mut().zip(&s[2..34]) {
        *v = (q as i8) as f32 * d;
    }
}

/// The 6-bit scale and min of sub-block `j` of a Q4_K / Q5_K super-block (`get_scale_min_k4`).
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Q4_K and Q5_K super-blocks: 8 sub-blocks of 32 values, each with a 6-bit scale and min, 4 bits
/// per value in `qs` and, for Q5_K, a fifth bit per value in `qh` (bit 2k of byte l for value l
/// of sub-block 2k, bit 2k+1 for sub-block 2k+1). Always inlined, so that Q4_K's `None` folds the
/// fifth-bit test out of its loop.
#[inline(always)]
fn dequant_k(s: &[u8], qh: Option<&[u8]>, qs: &[u8], y: &mut [f32]) {
    let (d, dmin) = (h(s, 0), h(s, 2));
    let scales = &s[4..16];
    for (k, (q, out)) in qs.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * k, scales);
        let (sc2, m2) = scale_min_k4(2 * k + 1, scales);
        let (d1, mm1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, mm2) = (d * sc2 as f32, dmin * m2 as f32);
        let (u1, u2) = (1u8 << (2 * k), 2u8 << (2 * k));
        for l in 0..32 {
            let hi = |u: u8| qh.map_or(0, |qh| if qh[l] & u != 0 { 16 } else { 0 });
            out[l] = d1 * ((q[l] & 0x0F) + hi(u1)) as f32 - mm1;
            out[l + 32] = d2 * ((q[l] >> 4) + hi(u2)) as f32 - mm2;
        }
    }
}

fn dequant_q4_k(s: &[u8], y: &mut [f32]) {
    dequant_k(s, None, &s[16..144], y);
}

fn dequant_q5_k(s: &[u8], y: &mut [f32]) {
    dequant_k(s, Some(&s[16..48]), &s[48..176], y);
}

fn dequant_q6_k(s: &[u8], y: &mut [f32]) {
    let ql_all = &s[0..128];
    let qh_all = &s[128..192];
    let sc_all = &s[192..208];
    let d = h(s, 208);
    for n in 0..2 {
        let ql = &ql_all[64 * n..64 * n + 64];
        let qh = &qh_all[32 * n..32 * n + 32];
        let sc = &sc_all[8 * n..8 * n + 8];
        let out = &mut y[128 * n..128 * n + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            out[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            out[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            out[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            out[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

/// Encodes f32 values as `dtype` (round to nearest even). Returns false when a finite input
/// overflows the output type (e.g. above 65504 in F16).
///
/// Panics if `dtype` is not [`ElemType::writable`] (its callers take it from
/// [`ElemType::parse_writable`]).
pub fn encode_row(src: &[f32], dtype: ElemType, dst: &mut [u8]) -> bool {
    assert!(dtype.writable(), "tables are not written in {}", dtype.name());
    let mut ok = true;
    match dtype {
        ElemType::F32 => {
            for (v, o) in src.iter().zip(dst.chunks_exact_mut(4)) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        ElemType::F16 => {
            for (v, o) in src.iter().zip(dst.chunks_exact_mut(2)) {
                let x = f16::from_f32(*v);
                ok &= x.is_finite() || !v.is_finite();
                o.copy_from_slice(&x.to_le_bytes());
            }
        }
        ElemType::BF16 => {
            for (v, o) in src.iter().zip(dst.chunks_exact_mut(2)) {
                let x = bf16::from_f32(*v);
                ok &= x.is_finite() || !v.is_finite();
                o.copy_from_slice(&x.to_le_bytes());
            }
        }
        _ => {}
    }
    ok
}

/// Smallest magnitude (as f64 bits, sign cleared) that rounds to infinity in f32: `2^128 - 2^103`,
/// half an ulp above `f32::MAX`, which rounds to even, i.e. up. NaN bit patterns are above it.
const F64_F32_OVERFLOW: u64 = 0x47EF_FFFF_F000_0000;

/// Whether raw elements of a float codec are non-finite once read as f32: NaN or Inf (all exponent
/// bits set), and for F64 also values beyond the f32 range (they decode to Inf). Other codecs
/// return false (their values are decoded and checked instead).
///
/// Integer bit tests, reduced by `max` with no early exit so that the loops vectorize (1.6x the
/// speed of `any` with SSE2); with AVX2 the same code is compiled for AVX2, 4x faster again.
pub(crate) fn raw_has_nonfinite(c: ElemType, row: &[u8]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if isa() >= Isa::Avx2 {
        // SAFETY: `isa()` reported AVX2 on this CPU.
        return unsafe { raw_has_nonfinite_avx2(c, row) };
    }
    raw_has_nonfinite_impl(c, row)
}

/// [`raw_has_nonfinite_impl`] compiled for AVX2 (same result).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn raw_has_nonfinite_avx2(c: ElemType, row: &[u8]) -> bool {
    raw_has_nonfinite_impl(c, row)
}

#[inline(always)]
fn raw_has_nonfinite_impl(c: ElemType, row: &[u8]) -> bool {
    // `x & EXP` is at most `EXP`, so its maximum is `EXP` iff some element has all exponent bits set
    const F16_EXP: u16 = 0x7C00;
    const BF16_EXP: u16 = 0x7F80;
    const F32_EXP: u32 = 0x7F80_0000;
    let u16s = |mask: u16| {
        row.chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) & mask)
            .fold(0, u16::max)
            == mask
    };
    match c {
        ElemType::F16 => u16s(F16_EXP),
        ElemType::BF16 => u16s(BF16_EXP),
        ElemType::F32 => {
            row.chunks_exact(4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & F32_EXP)
                .fold(0, u32::max)
                == F32_EXP
        }
        ElemType::F64 => {
            row.chunks_exact(8)
                .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) & !(1u64 << 63))
                .fold(0, u64::max)
                >= F64_F32_OVERFLOW
        }
        _ => false,
    }
}

/// Whether [`raw_has_nonfinite`] can scan a codec's raw bytes (the plain float types).
pub(crate) fn raw_scannable(c: ElemType) -> bool {
    matches!(c, ElemType::F16 | ElemType::BF16 | ElemType::F32 | ElemType::F64)
}

/// The ids (`row0 + i`, ascending) of the rows of `data` (rows of `row_bytes` bytes) whose first
/// `used` bytes hold a value that [`raw_has_nonfinite`] flags; in parallel over rows. `used` lets a
/// truncated model check only the columns it reads.
pub(crate) fn nonfinite_raw_rows(c: ElemType, data: &[u8], row_bytes: usize, used: usize, row0: usize) -> Vec<usize> {
    let used = used.min(row_bytes);
    data.par_chunks(row_bytes.max(1))
        .with_min_len(256)
        .enumerate()
        .filter_map(|(i, r)| raw_has_nonfinite(c, &r[..used.min(r.len())]).then_some(row0 + i))
        .collect()
}

/// One 2-D embedding table in a memory-mapped file, read row range by row range.
#[derive(Debug)]
pub struct Table {
    path: String,
    name: String,
    mmap: Arc<Mmap>,
    start: usize,
    rows: usize,
    cols: usize,
    codec: ElemType,
    row_bytes: usize,
}

/// `{path}: {tensor}: N row(s) {what} (row ids a, b, ...)`, at most 10 ids shown; `tensor` is e.g.
/// `table "embeddings"`.
pub(crate) fn bad_rows_error(path: &str, tensor: &str, rows: &[usize], what: &str) -> CoreError {
    let shown: Vec<String> = rows.iter().take(10).map(|r| r.to_string()).collect();
    let more = if rows.len() > 10 { ", ..." } else { "" };
    CoreError::format(
        path,
        format!(
            "{tensor}: {} row(s) {what} (row ids {}{more})",
            rows.len(),
            shown.join(", ")
        ),
    )
}

impl Table {
    /// A table over bytes `start..end` of a mapped file, in element type `codec`.
    fn new(
        path: &str,
        name: &str,
        mmap: &Arc<Mmap>,
        (start, end): (usize, usize),
        shape: &[u64],
        codec: ElemType,
    ) -> Result<Self> {
        let path = path.to_string();
        if !codec.decodable() {
            let kind = if codec.is_quantized() { "quantization" } else { "dtype" };
            return Err(CoreError::format(
                &path,
                format!(
                    "tensor {name:?}: unsupported {kind} {} for an embedding table (tokvec reads {})",
                    codec.name(),
                    ElemType::decodable_names()
                ),
            ));
        }
        if shape.len() != 2 {
            return Err(CoreError::format(
                &path,
                format!("tensor {name:?} has shape {shape:?}: an embedding table is 2-D [vocab, dim]"),
            ));
        }
        let (rows, cols) = match (usize::try_from(shape[0]), usize::try_from(shape[1])) {
            (Ok(r), Ok(c)) if r > 0 && c > 0 => (r, c),
            _ => {
                return Err(CoreError::format(
                    &path,
                    format!("tensor {name:?} has shape {shape:?}: an embedding table needs rows and columns"),
                ))
            }
        };
        let row_bytes = codec.bytes_for(cols).ok_or_else(|| {
            CoreError::format(
                &path,
                format!(
                    "tensor {name:?}: row length {cols} is not a whole number of {} blocks",
                    codec.name()
                ),
            )
        })?;
        let total = row_bytes.checked_mul(rows);
        if total != Some(end.wrapping_sub(start)) || end > mmap.len() || start > end {
            return Err(CoreError::format(
                &path,
                format!(
                    "tensor {name:?}: its byte range does not match shape {shape:?} in {}",
                    codec.name()
                ),
            ));
        }
        Ok(Table {
            path,
            name: name.to_string(),
            mmap: mmap.clone(),
            start,
            rows,
            cols,
            codec,
            row_bytes,
        })
    }

    /// Opens tensor `name` of a safetensors file (header validated by [`SafetensorsFile`]).
    pub fn from_safetensors(path: impl AsRef<Path>, name: &str) -> Result<Self> {
        Table::from_safetensors_file(&SafetensorsFile::open(path)?, name)
    }

    /// Like [`Table::from_safetensors`], on an already opened file (shares its map).
    pub fn from_safetensors_file(f: &SafetensorsFile, name: &str) -> Result<Self> {
        let t = f.tensor(name)?;
        let shape: Vec<u64> = t.shape.iter().map(|&d| d as u64).collect();
        Table::new(f.path(), name, f.mmap(), (t.start, t.end), &shape, t.dtype)
    }

    /// Opens tensor `name` of a GGUF file. Quantized types other than Q4_0, Q4_1, Q5_0, Q5_1,
    /// Q8_0, Q4_K, Q5_K and Q6_K are refused with "unsupported quantization X".
    pub fn from_gguf(path: impl AsRef<Path>, name: &str) -> Result<Self> {
        Table::from_gguf_file(&GgufFile::open(path)?, name)
    }

    /// Like [`Table::from_gguf`], on an already opened file (shares its map).
    pub fn from_gguf_file(f: &GgufFile, name: &str) -> Result<Self> {
        let t = f.tensor(name)?;
        let mut shape = t.shape();
        while shape.len() > 2 && shape[0] == 1 {
            shape.remove(0);
        }
        Table::new(f.path(), name, f.mmap(), (t.start, t.end), &shape, t.ggml_type)
    }

    /// The file.
    pub fn path(&self) -> &str {
        &self.path
    }
    /// The tensor's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Row count.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Column count.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// The source element type.
    pub fn codec(&self) -> ElemType {
        self.codec
    }
    /// `table "name"`, for messages.
    fn label(&self) -> String {
        format!("table {:?}", self.name)
    }
    /// The tensor's byte range in the file, `(start, end)`.
    pub fn byte_range(&self) -> (usize, usize) {
        (self.start, self.start + self.rows * self.row_bytes)
    }

    /// Checks that `[r0, r1)` is a range of the table's rows and returns its length. Callers size
    /// output buffers only after this check, so a huge range never reaches the allocator (and the
    /// buffer of a valid range is at most the table's elements).
    ///
    /// Errors: `InvalidArgument` naming the range and the row count.
    pub fn check_rows(&self, r0: usize, r1: usize) -> Result<usize> {
        if r0 > r1 || r1 > self.rows {
            return Err(CoreError::arg(
                "rows",
                format!(
                    "start={r0}, end={r1} is not a row range of the table's {} rows (0 <= start <= end <= {})",
                    self.rows, self.rows
                ),
            ));
        }
        Ok(r1 - r0)
    }

    fn check_range(&self, r0: usize, r1: usize, out_len: usize, elem: usize) -> Result<&[u8]> {
        self.check_rows(r0, r1)?;
        if out_len != (r1 - r0) * self.cols * elem {
            return Err(CoreError::arg(
                "out",
                "output buffer length does not match the row range",
            ));
        }
        Ok(&self.mmap[self.start + r0 * self.row_bytes..self.start + r1 * self.row_bytes])
    }

    /// Drops the source pages of rows `[r0, r1)` from this process (they stay in the page cache).
    fn release(&self, r0: usize, r1: usize) {
        let off = self.start + r0 * self.row_bytes;
        let len = (r1 - r0) * self.row_bytes;
        if len == 0 {
            return;
        }
        // SAFETY: the map is read-only and shared (`Mmap::map`), so MADV_DONTNEED only unmaps the
        // pages from this process: the next access reads the same bytes back from the page cache or
        // the file. No reference observes different contents. The range lies inside the map
        // (checked by `check_range` before every read that precedes a release). A failed advice is
        // harmless (the pages simply stay mapped), so its error is ignored.
        let _ = unsafe { self.mmap.unchecked_advise_range(UncheckedAdvice::DontNeed, off, len) };
    }

    /// Decodes rows `[r0, r1)` to f32 into `out` (`(r1 - r0) * cols` values).
    ///
    /// Errors: `Format` listing the rows that hold NaN or Inf.
    pub fn read_f32(&self, r0: usize, r1: usize, out: &mut [f32]) -> Result<()> {
        let src = self.check_range(r0, r1, out.len(), 1)?;
        let (cols, rb, codec) = (self.cols, self.row_bytes, self.codec);
        let mut bad: Vec<usize> = out
            .par_chunks_mut(cols)
            .zip(src.par_chunks(rb))
            .enumerate()
            .filter_map(|(i, (o, s))| {
                codec.decode(s, o);
                (!o.iter().all(|v| v.is_finite())).then_some(r0 + i)
            })
            .collect();
        self.release(r0, r1);
        if !bad.is_empty() {
            bad.sort_unstable();
            return Err(bad_rows_error(
                &self.path,
                &self.label(),
                &bad,
                "hold NaN or Inf values",
            ));
        }
        Ok(())
    }

    /// The ids of the rows in `[r0, r1)` that hold NaN or Inf, ascending. Decodes in chunks of
    /// rows (bounded memory), so it can scan a whole table after a chunked read found a bad row.
    pub fn nonfinite_rows(&self, r0: usize, r1: usize) -> Result<Vec<usize>> {
        self.check_rows(r0, r1)?;
        let (cols, rb, codec) = (self.cols, self.row_bytes, self.codec);
        // ~16 MB of source bytes per chunk, so pages can be released as the scan goes
        let step = ((16usize << 20) / rb.max(1)).max(1);
        let mut bad = Vec::new();
        let mut a = r0;
        while a < r1 {
            let b = (a + step).min(r1);
            let src = &self.mmap[self.start + a * rb..self.start + b * rb];
            let found: Vec<usize> = if raw_scannable(codec) {
                nonfinite_raw_rows(codec, src, rb, rb, a)
            } else {
                src.par_chunks(rb)
                    .enumerate()
                    .map_init(
                        || vec![0f32; cols],
                        |buf, (i, s)| {
                            codec.decode(s, buf);
                            (!buf.iter().all(|v| v.is_finite())).then_some(a + i)
                        },
                    )
                    .flatten()
                    .collect()
            };
            bad.extend(found);
            self.release(a, b);
            a = b;
        }
        Ok(bad)
    }

    /// Converts rows `[r0, r1)` to `dtype` little-endian bytes into `out`.
    ///
    /// Errors: `Format` listing the rows that hold NaN or Inf, or whose values overflow `dtype`.
    pub fn read_as(&self, r0: usize, r1: usize, dtype: ElemType, out: &mut [u8]) -> Result<()> {
        let src = self.check_range(r0, r1, out.len(), dtype.size())?;
        let (cols, rb, codec) = (self.cols, self.row_bytes, self.codec);
        let ob = cols * dtype.size();
        let result: Vec<(usize, bool)> = if dtype == codec {
            out.par_chunks_mut(ob)
                .zip(src.par_chunks(rb))
                .enumerate()
                .filter_map(|(i, (o, s))| {
                    o.copy_from_slice(s);
                    raw_has_nonfinite(codec, s).then_some((r0 + i, false))
                })
                .collect()
        } else {
            out.par_chunks_mut(ob)
                .zip(src.par_chunks(rb))
                .enumerate()
                .map_init(
                    || vec![0f32; cols],
                    |buf, (i, (o, s))| {
                        codec.decode(s, buf);
                        if !buf.iter().all(|v| v.is_finite()) {
                            return Some((r0 + i, false));
                        }
                        (!encode_row(buf, dtype, o)).then_some((r0 + i, true))
                    },
                )
                .flatten()
                .collect()
        };
        self.release(r0, r1);
        let nonfinite: Vec<usize> = result.iter().filter(|r| !r.1).map(|r| r.0).collect();
        if !nonfinite.is_empty() {
            return Err(bad_rows_error(
                &self.path,
                &self.label(),
                &nonfinite,
                "hold NaN or Inf values",
            ));
        }
        let overflow: Vec<usize> = result.iter().filter(|r| r.1).map(|r| r.0).collect();
        if !overflow.is_empty() {
            return Err(bad_rows_error(
                &self.path,
                &self.label(),
                &overflow,
                &format!("hold values too large for {} (pass dtype bf16 or f32)", dtype.name()),
            ));
        }
        Ok(())
    }
}

/// Encodes an f32 matrix (row-major, `cols` per row) as `dtype` bytes, checking for NaN/Inf and
/// overflow. `row0` numbers the rows in error messages.
pub fn encode_rows(src: &[f32], cols: usize, dtype: ElemType, row0: usize, out: &mut [u8]) -> Result<()> {
    if cols == 0 || !src.len().is_multiple_of(cols) || out.len() != src.len() * dtype.size() {
        return Err(CoreError::arg("out", "input and output lengths do not match"));
    }
    let mut bad: Vec<usize> = src
        .par_chunks(cols)
        .zip(out.par_chunks_mut(cols * dtype.size()))
        .enumerate()
        .filter_map(|(i, (s, o))| (!s.iter().all(|v| v.is_finite()) || !encode_row(s, dtype, o)).then_some(row0 + i))
        .collect();
    if !bad.is_empty() {
        bad.sort_unstable();
        return Err(bad_rows_error(
            "(converted table)",
            "table \"embeddings\"",
            &bad,
            &format!("hold NaN/Inf or values too large for {}", dtype.name()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random bytes (xorshift), so tests need no extra crate.
    fn bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Random blocks whose f16 scales are small finite values (random bits could be NaN).
    fn blocks(c: ElemType, n: usize, seed: u64) -> Vec<u8> {
        let (_, b) = c.layout();
        let mut v = bytes(n * b, seed);
        let scale_at: &[usize] = match c {
            ElemType::Q4_0 | ElemType::Q5_0 | ElemType::Q8_0 => &[0],
            ElemType::Q4_1 | ElemType::Q5_1 | ElemType::Q4K | ElemType::Q5K => &[0, 2],
            ElemType::Q6K => &[208],
            _ => &[],
        };
        for blk in v.chunks_exact_mut(b) {
            for (k, &at) in scale_at.iter().enumerate() {
                let s = f16::from_f32(0.01 + 0.003 * (blk[at + 1] as f32) - 0.2 * k as f32);
                blk[at..at + 2].copy_from_slice(&s.to_le_bytes());
            }
        }
        v
    }

    /// Scalar reference dequantization written from ggml's C kernels, element by element.
    fn reference(c: ElemType, s: &[u8]) -> Vec<f32> {
        let hf = |i: usize| f16::from_le_bytes([s[i], s[i + 1]]).to_f32();
        let mut y = Vec::new();
        match c {
            ElemType::Q8_0 => {
                for j in 0..32 {
                    y.push(s[2 + j] as i8 as f32 * hf(0));
                }
            }
            ElemType::Q4_0 | ElemType::Q4_1 => {
                let (qs, m) = if c == ElemType::Q4_0 {
                    (2, None)
                } else {
                    (4, Some(hf(2)))
                };
                for j in 0..32 {
                    let b = s[qs + j % 16];
                    let q = if j < 16 { b & 15 } else { b >> 4 };
                    y.push(match m {
                        None => (q as f32 - 8.0) * hf(0),
                        Some(m) => q as f32 * hf(0) + m,
                    });
                }
            }
            ElemType::Q5_0 | ElemType::Q5_1 => {
                let (qh_at, m) = if c == ElemType::Q5_0 {
                    (2, None)
                } else {
                    (4, Some(hf(2)))
                };
                let qh = u32::from_le_bytes([s[qh_at], s[qh_at + 1], s[qh_at + 2], s[qh_at + 3]]);
                for j in 0..32 {
                    let b = s[qh_at + 4 + j % 16];
                    let lo = if j < 16 { b & 15 } else { b >> 4 };
                    let q = lo as u32 | (((qh >> j) & 1) << 4);
                    y.push(match m {
                        None => (q as f32 - 16.0) * hf(0),
                        Some(m) => q as f32 * hf(0) + m,
                    });
                }
            }
            ElemType::Q4K | ElemType::Q5K => {
                let qs_at = if c == ElemType::Q4K { 16 } else { 48 };
                for j in 0..256 {
                    let sub = j / 32;
                    let (sc, m) = scale_min_k4(sub, &s[4..16]);
                    let b = s[qs_at + (j / 64) * 32 + j % 32];
                    let mut q = if sub.is_multiple_of(2) { b & 15 } else { b >> 4 };
                    if c == ElemType::Q5K && s[16 + j % 32] & (1 << sub) != 0 {
                        q += 16;
                    }
                    y.push(hf(0) * sc as f32 * q as f32 - hf(2) * m as f32);
                }
            }
            ElemType::Q6K => {
                for j in 0..256 {
                    let (n, r) = (j / 128, j % 128);
                    let (quarter, l) = (r / 32, r % 32);
                    let ql = s[64 * n + l + if quarter % 2 == 1 { 32 } else { 0 }];
                    let lo = if quarter < 2 { ql & 15 } else { ql >> 4 };
                    let hi = (s[128 + 32 * n + l] >> (2 * quarter)) & 3;
                    let q = (lo | (hi << 4)) as i32 - 32;
                    let sc = s[192 + 8 * n + l / 16 + 2 * quarter] as i8;
                    y.push(hf(208) * sc as f32 * q as f32);
                }
            }
            _ => unreachable!(),
        }
        y
    }

    #[test]
    fn dequantization_matches_scalar_reference() {
        for c in [
            ElemType::Q4_0,
            ElemType::Q4_1,
            ElemType::Q5_0,
            ElemType::Q5_1,
            ElemType::Q8_0,
            ElemType::Q4K,
            ElemType::Q5K,
            ElemType::Q6K,
        ] {
            let (e, b) = c.layout();
            let src = blocks(c, 7, 42 + b as u64);
            let mut got = vec![0f32; 7 * e];
            c.decode(&src, &mut got);
            let want: Vec<f32> = src.chunks_exact(b).flat_map(|blk| reference(c, blk)).collect();
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                    "{}: element {i}: {g} vs {w}",
                    c.name()
                );
            }
        }
    }

    #[test]
    fn float_round_trips_and_rounding() {
        let vals = [0.0f32, -1.5, 3.140625, 65504.0, 1e-8, -2.5e-3];
        for dt in [ElemType::F16, ElemType::BF16, ElemType::F32] {
            let mut out = vec![0u8; vals.len() * dt.size()];
            assert!(encode_row(&vals, dt, &mut out));
            let mut back = vec![0f32; vals.len()];
            dt.decode(&out, &mut back);
            for (v, b) in vals.iter().zip(&back) {
                assert!((v - b).abs() <= v.abs() * 4e-3 + 6e-8, "{dt:?}: {v} -> {b}");
            }
        }
        let mut out = vec![0u8; 2];
        assert!(!encode_row(&[1e6], ElemType::F16, &mut out), "1e6 overflows f16");
        assert!(encode_row(&[1e6], ElemType::BF16, &mut out));
    }

    #[test]
    fn nonfinite_bits() {
        // F64: non-finite exactly when the f32 it decodes to is
        let edge = 2f64.powi(128) - 2f64.powi(103);
        for v in [
            0.0,
            -1.5,
            f32::MAX as f64,
            edge.next_down(),
            edge,
            -edge,
            1e300,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
        ] {
            assert_eq!(
                raw_has_nonfinite(ElemType::F64, &v.to_le_bytes()),
                !(v as f32).is_finite(),
                "{v:e}"
            );
        }
        assert!(raw_has_nonfinite(ElemType::F16, &f16::INFINITY.to_le_bytes()));
        assert!(raw_has_nonfinite(ElemType::BF16, &bf16::NAN.to_le_bytes()));
        assert!(raw_has_nonfinite(ElemType::F32, &f32::NEG_INFINITY.to_le_bytes()));
        assert!(!raw_has_nonfinite(ElemType::F16, &f16::MAX.to_le_bytes()));
        assert!(!raw_has_nonfinite(ElemType::F32, &f32::MAX.to_le_bytes()));
    }

    #[test]
    fn nonfinite_scan_matches_decoding() {
        // random bit patterns (many NaN/Inf among them): the bit test, on every path, agrees with
        // decoding to f32, element by element and for prefixes of rows
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for codec in [ElemType::F16, ElemType::BF16, ElemType::F32, ElemType::F64] {
            let size = codec.bytes_for(1).unwrap();
            for len in [0usize, 1, 3, 17, 64, 200] {
                for _ in 0..200 {
                    // mostly finite: exponent bits forced off in most elements
                    let mut row = vec![0u8; len * size];
                    for e in row.chunks_exact_mut(size) {
                        let v = next().to_le_bytes();
                        e.copy_from_slice(&v[..size]);
                        if next() % 8 != 0 {
                            e[size - 1] &= 0x3F;
                        }
                    }
                    let mut dec = vec![0f32; len];
                    if len > 0 {
                        codec.decode(&row, &mut dec);
                    }
                    let want = dec.iter().any(|v| !v.is_finite());
                    assert_eq!(raw_has_nonfinite_impl(codec, &row), want, "{codec:?} {row:?}");
                    assert_eq!(raw_has_nonfinite(codec, &row), want, "{codec:?} {row:?}");
                    let rows = nonfinite_raw_rows(codec, &row, size.max(1), size, 5);
                    let each: Vec<usize> = (0..len).filter(|&i| !dec[i].is_finite()).map(|i| i + 5).collect();
                    assert_eq!(rows, each);
                }
            }
        }
        // only the first `used` bytes of each row count
        let mut t = vec![0u8; 4 * 8];
        t[2 * 8 + 6..2 * 8 + 8].copy_from_slice(&f16::NAN.to_le_bytes());
        assert_eq!(nonfinite_raw_rows(ElemType::F16, &t, 8, 8, 0), vec![2]);
        assert!(nonfinite_raw_rows(ElemType::F16, &t, 8, 6, 0).is_empty());
    }

    fn write_st(dir: &Path, name: &str, dtype: &str, shape: [usize; 2], data: &[u8]) -> std::path::PathBuf {
        let header = format!(
            r#"{{"w":{{"dtype":"{dtype}","shape":[{},{}],"data_offsets":[0,{}]}}}}"#,
            shape[0],
            shape[1],
            data.len()
        );
        let p = dir.join(name);
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(header.as_bytes());
        b.extend_from_slice(data);
        std::fs::write(&p, b).unwrap();
        p
    }

    #[test]
    fn table_reads_rows_and_reports_bad_rows() {
        let d = std::env::temp_dir().join(format!("tokvec-convert-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let vals: Vec<f32> = (0..12).map(|i| i as f32 * 0.5 - 2.0).collect();
        let data: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let p = write_st(&d, "ok.safetensors", "F32", [4, 3], &data);
        let t = Table::from_safetensors(&p, "w").unwrap();
        assert_eq!((t.rows(), t.cols()), (4, 3));
        let mut out = vec![0f32; 6];
        t.read_f32(1, 3, &mut out).unwrap();
        assert_eq!(out, vals[3..9]);
        let mut raw = vec![0u8; 12 * 4];
        t.read_as(0, 4, ElemType::F32, &mut raw).unwrap();
        assert_eq!(raw, data);
        let mut h = vec![0u8; 12 * 2];
        t.read_as(0, 4, ElemType::F16, &mut h).unwrap();
        assert_eq!(f16::from_le_bytes([h[2], h[3]]).to_f32(), -1.5);
        assert!(t.read_f32(3, 5, &mut [0f32; 6]).is_err());
        assert!(t.read_f32(0, 1, &mut [0f32; 2]).is_err());

        let mut bad = vals.clone();
        bad[4] = f32::NAN;
        bad[11] = f32::INFINITY;
        let data: Vec<u8> = bad.iter().flat_map(|v| v.to_le_bytes()).collect();
        let p = write_st(&d, "nan.safetensors", "F32", [4, 3], &data);
        let t = Table::from_safetensors(&p, "w").unwrap();
        let e = t.read_f32(0, 4, &mut [0f32; 12]).unwrap_err().to_string();
        assert!(e.contains("row ids 1, 3") && e.contains("nan.safetensors"), "{e}");
        let e = t.read_as(0, 4, ElemType::F32, &mut [0u8; 48]).unwrap_err().to_string();
        assert!(e.contains("row ids 1, 3"), "{e}");

        let p = write_st(&d, "i32.safetensors", "I32", [4, 3], &[0u8; 48]);
        assert!(Table::from_safetensors(&p, "w")
            .unwrap_err()
            .to_string()
            .contains("unsupported dtype I32"));

        // a table reads through its file's map instead of mapping the file a second time
        let f = SafetensorsFile::open(d.join("ok.safetensors")).unwrap();
        let t = Table::from_safetensors_file(&f, "w").unwrap();
        assert!(Arc::ptr_eq(f.mmap(), &t.mmap));
        let e = t.read_f32(2, 5, &mut []).unwrap_err().to_string();
        assert!(e.contains("start=2, end=5") && e.contains("4 rows"), "{e}");
    }
}
