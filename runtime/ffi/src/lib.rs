//! C ABI of the factorvit runtime.
//!
//! Every exported function is named `fv_*`, returns an [`FvStatus`] (except [`fv_version`],
//! [`fv_last_error`] and [`fv_status_name`], which cannot fail) and never lets a Rust panic
//! cross the boundary: each entry point runs inside [`std::panic::catch_unwind`] and reports a
//! panic as [`FvStatus::Internal`]. Null pointers and wrongly sized buffers are reported as
//! errors, never dereferenced. On failure a message is stored per thread and returned by
//! [`fv_last_error`].
//!
//! The header `include/factorvit.h` is generated from this file by cbindgen (configuration in
//! `cbindgen.toml`); `tests/header.rs` fails when the committed header is stale and rewrites it
//! when run with `FV_UPDATE_HEADER=1`.
//!
//! Ownership: a model handle keeps its bytes (memory map, owned copy or borrowed caller buffer)
//! and is reference counted together with the sessions created from it, so the handles can be
//! freed in any order; the model's memory is released when the last of them is freed.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use factorvit::kernels::Backend;
use factorvit::{
    ChecksumPolicy, Error, Head, LoadOptions, Model, Session, SessionOptions, DEFAULT_SESSION_MEMORY_LIMIT,
};

/// Result of every fallible `fv_*` function.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FvStatus {
    /// Success.
    Ok = 0,
    /// A required pointer argument is NULL.
    NullPointer = 1,
    /// An argument is out of range: a buffer of the wrong size, a bad option, a path that is not
    /// UTF-8, an index past the end.
    InvalidArgument = 2,
    /// The file could not be opened, read or mapped.
    Io = 3,
    /// The bytes are not a valid factorvit model (corrupt, truncated, unsupported version).
    InvalidModel = 4,
    /// The requested output does not exist for this model (logits of a backbone).
    NoSuchOutput = 5,
    /// A bug in factorvit (a caught panic). The handle involved should be freed.
    Internal = 6,
    /// The file's bytes do not match its stored checksums (a corrupt file); `fv_last_error()`
    /// names the tensor at fault.
    ChecksumMismatch = 7,
    /// Loading or creating the session would exceed the configured memory limit (checked
    /// before allocating).
    MemoryLimit = 8,
}

/// A loaded model. Opaque; create with `fv_model_open()`, `fv_model_open_memory()` or
/// `fv_model_open_copy()`, free with `fv_model_free()`.
pub struct FvModel {
    inner: Arc<LoadedModel>,
}

/// An inference session of one model. Opaque; create with `fv_session_create()`, free with
/// `fv_session_free()`.
pub struct FvSession {
    // Field order matters: `session` borrows the model owned by `model` and must be dropped
    // first (fields are dropped in declaration order).
    session: Session<'static, 'static>,
    model: Arc<LoadedModel>,
}

struct LoadedModel {
    model: Model<'static>,
    labels: Vec<CString>,
}

/// Architecture and sizes of a model (filled by `fv_model_info()`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct FvModelInfo {
    /// Input channels `C`.
    pub in_chans: usize,
    /// Trained input height `H` (sessions accept other sizes, see `FvSessionOptions`).
    pub image_height: usize,
    /// Trained input width `W`.
    pub image_width: usize,
    /// Patch size `P` (input sizes must be at least one patch; extra pixels are ignored).
    pub patch_size: usize,
    /// Embedding width `D`.
    pub embed_dim: usize,
    /// Transformer blocks.
    pub depth: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Classifier outputs; 0 for a backbone (no logits).
    pub num_classes: usize,
    /// Class and distillation tokens before the patch tokens.
    pub num_prefix_tokens: usize,
    /// Number of class names (0 or `num_classes`), see `fv_model_label()`.
    pub num_labels: usize,
    /// Parameters (weights, biases, norms, tokens, position table).
    pub params: usize,
    /// Bytes of weights the model reads per inference, at their stored dtype.
    pub weight_bytes: usize,
    /// Bytes of weights copied into RAM at load (tensors misaligned in the caller's buffer);
    /// 0 when every weight is read in place.
    pub copied_weight_bytes: usize,
}

/// Options of `fv_session_create()`. `fv_session_options_default()` gives the defaults.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct FvSessionOptions {
    /// Worker threads: 1 = run on the calling thread (default), 0 = one per core.
    pub threads: usize,
    /// Largest number of images one run accepts (default 1).
    pub batch: usize,
    /// Input height; 0 (with `image_width` 0) = the model's trained size (default).
    pub image_height: usize,
    /// Input width; 0 (with `image_height` 0) = the model's trained size (default).
    pub image_width: usize,
    /// Largest arena the session may allocate, in bytes; 0 = the default (4 GiB on 64-bit
    /// targets, 2 GiB on 32-bit ones). Checked before allocating.
    pub memory_limit: usize,
}

