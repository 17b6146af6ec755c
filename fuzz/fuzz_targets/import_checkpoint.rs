//! Imports arbitrary bytes as an in-memory timm / transformers checkpoint
//! (`factorvit_compress::checkpoint::import_from_memory`): parses `config.json` with serde_json,
//! detects the layout, parses the safetensors weights and maps the tensors. Bad inputs must give
//! a `CheckpointError`, never a panic.
//!
//! Input format (what the seeds in `fuzz/seeds/import_checkpoint/` hold):
//!
//! ```text
//! [n: u16 little-endian] [config.json: n bytes] [model.safetensors: the rest]
//! ```
//!
//! (`n` larger than what follows means "everything after the length is the config, the weights
//! are empty").
//!
//! Oracle: every checkpoint the importer accepts must produce a file — the writer
//! (`writer::to_bytes`) must accept the spec and the runtime (`Model::from_bytes`) must load
//! what it wrote.
#![no_main]
use factorvit_compress::checkpoint::import_from_memory;
use factorvit_compress::writer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((len, rest)) = data.split_first_chunk::<2>() else { return };
    let n = usize::from(u16::from_le_bytes(*len)).min(rest.len());
    let (config, weights) = rest.split_at(n);
    let Ok(spec) = import_from_memory(config, weights) else { return };
    let bytes = writer::to_bytes(&spec).unwrap_or_else(|e| panic!("the writer rejects an imported checkpoint: {e}"));
    if let Err(e) = factorvit::Model::from_bytes(&bytes) {
        panic!("the runtime rejects the file written from an imported checkpoint: {e}");
    }
});
