//! The file format from the outside: files written by Python (numpy + safetensors only, the
//! example of docs/FORMAT.md) load and run; factored and sparse layers compute what their
//! dense equivalent computes; corrupt files give typed errors, never panics.

use factorvit::{ChecksumPolicy, ChecksumStatus, Error, LinearKind, LinearWeights, LoadOptions, Model, SessionOptions};
use factorvit_e2e::*;

fn example(tiny: bool) -> Option<Vec<u8>> {
    let dir = temp_dir("format");
    let path = dir.join(if tiny { "tiny.fvit" } else { "example.fvit" });
    if python_example_model(&path, tiny).is_none() {
        eprintln!("NOTICE: python3 with numpy + safetensors unavailable; using the committed tiny.fvit");
        return tiny.then(|| std::fs::read(repo_root().join("runtime/tests/data/tiny.fvit")).unwrap());
    }
    let bytes = std::fs::read(&path).unwrap();
    std::fs::remove_dir_all(dir).ok();
    Some(bytes)
}

fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

#[test]
fn python_written_file_runs_and_factored_layers_match_their_dense_equivalent() {
    let Some(bytes) = example(false) else { return };
    let model = Model::from_bytes(&bytes).unwrap();
    // The Python example computes its checksums with zlib.crc32: an independent implementation.
    assert!(
        matches!(model.checksum_status(), ChecksumStatus::Verified { tensors } if tensors > 20),
        "{:?}",
        model.checksum_status()
    );
    let kinds: Vec<LinearKind> = model.linears().map(|l| l.info().kind).collect();
    assert!(kinds.contains(&LinearKind::LowRank) && kinds.contains(&LinearKind::LowRankSparse));

    // The same model with every factored layer replaced by its effective dense weight.
    let mut dense = model.view();
    let names: Vec<String> =
        model.linears().filter(|l| l.info().kind != LinearKind::Dense).map(|l| l.name().to_string()).collect();
    for name in &names {
        let layer = model.linear(name).unwrap();
        let w = model.effective_weight(layer);
        dense.set_linear(name, LinearWeights::Dense { weight: w }, layer.bias().map(<[f32]>::to_vec)).unwrap();
    }
    let c = model.config();
    let batch = 3;
    let pixels = pseudo_random(batch * c.in_chans * c.image_size[0] * c.image_size[1], 7);
    let opts = SessionOptions { threads: 1, batch, image_size: [0, 0], ..Default::default() };
    let a = model.session(opts.clone()).unwrap().run(&pixels).unwrap().logits.unwrap().to_vec();
    let b = dense.session(opts).unwrap().run(&pixels).unwrap().logits.unwrap().to_vec();
    // Same math, different association ((x·Vᵀ)·Uᵀ vs x·(U·V)ᵀ): f32 rounding only.
    let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    assert!(max_abs_diff(&a, &b) <= 1e-5 * scale, "{a:?} vs {b:?}");
}

#[test]
fn every_truncation_is_rejected() {
    let bytes = example(true).unwrap();
    Model::from_bytes(&bytes).expect("the tiny example is valid");
    for cut in 0..bytes.len() {
        assert!(Model::from_bytes(&bytes[..cut]).is_err(), "truncation at {cut} was accepted");
    }
}

#[test]
fn random_corruption_never_panics() {
    let bytes = example(true).unwrap();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut accepted = 0;
    let skip = LoadOptions { checksums: ChecksumPolicy::Skip, check_finite: false, ..Default::default() };
    for _ in 0..4000 {
        let mut b = bytes.clone();
        for _ in 0..1 + next() % 4 {
            let i = (next() as usize) % b.len();
            b[i] = next() as u8;
        }
        // Checksums would reject nearly every flip; skip them so that structural validation is
        // what is exercised (tests/malformed.rs covers the checksums).
        if let Ok(model) = Model::from_bytes_with(&b, &skip) {
            accepted += 1; // a flipped weight byte is still a valid file: it must run
            let c = model.config();
            if c.tokens_for(c.image_size[0], c.image_size[1]) * c.embed_dim < 1 << 16 {
                let px = vec![0.25f32; c.in_chans * c.image_size[0] * c.image_size[1]];
                let mut s = model.session(SessionOptions::default()).unwrap();
                let _ = s.run(&px).unwrap();
            }
        }
    }
    assert!(accepted > 0 && accepted < 4000, "accepted {accepted}");
}

