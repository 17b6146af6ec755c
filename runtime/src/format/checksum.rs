//! Integrity checksums of a factorvit file (`docs/FORMAT.md`, "Integrity").
//!
//! The writer stores, under the metadata key `checksums`, the CRC-32 of every tensor's bytes and
//! one CRC-32 of the other metadata entries. [`verify`] recomputes them at load, so a flipped
//! byte anywhere in the tensor data (or a changed metadata value) is detected and the tensor (or
//! `__metadata__`) at fault is named.
//!
//! CRC-32 is the IEEE / zlib polynomial (reflected `0xEDB88320`, initial and final XOR
//! `0xFFFFFFFF`): Python's `zlib.crc32(tensor.tobytes())` gives the same value. It detects every
//! burst error up to 32 bits and every odd number of flipped bits, which covers the corruption a
//! file meets in storage or transfer (it is not a defence against a deliberate forger; sign the
//! file for that). The implementation is table-driven, slicing by 16 bytes (16 KiB of constant
//! tables, computed at compile time), a few GB/s per core.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::error::{Error, Result};
use crate::json::{self, Value};
use crate::safetensors::{Container, DType, TensorInfo};

/// Metadata key holding the checksums.
pub const METADATA_KEY: &str = "checksums";
/// The only algorithm name this runtime writes and reads.
pub const ALGORITHM: &str = "crc32";

const POLY: u32 = 0xEDB8_8320;

const fn make_tables() -> [[u32; 256]; 16] {
    let mut t = [[0u32; 256]; 16];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { POLY ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut s = 1;
    while s < 16 {
        let mut i = 0;
        while i < 256 {
            let prev = t[s - 1][i];
            t[s][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            i += 1;
        }
        s += 1;
    }
    t
}

static TABLES: [[u32; 256]; 16] = make_tables();

/// Incremental CRC-32 (IEEE).
#[derive(Debug, Clone, Copy)]
pub struct Crc32 {
    state: u32,
}

impl Default for Crc32 {
    fn default() -> Self {
        Crc32::new()
    }
}

impl Crc32 {
    /// A fresh checksum.
    pub const fn new() -> Crc32 {
        Crc32 { state: !0 }
    }

    /// Feeds `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        let t = &TABLES;
        let mut c = self.state;
        let mut chunks = bytes.chunks_exact(16);
        for b in &mut chunks {
            let lo = c ^ u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            c = t[15][(lo & 0xff) as usize]
                ^ t[14][((lo >> 8) & 0xff) as usize]
                ^ t[13][((lo >> 16) & 0xff) as usize]
                ^ t[12][(lo >> 24) as usize]
                ^ t[11][b[4] as usize]
                ^ t[10][b[5] as usize]
                ^ t[9][b[6] as usize]
                ^ t[8][b[7] as usize]
                ^ t[7][b[8] as usize]
                ^ t[6][b[9] as usize]
                ^ t[5][b[10] as usize]
                ^ t[4][b[11] as usize]
                ^ t[3][b[12] as usize]
                ^ t[2][b[13] as usize]
                ^ t[1][b[14] as usize]
                ^ t[0][b[15] as usize];
        }
        for &b in chunks.remainder() {
            c = (c >> 8) ^ t[0][((c ^ b as u32) & 0xff) as usize];
        }
        self.state = c;
    }

    /// The checksum of everything fed so far.
    pub fn finish(&self) -> u32 {
        !self.state
    }
}

/// CRC-32 (IEEE / zlib) of `bytes`.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut c = Crc32::new();
    c.update(bytes);
    c.finish()
}

/// CRC-32 of the metadata entries other than [`METADATA_KEY`]: for each entry in ascending
/// key order (byte order), the key's UTF-8 length as u64 little-endian, the key, the value's
/// length as u64 little-endian, the value.
pub fn metadata_crc32<'k>(entries: impl IntoIterator<Item = (&'k str, &'k str)>) -> u32 {
    let mut sorted: Vec<(&str, &str)> = entries.into_iter().filter(|(k, _)| *k != METADATA_KEY).collect();
    sorted.sort_unstable();
    let mut c = Crc32::new();
    for (k, v) in sorted {
        c.update(&(k.len() as u64).to_le_bytes());
        c.update(k.as_bytes());
        c.update(&(v.len() as u64).to_le_bytes());
        c.update(v.as_bytes());
    }
    c.finish()
}

/// Formats a checksum as stored: 8 lowercase hex digits.
pub fn to_hex(crc: u32) -> String {
    format!("{crc:08x}")
}

fn from_hex(s: &str) -> Option<u32> {
    if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

/// The `checksums` metadata value for tensors `(name, bytes)` and the other metadata entries.
pub fn metadata_value<'t>(
    tensors: impl IntoIterator<Item = (&'t str, &'t [u8])>,
    metadata: impl IntoIterator<Item = (&'t str, &'t str)>,
) -> String {
    let mut tensors: Vec<(String, Value)> = tensors
        .into_iter()
        .map(|(name, bytes)| (name.to_string(), Value::from(to_hex(crc32(bytes)).as_str())))
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    Value::Object(alloc::vec![
        ("algorithm".to_string(), Value::from(ALGORITHM)),
        ("metadata".to_string(), Value::from(to_hex(metadata_crc32(metadata)).as_str())),
        ("tensors".to_string(), Value::Object(tensors)),
    ])
    .to_json()
}

