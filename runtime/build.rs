//! Build script: enables the AVX-512 GEMM kernels (`cfg(factorvit_avx512)`) when the compiler
//! has stable AVX-512 intrinsics and `target_feature` support (Rust 1.89 or newer). Older
//! compilers (the crate's MSRV is 1.80) build without them.

use std::process::Command;

fn main() {
    println!("cargo:rustc-check-cfg=cfg(factorvit_avx512)");
    println!("cargo:rerun-if-env-changed=RUSTC");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let minor = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|v| v.split_whitespace().nth(1).map(str::to_owned))
        .and_then(|v| {
            let mut parts = v.split('.');
            let major: u32 = parts.next()?.parse().ok()?;
            let minor: u32 = parts.next()?.parse().ok()?;
            Some(if major > 1 { u32::MAX } else { minor })
        });
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    if arch == "x86_64" && minor.is_some_and(|m| m >= 89) {
        println!("cargo:rustc-cfg=factorvit_avx512");
    }
}
