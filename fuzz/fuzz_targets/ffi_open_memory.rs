//! Opens arbitrary bytes through the C ABI: `fv_model_open_memory` (weights borrowed in place,
//! from the fuzzer's buffer and from a deliberately misaligned copy) and `fv_model_open_copy`.
//! When a model opens: queries its info, normalisation and labels; when it is small, creates a
//! session with the default options, frees the model first (the session keeps it alive), runs
//! it on zeros into every output and frees the session.
//!
//! Oracles: no call returns `FV_STATUS_INTERNAL` (a caught panic); a failed open reports a
//! model error (not a pointer or I/O error), leaves the handle NULL and sets a message; the
//! three opens agree; queries on a valid model succeed; a session of a valid model runs on
//! zeros.
//!
//! Every pointer handed to the library is valid for the access its contract states; the
//! borrowed input outlives the model and its session (both are freed before returning).
#![no_main]
use std::ffi::CStr;
use std::ptr;

use factorvit_ffi::*;
use libfuzzer_sys::fuzz_target;

fn last_error() -> String {
    // SAFETY: fv_last_error always returns a valid NUL-terminated string.
    unsafe { CStr::from_ptr(fv_last_error()) }.to_string_lossy().into_owned()
}

#[track_caller]
fn ok(status: FvStatus, what: &str) {
    assert_eq!(status, FvStatus::Ok, "{what}: {}", last_error());
}

/// Opens `bytes` with `open`; `None` when they are not a valid model.
fn open(
    bytes: &[u8],
    open: unsafe extern "C" fn(*const u8, usize, *mut *mut FvModel) -> FvStatus,
) -> Option<*mut FvModel> {
    let mut model: *mut FvModel = 0x1 as *mut FvModel; // must be overwritten
                                                       // SAFETY: `bytes` is readable for its length; `model` is writable.
    let status = unsafe { open(bytes.as_ptr(), bytes.len(), &mut model) };
    match status {
        FvStatus::Ok => {
            assert!(!model.is_null());
            Some(model)
        }
        // A caught panic, or a status that cannot apply to valid pointers to memory.
        FvStatus::Internal | FvStatus::NullPointer | FvStatus::Io => {
            panic!("opening gave {status:?}: {}", last_error())
        }
        // Invalid model, checksum mismatch, ...
        _ => {
            assert!(model.is_null(), "a failed open must set the handle to NULL");
            assert!(!last_error().is_empty(), "a failed open must set a message");
            None
        }
    }
}

fn info(model: *const FvModel) -> FvModelInfo {
    let mut info = FvModelInfo::default();
    // SAFETY: a live handle and a writable struct.
    ok(unsafe { fv_model_info(model, &mut info) }, "fv_model_info");
    info
}

/// Queries everything a model offers; returns its info.
fn inspect(model: *const FvModel) -> FvModelInfo {
    let i = info(model);
    let mut mean = vec![0f32; i.in_chans];
    let mut std = vec![0f32; i.in_chans];
    // SAFETY: both buffers hold `in_chans` floats.
    ok(unsafe { fv_model_normalization(model, mean.as_mut_ptr(), std.as_mut_ptr(), i.in_chans) }, "normalization");
    assert!(i.num_labels == 0 || i.num_labels == i.num_classes, "{i:?}");
    for index in 0..=i.num_labels {
        let mut label: *const std::ffi::c_char = ptr::null();
        // SAFETY: a live handle and a writable pointer.
        let status = unsafe { fv_model_label(model, index, &mut label) };
        if index < i.num_labels {
            ok(status, "fv_model_label");
            // SAFETY: the library returns NUL-terminated strings owned by the model.
            let text = unsafe { CStr::from_ptr(label) };
            assert!(text.to_str().is_ok(), "labels are UTF-8");
        } else {
            assert_eq!(status, FvStatus::InvalidArgument, "label {index} of {}", i.num_labels);
        }
    }
    i
}