/// What checking the checksums at load should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChecksumPolicy {
    /// Verify when the file carries checksums; load files without them (written by other
    /// tools, or before checksums existed). The default.
    #[default]
    VerifyIfPresent,
    /// Verify, and reject a file without checksums.
    Require,
    /// Do not read the tensor data at load (flash-constrained boots; a corrupt file then
    /// computes garbage instead of failing). The `checksums` entry, if any, must still parse.
    Skip,
}

/// What the load did about checksums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumStatus {
    /// Every tensor and the metadata matched.
    Verified {
        /// Tensors checked.
        tensors: usize,
    },
    /// The file carries no checksums.
    Absent,
    /// Verification was skipped by [`ChecksumPolicy::Skip`].
    Skipped,
}

/// The parsed `checksums` entry.
struct Expected {
    metadata: u32,
    tensors: Vec<(String, u32)>,
}

fn parse(container: &Container) -> Result<Option<Expected>> {
    let Some(text) = container.metadata(METADATA_KEY) else { return Ok(None) };
    let bad = |m: String| Error::Format(format!("metadata `{METADATA_KEY}`: {m}"));
    let v = json::parse(text.as_bytes())
        .map_err(|error| Error::Json { what: format!("metadata `{METADATA_KEY}`"), error })?;
    let algorithm = v.get("algorithm").and_then(Value::as_str).ok_or_else(|| bad("`algorithm` is missing".into()))?;
    if algorithm != ALGORITHM {
        return Err(bad(format!("algorithm `{algorithm}` is not supported (this runtime reads `{ALGORITHM}`)")));
    }
    let hex = |v: Option<&Value>, what: &str| {
        v.and_then(Value::as_str).and_then(from_hex).ok_or_else(|| bad(format!("{what} is not 8 hex digits")))
    };
    let metadata = hex(v.get("metadata"), "`metadata`")?;
    let table =
        v.get("tensors").and_then(Value::as_object).ok_or_else(|| bad("`tensors` must be an object".to_string()))?;
    let mut tensors = Vec::with_capacity(table.len());
    for (name, value) in table {
        tensors.push((name.clone(), hex(Some(value), &format!("the checksum of `{name}`"))?));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(w) = tensors.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(bad(format!("`{}` is listed twice", w[0].0)));
    }
    // Every tensor of the file must be covered, and nothing else.
    for t in container.tensors() {
        if tensors.binary_search_by(|(n, _)| n.as_str().cmp(&t.name)).is_err() {
            return Err(bad(format!("tensor `{}` has no checksum", t.name)));
        }
    }
    if tensors.len() != container.tensors().len() {
        let extra = tensors.iter().find(|(n, _)| container.get(n).is_none()).map_or("?", |(n, _)| n.as_str());
        return Err(bad(format!("lists `{extra}`, which is not a tensor of the file")));
    }
    Ok(Some(Expected { metadata, tensors }))
}

