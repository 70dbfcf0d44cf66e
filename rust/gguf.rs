//! GGUF files (llama.cpp): a bounds-checked header parser and the tensor types it describes.
//!
//! Layout (little endian, versions 2 and 3): magic `GGUF`, u32 version, u64 tensor count, u64
//! metadata count, the metadata key/value pairs, one info record per tensor (name, n_dims, dims
//! in ggml order — fastest-varying first —, ggml type, offset relative to the data section), then
//! padding up to `general.alignment` (default 32) and the data section.
//!
//! Nothing in the header is trusted: every length, count and offset goes through checked
//! arithmetic against the bytes that are actually there, string and array lengths are capped by
//! the bytes left (and arrays by a nesting depth), n_dims is at most 4, every tensor's byte range
//! must lie inside the file, and unknown ggml types, duplicate tensor names, a zero or non-power-
//! of-two alignment, version 1 and big-endian files are errors naming the file. The header may be
//! at most [`MAX_HEADER_SIZE`] bytes (the safetensors cap). Counts are bounds, never allocation
//! sizes: memory grows with what is actually parsed, and metadata arrays are kept as byte ranges
//! of the file, decoded on demand, so a 100M-element array costs no more than a number. The parser
//! works on a byte slice, so it is fuzzed and property-tested without files.

use std::fmt::Display;
use std::path::Path;

use crate::dtype::ElemType;
use crate::error::{CoreError, Result};
use crate::header::{map_file, MappedFile, MAX_HEADER_SIZE};

/// The file magic.
pub const MAGIC: &[u8; 4] = b"GGUF";
/// The largest n_dims a tensor may have (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;
/// The deepest nesting of metadata arrays accepted.
pub const MAX_ARRAY_DEPTH: u32 = 4;
/// Alignment of the data section when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// uint8
    U8(u8),
    /// int8
    I8(i8),
    /// uint16
    U16(u16),
    /// int16
    I16(i16),
    /// uint32
    U32(u32),
    /// int32
    I32(i32),
    /// float32
    F32(f32),
    /// bool (a byte that must be 0 or 1)
    Bool(bool),
    /// a UTF-8 string
    Str(String),
    /// a string whose bytes are not valid UTF-8, kept as bytes
    Bytes(Vec<u8>),
    /// an array (elements all of one type), kept as a range of the file and decoded on demand
    Array(MetaArray),
    /// uint64
    U64(u64),
    /// int64
    I64(i64),
    /// float64
    F64(f64),
}

impl Value {
    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    #[cfg(any(test, feature = "internals"))]
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a string, if it is one.
    #[cfg(any(test, feature = "internals"))]
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// A metadata array as it lies in the file: its element type, its length and the byte range of its
/// elements (validated by [`parse`]). Nothing is decoded at parse time, so an array costs the same
/// few bytes of memory whatever its length; [`MetaArray::values`] decodes the elements on demand
/// and [`MetaArray::raw`] hands out the little-endian bytes of a numeric array in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetaArray {
    /// The GGUF value type of the elements (0 = uint8, ..., 8 = string, 9 = array, ..., 12 = float64).
    pub elem: u32,
    /// Number of elements.
    pub len: usize,
    /// First byte of the first element in the file.
    pub start: usize,
    /// One past the last byte of the last element.
    pub end: usize,
}

impl MetaArray {
    /// Bytes per element for numeric and bool elements; None for strings and arrays (variable size).
    pub fn elem_size(&self) -> Option<usize> {
        fixed_size(self.elem)
    }

    /// The elements' little-endian bytes in `file` (the bytes the header was parsed from), for
    /// numeric and bool arrays; None for strings and nested arrays, or bytes too short.
    pub fn raw<'a>(&self, file: &'a [u8]) -> Option<&'a [u8]> {
        self.elem_size()?;
        file.get(self.start..self.end)
    }

    /// The elements, decoded one by one from `file` (the bytes the header was parsed from); nested
    /// arrays come back as [`Value::Array`] again. Each item is an error only if `file` is not the
    /// buffer the header was parsed from.
    pub fn values<'a>(&self, file: &'a [u8], path: &'a str) -> impl Iterator<Item = Result<Value>> + 'a {
        let mut c = Cursor {
            b: file.get(..self.end).unwrap_or(&[]),
            pos: self.start,
            limit: self.end,
            path,
        };
        let elem = self.elem;
        (0..self.len).map(move |_| c.value(elem, "array element", 0))
    }
}