/// Checksum handling of `fv_model_open_memory_ex()`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FvChecksums {
    /// Verify when the file carries checksums (the default).
    VerifyIfPresent = 0,
    /// Verify, and reject a file without checksums.
    Require = 1,
    /// Do not read the weights at load (fast boot from trusted flash).
    Skip = 2,
}

/// Options of `fv_model_open_memory_ex()`. `fv_load_options_default()` gives the defaults,
/// which are what `fv_model_open*()` use.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct FvLoadOptions {
    /// Checksum handling: an `FvChecksums` value (a plain integer so that a bad value from C
    /// is an error, not undefined behaviour).
    pub checksums: u32,
    /// Nonzero: reject files whose weight matrices hold NaN or infinity (default 1; costs one
    /// read of the weights, shared with the checksum pass).
    pub check_finite: u8,
    /// Largest number of bytes the load may allocate (copies of misaligned tensors, f32
    /// vectors); 0 = unlimited (default).
    pub memory_limit: usize,
}

impl Default for FvLoadOptions {
    fn default() -> Self {
        FvLoadOptions { checksums: FvChecksums::VerifyIfPresent as u32, check_finite: 1, memory_limit: 0 }
    }
}

impl FvLoadOptions {
    fn to_rust(self) -> Result<LoadOptions, Failure> {
        let checksums = match self.checksums {
            c if c == FvChecksums::VerifyIfPresent as u32 => ChecksumPolicy::VerifyIfPresent,
            c if c == FvChecksums::Require as u32 => ChecksumPolicy::Require,
            c if c == FvChecksums::Skip as u32 => ChecksumPolicy::Skip,
            other => return Err(Failure::invalid(format!("options.checksums is {other}, not an FvChecksums value"))),
        };
        Ok(LoadOptions {
            checksums,
            check_finite: self.check_finite != 0,
            memory_limit: if self.memory_limit == 0 { usize::MAX } else { self.memory_limit },
        })
    }
}

impl Default for FvSessionOptions {
    fn default() -> Self {
        let d = SessionOptions::default();
        FvSessionOptions {
            threads: d.threads,
            batch: d.batch,
            image_height: d.image_size[0],
            image_width: d.image_size[1],
            memory_limit: 0,
        }
    }
}

/// Memory figures of a session (filled by `fv_session_memory()`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct FvMemoryReport {
    /// Bytes of weights (in the file, the map or the caller's buffer, plus copies); all of them
    /// are read once per inference.
    pub weight_bytes: usize,
    /// Bytes of weights copied into RAM at load.
    pub copied_weight_bytes: usize,
    /// Bytes of the session's preallocated activation and scratch buffers.
    pub arena_bytes: usize,
}

/// Which output of a run (see `fv_session_output_shape()`).
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FvOutput {
    /// `[batch, num_classes]`, classifiers only.
    Logits = 0,
    /// `[batch, dim]`: the pooled feature (class token or mean of patch tokens, after `fc_norm`).
    PoolerOutput = 1,
    /// `[batch, tokens, dim]`: every token's feature after the final norm.
    LastHiddenState = 2,
}

/// Destination buffers of `fv_session_run()`. Each buffer is optional (NULL = not wanted); a
/// non-NULL buffer must hold at least the output's element count for the images of the run
/// (`len` counts floats). Buffers must not overlap each other or the input.
#[repr(C)]
#[derive(Debug)]
pub struct FvOutputs {
    /// Receives `[n, num_classes]` logits (classifiers only).
    pub logits: *mut f32,
    /// Capacity of `logits` in floats.
    pub logits_len: usize,
    /// Receives `[n, dim]` pooled features.
    pub pooler_output: *mut f32,
    /// Capacity of `pooler_output` in floats.
    pub pooler_output_len: usize,
    /// Receives `[n, tokens, dim]` token features.
    pub last_hidden_state: *mut f32,
    /// Capacity of `last_hidden_state` in floats.
    pub last_hidden_state_len: usize,
    /// Written by the run: the number of images `n` it processed.
    pub batch: usize,
}

/// An error travelling to the C caller.
struct Failure {
    status: FvStatus,
    message: String,
}