/// Checks the file's checksums according to `policy` and, with `check_finite`, that no float
/// tensor holds NaN or infinity; both in one pass over the tensor bytes. `bytes` is the whole
/// file the container was parsed from. A checksum mismatch is [`Error::Checksum`] naming the
/// first tensor (in file order) whose bytes differ, or `__metadata__`; a non-finite value is
/// [`Error::NonFinite`] naming the tensor.
pub fn verify(
    container: &Container,
    bytes: &[u8],
    policy: ChecksumPolicy,
    check_finite: bool,
) -> Result<ChecksumStatus> {
    let expected = parse(container)?;
    let (expected, status) = match (expected, policy) {
        (_, ChecksumPolicy::Skip) => (None, ChecksumStatus::Skipped),
        (None, ChecksumPolicy::Require) => {
            return Err(Error::Format(format!("the file has no `{METADATA_KEY}` entry and checksums are required")))
        }
        (None, _) => (None, ChecksumStatus::Absent),
        (Some(e), _) => {
            let tensors = e.tensors.len();
            (Some(e), ChecksumStatus::Verified { tensors })
        }
    };
    if let Some(e) = &expected {
        let found = metadata_crc32(container.metadata.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        if found != e.metadata {
            return Err(Error::Checksum { tensor: "__metadata__".to_string(), expected: e.metadata, found });
        }
    }
    if expected.is_none() && !check_finite {
        return Ok(status);
    }
    let mut infos: Vec<&TensorInfo> = container.tensors().iter().collect();
    infos.sort_by_key(|t| t.start);
    let jobs: Vec<Job<'_>> = infos
        .iter()
        .map(|t| Job {
            bytes: &bytes[t.start..t.end],
            crc: expected.is_some(),
            finite: if check_finite { FiniteCheck::of(t.dtype) } else { FiniteCheck::None },
        })
        .collect();
    let results = run_jobs(&jobs);
    for (t, r) in infos.iter().zip(results) {
        if let Some(e) = &expected {
            let i = e.tensors.binary_search_by(|(n, _)| n.as_str().cmp(&t.name)).unwrap_or(0);
            let want = e.tensors[i].1;
            if r.crc != want {
                return Err(Error::Checksum { tensor: t.name.clone(), expected: want, found: r.crc });
            }
        }
        if !r.finite {
            return Err(Error::NonFinite(t.name.clone()));
        }
    }
    Ok(status)
}

/// Which bit pattern marks a non-finite element (all exponent bits set).
#[derive(Debug, Clone, Copy)]
enum FiniteCheck {
    None,
    F32,
    F16,
    BF16,
}

impl FiniteCheck {
    fn of(dtype: DType) -> FiniteCheck {
        match dtype {
            DType::F32 => FiniteCheck::F32,
            DType::F16 => FiniteCheck::F16,
            DType::BF16 => FiniteCheck::BF16,
            _ => FiniteCheck::None,
        }
    }

    /// True when every element of `chunk` (a whole number of elements) is finite. Branch-free
    /// accumulation so the loop vectorises.
    fn all_finite(self, chunk: &[u8]) -> bool {
        fn any_exp_all_ones<const N: usize>(chunk: &[u8], mask: u32) -> bool {
            chunk.chunks_exact(N).fold(false, |acc, c| {
                let bits = if N == 4 {
                    u32::from_le_bytes([c[0], c[1], c[2], c[3]])
                } else {
                    u16::from_le_bytes([c[0], c[1]]) as u32
                };
                acc | (bits & mask == mask)
            })
        }
        match self {
            FiniteCheck::None => true,
            FiniteCheck::F32 => !any_exp_all_ones::<4>(chunk, 0x7f80_0000),
            FiniteCheck::F16 => !any_exp_all_ones::<2>(chunk, 0x7c00),
            FiniteCheck::BF16 => !any_exp_all_ones::<2>(chunk, 0x7f80),
        }
    }
}

struct Job<'b> {
    bytes: &'b [u8],
    crc: bool,
    finite: FiniteCheck,
}

struct JobResult {
    crc: u32,
    finite: bool,
}

impl Job<'_> {
    fn run(&self) -> JobResult {
        // Chunks small enough to stay in L2 between the CRC and the finiteness scan.
        const CHUNK: usize = 64 * 1024;
        let mut crc = Crc32::new();
        let mut finite = true;
        for chunk in self.bytes.chunks(CHUNK) {
            if self.crc {
                crc.update(chunk);
            }
            finite &= self.finite.all_finite(chunk);
        }
        JobResult { crc: crc.finish(), finite }
    }
}

/// Runs the jobs; with `std` and more than 4 MiB to scan, in parallel on rayon's global pool
/// (tensors are independent, and a transformer has dozens of similar-sized matrices, so
/// splitting across tensors keeps every core busy). Small files stay on the calling thread and
/// start no pool.
fn run_jobs(jobs: &[Job<'_>]) -> Vec<JobResult> {
    #[cfg(feature = "std")]
    {
        const PARALLEL_BYTES: usize = 4 << 20;
        if jobs.iter().map(|j| j.bytes.len()).sum::<usize>() > PARALLEL_BYTES {
            use rayon::prelude::*;
            return jobs.par_iter().map(Job::run).collect();
        }
        jobs.iter().map(Job::run).collect()
    }
    #[cfg(not(feature = "std"))]
    {
        jobs.iter().map(Job::run).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bitwise(bytes: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in bytes {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { POLY ^ (c >> 1) } else { c >> 1 };
            }
        }
        !c
    }

    #[test]
    fn known_values() {
        // The standard check value of CRC-32/ISO-HDLC, and zlib.crc32 of a few strings.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"The quick brown fox jumps over the lazy dog"), 0x414F_A339);
    }

    #[test]
    fn sliced_equals_bitwise_for_every_length_and_split() {
        let data: Vec<u8> = (0..300u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for len in 0..data.len() {
            let want = bitwise(&data[..len]);
            assert_eq!(crc32(&data[..len]), want, "len {len}");
            let split = len / 3;
            let mut c = Crc32::new();
            c.update(&data[..split]);
            c.update(&data[split..len]);
            assert_eq!(c.finish(), want, "len {len} split {split}");
        }
    }

    #[test]
    fn every_single_bit_flip_changes_the_crc() {
        let data: Vec<u8> = (0..97u8).collect();
        let base = crc32(&data);
        for i in 0..data.len() * 8 {
            let mut d = data.clone();
            d[i / 8] ^= 1 << (i % 8);
            assert_ne!(crc32(&d), base, "bit {i}");
        }
    }

    #[test]
    fn metadata_crc_ignores_order_and_the_checksum_entry() {
        let a = metadata_crc32([("b", "2"), ("a", "1")]);
        let b = metadata_crc32([("a", "1"), (METADATA_KEY, "x"), ("b", "2")]);
        assert_eq!(a, b);
        // Length prefixes keep ("ab", "c") and ("a", "bc") apart.
        assert_ne!(metadata_crc32([("ab", "c")]), metadata_crc32([("a", "bc")]));
    }
}