/// The encoded size of a fixed-size metadata type (numbers and bool); None for strings, arrays and
/// unknown types.
fn fixed_size(ty: u32) -> Option<usize> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        10..=12 => 8,
        _ => return None,
    })
}

/// The smallest encoding of one value of a metadata type (bounds array counts): a string is at
/// least its 8-byte length, an array its 4-byte type and 8-byte count.
fn min_size(ty: u32) -> Option<usize> {
    match ty {
        8 => Some(8),
        9 => Some(12),
        _ => fixed_size(ty),
    }
}

/// One tensor's info record, with its data range made absolute and checked against the file.
#[derive(Debug, Clone)]
pub struct GgufTensor {
    /// The tensor's name.
    pub name: String,
    /// Its ggml type.
    pub ggml_type: ElemType,
    /// Dimensions in ggml order: `dims[0]` is the row length (fastest varying).
    pub dims: Vec<u64>,
    /// First byte in the file.
    pub start: usize,
    /// One past the last byte in the file.
    pub end: usize,
}

impl GgufTensor {
    /// The shape in row-major (numpy) order: `dims` reversed, e.g. `[rows, cols]`.
    pub fn shape(&self) -> Vec<u64> {
        self.dims.iter().rev().copied().collect()
    }

    /// Bytes of data.
    pub fn nbytes(&self) -> usize {
        self.end - self.start
    }
}

/// A parsed, validated GGUF header.
#[derive(Debug, Clone)]
pub struct GgufHeader {
    /// The format version (2 or 3).
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    /// Tensor infos in file order.
    pub tensors: Vec<GgufTensor>,
    /// The data section's alignment.
    #[cfg(any(test, feature = "internals"))]
    pub alignment: u64,
    /// Offset of the data section in the file.
    #[cfg(any(test, feature = "internals"))]
    pub data_start: usize,
}

/// A bounds-checked little-endian reader over the header bytes. Reads stop at `limit` (the
/// header cap, or the end of an array being decoded) as well as at the end of the bytes.
///
/// Each read takes what it is for (`what`), formatted only when it fails: the parser walks every
/// element of every metadata array, and building a message per element would dominate its time.
struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
    limit: usize,
    path: &'a str,
}

impl<'a> Cursor<'a> {
    fn err(&self, msg: impl Into<String>) -> CoreError {
        CoreError::format(self.path, msg.into())
    }

    fn left(&self) -> usize {
        self.limit.min(self.b.len()).saturating_sub(self.pos)
    }

    /// Whether reads stop at the header cap before the end of the bytes.
    fn capped(&self) -> bool {
        self.limit < self.b.len()
    }

    /// The error for a read that runs past the header cap.
    fn past_cap(&self, what: impl Display + Copy, at: usize) -> CoreError {
        self.err(format!(
            "{what} at byte {at} runs past byte {MAX_HEADER_SIZE}, the cap on the size of a GGUF header (metadata \
             and tensor infos): the file is corrupt or not GGUF"
        ))
    }