impl Failure {
    fn new(status: FvStatus, message: impl Into<String>) -> Failure {
        Failure { status, message: message.into() }
    }
    fn null(what: &str) -> Failure {
        Failure::new(FvStatus::NullPointer, format!("`{what}` is NULL"))
    }
    fn invalid(message: impl Into<String>) -> Failure {
        Failure::new(FvStatus::InvalidArgument, message)
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        let status = match &e {
            Error::Io { .. } => FvStatus::Io,
            Error::Input(_) => FvStatus::InvalidArgument,
            Error::Checksum { .. } => FvStatus::ChecksumMismatch,
            Error::MemoryLimit { .. } => FvStatus::MemoryLimit,
            _ => FvStatus::InvalidModel,
        };
        Failure::new(status, e.to_string())
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    // Interior NUL bytes would truncate the C string: replace them.
    let c = CString::new(message.replace('\0', "\u{FFFD}")).unwrap_or_default();
    // `try_with` fails only while the thread is being torn down; the message is then lost.
    let _ = LAST_ERROR.try_with(|slot| *slot.borrow_mut() = c);
}

/// Runs an entry point: maps its error to a status and stores the message, catches panics.
fn guard(f: impl FnOnce() -> Result<(), Failure>) -> FvStatus {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => FvStatus::Ok,
        Ok(Err(failure)) => {
            set_last_error(&failure.message);
            failure.status
        }
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            set_last_error(&format!("internal error (a bug in factorvit, please report it): {what}"));
            // Dropping the payload runs arbitrary code; a panic there must not escape either.
            if let Err(second) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
                std::mem::forget(second);
            }
            FvStatus::Internal
        }
    }
}

/// Writes `value` through `out` after checking it.
///
/// # Safety
/// `out` must be NULL or valid for a write of `T`.
unsafe fn write_out<T>(out: *mut T, name: &str, value: T) -> Result<(), Failure> {
    if out.is_null() {
        return Err(Failure::null(name));
    }
    // SAFETY: non-null, and valid for writes by the caller's contract. `write` does not read or
    // drop the previous (possibly uninitialised) contents.
    unsafe { out.write(value) };
    Ok(())
}

/// Borrows a handle.
///
/// # Safety
/// `p` must be NULL or a live handle returned by this library and not yet freed, not used
/// mutably elsewhere during the borrow.
unsafe fn handle<'h, T>(p: *const T, name: &str) -> Result<&'h T, Failure> {
    // SAFETY: per the function contract.
    unsafe { p.as_ref() }.ok_or_else(|| Failure::null(name))
}

fn wrap_model(model: Model<'static>) -> *mut FvModel {
    let labels = model.labels().iter().map(|l| CString::new(l.replace('\0', "\u{FFFD}")).unwrap_or_default()).collect();
    Box::into_raw(Box::new(FvModel { inner: Arc::new(LoadedModel { model, labels }) }))
}

/// The library version, e.g. `"0.1.0"` (a static string).
#[no_mangle]
pub extern "C" fn fv_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The message of the most recent failed `fv_*` call on the calling thread (`""` if none).
/// The string belongs to the library and stays valid until the next failing call on this
/// thread; copy it to keep it longer.
#[no_mangle]
pub extern "C" fn fv_last_error() -> *const c_char {
    catch_unwind(|| LAST_ERROR.try_with(|slot| slot.borrow().as_ptr()).ok()).ok().flatten().unwrap_or(c"".as_ptr())
}

/// A static name of a status code, e.g. `"FV_STATUS_INVALID_MODEL"`; `"unknown status"` for
/// values that are not an `FvStatus`.
#[no_mangle]
pub extern "C" fn fv_status_name(status: i32) -> *const c_char {
    let name: &CStr = match status {
        0 => c"FV_STATUS_OK",
        1 => c"FV_STATUS_NULL_POINTER",
        2 => c"FV_STATUS_INVALID_ARGUMENT",
        3 => c"FV_STATUS_IO",
        4 => c"FV_STATUS_INVALID_MODEL",
        5 => c"FV_STATUS_NO_SUCH_OUTPUT",
        6 => c"FV_STATUS_INTERNAL",
        7 => c"FV_STATUS_CHECKSUM_MISMATCH",
        8 => c"FV_STATUS_MEMORY_LIMIT",
        _ => c"unknown status",
    };
    name.as_ptr()
}

