//! Memory-mapped safetensors files: the header is parsed and validated before any byte of tensor
//! data is trusted, then tensors are handed out as byte slices that point into the map (no copy).
//!
//! Validation is done by the reference `safetensors` crate (8-byte length, a 100 MB header cap,
//! UTF-8 JSON object, known dtypes, `shape × dtype size == byte length` with checked arithmetic,
//! offsets contiguous, in order, non-overlapping and covering the data section exactly) plus the
//! checks below (a file, not a directory; at least 8 bytes; duplicate tensor names). Every error
//! names the file.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use memmap2::{Mmap, MmapMut};
use safetensors::tensor::SafeTensorError;
use safetensors::SafeTensors;

use crate::dtype::ElemType;
use crate::error::{CoreError, Result};

/// One tensor's header entry, with offsets made absolute within the file.
#[derive(Debug, Clone)]
pub struct TensorMeta {
    /// The tensor's name.
    pub name: String,
    /// Its element type.
    pub dtype: ElemType,
    /// Its shape.
    pub shape: Vec<usize>,
    /// First byte in the file.
    pub start: usize,
    /// One past the last byte in the file.
    pub end: usize,
}

/// A model file held as a read-only map, with the path it was opened with (which errors name).
/// [`SafetensorsFile`] and [`crate::gguf::GgufFile`] dereference to it, so both answer `path`,
/// `len` and `mmap` the same way.
#[derive(Debug)]
pub struct MappedFile {
    path: String,
    /// Shared with the readers that stream a tensor ([`crate::convert::Table`]), so a file is mapped once.
    mmap: Arc<Mmap>,
}

impl MappedFile {
    pub(crate) fn new(path: String, mmap: Mmap) -> Self {
        MappedFile {
            path,
            mmap: Arc::new(mmap),
        }
    }

    /// The path the file was opened with.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The file's size in bytes.
    pub fn len(&self) -> usize {
        self.mmap.len()
    }

    /// Whether the file is empty (never true for an opened file).
    // Only for `internals`, which exports the types that hold one: clippy wants `is_empty` next to a public `len`.
    #[cfg(any(test, feature = "internals"))]
    pub fn is_empty(&self) -> bool {
        self.mmap.is_empty()
    }

    /// The shared map (for readers that stream a tensor).
    pub fn mmap(&self) -> &Arc<Mmap> {
        &self.mmap
    }
}

/// A validated, memory-mapped safetensors file.
#[derive(Debug)]
pub struct SafetensorsFile {
    file: MappedFile,
    tensors: Vec<TensorMeta>,
    metadata: Vec<(String, String)>,
    /// The map is of the file itself (`open`), not a private copy: its pages can be dropped from
    /// this process and read again from the page cache.
    of_file: bool,
}

impl std::ops::Deref for SafetensorsFile {
    type Target = MappedFile;

    fn deref(&self) -> &MappedFile {
        &self.file
    }
}

/// The largest header accepted, as in the reference implementation.
pub const MAX_HEADER_SIZE: usize = 100_000_000;

fn describe(err: SafeTensorError, len: usize) -> String {
    match err {
        SafeTensorError::HeaderTooSmall => {
            format!("file is {len} bytes; a safetensors file starts with an 8-byte header length")
        }
        SafeTensorError::HeaderTooLarge => {
            format!("header length is above the {MAX_HEADER_SIZE}-byte cap; this is not a safetensors file")
        }
        SafeTensorError::InvalidHeaderLength => {
            format!("header length points past the end of the file ({len} bytes): the file is truncated or not safetensors")
        }
        SafeTensorError::InvalidHeader(e) => format!("header is not valid UTF-8: {e}"),
        SafeTensorError::InvalidHeaderStart => "header is not a JSON object".to_string(),
        SafeTensorError::InvalidHeaderDeserialization(e) => {
            format!("header is not a valid safetensors JSON object ({e}); check dtypes, shapes and data_offsets")
        }
        SafeTensorError::TensorInvalidInfo => {
            "a tensor's shape times its dtype size does not match its byte range".to_string()
        }
        SafeTensorError::InvalidOffset(name) => format!(
            "tensor {name:?} has invalid data_offsets (reversed, overlapping, out of order or leaving a gap)"
        ),
        SafeTensorError::MetadataIncompleteBuffer => format!(
            "the tensors' byte ranges do not cover the data section exactly ({len} bytes in the file): truncated or padded file"
        ),
        SafeTensorError::ValidationOverflow => "a tensor's shape overflows when multiplied out".to_string(),
        other => format!("{other:?}"),
    }
}

