//! Tokenization and weighted mean pooling in one parallel pass.
//!
//! For each text: ids from the encoder → drop special ids → cap at `max_length` → row = `mapping[id]`
//! (or `id`) → `acc += weight[id] × row` (converted from the on-disk dtype) → `acc /= count` →
//! optional L2 normalization → optional sign binarization. An empty text (or one whose tokens are
//! all special) gives the zero vector (all-zero bits when binary).
//!
//! Performance notes:
//! - Texts are split over rayon's pool; each worker keeps one id buffer and, for binary output, one
//!   scratch row, so the pass allocates nothing per text beyond what the tokenizer allocates.
//! - The output is written in place into the caller's buffer (the numpy array's memory).
//! - Results do not depend on the thread count or on the batch split: each text is pooled by one
//!   thread with the same kernel, in token order.
//! - Tokenization dominates (~10-20× the pooling cost); the [`Encoder`] trait lets a faster,
//!   ids-only encoder replace the `tokenizers`-crate one without touching pooling.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::str::FromStr;
use std::sync::Arc;

use rayon::prelude::*;

use crate::convert::{bad_rows_error, nonfinite_raw_rows, raw_scannable};
use crate::error::{CoreError, Result};
use crate::gather::{accumulate, RowType};
use crate::header::{SafetensorsFile, TensorMeta};
use crate::simd::{isa, Isa};

/// Turns a text into token ids. Implementations must be deterministic and thread-safe.
pub trait Encoder: Send + Sync {
    /// Appends the ids of `text` to `out` (which the caller has cleared).
    fn encode(&self, text: &str, out: &mut Vec<u32>) -> Result<()>;
    /// One past the largest id this encoder can produce.
    fn id_limit(&self) -> u64;
}

/// The reference encoder: HF `tokenizers` built from a tokenizer JSON, ids only.
pub struct HfEncoder {
    tok: tokenizers::Tokenizer,
    add_special_tokens: bool,
    id_limit: u64,
}

impl HfEncoder {
    /// Builds the tokenizer from its JSON (as written by `tokenizers.Tokenizer.to_str()`).
    ///
    /// Truncation and padding are switched off: pooling needs every id and no pad ids.
    pub fn from_json(json: &str, add_special_tokens: bool) -> Result<Self> {
        let mut tok = tokenizers::Tokenizer::from_str(json).map_err(|e| CoreError::Tokenizer {
            msg: format!("cannot build the tokenizer from its JSON: {e}"),
        })?;
        tok.with_padding(None);
        tok.with_truncation(None).map_err(|e| CoreError::Tokenizer {
            msg: format!("cannot disable truncation: {e}"),
        })?;
        // Largest id: the model's ids are 0..vocab_size for every HF model type; added tokens may
        // sit anywhere above (or inside) that range.
        let model_limit = tok.get_vocab_size(false) as u64;
        let added_limit = tok
            .get_added_tokens_decoder()
            .keys()
            .map(|&k| k as u64 + 1)
            .max()
            .unwrap_or(0);
        let id_limit = model_limit.max(added_limit);
        Ok(HfEncoder {
            tok,
            add_special_tokens,
            id_limit,
        })
    }

    /// Ids of the added tokens marked `special` (BOS/EOS/CLS/SEP/pad/unk...), ascending.
    pub fn special_ids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .tok
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(i, _)| i)
            .collect();
        v.sort_unstable();
        v
    }

    /// The unknown token's id (`Some(None)`: the model has none), or `None` when the model keeps
    /// its unknown token private (WordLevel, Unigram: read it from the JSON).
    pub fn unk_id(&self) -> Option<Option<u32>> {
        use tokenizers::models::ModelWrapper;
        match self.tok.get_model() {
            ModelWrapper::WordPiece(wp) => Some(self.tok.token_to_id(&wp.unk_token)),
            ModelWrapper::BPE(b) => Some(b.unk_token.as_deref().and_then(|u| self.tok.token_to_id(u))),
            _ => None,
        }
    }

    /// The id of a token (added tokens first, then the model's vocabulary).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tok.token_to_id(token)
    }
}

impl Encoder for HfEncoder {
    fn encode(&self, text: &str, out: &mut Vec<u32>) -> Result<()> {
        // A panic inside the tokenizer must not cross into Python: it becomes a Tokenizer error.
        let r = catch_unwind(AssertUnwindSafe(|| self.tok.encode_fast(text, self.add_special_tokens)));
        match r {
            Ok(Ok(enc)) => {
                out.extend_from_slice(enc.get_ids());
                Ok(())
            }
            Ok(Err(e)) => Err(CoreError::Tokenizer {
                msg: format!("cannot encode a text: {e}"),
            }),
            Err(_) => Err(CoreError::Tokenizer {
                msg: "the tokenizer panicked on a text".to_string(),
            }),
        }
    }

