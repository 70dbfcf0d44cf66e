//! Any bytes as a GGUF file: parsing must return Ok or a Format error naming the file, never panic,
//! overflow or allocate past what the file can hold; every accepted tensor lies inside the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokvec::gguf::parse;
use tokvec::CoreError;

fuzz_target!(|data: &[u8]| {
    match parse(data, "fuzz.gguf") {
        Ok(h) => {
            assert!(h.data_start <= data.len());
            for t in &h.tensors {
                assert!(
                    t.start >= h.data_start && t.start <= t.end && t.end <= data.len(),
                    "{t:?}"
                );
                assert!(!t.dims.is_empty());
                let _ = t.shape();
                let _ = &data[t.start..t.end];
            }
            for (k, v) in &h.metadata {
                let _ = (k.len(), v.as_u64(), v.as_str());
            }
        }
        Err(CoreError::Format { path, msg }) => {
            assert_eq!(path, "fuzz.gguf");
            assert!(!msg.is_empty());
        }
        Err(e) => panic!("unexpected error kind: {e:?}"),
    }
});