/// Finds duplicate keys at the top level of the header JSON, which serde would silently merge.
fn duplicate_key(header: &str) -> Option<String> {
    // A tiny scanner over the top-level object: tracks depth and string state, collects keys at
    // depth 1. The header was already parsed as JSON, so it is well formed here.
    let b = header.as_bytes();
    let mut depth = 0usize;
    let mut i = 0usize;
    let mut seen = std::collections::HashSet::new();
    let mut expect_key = false;
    while i < b.len() {
        match b[i] {
            b'{' | b'[' => {
                depth += 1;
                expect_key = depth == 1 && b[i] == b'{';
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' if depth == 1 => expect_key = true,
            b'"' => {
                let start = i + 1;
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                if depth == 1 && expect_key {
                    let key = &header[start..i.min(b.len())];
                    if !seen.insert(key) {
                        return Some(key.to_string());
                    }
                    expect_key = false;
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Validates a whole safetensors file held in `bytes` (header and offsets; tensor data is not
/// read) and returns its tensors, sorted by name, with absolute offsets, and its `__metadata__`.
///
/// This is what [`SafetensorsFile::open`] runs on the mapped file; it never reads outside `bytes`
/// and never panics, whatever the bytes (fuzzed by `fuzz/fuzz_targets/safetensors_header.rs`).
///
/// Errors: `Format` naming `ps` and the problem.
pub fn validate(bytes: &[u8], ps: &str) -> Result<(Vec<TensorMeta>, Vec<(String, String)>)> {
    let len = bytes.len();
    if len < 8 {
        return Err(CoreError::format(ps, describe(SafeTensorError::HeaderTooSmall, len)));
    }
    let (n, md) = SafeTensors::read_metadata(bytes).map_err(|e| CoreError::format(ps, describe(e, len)))?;
    // read_metadata checked 8 + n <= len and that the header is UTF-8.
    let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap_or("");
    if !header.trim_start().starts_with('{') {
        return Err(CoreError::format(ps, "header is not a JSON object"));
    }
    if let Some(k) = duplicate_key(header) {
        return Err(CoreError::format(ps, format!("header names tensor {k:?} twice")));
    }
    let data_start = 8 + n;
    let mut tensors: Vec<TensorMeta> = md
        .tensors()
        .into_iter()
        .map(|(name, info)| {
            let start = data_start.checked_add(info.data_offsets.0);
            let end = data_start.checked_add(info.data_offsets.1);
            match (start, end) {
                (Some(s), Some(e)) if s <= e && e <= len => Ok(TensorMeta {
                    name,
                    dtype: ElemType::from_safetensors(info.dtype),
                    shape: info.shape.clone(),
                    start: s,
                    end: e,
                }),
                _ => Err(CoreError::format(ps, format!("tensor {name:?} lies outside the file"))),
            }
        })
        .collect::<Result<_>>()?;
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    let mut metadata: Vec<(String, String)> = md.metadata().clone().unwrap_or_else(HashMap::new).into_iter().collect();
    metadata.sort();
    Ok((tensors, metadata))
}

/// Opens `p` for reading and returns its path for messages, the file and its length. Errors name
/// the file; `expected` says what it should have been ("a file"), for a directory or a FIFO.
fn open_file(p: &Path, expected: &str) -> Result<(String, File, usize)> {
    let ps = p.display().to_string();
    let meta = std::fs::metadata(p).map_err(|e| CoreError::io(&ps, e))?;
    if meta.is_dir() {
        return Err(CoreError::format(&ps, format!("is a directory, expected {expected}")));
    }
    // checked before opening: opening a FIFO for reading blocks until something writes to it
    if !meta.is_file() {
        return Err(CoreError::format(
            &ps,
            format!("is not a regular file (a pipe, socket or device), expected {expected}"),
        ));
    }
    let file = File::open(p).map_err(|e| CoreError::io(&ps, e))?;
    Ok((ps, file, meta.len() as usize))
}

/// Maps an open file read-only; errors name `ps`.
fn map(file: &File, ps: &str) -> Result<Mmap> {
    // SAFETY: a read-only shared map. As with every mmap-based reader (safetensors' own
    // `safe_open` included), soundness assumes no other process truncates or rewrites the file
    // while it is mapped (see `SafetensorsFile::open`; `SafetensorsFile::read` avoids the map);
    // every read is bounds-checked against the map's length by the header validation before use.
    unsafe { Mmap::map(file) }.map_err(|e| CoreError::io(ps, e))
}

/// Maps a file read-only (GGUF files); errors name the file.
pub(crate) fn map_file(p: &Path) -> Result<Mmap> {
    let (ps, file, _) = open_file(p, "a file")?;
    map(&file, &ps)
}

/// Opens a file that should be a safetensors file: at least 8 bytes long.
fn open_safetensors(p: &Path) -> Result<(String, File, usize)> {
    let (ps, file, len) = open_file(p, "a .safetensors file")?;
    if len < 8 {
        return Err(CoreError::format(&ps, describe(SafeTensorError::HeaderTooSmall, len)));
    }
    Ok((ps, file, len))
}

impl SafetensorsFile {
    /// Maps and validates a safetensors file.
    ///
    /// The map is shared with the file: replacing the file's contents in place (rather than
    /// writing a new file and renaming it over the old one, or deleting it) changes what a loaded
    /// model reads, and truncating it makes the next read of a lost page raise SIGBUS. Use
    /// [`SafetensorsFile::read`] for files that may be rewritten.
    ///
    /// Errors: `NotFound`, `Io`, or `Format` naming the file and the problem.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let (ps, file, _) = open_safetensors(path.as_ref())?;
        let mmap = map(&file, &ps)?;
        let (tensors, metadata) = validate(&mmap, &ps)?;
        Ok(SafetensorsFile {
            file: MappedFile::new(ps, mmap),
            tensors,
            metadata,
            of_file: true,
        })
    }

    /// Reads a whole safetensors file into private memory and validates it: nothing stays shared
    /// with the file, so it may then be rewritten, truncated or deleted without effect on this
    /// object. Costs memory of the file's size (the bytes are read once, straight into an
    /// anonymous map, never held twice) and the time to read it.
    ///
    /// Errors: `NotFound`, `Io`, or `Format` naming the file and the problem (including a file that
    /// got shorter while it was read).
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let (ps, mut file, len) = open_safetensors(path.as_ref())?;
        // open_safetensors() refused fewer than 8 bytes, so the map is never empty.
        let mut anon = memmap2::MmapOptions::new()
            .len(len)
            .map_anon()
            .map_err(|e| CoreError::io(&ps, e))?;
        file.read_exact(&mut anon).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => CoreError::format(
                &ps,
                format!("the file got shorter than {len} bytes while it was being read"),
            ),
            _ => CoreError::io(&ps, e),
        })?;
        Self::from_anon(anon, ps)
    }

    /// Validates `bytes` as a safetensors file and holds a private read-only copy of them, as if
    /// they had been read from `path` (which is used only in messages). Used by the fuzz targets and
    /// tests that build files in memory; real files go through [`SafetensorsFile::open`] or
    /// [`SafetensorsFile::read`].
    ///
    /// Errors: `Format` naming `path` and the problem; `Io` if the anonymous map cannot be made.
    #[cfg(any(test, feature = "internals"))]
    pub fn from_bytes(bytes: &[u8], path: &str) -> Result<Self> {
        validate(bytes, path)?;
        // validate() refused fewer than 8 bytes, so the map is never empty.
        let mut anon = memmap2::MmapOptions::new()
            .len(bytes.len())
            .map_anon()
            .map_err(|e| CoreError::io(path, e))?;
        anon.copy_from_slice(bytes);
        Self::from_anon(anon, path.to_string())
    }

    /// Validates the bytes of a private anonymous map and keeps them, read-only.
    fn from_anon(anon: MmapMut, path: String) -> Result<Self> {
        let (tensors, metadata) = validate(&anon, &path)?;
        let mmap = anon.make_read_only().map_err(|e| CoreError::io(&path, e))?;
        Ok(SafetensorsFile {
            file: MappedFile::new(path, mmap),
            tensors,
            metadata,
            of_file: false,
        })
    }

    /// After a one-off read of `t` (a load-time scan), drops its pages from this process's
    /// memory: they stay in the page cache, and the next read maps them again. A private copy
    /// (`read`, `from_bytes`) is left as it is, since dropping would lose its bytes.
    pub fn release(&self, t: &TensorMeta) {
        #[cfg(unix)]
        if self.of_file && t.end > t.start {
            // SAFETY: MADV_DONTNEED on a read-only shared map of a file only unmaps pages: a later
            // read faults them in again from the file, with the same bytes (the map's own
            // assumption that the file is not rewritten in place). The range lies inside the map
            // (checked by `validate`). Failure only leaves the pages resident, so it is ignored.
            let _ = unsafe {
                self.file
                    .mmap
                    .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, t.start, t.end - t.start)
            };
        }
        #[cfg(not(unix))]
        let _ = t;
    }

    /// All tensors, sorted by name.
    pub fn tensors(&self) -> &[TensorMeta] {
        &self.tensors
    }

    /// The `__metadata__` string map, sorted by key.
    pub fn metadata(&self) -> &[(String, String)] {
        &self.metadata
    }

    /// Looks a tensor up by name; the error lists what the file has.
    pub fn tensor(&self, name: &str) -> Result<&TensorMeta> {
        CoreError::find_tensor(self.path(), &self.tensors, name, |t| &t.name)
    }

    /// The bytes of a tensor, in place in the map. Offsets were validated at open.
    pub fn bytes(&self, t: &TensorMeta) -> &[u8] {
        &self.file.mmap[t.start..t.end]
    }

    /// A 1-D tensor and its bytes; the error names the file, the tensor and its shape.
    fn vector(&self, name: &str) -> Result<(&TensorMeta, &[u8])> {
        let t = self.tensor(name)?;
        if t.shape.len() != 1 {
            return Err(CoreError::format(
                self.path(),
                format!("tensor {name:?} must be 1-D, has shape {:?}", t.shape),
            ));
        }
        Ok((t, self.bytes(t)))
    }

    /// Reads a 1-D tensor as f32 (F16, BF16, F32, F64 accepted).
    pub fn read_f32_vector(&self, name: &str) -> Result<Vec<f32>> {
        let (t, b) = self.vector(name)?;
        let v = match t.dtype {
            ElemType::F16 => b
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            ElemType::BF16 => b
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            ElemType::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            ElemType::F64 => b
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
                .collect(),
            d => {
                return Err(CoreError::format(
                    self.path(),
                    format!("tensor {name:?} has dtype {}, expected F16, BF16, F32 or F64", d.name()),
                ))
            }
        };
        Ok(v)
    }

    /// Reads a 1-D integer tensor (I32, I64, U32) as row indices.
    pub fn read_index_vector(&self, name: &str) -> Result<Vec<u64>> {
        let (t, b) = self.vector(name)?;
        let neg = || CoreError::format(self.path(), format!("tensor {name:?} holds a negative index"));
        match t.dtype {
            ElemType::I32 => b
                .chunks_exact(4)
                .map(|c| u64::try_from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])).map_err(|_| neg()))
                .collect(),
            ElemType::U32 => b
                .chunks_exact(4)
                .map(|c| Ok(u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as u64))
                .collect(),
            ElemType::I64 => b
                .chunks_exact(8)
                .map(|c| {
                    u64::try_from(i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                        .map_err(|_| neg())
                })
                .collect(),
            d => Err(CoreError::format(
                self.path(),
                format!("tensor {name:?} has dtype {}, expected I32, I64 or U32", d.name()),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    pub(crate) fn write_st(dir: &Path, name: &str, header: &str, data: &[u8]) -> std::path::PathBuf {
        let p = dir.join(name);
        let mut f = File::create(&p).unwrap();
        f.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
        f.write_all(header.as_bytes()).unwrap();
        f.write_all(data).unwrap();
        p
    }

    fn tmp() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("tokvec-header-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn opens_valid_file() {
        let d = tmp();
        let p = write_st(
            &d,
            "ok.safetensors",
            r#"{"t":{"dtype":"F16","shape":[2,3],"data_offsets":[0,12]}}"#,
            &[0; 12],
        );
        let f = SafetensorsFile::open(&p).unwrap();
        let t = f.tensor("t").unwrap();
        assert_eq!(t.shape, vec![2, 3]);
        assert_eq!(t.dtype, ElemType::F16);
        assert_eq!(f.bytes(t).len(), 12);
    }

    #[test]
    fn rejects_bad_files() {
        let d = tmp();
        let cases: &[(&str, &str, usize)] = &[
            (
                "short",
                r#"{"t":{"dtype":"F16","shape":[2,3],"data_offsets":[0,12]}}"#,
                6,
            ),
            (
                "mismatch",
                r#"{"t":{"dtype":"F16","shape":[2,3],"data_offsets":[0,10]}}"#,
                10,
            ),
            (
                "dtype",
                r#"{"t":{"dtype":"Q7","shape":[2,3],"data_offsets":[0,12]}}"#,
                12,
            ),
            ("notobj", r#"[1,2,3]"#, 0),
            (
                "dup",
                r#"{"t":{"dtype":"F16","shape":[1],"data_offsets":[0,2]},"t":{"dtype":"F16","shape":[1],"data_offsets":[0,2]}}"#,
                2,
            ),
            (
                "overflow",
                r#"{"t":{"dtype":"F32","shape":[4611686018427387904,8],"data_offsets":[0,4]}}"#,
                4,
            ),
        ];
        for (name, header, n) in cases {
            let p = write_st(&d, &format!("{name}.safetensors"), header, &vec![0u8; *n]);
            let e = SafetensorsFile::open(&p).unwrap_err();
            assert!(matches!(e, CoreError::Format { .. }), "{name}: {e}");
            assert!(e.to_string().contains(name), "{name}: message must name the file: {e}");
        }
    }

    #[test]
    fn rejects_huge_header_length() {
        let d = tmp();
        let p = d.join("huge.safetensors");
        let mut f = File::create(&p).unwrap();
        f.write_all(&u64::MAX.to_le_bytes()).unwrap();
        f.write_all(b"{}").unwrap();
        let e = SafetensorsFile::open(&p).unwrap_err();
        assert!(
            e.to_string().contains("cap") || e.to_string().contains("past the end"),
            "{e}"
        );
    }

    #[test]
    fn finds_duplicate_keys_only_at_top_level() {
        assert_eq!(duplicate_key(r#"{"a":{"x":1,"x":2},"b":1}"#), None);
        assert_eq!(duplicate_key(r#"{"a":1,"b":{"a":1},"a":2}"#), Some("a".into()));
        assert_eq!(duplicate_key(r#"{"a\"b":1,"c":[{"a\"b":1}]}"#), None);
    }

    #[test]
    fn from_bytes_agrees_with_open() {
        let d = tmp();
        let header = r#"{"__metadata__":{"k":"v"},"b":{"dtype":"I32","shape":[2],"data_offsets":[12,20]},"a":{"dtype":"F16","shape":[2,3],"data_offsets":[0,12]}}"#;
        let p = write_st(&d, "agree.safetensors", header, &[7; 20]);
        let bytes = std::fs::read(&p).unwrap();
        let (a, b) = (
            SafetensorsFile::open(&p).unwrap(),
            SafetensorsFile::from_bytes(&bytes, "mem").unwrap(),
        );
        assert_eq!(a.metadata(), b.metadata());
        assert_eq!(a.tensors().len(), 2);
        for (x, y) in a.tensors().iter().zip(b.tensors()) {
            assert_eq!((&x.name, x.start, x.end, &x.shape), (&y.name, y.start, y.end, &y.shape));
            assert_eq!(a.bytes(x), b.bytes(y));
        }
        for short in 0..8 {
            match SafetensorsFile::from_bytes(&bytes[..short], "mem") {
                Err(CoreError::Format { path, msg }) => assert!(path == "mem" && msg.contains("8-byte"), "{msg}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn read_holds_a_private_copy() {
        let d = tmp();
        let header = r#"{"a":{"dtype":"F16","shape":[2,3],"data_offsets":[0,12]}}"#;
        let p = write_st(&d, "private.safetensors", header, &[7; 12]);
        let (mapped, read) = (SafetensorsFile::open(&p).unwrap(), SafetensorsFile::read(&p).unwrap());
        let t = read.tensor("a").unwrap().clone();
        assert_eq!(read.bytes(&t), mapped.bytes(&t));
        assert_eq!((read.len(), read.path()), (mapped.len(), mapped.path()));
        drop(mapped);
        // rewritten in place with other bytes of the same size, then truncated: the copy is unchanged
        let mut raw = std::fs::read(&p).unwrap();
        let n = raw.len();
        raw[n - 12..].fill(9);
        std::fs::write(&p, &raw).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(8)
            .unwrap();
        assert_eq!(read.bytes(&t), &[7; 12]);
        // the errors of `open`
        assert!(matches!(
            SafetensorsFile::read(d.join("missing")),
            Err(CoreError::NotFound { .. })
        ));
        assert!(matches!(SafetensorsFile::read(&d), Err(CoreError::Format { .. })));
        assert!(matches!(SafetensorsFile::read(&p), Err(CoreError::Format { .. })));
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_random_bytes(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let d = tmp();
            let p = d.join(format!("rand-{}.safetensors", bytes.len()));
            std::fs::write(&p, &bytes).unwrap();
            let _ = SafetensorsFile::open(&p);
        }

        #[test]
        fn never_panics_on_random_headers(header in "\\{[\"a-zA-Z0-9_:,\\[\\]{} ]{0,80}\\}", n in 0usize..64) {
            let d = tmp();
            let p = write_st(&d, &format!("randh-{n}.safetensors"), &header, &vec![0u8; n]);
            let _ = SafetensorsFile::open(&p);
        }
    }
}
