//! Parses arbitrary bytes as a safetensors container and as JSON.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = factorvit::safetensors::Container::parse(data) {
        for t in c.tensors() {
            assert!(t.start <= t.end && t.end <= data.len());
            assert_eq!((t.end - t.start) % t.dtype.size(), 0);
        }
    }
    if let Ok(v) = factorvit::json::parse(data) {
        // Serialising and re-parsing must give the same value.
        let text = v.to_json();
        assert_eq!(factorvit::json::parse(text.as_bytes()).ok(), Some(v));
    }
});
