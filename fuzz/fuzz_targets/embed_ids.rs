//! A model built from fuzzed bytes (table dtype, shape, optional weights and mapping with any
//! values, dim, normalize, max_length, skipped ids), then `embed_ids` on fuzzed ids and offsets:
//! loading either fails with a tokvec error or gives a model whose pooling never panics, never
//! reads outside the table and matches the scalar kernel.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use tokvec::internals::pool::{EmbedModel, ModelSpec};
use tokvec::internals::simd::Isa;
use tokvec::internals::SafetensorsFile;

const DTYPES: [(&str, usize); 7] = [
    ("F16", 2),
    ("BF16", 2),
    ("F32", 4),
    ("F64", 8),
    ("I8", 1),
    ("I32", 4),
    ("U8", 1),
];

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn take(&mut self, n: usize) -> Vec<u8> {
        let k = n.min(self.0.len());
        let mut v = self.0[..k].to_vec();
        self.0 = &self.0[k..];
        v.resize(n, 0);
        v
    }
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    let (dt, size) = DTYPES[b.u8() as usize % DTYPES.len()];
    let rows = (b.u8() % 17) as usize; // 0 rows is refused
    let cols = (b.u8() % 41) as usize; // 0 columns is refused
    let flags = b.u8();
    let n_map = (b.u8() % 20) as usize;
    let mut header = format!(
        r#"{{"table":{{"dtype":"{dt}","shape":[{rows},{cols}],"data_offsets":[0,{}]}}"#,
        rows * cols * size
    );
    let mut payload = b.take(rows * cols * size);
    let mut off = payload.len();
    let with_weights = flags & 1 != 0;
    let with_mapping = flags & 2 != 0;
    if with_mapping {
        let (mdt, ms) = if flags & 16 != 0 { ("I64", 8) } else { ("I32", 4) };
        header += &format!(
            r#","mapping":{{"dtype":"{mdt}","shape":[{n_map}],"data_offsets":[{off},{}]}}"#,
            off + n_map * ms
        );
        // Small values, mostly in range: every byte is taken modulo rows + 2.
        for _ in 0..n_map {
            let v = (b.u8() as usize % (rows + 2)) as u64;
            let le = v.to_le_bytes();
            payload.extend_from_slice(&le[..ms]);
        }
        off = payload.len();
    }
    if with_weights {
        let n_w = if with_mapping { n_map } else { rows };
        let n_w = if flags & 32 != 0 { n_w + 1 } else { n_w }; // sometimes the wrong length
        header += &format!(
            r#","weights":{{"dtype":"F32","shape":[{n_w}],"data_offsets":[{off},{}]}}"#,
            off + n_w * 4
        );
        payload.extend(b.take(n_w * 4));
    }
    header.push('}');
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header.as_bytes());
    file.extend_from_slice(&payload);
    let Ok(st) = SafetensorsFile::from_bytes(&file, "fuzz.safetensors") else {
        return;
    };
    let dim = if flags & 4 != 0 {
        Some((b.u8() as usize) % (cols + 2))
    } else {
        None
    };
    let spec = ModelSpec {
        table: "table".into(),
        weights: with_weights.then(|| "weights".into()),
        mapping: with_mapping.then(|| "mapping".into()),
        skip_ids: (0..(b.u8() % 4)).map(|_| b.u8() as u32 % 24).collect(),
        dim,
        normalize: flags & 8 != 0,
        max_length: if flags & 64 != 0 {
            Some(b.u8() as usize % 5)
        } else {
            None
        },
    };
    let Ok(model) = EmbedModel::new(Arc::new(st), &spec, None) else {
        return;
    };
    // The largest |value| the pooled sum can see, for the SIMD-vs-scalar tolerance.
    let table = &payload[..rows * cols * size];
    let max_abs = |v: f32| if v.is_finite() { v.abs() } else { f32::INFINITY };
    let mut bound = table
        .chunks_exact(size)
        .map(|c| match dt {
            "F16" => max_abs(half::f16::from_le_bytes([c[0], c[1]]).to_f32()),
            "BF16" => max_abs(half::bf16::from_le_bytes([c[0], c[1]]).to_f32()),
            "F32" => max_abs(f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            "F64" => max_abs(f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32),
            _ => max_abs(c[0] as i8 as f32),
        })
        .fold(0f32, f32::max);
    if with_weights {
        let w = &payload[off..];
        bound *= w
            .chunks_exact(4)
            .map(|c| max_abs(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .fold(0f32, f32::max);
    }
    // ids: each byte is an id (some beyond the id limit); a 0xFF byte ends a text.
    let mut ids = Vec::new();
    let mut offsets = vec![0u64];
    for &x in b.0 {
        if x == 0xFF {
            offsets.push(ids.len() as u64);
        } else {
            ids.push(x as u32 % (model.id_limit() as u32 + 3));
        }
    }
    offsets.push(ids.len() as u64);
    let n = offsets.len() - 1;
    let d = model.dim();
    let mut out = vec![0f32; n * d];
    let got = model.embed_ids(&ids, &offsets, &mut out);
    let st = SafetensorsFile::from_bytes(&file, "fuzz.safetensors").expect("same bytes load twice");
    let mut scalar = EmbedModel::new(Arc::new(st), &spec, None).expect("same spec loads twice");
    scalar.set_isa(Isa::Scalar);
    let mut want = vec![0f32; n * d];
    let reference = scalar.embed_ids(&ids, &offsets, &mut want);
    assert_eq!(got.is_ok(), reference.is_ok(), "{got:?} vs {reference:?}");
    if got.is_ok() && bound.is_finite() && bound < 1e30 {
        for (x, y) in out.iter().zip(&want) {
            if spec.normalize {
                // Normalization divides by a norm that may be tiny: check only the range.
                assert!(x.abs() <= 1.0 + 1e-3 && y.abs() <= 1.0 + 1e-3, "simd {x} vs scalar {y}");
            } else {
                let tol = 1e-4 * bound + 1e-6;
                assert!((x - y).abs() <= tol, "simd {x} vs scalar {y} (bound {bound})");
            }
        }
    }
    // Wrong buffer sizes and bad offsets are refused, never written past.
    let mut short = vec![0f32; (n * d).saturating_sub(1)];
    assert!(n * d == 0 || model.embed_ids(&ids, &offsets, &mut short).is_err());
    let mut bad = offsets.clone();
    if let Some(last) = bad.last_mut() {
        *last += 1;
    }
    assert!(model.embed_ids(&ids, &bad, &mut out).is_err());
});
