//! Any bytes as a safetensors file: validation must return Ok or a Format error naming the file,
//! never panic or read out of bounds; every accepted tensor's range lies inside the file and its
//! byte length matches shape x dtype size.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokvec::internals::header::validate;
use tokvec::internals::{CoreError, SafetensorsFile};

fuzz_target!(|data: &[u8]| {
    match validate(data, "fuzz.safetensors") {
        Ok((tensors, _metadata)) => {
            for t in &tensors {
                assert!(
                    t.start <= t.end && t.end <= data.len(),
                    "{t:?} outside {} bytes",
                    data.len()
                );
                let size = t.dtype.size();
                if size > 0 {
                    let n: usize = t.shape.iter().product();
                    assert_eq!(n * size, t.end - t.start, "{t:?}");
                }
            }
            let f = SafetensorsFile::from_bytes(data, "fuzz.safetensors").expect("validated bytes load");
            for t in f.tensors() {
                let b = f.bytes(t);
                assert_eq!(b.len(), t.end - t.start);
                // The typed readers must refuse or read, never panic.
                let _ = f.read_f32_vector(&t.name);
                let _ = f.read_index_vector(&t.name);
            }
        }
        Err(CoreError::Format { path, msg }) => {
            assert_eq!(path, "fuzz.safetensors");
            assert!(!msg.is_empty());
        }
        Err(e) => panic!("unexpected error kind: {e:?}"),
    }
});
