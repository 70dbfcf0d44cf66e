//! Any bytes as a GGUF file: parsing must return Ok or a Format error naming the file, never panic,
//! overflow or allocate past what the file can hold; every accepted tensor and metadata array lies
//! inside the file, tensors start on the file's alignment, and every accepted array decodes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokvec::internals::gguf::{parse, MetaArray, Value};
use tokvec::internals::CoreError;

/// An accepted array lies inside the file, its raw bytes are `len` elements, and decoding it on
/// demand (nested arrays too) yields exactly `len` values without an error.
fn check_array(a: &MetaArray, data: &[u8]) {
    assert!(a.start <= a.end && a.end <= data.len(), "{a:?}");
    if let Some(size) = a.elem_size() {
        assert_eq!(a.raw(data).map(<[u8]>::len), Some(a.len * size), "{a:?}");
    }
    let mut n = 0;
    for v in a.values(data, "fuzz.gguf") {
        if let Value::Array(inner) = v.expect("a validated array decodes") {
            check_array(&inner, data);
        }
        n += 1;
    }
    assert_eq!(n, a.len);
}

fuzz_target!(|data: &[u8]| {
    match parse(data, "fuzz.gguf") {
        Ok(h) => {
            assert!(h.data_start <= data.len());
            // The data section and every tensor in it start on the file's alignment.
            assert!(h.alignment.is_power_of_two(), "alignment {}", h.alignment);
            assert_eq!(h.data_start as u64 % h.alignment, 0);
            for t in &h.tensors {
                assert!(
                    t.start >= h.data_start && t.start <= t.end && t.end <= data.len(),
                    "{t:?}"
                );
                assert_eq!(t.start as u64 % h.alignment, 0, "{t:?}");
                assert!(!t.dims.is_empty());
                let _ = t.shape();
                let _ = &data[t.start..t.end];
            }
            for (k, v) in &h.metadata {
                let _ = (k.len(), v.as_u64(), v.as_str());
                if let Value::Array(a) = v {
                    check_array(a, data);
                }
            }
        }
        Err(CoreError::Format { path, msg }) => {
            assert_eq!(path, "fuzz.gguf");
            assert!(!msg.is_empty());
        }
        Err(e) => panic!("unexpected error kind: {e:?}"),
    }
});