    fn id_limit(&self) -> u64 {
        self.id_limit
    }
}

/// What to load and how to pool.
#[derive(Debug, Clone, Default)]
pub struct ModelSpec {
    /// Name of the `[rows, cols]` table tensor.
    pub table: String,
    /// Optional per-token weights `[V]` (indexed by token id).
    pub weights: Option<String>,
    /// Optional token → row mapping `[V]` (model2vec vocabulary quantization).
    pub mapping: Option<String>,
    /// Token ids never pooled (special tokens: BOS/EOS/CLS/SEP/pad/unk).
    pub skip_ids: Vec<u32>,
    /// Use only the first `dim` columns (Matryoshka truncation); `None` = all.
    pub dim: Option<usize>,
    /// L2-normalize the pooled vectors.
    pub normalize: bool,
    /// Pool at most this many (non-special) tokens per text; `None` = no cap.
    pub max_length: Option<usize>,
}

/// A loaded model: a table in place in its memory map, plus pooling settings and an encoder.
pub struct EmbedModel {
    file: Arc<SafetensorsFile>,
    table: TensorMeta,
    ty: RowType,
    rows: usize,
    cols: usize,
    dim: usize,
    weights: Option<Vec<f32>>,
    mapping: Option<Vec<u32>>,
    id_limit: usize,
    skip: Vec<u64>,
    normalize: bool,
    max_length: Option<usize>,
    encoder: Option<Arc<dyn Encoder>>,
    isa: Isa,
}

impl std::fmt::Debug for EmbedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbedModel")
            .field("path", &self.file.path())
            .field("table", &self.table.name)
            .field("rows", &self.rows)
            .field("dim", &self.dim)
            .finish()
    }
}