/// Creates a default session, frees `model`, runs the session on zeros and frees it.
fn run_and_free(model: *mut FvModel, i: &FvModelInfo) {
    let mut session: *mut FvSession = ptr::null_mut();
    // SAFETY: a live handle; NULL options = defaults; a writable pointer.
    let status = unsafe { fv_session_create(model, ptr::null(), &mut session) };
    // SAFETY: freed once; the session (if any) keeps the model alive.
    unsafe { fv_model_free(model) };
    ok(status, "fv_session_create");
    let mut memory = FvMemoryReport::default();
    // SAFETY: a live session and a writable struct.
    ok(unsafe { fv_session_memory(session, &mut memory) }, "fv_session_memory");
    let mut macs = 0u64;
    // SAFETY: a live session and a writable count.
    ok(unsafe { fv_session_macs_per_image(session, &mut macs) }, "fv_session_macs_per_image");
    let mut backend: *const std::ffi::c_char = ptr::null();
    // SAFETY: a live session and a writable pointer.
    ok(unsafe { fv_session_backend(session, &mut backend) }, "fv_session_backend");
    if macs > 1 << 24 || memory.arena_bytes > 64 << 20 {
        // SAFETY: freed once.
        unsafe { fv_session_free(session) };
        return;
    }
    let mut shape = [0usize; 4];
    // SAFETY: a live session; 4 writable entries.
    ok(unsafe { fv_session_input_shape(session, shape.as_mut_ptr()) }, "input shape");
    assert_eq!(shape, [1, i.in_chans, i.image_height, i.image_width]);
    let mut sizes = [0usize; 3];
    for (which, size) in sizes.iter_mut().enumerate() {
        let (mut dims, mut ndim) = ([0usize; 3], 0usize);
        // SAFETY: a live session; 3 writable entries and a writable count.
        let status = unsafe { fv_session_output_shape(session, which as i32, dims.as_mut_ptr(), &mut ndim) };
        if which == 0 && i.num_classes == 0 {
            assert_eq!(status, FvStatus::NoSuchOutput);
            continue;
        }
        ok(status, "output shape");
        *size = dims[..ndim].iter().product();
    }
    let input = vec![0f32; shape[1..].iter().product()];
    let mut bufs = sizes.map(|n| vec![f32::NAN; n]);
    let [logits, pooled, hidden] = &mut bufs;
    let mut outputs = FvOutputs {
        logits: if i.num_classes == 0 { ptr::null_mut() } else { logits.as_mut_ptr() },
        logits_len: logits.len(),
        pooler_output: pooled.as_mut_ptr(),
        pooler_output_len: pooled.len(),
        last_hidden_state: hidden.as_mut_ptr(),
        last_hidden_state_len: hidden.len(),
        batch: 0,
    };
    // SAFETY: a live session; the input and the three disjoint buffers have the stated lengths.
    ok(unsafe { fv_session_run(session, input.as_ptr(), input.len(), &mut outputs) }, "fv_session_run");
    assert_eq!(outputs.batch, 1);
    // SAFETY: freed once.
    unsafe { fv_session_free(session) };
}

fuzz_target!(|data: &[u8]| {
    // In place, at the fuzzer's (heap-aligned) address.
    let Some(model) = open(data, fv_model_open_memory) else {
        // The other opens must reject the bytes as well.
        assert!(open(data, fv_model_open_copy).is_none());
        return;
    };
    let i = inspect(model);

    // Copied into the library's own buffer.
    let copy = open(data, fv_model_open_copy).expect("fv_model_open_copy rejects what fv_model_open_memory accepts");
    let ci = inspect(copy);
    assert_eq!((ci.params, ci.weight_bytes, ci.num_labels), (i.params, i.weight_bytes, i.num_labels));
    // SAFETY: freed once.
    unsafe { fv_model_free(copy) };

    // In place at an odd address: misaligned tensors are copied at load.
    let mut shifted = vec![0u8; data.len() + 1];
    shifted[1..].copy_from_slice(data);
    let odd = open(&shifted[1..], fv_model_open_memory).expect("a misaligned copy of a valid model does not open");
    let oi = inspect(odd);
    assert_eq!((oi.params, oi.weight_bytes), (i.params, i.weight_bytes));
    // SAFETY: freed once, before `shifted` is dropped.
    unsafe { fv_model_free(odd) };

    // Keep each execution cheap: a valid model carries its weights, so most sizes are bounded
    // by the input, but the image can still be large for a tiny patch. The MLP width is not in
    // `FvModelInfo`; with at most 256 tokens the session's buffers stay below ~64 MiB, and
    // `run_and_free` checks the cost of a run before running.
    let grid = (i.image_height / i.patch_size).saturating_mul(i.image_width / i.patch_size);
    let tokens = grid.saturating_add(i.num_prefix_tokens);
    let pixels = i.in_chans.saturating_mul(i.image_height).saturating_mul(i.image_width);
    if tokens > 256 || tokens * i.embed_dim > 1 << 16 || pixels > 1 << 16 {
        // SAFETY: freed once.
        unsafe { fv_model_free(model) };
        return;
    }
    run_and_free(model, &i);
});