fn load_err(f: &RawFile) -> Error {
    Model::from_bytes(&f.to_bytes()).expect_err("corrupt file was accepted")
}

#[test]
fn bad_files_give_errors_that_name_the_problem() {
    let bytes = example(true).unwrap();
    let mut good = RawFile::parse(&bytes);
    // Without checksums, so that each defect reaches the structural check it targets
    // (tests/malformed.rs covers checksummed files).
    good.metadata.retain(|(k, _)| k != "checksums");
    Model::from_bytes(&good.to_bytes()).expect("re-serialised example is valid");

    let mut f = good.clone();
    f.set_metadata("format_version", "2");
    assert!(matches!(load_err(&f), Error::Format(m) if m.contains("format_version")));

    let mut f = good.clone();
    f.set_metadata("format", "other");
    assert!(matches!(load_err(&f), Error::Format(_)));

    let mut f = good.clone();
    f.remove("blocks.0.attn.proj.weight");
    assert!(matches!(load_err(&f), Error::MissingTensor(t) if t == "blocks.0.attn.proj.weight"));

    let mut f = good.clone();
    f.tensor_mut("blocks.0.attn.proj.weight").2 = vec![4, 16];
    assert!(matches!(load_err(&f), Error::Shape { tensor, .. } if tensor == "blocks.0.attn.proj.weight"));

    let mut f = good.clone();
    f.tensor_mut("blocks.0.norm1.weight").1 = "I32".into();
    f.tensor_mut("blocks.0.norm1.weight").2 = vec![8];
    assert!(matches!(load_err(&f), Error::Dtype { tensor, .. } if tensor == "blocks.0.norm1.weight"));

    let mut f = good.clone();
    f.tensor_mut("blocks.0.norm1.weight").3[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    assert!(matches!(load_err(&f), Error::NonFinite(t) if t == "blocks.0.norm1.weight"));

    // CSR: a decreasing row pointer, then an out-of-range column.
    let mut f = good.clone();
    let rp = &mut f.tensor_mut("blocks.0.mlp.fc2.sparse.row_ptr").3;
    rp[4..8].copy_from_slice(&100u32.to_le_bytes());
    assert!(matches!(load_err(&f), Error::Sparse { reason, .. } if reason.contains("row_ptr")));
    let mut f = good.clone();
    f.tensor_mut("blocks.0.mlp.fc2.sparse.col_idx").3[..2].copy_from_slice(&60000u16.to_le_bytes());
    assert!(matches!(load_err(&f), Error::Sparse { reason, .. } if reason.contains("out of range")));

    let mut f = good.clone();
    f.tensors.push(("stray".into(), "F32".into(), vec![1], vec![0; 4]));
    assert!(matches!(load_err(&f), Error::Format(m) if m.contains("stray")));

    let mut f = good.clone();
    let cfg = f.metadata.iter().find(|(k, _)| k == "config").unwrap().1.replace("\"num_heads\": 2", "\"num_heads\": 3");
    f.set_metadata("config", &cfg);
    assert!(matches!(load_err(&f), Error::Config(m) if m.contains("num_heads")));

    let mut f = good.clone();
    f.set_metadata("layers", "{not json");
    assert!(matches!(load_err(&f), Error::Json { .. }));

    // Every error renders as one line.
    let msg = load_err(&f).to_string();
    assert!(!msg.contains('\n') && !msg.is_empty());
}
