//! The committed C header `include/factorvit.h` must be exactly what cbindgen generates from
//! `src/lib.rs` with `cbindgen.toml`. Run with `FV_UPDATE_HEADER=1` to rewrite it.

use std::path::Path;

#[test]
fn committed_header_is_current() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let header_path = crate_dir.join("../../include/factorvit.h");
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(crate_dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen cannot generate the header");
    let mut generated = Vec::new();
    bindings.write(&mut generated);
    let generated = String::from_utf8(generated).expect("header is UTF-8");
    if std::env::var_os("FV_UPDATE_HEADER").is_some() {
        std::fs::write(&header_path, &generated).expect("cannot write include/factorvit.h");
        return;
    }
    let committed = std::fs::read_to_string(&header_path).unwrap_or_default();
    if committed != generated {
        let line = committed.lines().zip(generated.lines()).position(|(a, b)| a != b);
        panic!(
            "include/factorvit.h is stale (first difference at line {}); regenerate it with\n  \
             FV_UPDATE_HEADER=1 cargo test -p factorvit-ffi --test header",
            line.map_or_else(|| "end".to_string(), |l| (l + 1).to_string())
        );
    }
}