    fn take(&mut self, n: usize, what: impl Display + Copy) -> Result<&'a [u8]> {
        if n > self.left() {
            if self.capped() && n <= self.b.len().saturating_sub(self.pos) {
                return Err(self.past_cap(what, self.pos));
            }
            return Err(self.err(format!(
                "{what} at byte {} needs {n} bytes but the file ends after {} more: truncated or not GGUF",
                self.pos,
                self.left()
            )));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: impl Display + Copy) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: impl Display + Copy) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: impl Display + Copy) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A u64 length or count that must fit in the bytes left, at `min_size` bytes per item. The
    /// count is only a bound: callers never reserve memory from it beyond [`PREALLOC`] items.
    fn count(&mut self, what: impl Display + Copy, min_size: usize) -> Result<usize> {
        let at = self.pos;
        let n = self.u64(what)?;
        let need = usize::try_from(n).ok().and_then(|n| n.checked_mul(min_size.max(1)));
        match need {
            Some(need) if need <= self.left() => Ok(n as usize),
            Some(need) if self.capped() && need <= self.b.len().saturating_sub(self.pos) => {
                Err(self.past_cap(format_args!("{what} ({n})"), at))
            }
            _ => Err(self.err(format!(
                "{what} at byte {at} is {n}, more than the {} bytes left in the file can hold",
                self.left()
            ))),
        }
    }

    /// The bytes of a string (length-prefixed), in place.
    fn raw_string(&mut self, what: impl Display + Copy) -> Result<&'a [u8]> {
        let n = self.count(format_args!("length of {what}"), 1)?;
        self.take(n, what)
    }

    fn string(&mut self, what: impl Display + Copy) -> Result<Value> {
        let s = self.raw_string(what)?;
        Ok(match std::str::from_utf8(s) {
            Ok(v) => Value::Str(v.to_string()),
            Err(_) => Value::Bytes(s.to_vec()),
        })
    }

    fn name(&mut self, what: impl Display + Copy) -> Result<&'a str> {
        let at = self.pos;
        let s = self.raw_string(what)?;
        std::str::from_utf8(s).map_err(|_| self.err(format!("{what} at byte {at} is not valid UTF-8")))
    }

    fn bool(&self, v: u8, key: &str, at: usize) -> Result<bool> {
        match v {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(self.err(format!("metadata {key:?}: bool at byte {at} is {v}, not 0 or 1"))),
        }
    }

    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>(key)?[0]),
            1 => Value::I8(self.array::<1>(key)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(key)?)),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(i32::from_le_bytes(self.array(key)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(key)?)),
            7 => {
                let at = self.pos;
                let v = self.array::<1>(key)?[0];
                Value::Bool(self.bool(v, key, at)?)
            }
            8 => self.string(format_args!("metadata {key:?}"))?,
            9 => Value::Array(self.meta_array(key, depth)?),
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(i64::from_le_bytes(self.array(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(key)?)),
            other => {
                return Err(self.err(format!(
                    "metadata {key:?} has unknown value type {other} (at byte {})",
                    self.pos
                )))
            }
        })
    }

    /// Reads an array's header and walks its elements, validating them (lengths, bools, nesting)
    /// without decoding or allocating anything.
    fn meta_array(&mut self, key: &str, depth: u32) -> Result<MetaArray> {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(self.err(format!(
                "metadata {key:?}: arrays nested deeper than {MAX_ARRAY_DEPTH} levels"
            )));
        }
        let at = self.pos;
        let elem = self.u32(key)?;
        let min = min_size(elem)
            .ok_or_else(|| self.err(format!("metadata {key:?}: array at byte {at} has unknown type {elem}")))?;
        let len = self.count(format_args!("metadata {key:?} array length"), min)?;
        let start = self.pos;
        match (fixed_size(elem), elem) {
            (Some(size), _) => {
                // count() checked len * size against the bytes left
                let s = self.take(len * size, key)?;
                if elem == 7 {
                    if let Some(i) = s.iter().position(|&b| b > 1) {
                        self.bool(s[i], key, start + i)?;
                    }
                }
            }
            (None, 8) => {
                for _ in 0..len {
                    self.raw_string(format_args!("metadata {key:?}"))?;
                }
            }
            (None, _) => {
                for _ in 0..len {
                    self.meta_array(key, depth + 1)?;
                }
            }
        }
        Ok(MetaArray {
            elem,
            len,
            start,
            end: self.pos,
        })
    }
}