impl EmbedModel {
    /// Validates the spec against the file and builds the model. Nothing of the table is copied.
    pub fn new(file: Arc<SafetensorsFile>, spec: &ModelSpec, encoder: Option<Arc<dyn Encoder>>) -> Result<Self> {
        let path = file.path().to_string();
        let table = file.tensor(&spec.table)?.clone();
        if table.shape.len() != 2 {
            return Err(CoreError::format(
                &path,
                format!(
                    "table {:?} must be 2-D [vocab, dim], has shape {:?}",
                    table.name, table.shape
                ),
            ));
        }
        let (rows, cols) = (table.shape[0], table.shape[1]);
        if rows == 0 || cols == 0 {
            return Err(CoreError::format(
                &path,
                format!("table {:?} is empty (shape {:?})", table.name, table.shape),
            ));
        }
        let ty = Some(table.dtype).filter(|t| t.gatherable()).ok_or_else(|| {
            CoreError::format(
                &path,
                format!(
                    "table {:?} has dtype {}; tokvec reads F16, BF16, F32, F64 and I8",
                    table.name,
                    table.dtype.name()
                ),
            )
        })?;
        let dim = spec.dim.unwrap_or(cols);
        if dim == 0 || dim > cols {
            return Err(CoreError::arg(
                "dim",
                format!("must be between 1 and the table's {cols} columns, got {dim}"),
            ));
        }
        // NaN/Inf in the columns in use would turn every text that touches the row into NaN (and a
        // rank into all-NaN scores), so such a table is refused here, as `tokvec extract` refuses
        // it. The scan tests bits in parallel (I8 cannot hold them); a truncated model only reads
        // its first `dim` columns.
        if raw_scannable(ty) {
            let size = ty.size();
            let bad = nonfinite_raw_rows(ty, file.bytes(&table), cols * size, dim * size, 0);
            if !bad.is_empty() {
                let what = if dim < cols {
                    format!("hold NaN or Inf values in the first {dim} columns (the ones in use)")
                } else {
                    "hold NaN or Inf values".to_string()
                };
                return Err(bad_rows_error(&path, &format!("table {:?}", table.name), &bad, &what));
            }
            // The scan read every page of the table; embedding reads only the rows of the tokens it
            // meets. Dropping the scanned pages keeps the process's memory at what it uses.
            file.release(&table);
        }
        let mapping = match &spec.mapping {
            None => None,
            Some(name) => {
                let m = file.read_index_vector(name)?;
                let mut out = Vec::with_capacity(m.len());
                for (i, &r) in m.iter().enumerate() {
                    if r >= rows as u64 {
                        return Err(CoreError::format(
                            &path,
                            format!("mapping {name:?} sends token {i} to row {r}, but the table has {rows} rows"),
                        ));
                    }
                    out.push(r as u32);
                }
                Some(out)
            }
        };
        let id_limit = mapping.as_ref().map_or(rows, |m| m.len());
        let weights = match &spec.weights {
            None => None,
            Some(name) => {
                let w = file.read_f32_vector(name)?;
                if w.len() != id_limit {
                    return Err(CoreError::format(
                        &path,
                        format!(
                            "weights {name:?} has {} entries, expected one per token id ({id_limit})",
                            w.len()
                        ),
                    ));
                }
                // the same scan as the table's, one weight per row (F64 beyond the f32 range included)
                let t = file.tensor(name)?;
                if raw_scannable(t.dtype) {
                    let size = t.dtype.size();
                    let bad = nonfinite_raw_rows(t.dtype, file.bytes(t), size, size, 0);
                    if !bad.is_empty() {
                        return Err(bad_rows_error(
                            &path,
                            &format!("weights {name:?}"),
                            &bad,
                            "hold NaN or Inf values",
                        ));
                    }
                }
                Some(w)
            }
        };
        if let Some(enc) = &encoder {
            if enc.id_limit() > id_limit as u64 {
                return Err(CoreError::format(
                    &path,
                    format!(
                        "the tokenizer has ids up to {} but the table has {id_limit} rows: this tokenizer does not belong \
                         to this table (pass the matching tokenizer.json)",
                        enc.id_limit() - 1
                    ),
                ));
            }
        }
        // Skip ids at or past the id limit can never match a valid id (those are refused), so the
        // bitmap stops at the limit: a stray huge id (e.g. u32::MAX in a config) must not allocate
        // half a gigabyte.
        let in_range = || spec.skip_ids.iter().copied().filter(|&s| (s as usize) < id_limit);
        let max_skip = in_range().max().map_or(0, |m| m as usize + 1);
        let mut skip = vec![0u64; max_skip.div_ceil(64)];
        for s in in_range() {
            skip[s as usize / 64] |= 1u64 << (s % 64);
        }
        if spec.max_length == Some(0) {
            return Err(CoreError::arg("max_length", "must be at least 1 (or None for no cap)"));
        }
        Ok(EmbedModel {
            file,
            table,
            ty,
            rows,
            cols,
            dim,
            weights,
            mapping,
            id_limit,
            skip,
            normalize: spec.normalize,
            max_length: spec.max_length,
            encoder,
            isa: isa(),
        })
    }

    /// Forces an ISA level (tests compare SIMD output against `Isa::Scalar`). The level must be
    /// one this CPU supports: it is clamped to the detected one.
    pub fn set_isa(&mut self, level: Isa) {
        self.isa = level.min(isa());
    }

    /// Rows of the table.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Columns of the table.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Output dimension (≤ cols).
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// Number of valid token ids.
    pub fn id_limit(&self) -> usize {
        self.id_limit
    }
    /// The table's tensor entry.
    pub fn table(&self) -> &TensorMeta {
        &self.table
    }
    /// The mapped file.
    pub fn file(&self) -> &Arc<SafetensorsFile> {
        &self.file
    }
    /// Whether pooled vectors are L2-normalized.
    pub fn normalize(&self) -> bool {
        self.normalize
    }
    /// Words per packed binary vector.
    pub fn binary_words(&self) -> usize {
        self.dim.div_ceil(64)
    }

    #[inline]
    fn is_skipped(&self, id: u32) -> bool {
        let w = id as usize / 64;
        w < self.skip.len() && (self.skip[w] >> (id % 64)) & 1 == 1
    }

