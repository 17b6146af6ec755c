//! The C ABI, called from Rust exactly as C would call it: results against the fixtures'
//! references, every error path (NULL pointers, wrong sizes, bad files, missing outputs),
//! ownership in any order and the per-thread last error.

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::ptr::{null, null_mut};

use factorvit::safetensors::{Container, DType};
use factorvit_ffi::*;

const TOLERANCE: f32 = 1e-4;

fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name)
}

/// A fixture checkpoint converted to a factorvit file (f32, or `dtype`).
fn fixture_fvit(name: &str, dtype: DType) -> Vec<u8> {
    let mut spec = factorvit_compress::checkpoint::load_checkpoint(&fixture_dir(name)).unwrap();
    spec.cast_floats(dtype).unwrap();
    factorvit_compress::writer::to_bytes(&spec).unwrap()
}

/// One f32 tensor of a safetensors file and its shape.
fn read_f32(path: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let c = Container::parse(&bytes).unwrap();
    let t = c.get(name).unwrap_or_else(|| panic!("{}: no `{name}`", path.display()));
    assert_eq!(t.dtype, DType::F32);
    let data = bytes[t.start..t.end].chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    (t.shape.clone(), data)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn last_error() -> String {
    // SAFETY: fv_last_error always returns a valid NUL-terminated string.
    unsafe { CStr::from_ptr(fv_last_error()) }.to_str().unwrap().to_string()
}

/// A 16-byte aligned copy of `bytes` (what a C caller gets from `aligned_alloc`), offset by
/// `shift` bytes.
struct AlignedBuf {
    words: Vec<u128>,
    shift: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(bytes: &[u8], shift: usize) -> AlignedBuf {
        let mut words = vec![0u128; (bytes.len() + shift).div_ceil(16)];
        let all: &mut [u8] = bytemuck_bytes(&mut words);
        all[shift..shift + bytes.len()].copy_from_slice(bytes);
        AlignedBuf { words, shift, len: bytes.len() }
    }
    fn ptr(&self) -> *const u8 {
        self.words.as_ptr().cast::<u8>().wrapping_add(self.shift)
    }
}

fn bytemuck_bytes(words: &mut [u128]) -> &mut [u8] {
    // SAFETY: u128 has no padding and every byte pattern is a valid u8.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), words.len() * 16) }
}

fn open_memory(buf: &AlignedBuf) -> *mut FvModel {
    let mut model = null_mut();
    // SAFETY: the buffer outlives the model in every test that uses this.
    let st = unsafe { fv_model_open_memory(buf.ptr(), buf.len, &mut model) };
    assert_eq!(st, FvStatus::Ok, "{}", last_error());
    model
}

fn info(model: *const FvModel) -> FvModelInfo {
    let mut info = FvModelInfo::default();
    // SAFETY: live model, valid out pointer.
    assert_eq!(unsafe { fv_model_info(model, &mut info) }, FvStatus::Ok);
    info
}

fn session(model: *const FvModel, batch: usize) -> *mut FvSession {
    session_sized(model, batch, 0, 0)
}

fn session_sized(model: *const FvModel, batch: usize, image_height: usize, image_width: usize) -> *mut FvSession {
    let opts = FvSessionOptions { batch, image_height, image_width, ..fv_session_options_default() };
    let mut s = null_mut();
    // SAFETY: live model, valid pointers.
    let st = unsafe { fv_session_create(model, &opts, &mut s) };
    assert_eq!(st, FvStatus::Ok, "{}", last_error());
    s
}

/// Runs the fixture input through `model` and checks logits (or pooled features) against the
/// reference.
fn check_against_reference(name: &str, model: *const FvModel) {
    let dir = fixture_dir(name);
    let (shape, input) = read_f32(&dir.join("input.safetensors"), "pixel_values");
    let s = session_sized(model, shape[0], shape[2], shape[3]);
    let mut in_shape = [0usize; 4];
    // SAFETY: live session, 4 writable entries.
    assert_eq!(unsafe { fv_session_input_shape(s, in_shape.as_mut_ptr()) }, FvStatus::Ok);
    assert_eq!(in_shape.to_vec(), shape);
    let i = info(model);
    let (reference, mut got, which) = if i.num_classes > 0 {
        let (_, r) = read_f32(&dir.join("expected.safetensors"), "logits");
        (r, vec![f32::NAN; shape[0] * i.num_classes], FvOutput::Logits)
    } else {
        let (_, r) = read_f32(&dir.join("expected.safetensors"), "pooler_output");
        (r, vec![f32::NAN; shape[0] * i.embed_dim], FvOutput::PoolerOutput)
    };
    let mut outputs = FvOutputs {
        logits: null_mut(),
        logits_len: 0,
        pooler_output: null_mut(),
        pooler_output_len: 0,
        last_hidden_state: null_mut(),
        last_hidden_state_len: 0,
        batch: 0,
    };
    match which {
        FvOutput::Logits => (outputs.logits, outputs.logits_len) = (got.as_mut_ptr(), got.len()),
        _ => (outputs.pooler_output, outputs.pooler_output_len) = (got.as_mut_ptr(), got.len()),
    }
    // SAFETY: live session; input and output buffers valid for their lengths.
    let st = unsafe { fv_session_run(s, input.as_ptr(), input.len(), &mut outputs) };
    assert_eq!(st, FvStatus::Ok, "{name}: {}", last_error());
    assert_eq!(outputs.batch, shape[0]);
    let diff = max_abs_diff(&got, &reference);
    assert!(diff <= TOLERANCE, "{name}: {which:?} differs from the reference by {diff:e}");
    // SAFETY: live session, freed once.
    unsafe { fv_session_free(s) };
}

#[test]
fn path_memory_and_copy_give_the_reference_outputs() {
    let dir = std::env::temp_dir().join(format!("factorvit-ffi-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["timm-vit-micro", "timm-deit-distilled-micro", "hf-dinov2-micro"] {
        let bytes = fixture_fvit(name, DType::F32);
        // From a path (memory map).
        let path = dir.join(format!("{name}.fvit"));
        std::fs::write(&path, &bytes).unwrap();
        let c_path = CString::new(path.to_str().unwrap()).unwrap();
        let mut model = null_mut();
        // SAFETY: valid C string and out pointer.
        assert_eq!(unsafe { fv_model_open(c_path.as_ptr(), &mut model) }, FvStatus::Ok, "{}", last_error());
        assert_eq!(info(model).copied_weight_bytes, 0);
        check_against_reference(name, model);
        // SAFETY: freed once.
        unsafe { fv_model_free(model) };

        // From aligned caller memory: weights are read in place.
        let buf = AlignedBuf::new(&bytes, 0);
        let model = open_memory(&buf);
        assert_eq!(info(model).copied_weight_bytes, 0);
        check_against_reference(name, model);
        // SAFETY: freed once, before `buf`.
        unsafe { fv_model_free(model) };

        // From a copy: the caller's buffer may go away immediately.
        let mut model = null_mut();
        {
            let tmp = bytes.clone();
            // SAFETY: `tmp` is readable for its length during the call.
            assert_eq!(unsafe { fv_model_open_copy(tmp.as_ptr(), tmp.len(), &mut model) }, FvStatus::Ok);
        }
        check_against_reference(name, model);
        // SAFETY: freed once.
        unsafe { fv_model_free(model) };
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn misaligned_memory_is_copied_and_still_correct() {
    let bytes = fixture_fvit("timm-vit-micro", DType::F16);
    let buf = AlignedBuf::new(&bytes, 1);
    let model = open_memory(&buf);
    let i = info(model);
    assert!(i.copied_weight_bytes > 0, "misaligned tensors must be copied");
    assert!(i.weight_bytes > 0 && i.params > 0);
    let s = session(model, 1);
    let mut report = FvMemoryReport::default();
    // SAFETY: live session, valid out pointer.
    assert_eq!(unsafe { fv_session_memory(s, &mut report) }, FvStatus::Ok);
    assert_eq!(report.copied_weight_bytes, i.copied_weight_bytes);
    assert!(report.arena_bytes > 0);
    // SAFETY: freed once each, before `buf`.
    unsafe {
        fv_session_free(s);
        fv_model_free(model);
    }
}

#[test]
fn model_can_be_freed_before_its_sessions() {
    let bytes = fixture_fvit("hf-vit-micro", DType::F32);
    let buf = AlignedBuf::new(&bytes, 0);
    let model = open_memory(&buf);
    let s = session(model, 2);
    // SAFETY: freed once; the session keeps the model alive.
    unsafe { fv_model_free(model) };
    let (shape, input) = read_f32(&fixture_dir("hf-vit-micro").join("input.safetensors"), "pixel_values");
    let (_, reference) = read_f32(&fixture_dir("hf-vit-micro").join("expected.safetensors"), "logits");
    let mut logits = vec![0.0f32; reference.len()];
    let mut out = FvOutputs {
        logits: logits.as_mut_ptr(),
        logits_len: logits.len(),
        pooler_output: null_mut(),
        pooler_output_len: 0,
        last_hidden_state: null_mut(),
        last_hidden_state_len: 0,
        batch: 0,
    };
    // SAFETY: live session, valid buffers.
    assert_eq!(unsafe { fv_session_run(s, input.as_ptr(), input.len(), &mut out) }, FvStatus::Ok);
    assert_eq!(out.batch, shape[0]);
    assert!(max_abs_diff(&logits, &reference) <= TOLERANCE);
    // SAFETY: freed once, before `buf`.
    unsafe { fv_session_free(s) };
}

#[test]
fn shapes_labels_and_backend() {
    let bytes = fixture_fvit("timm-deit-distilled-micro", DType::F32);
    let buf = AlignedBuf::new(&bytes, 0);
    let model = open_memory(&buf);
    let i = info(model);
    let s = session(model, 3);
    let (mut shape, mut ndim) = ([9usize; 3], 9usize);
    // SAFETY (whole block): live handles, valid out pointers.
    unsafe {
        assert_eq!(fv_session_output_shape(s, FvOutput::Logits as i32, shape.as_mut_ptr(), &mut ndim), FvStatus::Ok);
        assert_eq!((shape, ndim), ([3, i.num_classes, 0], 2));
        assert_eq!(
            fv_session_output_shape(s, FvOutput::PoolerOutput as i32, shape.as_mut_ptr(), &mut ndim),
            FvStatus::Ok
        );
        assert_eq!((shape, ndim), ([3, i.embed_dim, 0], 2));
        assert_eq!(
            fv_session_output_shape(s, FvOutput::LastHiddenState as i32, shape.as_mut_ptr(), &mut ndim),
            FvStatus::Ok
        );
        let grid = (i.image_height / i.patch_size) * (i.image_width / i.patch_size);
        assert_eq!((shape, ndim), ([3, i.num_prefix_tokens + grid, i.embed_dim], 3));
        assert_eq!(i.num_prefix_tokens, 2, "DeiT distilled has class and distillation tokens");
        assert_eq!(fv_session_output_shape(s, 7, shape.as_mut_ptr(), &mut ndim), FvStatus::InvalidArgument);

        let mut macs = 0u64;
        assert_eq!(fv_session_macs_per_image(s, &mut macs), FvStatus::Ok);
        assert!(macs > 0);
        let mut backend = null();
        assert_eq!(fv_session_backend(s, &mut backend), FvStatus::Ok);
        let backend = CStr::from_ptr(backend).to_str().unwrap();
        assert!(["scalar", "neon", "avx2+fma+f16c", "avx512f+fma+f16c"].contains(&backend), "{backend}");

        let mut label = null();
        if i.num_labels > 0 {
            assert_eq!(fv_model_label(model, 0, &mut label), FvStatus::Ok);
            assert!(!CStr::from_ptr(label).to_bytes().is_empty());
        }
        assert_eq!(fv_model_label(model, i.num_labels, &mut label), FvStatus::InvalidArgument);
        assert!(last_error().contains("out of range"), "{}", last_error());

        let (mut mean, mut std) = ([0.0f32; 3], [0.0f32; 3]);
        assert_eq!(fv_model_normalization(model, mean.as_mut_ptr(), std.as_mut_ptr(), i.in_chans), FvStatus::Ok);
        assert!(std[..i.in_chans].iter().all(|&s| s > 0.0));
        assert_eq!(fv_model_normalization(model, mean.as_mut_ptr(), std.as_mut_ptr(), 2), FvStatus::InvalidArgument);

        fv_session_free(s);
        fv_model_free(model);
    }
}

#[test]
fn null_pointers_are_errors() {
    let bytes = fixture_fvit("timm-vit-micro", DType::F32);
    let buf = AlignedBuf::new(&bytes, 0);
    let model = open_memory(&buf);
    let s = session(model, 1);
    let input = vec![0.0f32; 3 * 32 * 32];
    // SAFETY (whole block): every pointer is NULL or valid.
    unsafe {
        let mut out_model = 0x1 as *mut FvModel; // garbage, must be cleared
        assert_eq!(fv_model_open(null(), &mut out_model), FvStatus::NullPointer);
        assert!(out_model.is_null());
        assert!(last_error().contains("path"), "{}", last_error());
        assert_eq!(fv_model_open_memory(null(), 10, &mut out_model), FvStatus::NullPointer);
        assert_eq!(fv_model_open_copy(null(), 10, &mut out_model), FvStatus::NullPointer);
        assert_eq!(fv_model_open_memory(buf.ptr(), buf.len, null_mut()), FvStatus::NullPointer);
        assert_eq!(fv_model_info(null(), &mut FvModelInfo::default()), FvStatus::NullPointer);
        assert_eq!(fv_model_info(model, null_mut()), FvStatus::NullPointer);
        let mut out_session = null_mut();
        assert_eq!(fv_session_create(null(), null(), &mut out_session), FvStatus::NullPointer);
        assert_eq!(fv_session_create(model, null(), null_mut()), FvStatus::NullPointer);
        assert_eq!(fv_session_run(null_mut(), input.as_ptr(), input.len(), null_mut()), FvStatus::NullPointer);
        assert_eq!(fv_session_run(s, null(), 10, null_mut()), FvStatus::NullPointer);
        assert_eq!(fv_session_input_shape(s, null_mut()), FvStatus::NullPointer);
        assert_eq!(fv_session_output_shape(s, 0, null_mut(), null_mut()), FvStatus::NullPointer);
        assert_eq!(fv_session_memory(null(), null_mut()), FvStatus::NullPointer);
        assert_eq!(fv_session_macs_per_image(s, null_mut()), FvStatus::NullPointer);
        assert_eq!(fv_session_backend(null(), null_mut()), FvStatus::NullPointer);
        assert_eq!(fv_model_label(model, 0, null_mut()), FvStatus::NullPointer);
        assert_eq!(fv_model_normalization(model, null_mut(), null_mut(), 3), FvStatus::NullPointer);
        // Freeing NULL is a no-op.
        fv_model_free(null_mut());
        fv_session_free(null_mut());
        // NULL options mean the defaults.
        assert_eq!(fv_session_create(model, null(), &mut out_session), FvStatus::Ok);
        fv_session_free(out_session);
        fv_session_free(s);
        fv_model_free(model);
    }
}

#[test]
fn wrong_sizes_and_options_are_errors_and_nothing_is_written() {
    let bytes = fixture_fvit("timm-vit-micro", DType::F32);
    let buf = AlignedBuf::new(&bytes, 0);
    let model = open_memory(&buf);
    let i = info(model);
    let per_image = i.in_chans * i.image_height * i.image_width;
    let s = session(model, 2);
    let input = vec![0.1f32; 3 * per_image];
    let mut logits = vec![-7.0f32; 2 * i.num_classes];
    let mut out = FvOutputs {
        logits: logits.as_mut_ptr(),
        logits_len: logits.len(),
        pooler_output: null_mut(),
        pooler_output_len: 0,
        last_hidden_state: null_mut(),
        last_hidden_state_len: 0,
        batch: 0,
    };
    // SAFETY (whole block): live handles, buffers valid for the stated lengths.
    unsafe {
        // Not a multiple of C*H*W.
        assert_eq!(fv_session_run(s, input.as_ptr(), per_image + 1, &mut out), FvStatus::InvalidArgument);
        assert!(last_error().contains("multiple"), "{}", last_error());
        assert_eq!(fv_session_run(s, input.as_ptr(), 0, &mut out), FvStatus::InvalidArgument);
        // More images than the session's batch.
        assert_eq!(fv_session_run(s, input.as_ptr(), 3 * per_image, &mut out), FvStatus::InvalidArgument);
        assert!(last_error().contains("at most 2"), "{}", last_error());
        // Output buffer too small for two images.
        out.logits_len = i.num_classes;
        assert_eq!(fv_session_run(s, input.as_ptr(), 2 * per_image, &mut out), FvStatus::InvalidArgument);
        assert!(last_error().contains("logits_len"), "{}", last_error());
        assert!(logits.iter().all(|&v| v == -7.0), "a failed run must not write outputs");
        assert_eq!(out.batch, 0);
        // ... but large enough for one.
        assert_eq!(fv_session_run(s, input.as_ptr(), per_image, &mut out), FvStatus::Ok);
        assert_eq!(out.batch, 1);
        assert!(logits[..i.num_classes].iter().all(|v| v.is_finite() && *v != -7.0));
        assert!(logits[i.num_classes..].iter().all(|&v| v == -7.0));

        // Bad options.
        let mut out_session = null_mut();
        let bad = [
            FvSessionOptions { batch: 0, ..fv_session_options_default() },
            FvSessionOptions { image_height: 32, image_width: 0, ..fv_session_options_default() },
            FvSessionOptions { image_height: 1, image_width: 1, ..fv_session_options_default() },
            FvSessionOptions { threads: 1000, ..fv_session_options_default() },
        ];
        for opts in bad {
            assert_eq!(fv_session_create(model, &opts, &mut out_session), FvStatus::InvalidArgument, "{opts:?}");
            assert!(out_session.is_null());
        }
        // Other input sizes are accepted (positions are interpolated).
        let opts = FvSessionOptions { image_height: 48, image_width: 64, ..fv_session_options_default() };
        assert_eq!(fv_session_create(model, &opts, &mut out_session), FvStatus::Ok, "{}", last_error());
        let mut shape = [0usize; 4];
        assert_eq!(fv_session_input_shape(out_session, shape.as_mut_ptr()), FvStatus::Ok);
        assert_eq!(shape, [1, i.in_chans, 48, 64]);
        fv_session_free(out_session);

        fv_session_free(s);
        fv_model_free(model);
    }
}

#[test]
fn backbones_have_no_logits() {
    let bytes = fixture_fvit("hf-dinov2-micro", DType::F32);
    let buf = AlignedBuf::new(&bytes, 0);
    let model = open_memory(&buf);
    let i = info(model);
    assert_eq!(i.num_classes, 0);
    let s = session(model, 1);
    let input = vec![0.0f32; i.in_chans * i.image_height * i.image_width];
    let mut logits = vec![0.0f32; 16];
    let mut out = FvOutputs {
        logits: logits.as_mut_ptr(),
        logits_len: logits.len(),
        pooler_output: null_mut(),
        pooler_output_len: 0,
        last_hidden_state: null_mut(),
        last_hidden_state_len: 0,
        batch: 0,
    };
    let (mut shape, mut ndim) = ([0usize; 3], 0usize);
    // SAFETY (whole block): live handles, valid buffers.
    unsafe {
        assert_eq!(fv_session_run(s, input.as_ptr(), input.len(), &mut out), FvStatus::NoSuchOutput);
        assert_eq!(
            fv_session_output_shape(s, FvOutput::Logits as i32, shape.as_mut_ptr(), &mut ndim),
            FvStatus::NoSuchOutput
        );
        // Running without outputs is allowed.
        assert_eq!(fv_session_run(s, input.as_ptr(), input.len(), null_mut()), FvStatus::Ok);
        fv_session_free(s);
        fv_model_free(model);
    }
}

#[test]
fn bad_files_are_errors() {
    // SAFETY (whole block): every pointer is valid for the stated length.
    unsafe {
        let mut model = null_mut();
        let missing = CString::new("/nonexistent/dir/model.fvit").unwrap();
        assert_eq!(fv_model_open(missing.as_ptr(), &mut model), FvStatus::Io);
        assert!(last_error().contains("/nonexistent/dir/model.fvit"), "{}", last_error());
        let not_utf8 = CString::new(vec![0xffu8, 0xfe]).unwrap();
        assert_eq!(fv_model_open(not_utf8.as_ptr(), &mut model), FvStatus::InvalidArgument);
        let junk = [0u8; 64];
        assert_eq!(fv_model_open_memory(junk.as_ptr(), junk.len(), &mut model), FvStatus::InvalidModel);
        assert!(model.is_null());
        assert_eq!(fv_model_open_copy(junk.as_ptr(), 0, &mut model), FvStatus::InvalidModel);
        // A truncated model.
        let bytes = fixture_fvit("timm-vit-micro", DType::F32);
        let cut = &bytes[..bytes.len() - 100];
        assert_eq!(fv_model_open_copy(cut.as_ptr(), cut.len(), &mut model), FvStatus::InvalidModel);
        assert!(!last_error().is_empty());
        // A plain safetensors file that is not a factorvit model.
        let other = std::fs::read(fixture_dir("timm-vit-micro").join("input.safetensors")).unwrap();
        assert_eq!(fv_model_open_copy(other.as_ptr(), other.len(), &mut model), FvStatus::InvalidModel);
        assert!(last_error().contains("factorvit"), "{}", last_error());
    }
}

#[test]
fn load_options_checksums_and_memory_limits() {
    let bytes = fixture_fvit("timm-vit-micro", DType::F32);
    let c = Container::parse(&bytes).unwrap();
    let t = c.get("blocks.0.mlp.fc1.weight").unwrap();
    let mut flipped = bytes.clone();
    flipped[t.start + 9] ^= 0x04; // a mantissa bit: the value stays finite
                                  // SAFETY (whole block): every pointer is valid for the stated length; handles are freed once.
    unsafe {
        let mut model = null_mut();
        // Default: verified, the corrupt tensor is named.
        assert_eq!(fv_model_open_memory(flipped.as_ptr(), flipped.len(), &mut model), FvStatus::ChecksumMismatch);
        assert!(model.is_null());
        assert!(last_error().contains("blocks.0.mlp.fc1.weight"), "{}", last_error());
        let name = CStr::from_ptr(fv_status_name(FvStatus::ChecksumMismatch as i32)).to_str().unwrap();
        assert_eq!(name, "FV_STATUS_CHECKSUM_MISMATCH");
        // Skip: a trusted-flash boot loads it without reading the weights.
        let mut opts = fv_load_options_default();
        opts.checksums = FvChecksums::Skip as u32;
        assert_eq!(fv_model_open_memory_ex(flipped.as_ptr(), flipped.len(), &opts, &mut model), FvStatus::Ok);
        fv_model_free(model);
        // An out-of-range enum value from C is an argument error, not undefined behaviour.
        opts.checksums = 7;
        assert_eq!(fv_model_open_memory_ex(bytes.as_ptr(), bytes.len(), &opts, &mut model), FvStatus::InvalidArgument);
        // Load memory cap: a misaligned buffer needs copies, refused under a small cap.
        let shifted = AlignedBuf::new(&bytes, 1);
        let mut capped = fv_load_options_default();
        capped.memory_limit = 1024;
        assert_eq!(fv_model_open_memory_ex(shifted.ptr(), bytes.len(), &capped, &mut model), FvStatus::MemoryLimit);
        // Session memory cap.
        assert_eq!(fv_model_open_memory_ex(bytes.as_ptr(), bytes.len(), null(), &mut model), FvStatus::Ok);
        let mut so = fv_session_options_default();
        so.memory_limit = 1000;
        let mut session = null_mut();
        assert_eq!(fv_session_create(model, &so, &mut session), FvStatus::MemoryLimit);
        assert!(session.is_null());
        assert!(last_error().contains("memory limit"), "{}", last_error());
        so.memory_limit = 0; // the default
        assert_eq!(fv_session_create(model, &so, &mut session), FvStatus::Ok);
        fv_session_free(session);
        fv_model_free(model);
    }
}

#[test]
fn last_error_is_per_thread_and_status_names_are_static() {
    // SAFETY (whole block): NULL arguments are allowed and reported.
    unsafe {
        assert_eq!(fv_model_info(null(), null_mut()), FvStatus::NullPointer);
        let here = last_error();
        assert!(here.contains("model"), "{here}");
        std::thread::spawn(|| assert_eq!(last_error(), "")).join().unwrap();
        std::thread::spawn(|| {
            assert_eq!(fv_session_memory(null(), null_mut()), FvStatus::NullPointer);
            assert!(last_error().contains("session"));
        })
        .join()
        .unwrap();
        assert_eq!(last_error(), here, "another thread's failure must not change this thread's message");
        for (code, name) in
            [(0, "FV_STATUS_OK"), (4, "FV_STATUS_INVALID_MODEL"), (6, "FV_STATUS_INTERNAL"), (-1, "unknown status")]
        {
            assert_eq!(CStr::from_ptr(fv_status_name(code)).to_str().unwrap(), name);
        }
        assert_eq!(CStr::from_ptr(fv_version()).to_str().unwrap(), env!("CARGO_PKG_VERSION"));
    }
}

#[test]
fn sessions_of_one_model_run_concurrently() {
    let bytes = fixture_fvit("timm-vit-avgpool-layerscale-micro", DType::F16);
    let buf = AlignedBuf::new(&bytes, 0);
    let model = open_memory(&buf) as usize;
    let results: Vec<Vec<f32>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..3)
            .map(|_| {
                scope.spawn(move || {
                    let model = model as *const FvModel;
                    let i = info(model);
                    let s = session(model, 1);
                    let input: Vec<f32> =
                        (0..i.in_chans * i.image_height * i.image_width).map(|k| (k % 7) as f32 * 0.1).collect();
                    let mut pooled = vec![0.0f32; i.embed_dim];
                    let mut out = FvOutputs {
                        logits: null_mut(),
                        logits_len: 0,
                        pooler_output: pooled.as_mut_ptr(),
                        pooler_output_len: pooled.len(),
                        last_hidden_state: null_mut(),
                        last_hidden_state_len: 0,
                        batch: 0,
                    };
                    // SAFETY: a session used by this thread only; valid buffers.
                    unsafe {
                        assert_eq!(fv_session_run(s, input.as_ptr(), input.len(), &mut out), FvStatus::Ok);
                        fv_session_free(s);
                    }
                    pooled
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(results.windows(2).all(|w| w[0] == w[1]));
    // SAFETY: freed once, before `buf`.
    unsafe { fv_model_free(model as *mut FvModel) };
}