/// The most metadata pairs or tensor infos reserved ahead of parsing them: counts in the file are
/// only bounds, and a corrupt count must not reserve memory for items that are not there.
const PREALLOC: usize = 1024;

/// Parses and validates a GGUF header. `bytes` is the whole file; `path` names it in errors.
///
/// Memory is proportional to the number of metadata pairs and tensors actually read (never to a
/// count in the file), and arrays are not decoded; the header may not be longer than
/// [`MAX_HEADER_SIZE`] bytes.
///
/// Errors: `Format` naming the file and the problem; never panics, whatever the bytes.
pub fn parse(bytes: &[u8], path: &str) -> Result<GgufHeader> {
    let mut c = Cursor {
        b: bytes,
        pos: 0,
        limit: MAX_HEADER_SIZE,
        path,
    };
    if bytes.len() < 4 || &bytes[..4] != MAGIC {
        let got = &bytes[..bytes.len().min(4)];
        return Err(c.err(format!("not a GGUF file: the magic is {got:?}, expected \"GGUF\"")));
    }
    c.pos = 4;
    let version = c.u32("version")?;
    match version {
        2 | 3 => {}
        1 => return Err(c.err("GGUF version 1 is not supported (only 2 and 3); re-convert the model")),
        v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
            return Err(c.err("big-endian GGUF files are not supported; use a little-endian conversion"))
        }
        v => return Err(c.err(format!("unknown GGUF version {v} (this reader knows 2 and 3)"))),
    }
    // min sizes: a tensor info is >= 8 (name len) + 4 (n_dims) + 4 (type) + 8 (offset) bytes;
    // a key/value pair is >= 8 (key len) + 4 (type) + 1 bytes.
    let n_tensors = c.count("tensor count", 24)?;
    let n_kv = c.count("metadata count", 13)?;
    let mut metadata = Vec::with_capacity(n_kv.min(PREALLOC));
    let mut alignment = DEFAULT_ALIGNMENT;
    for i in 0..n_kv {
        let key = c.name(&format!("metadata key #{i}"))?;
        let ty = c.u32(&format!("type of metadata {key:?}"))?;
        let v = c.value(ty, key, 0)?;
        if key == "general.alignment" {
            alignment = match v {
                Value::U32(a) if a > 0 && a.is_power_of_two() => a as u64,
                ref other => return Err(c.err(format!("general.alignment must be a power of two u32, got {other:?}"))),
            };
        }
        metadata.push((key.to_string(), v));
    }
    // tensors are read with their offsets relative to the data section, made absolute below once the
    // header's end (hence the data section's start) is known
    let mut tensors = Vec::with_capacity(n_tensors.min(PREALLOC));
    let mut offsets = Vec::with_capacity(n_tensors.min(PREALLOC));
    let mut seen = std::collections::HashSet::with_capacity(n_tensors.min(PREALLOC));
    for i in 0..n_tensors {
        let name = c.name(&format!("name of tensor #{i}"))?;
        if !seen.insert(name) {
            return Err(c.err(format!("tensor {name:?} is listed twice")));
        }
        let nd = c.u32(&format!("n_dims of tensor {name:?}"))?;
        if nd == 0 || nd > MAX_DIMS {
            return Err(c.err(format!("tensor {name:?} has n_dims {nd}; expected 1 to {MAX_DIMS}")));
        }
        let mut dims = Vec::with_capacity(nd as usize);
        for _ in 0..nd {
            dims.push(c.u64(&format!("dims of tensor {name:?}"))?);
        }
        let id = c.u32(&format!("type of tensor {name:?}"))?;
        let ty = ElemType::from_ggml(id).ok_or_else(|| c.err(format!("tensor {name:?} has unknown ggml type {id}")))?;
        offsets.push(c.u64(&format!("offset of tensor {name:?}"))?);
        tensors.push(GgufTensor {
            name: name.to_string(),
            ggml_type: ty,
            dims,
            start: 0,
            end: 0,
        });
    }
    drop(seen);
    let header_end = c.pos as u64;
    let data_start = header_end
        .checked_add(alignment - 1)
        .map(|x| x / alignment * alignment)
        .filter(|&x| x <= bytes.len() as u64)
        .ok_or_else(|| {
            c.err(format!(
                "the data section (after byte {header_end}) starts past the end of the file"
            ))
        })?;
    let data_start = data_start as usize;
    for (t, off) in tensors.iter_mut().zip(offsets) {
        let (name, dims, ty) = (&t.name, &t.dims, t.ggml_type);
        let (block, bsize) = ty.layout();
        let (block, bsize) = (block as u64, bsize as u64);
        let bad = |msg: String| CoreError::format(path, format!("tensor {name:?} ({} {dims:?}): {msg}", ty.name()));
        dims.iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| bad("its dimensions overflow when multiplied".into()))?;
        if !dims[0].is_multiple_of(block) {
            return Err(bad(format!(
                "row length {} is not a multiple of the block size {block}",
                dims[0]
            )));
        }
        let nbytes = (dims[0] / block)
            .checked_mul(bsize)
            .and_then(|row| dims[1..].iter().try_fold(row, |a, &d| a.checked_mul(d)))
            .ok_or_else(|| bad("its byte size overflows".into()))?;
        if !off.is_multiple_of(alignment) {
            return Err(bad(format!(
                "data offset {off} is not a multiple of the alignment {alignment}"
            )));
        }
        let start = (data_start as u64).checked_add(off);
        let end = start.and_then(|s| s.checked_add(nbytes));
        match (start, end) {
            (Some(s), Some(e)) if e <= bytes.len() as u64 => {
                t.start = s as usize;
                t.end = e as usize;
            }
            _ => {
                return Err(bad(format!(
                    "its data (offset {off}, {nbytes} bytes after the data section at byte {data_start}) lies past the \
                     end of the file ({} bytes): truncated file or corrupt offset",
                    bytes.len()
                )))
            }
        }
    }
    Ok(GgufHeader {
        version,
        metadata,
        tensors,
        #[cfg(any(test, feature = "internals"))]
        alignment,
        #[cfg(any(test, feature = "internals"))]
        data_start,
    })
}

