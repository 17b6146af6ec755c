//! Reads arbitrary bytes as a factorvit file with the compressor's reader, as
//! `checkpoint::read_fvit` does (what `factorvit convert/compress` use to re-read `.fvit`
//! inputs) but from memory: checksum verification (`checksum::verify`, when the file has
//! checksums), `parse_safetensors`, `ModelSpec::from_safetensors`. Bad inputs must give an
//! error, never a panic.
//!
//! Oracles, when the reader accepts the bytes:
//! * agreement: the runtime (`Model::from_bytes`) loads them too (the reader claims the
//!   runtime's rules; it must not accept a file the runtime rejects);
//! * round trip: the writer (`writer::to_bytes`) accepts the spec, the runtime loads what it
//!   wrote, and the reader reads it back as the same model (configuration, preprocessing,
//!   labels, source, tensors, extra metadata).
#![no_main]
use std::path::Path;

use factorvit::safetensors::Container;
use factorvit_compress::checkpoint::{parse_safetensors, ModelSpec};
use factorvit_compress::writer;
use libfuzzer_sys::fuzz_target;

fn read(bytes: &[u8]) -> Option<ModelSpec> {
    let container = Container::parse(bytes).ok()?;
    factorvit::checksum::verify(&container, bytes, factorvit::ChecksumPolicy::VerifyIfPresent, false).ok()?;
    let path = Path::new("<fuzz>.fvit");
    let file = parse_safetensors(bytes, path).ok()?;
    ModelSpec::from_safetensors(file, path).ok()
}

fuzz_target!(|data: &[u8]| {
    let Some(spec) = read(data) else { return };
    if let Err(e) = factorvit::Model::from_bytes(data) {
        panic!("the compressor's reader accepts a file the runtime rejects: {e}");
    }
    let bytes = writer::to_bytes(&spec).unwrap_or_else(|e| panic!("the writer rejects a spec read from a file: {e}"));
    if let Err(e) = factorvit::Model::from_bytes(&bytes) {
        panic!("the runtime rejects a re-written file: {e}");
    }
    let back = read(&bytes).expect("the reader rejects a file the writer wrote");
    assert_eq!(back.config, spec.config);
    assert_eq!(back.preprocess, spec.preprocess);
    assert_eq!(back.labels, spec.labels);
    assert_eq!(back.source, spec.source);
    assert!(back.tensors == spec.tensors, "the tensors changed in the round trip");
    assert_eq!(back.metadata, spec.metadata);
});