    /// Pools `ids` into `acc` (length `dim`, overwritten).
    pub fn pool_ids(&self, ids: &[u32], acc: &mut [f32]) -> Result<()> {
        if acc.len() != self.dim {
            return Err(CoreError::arg(
                "acc",
                format!(
                    "buffer has {} elements, expected the model's dim {}",
                    acc.len(),
                    self.dim
                ),
            ));
        }
        acc.fill(0.0);
        let data = self.file.bytes(&self.table);
        let row_bytes = self.cols * self.ty.size();
        let used = self.dim * self.ty.size();
        let mut count = 0usize;
        for &id in ids {
            if self.is_skipped(id) {
                continue;
            }
            if self.max_length.is_some_and(|m| count >= m) {
                break;
            }
            let idu = id as usize;
            if idu >= self.id_limit {
                return Err(CoreError::IdOutOfRange {
                    id: id as u64,
                    limit: self.id_limit as u64,
                    what: "table",
                });
            }
            // mapping values were checked < rows at load
            let row = self.mapping.as_ref().map_or(idu, |m| m[idu] as usize);
            let w = self.weights.as_ref().map_or(1.0, |w| w[idu]);
            let start = row * row_bytes; // row < rows, so start + used <= rows * row_bytes == data.len()
            accumulate(acc, &data[start..start + used], w, self.ty, self.isa);
            count += 1;
        }
        if count > 0 {
            let inv = 1.0 / count as f32;
            acc.iter_mut().for_each(|x| *x *= inv);
            if self.normalize {
                l2_normalize(acc);
            }
        }
        Ok(())
    }

    fn encoder(&self) -> Result<&dyn Encoder> {
        self.encoder.as_deref().ok_or_else(|| CoreError::Tokenizer {
            msg: "this model has no tokenizer; pass token ids instead".into(),
        })
    }

    /// Embeds texts into `out` (`texts.len() × dim`, row-major), in parallel.
    pub fn embed(&self, texts: &[&str], out: &mut [f32]) -> Result<()> {
        check_out(out.len(), texts.len(), self.dim)?;
        let enc = self.encoder()?;
        texts
            .par_iter()
            .zip(out.par_chunks_mut(self.dim))
            .with_min_len(16)
            .try_for_each_init(
                || Vec::with_capacity(256),
                |ids, (text, o)| {
                    ids.clear();
                    enc.encode(text, ids)?;
                    self.pool_ids(ids, o)
                },
            )
    }

    /// Embeds texts into `out` (`texts.len() × dim`) and writes each text's token count into `counts`: the ids
    /// the encoder gives, special tokens included (`encode`'s lengths), so one tokenization gives both. The
    /// vectors are `embed`'s, bit for bit. `parallel: false` runs on the calling thread (a service embeds each
    /// small request on the thread that read it; rayon's hand-over would cost more than the work).
    pub fn embed_counted(&self, texts: &[&str], out: &mut [f32], counts: &mut [u64], parallel: bool) -> Result<()> {
        check_out(out.len(), texts.len(), self.dim)?;
        check_out(counts.len(), texts.len(), 1)?;
        let enc = self.encoder()?;
        let one = |ids: &mut Vec<u32>, (text, (o, c)): (&&str, (&mut [f32], &mut u64))| {
            ids.clear();
            enc.encode(text, ids)?;
            *c = ids.len() as u64;
            self.pool_ids(ids, o)
        };
        if parallel {
            texts
                .par_iter()
                .zip(out.par_chunks_mut(self.dim).zip(counts.par_iter_mut()))
                .with_min_len(16)
                .try_for_each_init(|| Vec::with_capacity(256), one)
        } else {
            let mut ids = Vec::with_capacity(256);
            texts
                .iter()
                .zip(out.chunks_mut(self.dim).zip(counts.iter_mut()))
                .try_for_each(|item| one(&mut ids, item))
        }
    }

    /// Embeds texts into packed sign bits (`texts.len() × binary_words()` u64 words).
    pub fn embed_binary(&self, texts: &[&str], out: &mut [u64]) -> Result<()> {
        let words = self.binary_words();
        check_out(out.len(), texts.len(), words)?;
        let enc = self.encoder()?;
        texts
            .par_iter()
            .zip(out.par_chunks_mut(words))
            .with_min_len(16)
            .try_for_each_init(
                || (Vec::with_capacity(256), vec![0f32; self.dim]),
                |(ids, acc), (text, o)| {
                    ids.clear();
                    enc.encode(text, ids)?;
                    self.pool_ids(ids, acc)?;
                    pack_signs(acc, o);
                    Ok(())
                },
            )
    }

    /// Pools pre-tokenized ids given in CSR form: text `i` has `ids[offsets[i]..offsets[i+1]]`.
    pub fn embed_ids(&self, ids: &[u32], offsets: &[u64], out: &mut [f32]) -> Result<()> {
        let n = check_offsets(ids.len(), offsets)?;
        check_out(out.len(), n, self.dim)?;
        out.par_chunks_mut(self.dim)
            .enumerate()
            .with_min_len(64)
            .try_for_each(|(i, o)| self.pool_ids(&ids[offsets[i] as usize..offsets[i + 1] as usize], o))
    }