/// Opens a model file: memory-maps it read-only and validates it (weights are read from the
/// map, not copied). The file must not be modified or truncated while the model or any of its
/// sessions is alive.
///
/// On success `*out_model` receives a handle to free with `fv_model_free()`; on failure it is
/// set to NULL (when `out_model` is not NULL).
///
/// # Safety
/// `path` must be NULL or a NUL-terminated string; `out_model` must be NULL or valid for a
/// pointer write.
#[no_mangle]
pub unsafe extern "C" fn fv_model_open(path: *const c_char, out_model: *mut *mut FvModel) -> FvStatus {
    guard(|| {
        // SAFETY: `out_model` is NULL or writable (contract); clears it before any failure.
        unsafe { write_out(out_model, "out_model", std::ptr::null_mut())? };
        if path.is_null() {
            return Err(Failure::null("path"));
        }
        // SAFETY: non-null and NUL-terminated by the caller's contract.
        let path = unsafe { CStr::from_ptr(path) };
        let path = path.to_str().map_err(|_| Failure::invalid("path is not valid UTF-8"))?;
        let model = Model::open(path)?;
        // SAFETY: checked above.
        unsafe { out_model.write(wrap_model(model)) };
        Ok(())
    })
}

/// Validates a model held in caller memory and reads its weights **in place**: the model
/// borrows `data[0..len]`, which must stay valid and unmodified until the model handle and
/// every session created from it have been freed.
///
/// Weights are read in place only when each tensor is aligned for its element type in memory:
/// align `data` to at least 16 bytes (files written by factorvit align every tensor relative to
/// the file start). Misaligned tensors are copied into RAM (see
/// `FvModelInfo.copied_weight_bytes`).
///
/// # Safety
/// `data` must be NULL or point to `len` readable bytes that outlive the model and its
/// sessions and are not written meanwhile; `out_model` must be NULL or valid for a pointer
/// write.
#[no_mangle]
pub unsafe extern "C" fn fv_model_open_memory(data: *const u8, len: usize, out_model: *mut *mut FvModel) -> FvStatus {
    // SAFETY: the same contract as this function's.
    unsafe { fv_model_open_memory_ex(data, len, std::ptr::null(), out_model) }
}

/// The default load options (what `fv_model_open*()` use): verify checksums when present,
/// reject NaN/infinity, no memory limit.
#[no_mangle]
pub extern "C" fn fv_load_options_default() -> FvLoadOptions {
    FvLoadOptions::default()
}

/// `fv_model_open_memory()` with load options (NULL = the defaults): e.g. skip the checksum
/// pass on a flash-constrained boot, or cap the RAM the load may take.
///
/// # Safety
/// As `fv_model_open_memory()`; `options` must be NULL or readable.
#[no_mangle]
pub unsafe extern "C" fn fv_model_open_memory_ex(
    data: *const u8,
    len: usize,
    options: *const FvLoadOptions,
    out_model: *mut *mut FvModel,
) -> FvStatus {
    guard(|| {
        // SAFETY: `out_model` is NULL or writable (contract).
        unsafe { write_out(out_model, "out_model", std::ptr::null_mut())? };
        if data.is_null() {
            return Err(Failure::null("data"));
        }
        // SAFETY: `data` points to `len` readable bytes that stay valid and unmodified for the
        // life of the model and its sessions (the caller's contract, documented in the
        // header); the 'static lifetime is never exposed beyond those handles.
        let bytes: &'static [u8] = unsafe { std::slice::from_raw_parts(data, len) };
        // SAFETY: NULL or readable (contract).
        let options = unsafe { options.as_ref() }.copied().unwrap_or_default();
        let model = Model::from_bytes_with(bytes, &options.to_rust()?)?;
        // SAFETY: checked above.
        unsafe { out_model.write(wrap_model(model)) };
        Ok(())
    })
}

/// Like `fv_model_open_memory()` but copies `data[0..len]` first: the caller's buffer may be
/// freed as soon as this returns (costs `len` bytes of RAM).
///
/// # Safety
/// `data` must be NULL or point to `len` readable bytes; `out_model` must be NULL or valid
/// for a pointer write.
#[no_mangle]
pub unsafe extern "C" fn fv_model_open_copy(data: *const u8, len: usize, out_model: *mut *mut FvModel) -> FvStatus {
    guard(|| {
        // SAFETY: `out_model` is NULL or writable (contract).
        unsafe { write_out(out_model, "out_model", std::ptr::null_mut())? };
        if data.is_null() {
            return Err(Failure::null("data"));
        }
        // SAFETY: `data` points to `len` readable bytes for the duration of this call.
        let bytes = unsafe { std::slice::from_raw_parts(data, len) }.to_vec();
        let model = Model::from_vec(bytes)?;
        // SAFETY: checked above.
        unsafe { out_model.write(wrap_model(model)) };
        Ok(())
    })
}