/// A validated, memory-mapped GGUF file.
#[derive(Debug)]
pub struct GgufFile {
    file: MappedFile,
    header: GgufHeader,
}

impl std::ops::Deref for GgufFile {
    type Target = MappedFile;

    fn deref(&self) -> &MappedFile {
        &self.file
    }
}

impl GgufFile {
    /// Maps and validates a GGUF file.
    ///
    /// Errors: `NotFound`, `Io`, or `Format` naming the file and the problem.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let p = path.as_ref();
        let ps = p.display().to_string();
        let mmap = map_file(p)?;
        let header = parse(&mmap, &ps)?;
        Ok(GgufFile {
            file: MappedFile::new(ps, mmap),
            header,
        })
    }

    /// The parsed header.
    pub fn header(&self) -> &GgufHeader {
        &self.header
    }

    /// Looks a tensor up by name; the error lists what the file has.
    pub fn tensor(&self, name: &str) -> Result<&GgufTensor> {
        CoreError::find_tensor(self.path(), &self.header.tensors, name, |t| &t.name)
    }

    /// The elements of a metadata array of this file, decoded one by one.
    pub fn array_values<'a>(&'a self, a: &MetaArray) -> impl Iterator<Item = Result<Value>> + 'a {
        a.values(self.mmap(), self.path())
    }

    /// The little-endian bytes of a numeric or bool metadata array of this file, in place in the
    /// map; None for strings and nested arrays.
    pub fn array_raw(&self, a: &MetaArray) -> Option<&[u8]> {
        a.raw(self.mmap())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes GGUF bytes: `kv` as (key, type, encoded value), tensors as (name, dims, type, data).
    pub(crate) fn build(kv: &[(&str, u32, Vec<u8>)], tensors: &[(&str, Vec<u64>, u32, Vec<u8>)]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"GGUF");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        b.extend_from_slice(&(kv.len() as u64).to_le_bytes());
        for (k, ty, v) in kv {
            b.extend_from_slice(&(k.len() as u64).to_le_bytes());
            b.extend_from_slice(k.as_bytes());
            b.extend_from_slice(&ty.to_le_bytes());
            b.extend_from_slice(v);
        }
        let mut off = 0u64;
        let mut offs = Vec::new();
        for (name, dims, ty, data) in tensors {
            b.extend_from_slice(&(name.len() as u64).to_le_bytes());
            b.extend_from_slice(name.as_bytes());
            b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                b.extend_from_slice(&d.to_le_bytes());
            }
            b.extend_from_slice(&ty.to_le_bytes());
            b.extend_from_slice(&off.to_le_bytes());
            offs.push(off);
            off += (data.len() as u64).div_ceil(32) * 32;
        }
        let data_start = b.len().div_ceil(32) * 32;
        for (i, (_, _, _, data)) in tensors.iter().enumerate() {
            b.resize(data_start + offs[i] as usize, 0);
            b.extend_from_slice(data);
        }
        b.resize(b.len().max(data_start), 0);
        b
    }

    fn s(v: &str) -> Vec<u8> {
        let mut b = (v.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(v.as_bytes());
        b
    }

    #[test]
    fn parses_metadata_and_tensors() {
        let mut arr = 8u32.to_le_bytes().to_vec();
        arr.extend_from_slice(&2u64.to_le_bytes());
        arr.extend(s("a"));
        arr.extend(s("bc"));
        let data: Vec<u8> = (0..2 * 32 * 4).map(|i| i as u8).collect();
        let b = build(
            &[
                ("general.architecture", 8, s("llama")),
                ("tokenizer.ggml.tokens", 9, arr),
                ("x.u32", 4, 7u32.to_le_bytes().to_vec()),
                ("x.bool", 7, vec![1]),
            ],
            &[("token_embd.weight", vec![32, 2], 0, data.clone())],
        );
        let h = parse(&b, "t.gguf").unwrap();
        assert_eq!(h.version, 3);
        assert_eq!(h.metadata[0].1, Value::Str("llama".into()));
        let Value::Array(a) = h.metadata[1].1 else {
            panic!("{:?}", h.metadata[1].1)
        };
        assert_eq!((a.elem, a.len, a.raw(&b)), (8, 2, None));
        let items: Vec<Value> = a.values(&b, "t.gguf").collect::<Result<_>>().unwrap();
        assert_eq!(items, vec![Value::Str("a".into()), Value::Str("bc".into())]);
        assert_eq!(h.metadata[2].1.as_u64(), Some(7));
        assert_eq!(h.metadata[3].1, Value::Bool(true));
        let t = &h.tensors[0];
        assert_eq!(t.shape(), vec![2, 32]);
        assert_eq!(&b[t.start..t.end], &data[..]);
        assert_eq!(t.ggml_type.name(), "F32");
    }

    #[test]
    fn rejects_bad_headers() {
        let good = build(&[], &[("t", vec![32, 2], 0, vec![0; 256])]);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("magic", b"GGUX\x03\0\0\0".to_vec()),
            ("version 1", {
                let mut b = good.clone();
                b[4] = 1;
                b
            }),
            ("big-endian", {
                let mut b = good.clone();
                b[4..8].copy_from_slice(&3u32.to_be_bytes());
                b
            }),
            ("truncated data", good[..good.len() - 1].to_vec()),
            ("tensor count", {
                let mut b = good.clone();
                b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
                b
            }),
            ("n_dims", build(&[], &[("t", vec![1, 1, 1, 1, 1], 0, vec![0; 4])])),
            ("unknown type", build(&[], &[("t", vec![32], 77, vec![0; 4])])),
            ("block size", build(&[], &[("t", vec![31], 8, vec![0; 34])])),
            ("overflow", build(&[], &[("t", vec![u64::MAX / 2, 4], 0, vec![0; 4])])),
            (
                "duplicate",
                build(&[], &[("t", vec![1], 0, vec![0; 4]), ("t", vec![1], 0, vec![0; 4])]),
            ),
            (
                "string past end",
                build(&[("k", 8, (1u64 << 40).to_le_bytes().to_vec())], &[]),
            ),
            (
                "alignment",
                build(&[("general.alignment", 4, 3u32.to_le_bytes().to_vec())], &[]),
            ),
        ];
        for (what, b) in cases {
            let e = parse(&b, "bad.gguf").unwrap_err();
            assert!(matches!(e, CoreError::Format { .. }), "{what}: {e}");
            assert!(e.to_string().starts_with("bad.gguf: "), "{what}: {e}");
        }
    }

    /// The test binary's allocator, recording the largest single allocation the current thread
    /// asks for while armed: the parser must never size a buffer from a count in the file.
    struct LargestAlloc;

    thread_local! {
        static ARMED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
        static LARGEST: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    fn record(size: usize) {
        let _ = ARMED.try_with(|a| {
            if a.get() {
                let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
            }
        });
    }

    // SAFETY: forwards every call to the system allocator unchanged; the thread-locals are const
    // initialized `Cell`s without destructors, so recording never allocates or re-enters.
    unsafe impl std::alloc::GlobalAlloc for LargestAlloc {
        unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
            record(l.size());
            // SAFETY: the caller's contract, passed on unchanged.
            unsafe { std::alloc::System.alloc(l) }
        }
        unsafe fn alloc_zeroed(&self, l: std::alloc::Layout) -> *mut u8 {
            record(l.size());
            // SAFETY: the caller's contract, passed on unchanged.
            unsafe { std::alloc::System.alloc_zeroed(l) }
        }
        unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
            // SAFETY: the caller's contract, passed on unchanged.
            unsafe { std::alloc::System.dealloc(p, l) }
        }
        unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, new: usize) -> *mut u8 {
            record(new);
            // SAFETY: the caller's contract, passed on unchanged.
            unsafe { std::alloc::System.realloc(p, l, new) }
        }
    }

    #[global_allocator]
    static ALLOC: LargestAlloc = LargestAlloc;

    /// Runs `f` and returns its result with the largest allocation it made on this thread.
    fn largest_alloc<T>(f: impl FnOnce() -> T) -> (T, usize) {
        LARGEST.with(|l| l.set(0));
        ARMED.with(|a| a.set(true));
        let out = f();
        ARMED.with(|a| a.set(false));
        (out, LARGEST.with(|l| l.get()))
    }

    /// A file of `len` bytes (zeros after the header's first bytes): magic, version 3, the counts,
    /// then `rest`.
    fn claims(n_tensors: u64, n_kv: u64, rest: &[u8], len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        let mut h = b"GGUF".to_vec();
        h.extend_from_slice(&3u32.to_le_bytes());
        h.extend_from_slice(&n_tensors.to_le_bytes());
        h.extend_from_slice(&n_kv.to_le_bytes());
        h.extend_from_slice(rest);
        b[..h.len()].copy_from_slice(&h);
        b
    }

    #[test]
    fn counts_in_the_file_never_size_an_allocation() {
        const MB: usize = 1 << 20;
        // a million metadata pairs claimed (13 MB could hold them), the first has an unknown type
        let mut kv = s("k");
        kv.extend_from_slice(&99u32.to_le_bytes());
        let b = claims(0, 1_000_000, &kv, 14 * MB);
        let (r, big) = largest_alloc(|| parse(&b, "kv.gguf"));
        assert!(r.unwrap_err().to_string().contains("unknown value type 99"));
        assert!(big < MB, "{big} bytes reserved for metadata pairs that are not there");
        // a million tensors claimed (24 MB could hold them), the first has n_dims 0
        let b = claims(1_000_000, 0, &[], 25 * MB);
        let (r, big) = largest_alloc(|| parse(&b, "t.gguf"));
        assert!(r.unwrap_err().to_string().contains("n_dims 0"));
        assert!(big < MB, "{big} bytes reserved for tensor infos that are not there");
        // a valid 16M-element uint8 array and a 1M-element string array: kept as ranges
        let mut arr = s("big");
        arr.extend_from_slice(&9u32.to_le_bytes());
        arr.extend_from_slice(&0u32.to_le_bytes());
        arr.extend_from_slice(&(16 * MB as u64).to_le_bytes());
        let mut b = claims(0, 2, &arr, 16 * MB + 100 + 8 * MB + 100);
        let at = arr.len() + 24 + 16 * MB;
        let mut strs = s("strs");
        strs.extend_from_slice(&9u32.to_le_bytes());
        strs.extend_from_slice(&8u32.to_le_bytes());
        strs.extend_from_slice(&(MB as u64).to_le_bytes());
        b[at..at + strs.len()].copy_from_slice(&strs);
        b[24 + arr.len() + 7] = 200;
        let (h, big) = largest_alloc(|| parse(&b, "arr.gguf"));
        let h = h.unwrap();
        assert!(big < MB, "{big} bytes allocated to parse two arrays");
        let Value::Array(a) = h.metadata[0].1 else { panic!() };
        assert_eq!((a.elem, a.len, a.raw(&b).map(|r| r.len())), (0, 16 * MB, Some(16 * MB)));
        let first: Vec<Value> = a.values(&b, "arr.gguf").take(9).collect::<Result<_>>().unwrap();
        assert_eq!(first[7], Value::U8(200));
        assert_eq!(first[8], Value::U8(0));
        let Value::Array(a) = h.metadata[1].1 else { panic!() };
        assert_eq!((a.elem, a.len, a.end - a.start), (8, MB, 8 * MB));
        assert_eq!(
            a.values(&b, "arr.gguf").last().unwrap().unwrap(),
            Value::Str(String::new())
        );
    }

    #[test]
    fn headers_past_the_cap_are_refused() {
        // a 150 MB string in a file long enough to hold it: refused at the 100 MB header cap
        // before anything is read or allocated (the zeroed buffer costs no memory until touched)
        let mut kv = s("k");
        kv.extend_from_slice(&8u32.to_le_bytes());
        kv.extend_from_slice(&150_000_000u64.to_le_bytes());
        let b = claims(0, 1, &kv, 160_000_000);
        let (r, big) = largest_alloc(|| parse(&b, "cap.gguf"));
        let e = r.unwrap_err().to_string();
        assert!(
            e.starts_with("cap.gguf: ") && e.contains("cap on the size of a GGUF header"),
            "{e}"
        );
        assert!(big < 1 << 20);
        // the same pair in a file too short for it is reported as truncated, not as over the cap
        let b = claims(0, 1, &kv, 1000);
        let e = parse(&b, "short.gguf").unwrap_err().to_string();
        assert!(e.contains("bytes left in the file"), "{e}");
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_random_bytes(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let mut b = b"GGUF\x03\0\0\0".to_vec();
            b.extend_from_slice(&bytes);
            let _ = parse(&b, "r.gguf");
            let _ = parse(&bytes, "r.gguf");
        }

        #[test]
        fn never_panics_on_mutated_files(pos in 0usize..400, val in proptest::prelude::any::<u8>(), cut in 0usize..400) {
            let mut arr = 8u32.to_le_bytes().to_vec();
            arr.extend_from_slice(&2u64.to_le_bytes());
            arr.extend(s("a"));
            arr.extend(s("bc"));
            let mut b = build(
                &[("tokenizer.ggml.tokens", 9, arr), ("general.alignment", 4, 32u32.to_le_bytes().to_vec())],
                &[("w", vec![32, 2], 8, vec![0; 68]), ("v", vec![4], 1, vec![0; 8])],
            );
            let n = b.len();
            b[pos % n] = val;
            b.truncate(n - cut.min(n));
            if let Ok(h) = parse(&b, "m.gguf") {
                for t in &h.tensors {
                    proptest::prop_assert!(t.start <= t.end && t.end <= b.len());
                }
            }
        }
    }
}