    /// Token ids of each text as the encoder gives them (before special tokens are dropped), CSR.
    pub fn encode(&self, texts: &[&str]) -> Result<(Vec<u32>, Vec<u64>)> {
        encode_batch(self.encoder()?, texts)
    }
}

/// Token ids of many texts, in parallel, in CSR form: text `i` has `ids[offsets[i]..offsets[i+1]]`.
pub fn encode_batch(enc: &dyn Encoder, texts: &[&str]) -> Result<(Vec<u32>, Vec<u64>)> {
    // Chunks of texts, each encoded into one buffer with its lengths: no vector per text.
    const CHUNK: usize = 256;
    let parts: Vec<(Vec<u32>, Vec<u64>)> = texts
        .par_chunks(CHUNK)
        .map(|chunk| {
            let mut ids = Vec::with_capacity(chunk.len() * 32);
            let mut lens = Vec::with_capacity(chunk.len());
            for t in chunk {
                let before = ids.len();
                enc.encode(t, &mut ids)?;
                lens.push((ids.len() - before) as u64);
            }
            Ok((ids, lens))
        })
        .collect::<Result<_>>()?;
    let mut offsets = Vec::with_capacity(texts.len() + 1);
    offsets.push(0u64);
    let mut ids = Vec::with_capacity(parts.iter().map(|p| p.0.len()).sum());
    for (part, lens) in parts {
        ids.extend_from_slice(&part);
        for l in lens {
            offsets.push(offsets[offsets.len() - 1] + l);
        }
    }
    Ok((ids, offsets))
}

/// Packs `x > 0` into bits: element j goes to word j / 64, bit j % 64; padding bits are zero.
pub fn pack_signs(x: &[f32], out: &mut [u64]) {
    out.fill(0);
    for (j, &v) in x.iter().enumerate() {
        if v > 0.0 {
            out[j / 64] |= 1u64 << (j % 64);
        }
    }
}

fn check_out(len: usize, n: usize, width: usize) -> Result<()> {
    match n.checked_mul(width) {
        Some(m) if m == len => Ok(()),
        _ => Err(CoreError::arg(
            "out",
            format!("buffer has {len} elements, expected {n} × {width}"),
        )),
    }
}

fn check_offsets(n_ids: usize, offsets: &[u64]) -> Result<usize> {
    if offsets.is_empty() || offsets[0] != 0 {
        return Err(CoreError::arg(
            "offsets",
            "must start with 0 and have one entry more than there are texts",
        ));
    }
    if offsets.windows(2).any(|w| w[1] < w[0]) {
        return Err(CoreError::arg("offsets", "must be non-decreasing"));
    }
    let last = offsets[offsets.len() - 1];
    if last != n_ids as u64 {
        return Err(CoreError::arg(
            "offsets",
            format!("last offset is {last}, but there are {n_ids} ids"),
        ));
    }
    Ok(offsets.len() - 1)
}