/// Releases a model handle. Sessions created from it stay usable (they keep the model alive);
/// the model's memory is released with the last of them. NULL is ignored.
///
/// # Safety
/// `model` must be NULL or a handle from this library not yet freed; it must not be used
/// afterwards.
#[no_mangle]
pub unsafe extern "C" fn fv_model_free(model: *mut FvModel) {
    let _ = guard(|| {
        if !model.is_null() {
            // SAFETY: a pointer from `Box::into_raw` in `wrap_model`, freed once (contract).
            drop(unsafe { Box::from_raw(model) });
        }
        Ok(())
    });
}

/// Fills `*out_info` with the model's architecture and sizes.
///
/// # Safety
/// `model` must be NULL or a live model handle; `out_info` NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn fv_model_info(model: *const FvModel, out_info: *mut FvModelInfo) -> FvStatus {
    guard(|| {
        // SAFETY: NULL or a live handle (contract).
        let m = &unsafe { handle(model, "model")? }.inner;
        let c = m.model.config();
        let info = FvModelInfo {
            in_chans: c.in_chans,
            image_height: c.image_size[0],
            image_width: c.image_size[1],
            patch_size: c.patch_size,
            embed_dim: c.embed_dim,
            depth: c.depth,
            num_heads: c.num_heads,
            num_classes: if c.head == Head::None { 0 } else { c.num_classes },
            num_prefix_tokens: c.num_prefix_tokens(),
            num_labels: m.labels.len(),
            params: m.model.params(),
            weight_bytes: m.model.weight_bytes(),
            copied_weight_bytes: m.model.copied_bytes(),
        };
        // SAFETY: NULL or writable (contract).
        unsafe { write_out(out_info, "out_info", info) }
    })
}

/// Copies the input normalisation into `mean[0..channels]` and `std[0..channels]`: the network
/// takes `(pixel / 255 - mean[c]) / std[c]` per channel `c`, in `[C, H, W]` order. `channels`
/// must equal `FvModelInfo.in_chans`.
///
/// # Safety
/// `model` must be NULL or a live model handle; `mean` and `std` NULL or valid for `channels`
/// float writes.
#[no_mangle]
pub unsafe extern "C" fn fv_model_normalization(
    model: *const FvModel,
    mean: *mut f32,
    std: *mut f32,
    channels: usize,
) -> FvStatus {
    guard(|| {
        // SAFETY: NULL or a live handle (contract).
        let m = &unsafe { handle(model, "model")? }.inner.model;
        if mean.is_null() {
            return Err(Failure::null("mean"));
        }
        if std.is_null() {
            return Err(Failure::null("std"));
        }
        let p = m.preprocess();
        if channels != p.mean.len() || channels != p.std.len() {
            return Err(Failure::invalid(format!("channels is {channels}, the model takes {}", p.mean.len())));
        }
        // SAFETY: both are non-null and valid for `channels` floats (contract); they are
        // written one after the other, so overlapping buffers are not aliased mutably.
        unsafe { std::slice::from_raw_parts_mut(mean, channels) }.copy_from_slice(&p.mean);
        // SAFETY: as above.
        unsafe { std::slice::from_raw_parts_mut(std, channels) }.copy_from_slice(&p.std);
        Ok(())
    })
}

/// Sets `*out_label` to the name of class `index` (a NUL-terminated UTF-8 string owned by the
/// model, valid until the model and its sessions are freed). Fails with
/// `FV_STATUS_INVALID_ARGUMENT` when `index >= FvModelInfo.num_labels`.
///
/// # Safety
/// `model` must be NULL or a live model handle; `out_label` NULL or valid for a pointer write.
#[no_mangle]
pub unsafe extern "C" fn fv_model_label(
    model: *const FvModel,
    index: usize,
    out_label: *mut *const c_char,
) -> FvStatus {
    guard(|| {
        // SAFETY: NULL or a live handle (contract).
        let m = &unsafe { handle(model, "model")? }.inner;
        if out_label.is_null() {
            return Err(Failure::null("out_label"));
        }
        let label = m.labels.get(index).ok_or_else(|| {
            Failure::invalid(format!("label index {index} is out of range ({} labels)", m.labels.len()))
        })?;
        // SAFETY: NULL or writable (contract).
        unsafe { write_out(out_label, "out_label", label.as_ptr()) }
    })
}

/// The default session options: 1 thread, batch 1, the model's trained input size.
#[no_mangle]
pub extern "C" fn fv_session_options_default() -> FvSessionOptions {
    FvSessionOptions::default()
}

/// Creates a session: allocates every buffer a run needs (runs then allocate nothing). `options`
/// may be NULL for the defaults. The session keeps the model alive.
///
/// A session may be moved between threads but must not be used by two threads at once; any
/// number of sessions of one model may run concurrently.
///
/// # Safety
/// `model` must be NULL or a live model handle; `options` NULL or readable; `out_session` NULL
/// or valid for a pointer write.
#[no_mangle]
pub unsafe extern "C" fn fv_session_create(
    model: *const FvModel,
    options: *const FvSessionOptions,
    out_session: *mut *mut FvSession,
) -> FvStatus {
    guard(|| {
        // SAFETY: `out_session` is NULL or writable (contract).
        unsafe { write_out(out_session, "out_session", std::ptr::null_mut())? };
        // SAFETY: NULL or a live handle (contract).
        let m = unsafe { handle(model, "model")? };
        // SAFETY: NULL or readable (contract).
        let o = unsafe { options.as_ref() }.copied().unwrap_or_default();
        if (o.image_height == 0) != (o.image_width == 0) {
            return Err(Failure::invalid("image_height and image_width must both be 0 or both be set"));
        }
        if o.threads > factorvit::session::MAX_THREADS {
            return Err(Failure::invalid(format!(
                "threads is {}, at most {} are supported",
                o.threads,
                factorvit::session::MAX_THREADS
            )));
        }
        let memory_limit = if o.memory_limit == 0 { DEFAULT_SESSION_MEMORY_LIMIT } else { o.memory_limit };
        let options = SessionOptions {
            threads: o.threads,
            batch: o.batch,
            image_size: [o.image_height, o.image_width],
            memory_limit,
        };
        let owner = Arc::clone(&m.inner);
        // SAFETY: the model lives in the `Arc` allocation, which does not move and is kept alive
        // by `owner`, stored in the same `FvSession` and dropped after the session (field
        // order). The `'static` lifetimes never leave the `FvSession`.
        let model_ref: &'static Model<'static> = unsafe { &*std::ptr::addr_of!((*Arc::as_ptr(&owner)).model) };
        let session = model_ref.session(options)?;
        let handle = Box::into_raw(Box::new(FvSession { session, model: owner }));
        // SAFETY: checked non-null by `write_out` above.
        unsafe { out_session.write(handle) };
        Ok(())
    })
}

/// Releases a session. NULL is ignored.
///
/// # Safety
/// `session` must be NULL or a handle from this library not yet freed; it must not be used
/// afterwards.
#[no_mangle]
pub unsafe extern "C" fn fv_session_free(session: *mut FvSession) {
    let _ = guard(|| {
        if !session.is_null() {
            // SAFETY: a pointer from `Box::into_raw` in `fv_session_create`, freed once.
            drop(unsafe { Box::from_raw(session) });
        }
        Ok(())
    });
}

/// Writes the input shape `[max_batch, C, H, W]` of a session into `shape[0..4]`. A run takes
/// `n * C * H * W` floats for `1 <= n <= max_batch` images, `[n, C, H, W]` row-major.
///
/// # Safety
/// `session` must be NULL or a live session handle; `shape` NULL or valid for 4 writes.
#[no_mangle]
pub unsafe extern "C" fn fv_session_input_shape(session: *const FvSession, shape: *mut usize) -> FvStatus {
    guard(|| {
        // SAFETY: NULL or a live handle (contract).
        let s = unsafe { handle(session, "session")? };
        let c = s.model.model.config();
        let [h, w] = s.session.image_size();
        // SAFETY: NULL or valid for 4 writes (contract).
        unsafe { write_out(shape.cast::<[usize; 4]>(), "shape", [s.session.max_batch(), c.in_chans, h, w]) }
    })
}

/// Writes the shape of output `which` for a full batch (`max_batch` images) into
/// `shape[0..3]` and its number of dimensions (2 or 3) into `*ndim`; unused entries are set to
/// 0. Fails with `FV_STATUS_NO_SUCH_OUTPUT` for the logits of a backbone.
///
/// # Safety
/// `session` must be NULL or a live session handle; `shape` NULL or valid for 3 writes; `ndim`
/// NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn fv_session_output_shape(
    session: *const FvSession,
    which: i32,
    shape: *mut usize,
    ndim: *mut usize,
) -> FvStatus {
    guard(|| {
        // SAFETY: NULL or a live handle (contract).
        let s = unsafe { handle(session, "session")? };
        if shape.is_null() {
            return Err(Failure::null("shape"));
        }
        let which = output_kind(which)?;
        let dims = output_dims(s, which)?;
        let mut full = [0usize; 3];
        full[..dims.len()].copy_from_slice(&dims);
        // SAFETY: both pointers are NULL (rejected by `write_out`) or writable (contract).
        unsafe {
            write_out(ndim, "ndim", dims.len())?;
            write_out(shape.cast::<[usize; 3]>(), "shape", full)
        }
    })
}