/// Scales `row` to unit L2 norm in place, exactly as pooling does for a normalized model: so a
/// model that says `normalize: false`, normalized afterwards, gives the normalized model's bits.
/// A zero row (or one holding NaN/inf) is left as it is.
pub fn l2_normalize(row: &mut [f32]) {
    let squares = row.iter().map(|x| x * x).sum::<f32>();
    if squares.is_finite() && squares >= 1e-30 {
        let inv = 1.0 / squares.sqrt();
        row.iter_mut().for_each(|x| *x *= inv);
    } else if row.iter().all(|x| x.is_finite()) && row.iter().any(|&x| x != 0.0) {
        // The f32 sum of squares overflowed (values above ~1e19) or came near the subnormal range
        // (values below ~1e-15), where squares lose their precision or vanish: redo it in f64,
        // which holds the square of any f32 exactly enough, so the vector is still unit length.
        // The usual case above keeps its exact bits.
        let norm = row.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
        row.iter_mut().for_each(|x| *x = (*x as f64 / norm) as f32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A WordLevel tokenizer over "w0".."w{n-1}" with [UNK]=n, whitespace pre-tokenizer.
    pub(crate) fn word_tokenizer(n: usize) -> String {
        let vocab: Vec<String> = (0..n).map(|i| format!("\"w{i}\":{i}")).collect();
        format!(
            r#"{{"version":"1.0","truncation":null,"padding":null,
            "added_tokens":[{{"id":{n},"content":"[UNK]","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}}],
            "normalizer":null,"pre_tokenizer":{{"type":"Whitespace"}},"post_processor":null,"decoder":null,
            "model":{{"type":"WordLevel","vocab":{{{},"[UNK]":{n}}},"unk_token":"[UNK]"}}}}"#,
            vocab.join(",")
        )
    }

    fn write_table(rows: usize, cols: usize) -> Arc<SafetensorsFile> {
        let vals: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 500.0)
            .collect();
        let mut data = Vec::new();
        for v in &vals {
            data.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes());
        }
        let n = data.len();
        let header = format!(r#"{{"emb":{{"dtype":"F16","shape":[{rows},{cols}],"data_offsets":[0,{n}]}}}}"#);
        let dir = std::env::temp_dir().join(format!("tokvec-pool-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = dir.join(format!("t{rows}x{cols}-{seq}.safetensors"));
        let mut f = std::fs::File::create(&p).unwrap();
        f.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
        f.write_all(header.as_bytes()).unwrap();
        f.write_all(&data).unwrap();
        Arc::new(SafetensorsFile::open(&p).unwrap())
    }

    fn model(rows: usize, cols: usize, spec: ModelSpec, tok_words: usize) -> Result<EmbedModel> {
        let file = write_table(rows, cols);
        let enc = HfEncoder::from_json(&word_tokenizer(tok_words), false)?;
        EmbedModel::new(file, &spec, Some(Arc::new(enc)))
    }

    #[test]
    fn embed_counted_is_embed_and_encode_in_one_pass() {
        let spec = ModelSpec {
            table: "emb".into(),
            normalize: true,
            skip_ids: vec![20],
            max_length: Some(2),
            ..Default::default()
        };
        let m = model(21, 40, spec, 20).unwrap();
        // 40 texts: more than one parallel task; an empty one; unknown words; more tokens than max_length
        let texts: Vec<String> = (0..40)
            .map(|i| {
                (0..i % 6)
                    .map(|j| format!("w{}", (i + j) % 23))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        let strs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let mut want = vec![0f32; strs.len() * 40];
        m.embed(&strs, &mut want).unwrap();
        let (_, offsets) = m.encode(&strs).unwrap();
        let lens: Vec<u64> = offsets.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(lens.iter().any(|&n| n > 2), "some text has more tokens than max_length");
        for parallel in [false, true] {
            let mut out = vec![f32::NAN; strs.len() * 40];
            let mut counts = vec![u64::MAX; strs.len()];
            m.embed_counted(&strs, &mut out, &mut counts, parallel).unwrap();
            assert_eq!(
                out.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            );
            assert_eq!(counts, lens, "the full count, not the capped one");
        }
        let mut out = vec![0f32; strs.len() * 40];
        let mut short = vec![0u64; strs.len() - 1];
        assert!(m.embed_counted(&strs, &mut out, &mut short, false).is_err());
        let mut counts = vec![0u64; strs.len()];
        assert!(m.embed_counted(&strs, &mut out[1..], &mut counts, true).is_err());
    }

    #[test]
    fn mean_pool_matches_hand_computation_and_is_thread_independent() {
        let spec = ModelSpec {
            table: "emb".into(),
            normalize: true,
            skip_ids: vec![20],
            ..Default::default()
        };
        let m = model(21, 40, spec, 20).unwrap();
        let texts = ["w1 w2 w3", "", "w5 [UNK] w5", "w0"];
        let mut out = vec![0f32; texts.len() * 40];
        m.embed(&texts, &mut out).unwrap();
        // hand reference for text 0 with the scalar path
        let data = m.file.bytes(&m.table);
        let row = |r: usize| -> Vec<f32> {
            (0..40)
                .map(|c| half::f16::from_le_bytes([data[(r * 40 + c) * 2], data[(r * 40 + c) * 2 + 1]]).to_f32())
                .collect()
        };
        let mut r: Vec<f32> = (0..40).map(|c| (row(1)[c] + row(2)[c] + row(3)[c]) / 3.0).collect();
        let n = r.iter().map(|x| x * x).sum::<f32>().sqrt();
        r.iter_mut().for_each(|x| *x /= n);
        for c in 0..40 {
            assert!((out[c] - r[c]).abs() < 1e-5);
        }
        assert!(
            out[40..80].iter().all(|&x| x == 0.0),
            "empty text gives the zero vector"
        );
        // [UNK] (id 20) is skipped: text 2 equals w5 alone
        let mut single = vec![0f32; 40];
        m.pool_ids(&[5], &mut single).unwrap();
        assert_eq!(&out[80..120], &single[..]);
        // any thread count gives the same bits
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let mut out1 = vec![0f32; texts.len() * 40];
        pool.install(|| m.embed(&texts, &mut out1)).unwrap();
        assert_eq!(out, out1);
    }

    #[test]
    fn scalar_and_simd_paths_agree() {
        let spec = ModelSpec {
            table: "emb".into(),
            normalize: true,
            ..Default::default()
        };
        let mut m = model(51, 100, spec, 50).unwrap();
        let texts: Vec<String> = (0..30)
            .map(|i| {
                (0..i % 7 + 1)
                    .map(|j| format!("w{}", (i * 3 + j) % 50))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        let refs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
        let mut fast = vec![0f32; refs.len() * 100];
        m.embed(&refs, &mut fast).unwrap();
        m.set_isa(Isa::Scalar);
        let mut slow = vec![0f32; refs.len() * 100];
        m.embed(&refs, &mut slow).unwrap();
        for (a, b) in fast.iter().zip(&slow) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn nonfinite_rows_in_use_are_refused_at_load() {
        // a 4 x 4 F16 table: row 1 has Inf in column 3, row 2 NaN in column 0
        let mut vals = [half::f16::from_f32(0.5); 16];
        vals[4 + 3] = half::f16::INFINITY;
        vals[8] = half::f16::NAN;
        let data: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let header = r#"{"emb":{"dtype":"F16","shape":[4,4],"data_offsets":[0,32]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&data);
        let file = Arc::new(SafetensorsFile::from_bytes(&bytes, "t.safetensors").unwrap());
        let spec = |dim| ModelSpec {
            table: "emb".into(),
            dim,
            ..Default::default()
        };
        let e = EmbedModel::new(file.clone(), &spec(None), None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "t.safetensors: table \"emb\": 2 row(s) hold NaN or Inf values (row ids 1, 2)"
        );
        let e = EmbedModel::new(file.clone(), &spec(Some(2)), None).unwrap_err();
        assert!(
            e.to_string()
                .contains("1 row(s) hold NaN or Inf values in the first 2 columns"),
            "{e}"
        );
        // row 2's NaN is in column 0, row 1's Inf past the first 3 columns
        assert!(EmbedModel::new(file.clone(), &spec(Some(3)), None).is_err());
        let mut fine = vals;
        fine[8] = half::f16::ONE;
        let data: Vec<u8> = fine.iter().flat_map(|v| v.to_le_bytes()).collect();
        let n = bytes.len();
        bytes[n - 32..].copy_from_slice(&data);
        let file = Arc::new(SafetensorsFile::from_bytes(&bytes, "t.safetensors").unwrap());
        assert!(EmbedModel::new(file.clone(), &spec(Some(3)), None).is_ok());
        assert!(EmbedModel::new(file, &spec(None), None).is_err());
    }

    /// The spec of the "emb" table with every option at its default.
    fn plain() -> ModelSpec {
        ModelSpec {
            table: "emb".into(),
            ..Default::default()
        }
    }

    #[test]
    fn tokenizer_larger_than_table_is_refused_at_load() {
        let e = model(10, 8, plain(), 20).unwrap_err();
        assert!(e.to_string().contains("does not belong"), "{e}");
    }

    #[test]
    fn pool_ids_refuses_a_buffer_of_the_wrong_length() {
        let m = model(30, 8, plain(), 20).unwrap();
        for len in [0, 7, 9] {
            let mut acc = vec![0f32; len];
            let e = m.pool_ids(&[1, 2], &mut acc).unwrap_err();
            assert!(matches!(e, CoreError::InvalidArgument { arg: "acc", .. }), "{e}");
            assert!(e.to_string().contains(&format!("buffer has {len} elements")), "{e}");
        }
        let mut acc = vec![0f32; 8];
        m.pool_ids(&[1, 2], &mut acc).unwrap();
    }

    #[test]
    fn encode_batch_is_csr() {
        let m = model(30, 8, plain(), 20).unwrap();
        let texts: Vec<String> = (0..1000).map(|i| format!("w{} w{} [UNK]", i % 20, i % 7)).collect();
        let refs: Vec<&str> = texts.iter().map(|t| t.as_str()).collect();
        let (ids, offsets) = m.encode(&refs).unwrap();
        assert_eq!(offsets.len(), 1001);
        assert_eq!(*offsets.last().unwrap() as usize, ids.len());
        for (i, t) in refs.iter().enumerate() {
            let mut want = Vec::new();
            m.encoder().unwrap().encode(t, &mut want).unwrap();
            assert_eq!(&ids[offsets[i] as usize..offsets[i + 1] as usize], &want[..]);
        }
        assert_eq!(m.encode(&[]).unwrap(), (vec![], vec![0]));
    }

    #[test]
    fn out_of_range_ids_are_an_error_not_a_read() {
        let m = model(30, 8, plain(), 20).unwrap();
        let mut out = vec![0f32; 8];
        let e = m.embed_ids(&[1, 30], &[0, 2], &mut out).unwrap_err();
        assert!(matches!(e, CoreError::IdOutOfRange { id: 30, .. }));
        assert!(m.embed_ids(&[1], &[0, 2], &mut out).is_err());
        assert!(m.embed_ids(&[1, 2], &[0, 2, 1], &mut [0f32; 16]).is_err());
    }

    #[test]
    fn dim_truncation_and_max_length() {
        let spec = ModelSpec {
            table: "emb".into(),
            dim: Some(16),
            max_length: Some(2),
            ..Default::default()
        };
        let m = model(30, 64, spec, 20).unwrap();
        let mut a = vec![0f32; 16];
        let mut b = vec![0f32; 16];
        m.pool_ids(&[1, 2, 3, 4], &mut a).unwrap();
        m.pool_ids(&[1, 2], &mut b).unwrap();
        assert_eq!(a, b);
        let bad = ModelSpec {
            table: "emb".into(),
            dim: Some(65),
            ..Default::default()
        };
        assert!(model(30, 64, bad, 20).is_err());
    }

    #[test]
    fn binary_packs_signs() {
        let mut out = vec![0u64; 2];
        let x: Vec<f32> = (0..70).map(|i| if i % 3 == 0 { 1.0 } else { -1.0 }).collect();
        pack_signs(&x, &mut out);
        for j in 0..70 {
            assert_eq!((out[j / 64] >> (j % 64)) & 1 == 1, j % 3 == 0);
        }
        assert_eq!(out[1] >> 6, 0, "padding bits are zero");
    }

    #[test]
    fn huge_skip_ids_do_not_allocate_and_are_ignored() {
        // A config's skip_ids may hold any u32: the bitmap is bounded by the id limit.
        let spec = ModelSpec {
            table: "emb".into(),
            skip_ids: vec![u32::MAX, 3, 1 << 31],
            normalize: false,
            ..Default::default()
        };
        let m = model(10, 4, spec, 9).unwrap();
        assert!(m.skip.len() <= 1, "bitmap of {} words", m.skip.len());
        assert!(m.is_skipped(3) && !m.is_skipped(4));
        let mut out = vec![0f32; 4];
        assert!(matches!(
            m.embed_ids(&[u32::MAX], &[0, 1], &mut out),
            Err(CoreError::IdOutOfRange { .. })
        ));
    }

    #[test]
    fn normalization_survives_f32_overflow_and_underflow() {
        // Rows whose squared norm overflows or underflows f32 still come out unit length (found by
        // the embed_ids fuzz target: 1e21-sized values were returned unnormalized).
        for scale in [1e21f32, 3e37, 1e-17, 1e-20, 1e-25, 1e-38] {
            let vals: Vec<f32> = [1.0f32, -2.0, 2.0, 0.5].iter().map(|v| v * scale).collect();
            let mut data: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
            let header = format!(
                r#"{{"t":{{"dtype":"F32","shape":[1,4],"data_offsets":[0,{}]}}}}"#,
                data.len()
            );
            let mut file = (header.len() as u64).to_le_bytes().to_vec();
            file.extend_from_slice(header.as_bytes());
            file.append(&mut data);
            let st = Arc::new(SafetensorsFile::from_bytes(&file, "big.safetensors").unwrap());
            let spec = ModelSpec {
                table: "t".into(),
                normalize: true,
                ..Default::default()
            };
            for isa_level in [Isa::Scalar, isa()] {
                let mut m = EmbedModel::new(st.clone(), &spec, None).unwrap();
                m.set_isa(isa_level);
                let mut out = vec![0f32; 4];
                m.embed_ids(&[0, 0], &[0, 2], &mut out).unwrap();
                let norm = out.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
                assert!((norm - 1.0).abs() < 1e-5, "scale {scale}: {out:?}");
                let want = [1.0 / 9.25f64.sqrt(), -2.0 / 9.25f64.sqrt()];
                assert!((out[0] as f64 - want[0]).abs() < 1e-5 && (out[1] as f64 - want[1]).abs() < 1e-5);
            }
        }
    }
}