fn output_kind(which: i32) -> Result<FvOutput, Failure> {
    match which {
        0 => Ok(FvOutput::Logits),
        1 => Ok(FvOutput::PoolerOutput),
        2 => Ok(FvOutput::LastHiddenState),
        other => Err(Failure::invalid(format!("{other} is not an FvOutput"))),
    }
}

/// Shape of an output for a full batch.
fn output_dims(s: &FvSession, which: FvOutput) -> Result<Vec<usize>, Failure> {
    let c = s.model.model.config();
    let b = s.session.max_batch();
    Ok(match which {
        FvOutput::Logits if c.head == Head::None => {
            return Err(Failure::new(FvStatus::NoSuchOutput, "the model is a backbone: it has no logits"))
        }
        FvOutput::Logits => vec![b, c.num_classes],
        FvOutput::PoolerOutput => vec![b, c.embed_dim],
        FvOutput::LastHiddenState => vec![b, s.session.tokens(), c.embed_dim],
    })
}

/// Fills `*out_report` with the session's memory figures.
///
/// # Safety
/// `session` must be NULL or a live session handle; `out_report` NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn fv_session_memory(session: *const FvSession, out_report: *mut FvMemoryReport) -> FvStatus {
    guard(|| {
        // SAFETY: NULL or a live handle (contract).
        let s = unsafe { handle(session, "session")? };
        let m = s.session.memory();
        let report = FvMemoryReport {
            weight_bytes: m.weight_bytes,
            copied_weight_bytes: m.copied_weight_bytes,
            arena_bytes: m.arena_bytes,
        };
        // SAFETY: NULL or writable (contract).
        unsafe { write_out(out_report, "out_report", report) }
    })
}

/// Sets `*out_name` to the name of the kernel family the session uses: `"avx512f+fma+f16c"`,
/// `"avx2+fma+f16c"`, `"neon"` or `"scalar"` (a static string).
///
/// # Safety
/// `session` must be NULL or a live session handle; `out_name` NULL or valid for a pointer
/// write.
#[no_mangle]
pub unsafe extern "C" fn fv_session_backend(session: *const FvSession, out_name: *mut *const c_char) -> FvStatus {
    guard(|| {
        // SAFETY: NULL or a live handle (contract).
        let s = unsafe { handle(session, "session")? };
        let name: &'static CStr = match s.session.backend() {
            Backend::Scalar => c"scalar",
            Backend::Avx2 => c"avx2+fma+f16c",
            Backend::Neon => c"neon",
            Backend::Avx512 => c"avx512f+fma+f16c",
        };
        debug_assert_eq!(name.to_str().ok(), Some(s.session.backend().name()));
        // SAFETY: NULL or writable (contract).
        unsafe { write_out(out_name, "out_name", name.as_ptr()) }
    })
}

/// Sets `*out_macs` to the multiply-adds of one inference of one image (linear layers, patch
/// embedding and attention).
///
/// # Safety
/// `session` must be NULL or a live session handle; `out_macs` NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn fv_session_macs_per_image(session: *const FvSession, out_macs: *mut u64) -> FvStatus {
    guard(|| {
        // SAFETY: NULL or a live handle (contract).
        let s = unsafe { handle(session, "session")? };
        // SAFETY: NULL or writable (contract).
        unsafe { write_out(out_macs, "out_macs", s.session.macs_per_image() as u64) }
    })
}

/// Runs the model on `input` (`n * C * H * W` normalised floats, `[n, C, H, W]` row-major,
/// `1 <= n <= max_batch`, see `fv_session_input_shape()`) and copies the requested outputs into
/// the buffers of `*outputs` (NULL buffers are skipped; `outputs` itself may be NULL to run
/// without copying anything). Every size is checked before computing: an input length that is
/// not a multiple of `C*H*W` or exceeds the batch, or an output buffer shorter than the output
/// of `n` images, fails with `FV_STATUS_INVALID_ARGUMENT`; asking a backbone for logits fails
/// with `FV_STATUS_NO_SUCH_OUTPUT`. `outputs->batch` receives `n`.
///
/// # Safety
/// `session` must be NULL or a live session handle used by no other thread meanwhile; `input`
/// NULL or valid for `input_len` float reads; `outputs` NULL or a readable and writable
/// `FvOutputs` whose non-NULL buffers are valid for their stated lengths and overlap neither
/// each other nor `input`.
#[no_mangle]
pub unsafe extern "C" fn fv_session_run(
    session: *mut FvSession,
    input: *const f32,
    input_len: usize,
    outputs: *mut FvOutputs,
) -> FvStatus {
    guard(|| {
        // SAFETY: NULL or a live handle not used elsewhere meanwhile (contract).
        let s = unsafe { session.as_mut() }.ok_or_else(|| Failure::null("session"))?;
        if input.is_null() {
            return Err(Failure::null("input"));
        }
        // SAFETY: NULL or a valid, exclusively used `FvOutputs` (contract).
        let outputs = unsafe { outputs.as_mut() };
        let c = s.model.model.config();
        let [h, w] = s.session.image_size();
        let per_image = c.in_chans * h * w;
        if input_len == 0 || input_len % per_image != 0 {
            return Err(Failure::invalid(format!(
                "input_len is {input_len}, not a positive multiple of C*H*W = {}*{h}*{w} = {per_image}",
                c.in_chans
            )));
        }
        let n = input_len / per_image;
        if n > s.session.max_batch() {
            return Err(Failure::invalid(format!(
                "input holds {n} images but the session was created for at most {}",
                s.session.max_batch()
            )));
        }
        // Validate every requested destination before computing anything.
        let mut wanted: Vec<(FvOutput, *mut f32, usize)> = Vec::new();
        if let Some(o) = outputs.as_deref() {
            let buffers = [
                (FvOutput::Logits, o.logits, o.logits_len, "logits"),
                (FvOutput::PoolerOutput, o.pooler_output, o.pooler_output_len, "pooler_output"),
                (FvOutput::LastHiddenState, o.last_hidden_state, o.last_hidden_state_len, "last_hidden_state"),
            ];
            for (kind, ptr, len, name) in buffers {
                if ptr.is_null() {
                    continue;
                }
                let per_image: usize = output_dims(s, kind)?[1..].iter().product();
                let need = n * per_image;
                if len < need {
                    return Err(Failure::invalid(format!(
                        "outputs.{name}_len is {len}, the output of {n} image(s) needs {need} floats"
                    )));
                }
                wanted.push((kind, ptr, need));
            }
        }
        // SAFETY: non-null and valid for `input_len` reads (contract); not written during the
        // run (the outputs do not overlap it).
        let pixels = unsafe { std::slice::from_raw_parts(input, input_len) };
        let result = s.session.run(pixels)?;
        for (kind, ptr, need) in wanted {
            let src = match kind {
                FvOutput::Logits => result
                    .logits
                    .ok_or_else(|| Failure::new(FvStatus::NoSuchOutput, "the model is a backbone: it has no logits"))?,
                FvOutput::PoolerOutput => result.pooler_output,
                FvOutput::LastHiddenState => result.last_hidden_state,
            };
            if src.len() != need {
                return Err(Failure::new(
                    FvStatus::Internal,
                    format!("internal error: output {kind:?} has {} floats, expected {need}", src.len()),
                ));
            }
            // SAFETY: `ptr` is non-null and valid for `need ≤ len` float writes, and overlaps
            // neither the input nor another destination (contract); each destination slice is
            // created and used alone.
            unsafe { std::slice::from_raw_parts_mut(ptr, need) }.copy_from_slice(src);
        }
        if let Some(o) = outputs {
            o.batch = n;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> String {
        // SAFETY: fv_last_error always returns a valid NUL-terminated string.
        unsafe { CStr::from_ptr(fv_last_error()) }.to_string_lossy().into_owned()
    }

    #[test]
    fn panics_become_internal_errors() {
        assert_eq!(guard(|| panic!("boom {}", 42)), FvStatus::Internal);
        assert!(message().contains("boom 42"), "{}", message());
        assert_eq!(guard(|| std::panic::panic_any(7u8)), FvStatus::Internal);
        assert!(message().contains("unknown panic"), "{}", message());
    }

    #[test]
    fn payloads_that_panic_when_dropped_are_contained() {
        struct Nasty;
        impl Drop for Nasty {
            fn drop(&mut self) {
                panic!("drop of the payload");
            }
        }
        assert_eq!(guard(|| std::panic::panic_any(Nasty)), FvStatus::Internal);
    }

    #[test]
    fn messages_with_nul_bytes_survive() {
        assert_eq!(guard(|| Err(Failure::invalid("a\0b"))), FvStatus::InvalidArgument);
        assert_eq!(message(), "a\u{FFFD}b");
    }
}
