//! Bounds-checked reader of the safetensors container.
//!
//! Layout: an 8-byte little-endian header length `N`, `N` bytes of JSON header, then the data
//! region. The header maps tensor names to `{dtype, shape, data_offsets: [begin, end]}` (offsets
//! relative to the data region) and may hold a `__metadata__` object of string values.
//! Every size is computed with checked arithmetic and every range is checked against the
//! buffer before anything is read.

use alloc::borrow::ToOwned;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::error::{Error, Result};
use crate::json::{self, Value};

/// Largest header accepted (the reference implementation uses the same limit).
pub const MAX_HEADER_BYTES: usize = 100 * 1024 * 1024;

/// Element type of a stored tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    /// IEEE 754 binary32.
    F32,
    /// IEEE 754 binary16.
    F16,
    /// bfloat16.
    BF16,
    /// IEEE 754 binary64.
    F64,
    /// Unsigned 8-bit integer.
    U8,
    /// Signed 8-bit integer.
    I8,
    /// Unsigned 16-bit integer.
    U16,
    /// Signed 16-bit integer.
    I16,
    /// Unsigned 32-bit integer.
    U32,
    /// Signed 32-bit integer.
    I32,
    /// Unsigned 64-bit integer.
    U64,
    /// Signed 64-bit integer.
    I64,
    /// Boolean (one byte).
    Bool,
}

impl DType {
    /// Size of one element in bytes.
    pub fn size(self) -> usize {
        match self {
            DType::U8 | DType::I8 | DType::Bool => 1,
            DType::F16 | DType::BF16 | DType::U16 | DType::I16 => 2,
            DType::F32 | DType::U32 | DType::I32 => 4,
            DType::F64 | DType::U64 | DType::I64 => 8,
        }
    }

    /// The name safetensors uses in headers.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::F64 => "F64",
            DType::U8 => "U8",
            DType::I8 => "I8",
            DType::U16 => "U16",
            DType::I16 => "I16",
            DType::U32 => "U32",
            DType::I32 => "I32",
            DType::U64 => "U64",
            DType::I64 => "I64",
            DType::Bool => "BOOL",
        }
    }

    /// Parses a safetensors dtype name.
    pub fn from_name(name: &str) -> Option<DType> {
        Some(match name {
            "F32" => DType::F32,
            "F16" => DType::F16,
            "BF16" => DType::BF16,
            "F64" => DType::F64,
            "U8" => DType::U8,
            "I8" => DType::I8,
            "U16" => DType::U16,
            "I16" => DType::I16,
            "U32" => DType::U32,
            "I32" => DType::I32,
            "U64" => DType::U64,
            "I64" => DType::I64,
            "BOOL" => DType::Bool,
            _ => return None,
        })
    }
}

/// One tensor entry of the header, with its byte range resolved and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape (empty for a scalar).
    pub shape: Vec<usize>,
    /// Absolute byte range in the file: `start..end`, `end - start == numel * dtype.size()`.
    pub start: usize,
    /// End of the byte range (exclusive).
    pub end: usize,
}

impl TensorInfo {
    /// Number of elements (product of the shape; validated not to overflow).
    pub fn numel(&self) -> usize {
        (self.end - self.start) / self.dtype.size()
    }
}

/// A parsed safetensors header: tensor index and metadata. Holds no reference to the bytes.
#[derive(Debug, Clone)]
pub struct Container {
    /// Tensors sorted by name.
    tensors: Vec<TensorInfo>,
    /// `__metadata__` entries in file order.
    pub metadata: Vec<(String, String)>,
    /// Absolute offset of the data region.
    pub data_start: usize,
}

impl Container {
    /// Parses and validates the header of `bytes` (the whole file).
    pub fn parse(bytes: &[u8]) -> Result<Container> {
        let prefix: [u8; 8] = bytes.get(..8).and_then(|s| s.try_into().ok()).ok_or_else(|| {
            Error::Container(format!("file is {} bytes, shorter than the 8-byte size prefix", bytes.len()))
        })?;
        let header_len = u64::from_le_bytes(prefix);
        let header_len = usize::try_from(header_len).map_err(|_| Error::Overflow("header length"))?;
        if header_len > MAX_HEADER_BYTES {
            return Err(Error::Container(format!(
                "header length {header_len} exceeds the {MAX_HEADER_BYTES}-byte limit"
            )));
        }
        let data_start = header_len.checked_add(8).ok_or(Error::Overflow("header end"))?;
        let header = bytes.get(8..data_start).ok_or_else(|| {
            Error::Container(format!("header length {header_len} runs past the end of the {}-byte file", bytes.len()))
        })?;
        let data_len = bytes.len() - data_start;
        let root = json::parse(header).map_err(|error| Error::Json { what: "safetensors header".to_owned(), error })?;
        let members = root.as_object().ok_or_else(|| Error::Container("header is not a JSON object".to_owned()))?;
        let mut tensors = Vec::with_capacity(members.len());
        let mut metadata = Vec::new();
        for (name, entry) in members {
            if name == "__metadata__" {
                let obj =
                    entry.as_object().ok_or_else(|| Error::Container("__metadata__ is not an object".to_owned()))?;
                for (k, v) in obj {
                    let s = v
                        .as_str()
                        .ok_or_else(|| Error::Container(format!("__metadata__ value `{k}` is not a string")))?;
                    metadata.push((k.clone(), s.to_owned()));
                }
                continue;
            }
            tensors.push(parse_entry(name, entry, data_start, data_len)?);
        }
        // As the reference implementation: tensors tile the data region exactly, in some order,
        // without gaps, overlaps or trailing bytes.
        tensors.sort_by_key(|t| (t.start, t.end));
        let mut expected = data_start;
        for t in &tensors {
            if t.start != expected {
                return Err(Error::Container(format!(
                    "tensor `{}` starts at data offset {} but the previous tensor ends at {} (tensors must be contiguous)",
                    t.name,
                    t.start - data_start,
                    expected - data_start
                )));
            }
            expected = t.end;
        }
        if expected != bytes.len() {
            return Err(Error::Container(format!(
                "the tensors cover {} bytes of the {}-byte data region",
                expected - data_start,
                data_len
            )));
        }
        tensors.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(w) = tensors.windows(2).find(|w| w[0].name == w[1].name) {
            return Err(Error::Container(format!("tensor `{}` appears twice in the header", w[0].name)));
        }
        Ok(Container { tensors, metadata, data_start })
    }

    /// Looks a tensor up by name.
    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.binary_search_by(|t| t.name.as_str().cmp(name)).ok().map(|i| &self.tensors[i])
    }

    /// All tensors, sorted by name.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// A metadata value by key.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

fn parse_entry(name: &str, entry: &Value, data_start: usize, data_len: usize) -> Result<TensorInfo> {
    let bad = |what: &str| Error::Container(format!("tensor `{name}`: {what}"));
    let dtype_name = entry.get("dtype").and_then(Value::as_str).ok_or_else(|| bad("missing dtype"))?;
    let dtype = DType::from_name(dtype_name).ok_or_else(|| bad(&format!("unknown dtype {dtype_name}")))?;
    let shape_json = entry.get("shape").and_then(Value::as_array).ok_or_else(|| bad("missing shape"))?;
    let mut shape = Vec::with_capacity(shape_json.len());
    let mut numel: usize = 1;
    for d in shape_json {
        let d = d.as_usize().ok_or_else(|| bad("shape entries must be non-negative integers"))?;
        numel = numel.checked_mul(d).ok_or(Error::Overflow("tensor element count"))?;
        shape.push(d);
    }
    let offsets = entry
        .get("data_offsets")
        .and_then(Value::as_array)
        .filter(|o| o.len() == 2)
        .ok_or_else(|| bad("data_offsets must be [begin, end]"))?;
    let begin = offsets[0].as_usize().ok_or_else(|| bad("data_offsets must be integers"))?;
    let end = offsets[1].as_usize().ok_or_else(|| bad("data_offsets must be integers"))?;
    if begin > end || end > data_len {
        return Err(bad(&format!("data_offsets [{begin}, {end}] outside the {data_len}-byte data region")));
    }
    let nbytes = numel.checked_mul(dtype.size()).ok_or(Error::Overflow("tensor byte size"))?;
    if end - begin != nbytes {
        return Err(bad(&format!(
            "{} bytes stored but shape {:?} of {} needs {}",
            end - begin,
            shape,
            dtype.name(),
            nbytes
        )));
    }
    Ok(TensorInfo { name: name.to_owned(), dtype, shape, start: data_start + begin, end: data_start + end })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn file(header: &str, data: &[u8]) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn parses_valid_header() {
        let f = file(
            r#"{"__metadata__":{"format":"pt"},"b":{"dtype":"F16","shape":[2],"data_offsets":[8,12]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
            &[0u8; 12],
        );
        let c = Container::parse(&f).unwrap();
        assert_eq!(c.tensors().len(), 2);
        assert_eq!(c.tensors()[0].name, "a");
        assert_eq!(c.get("b").unwrap().numel(), 2);
        assert_eq!(c.metadata("format"), Some("pt"));
    }

    #[test]
    fn rejects_inconsistent_entries() {
        let cases = [
            r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}}"#,
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#,
            r#"{"a":{"dtype":"X","shape":[2],"data_offsets":[0,8]}}"#,
            r#"{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}"#,
            r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}}"#,
            r#"{"__metadata__":{"x":1}}"#,
            r#"[]"#,
            // Gaps, overlaps, duplicates and uncovered bytes.
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
        ];
        for h in cases {
            assert!(Container::parse(&file(h, &[0u8; 8])).is_err(), "{h}");
        }
        assert!(Container::parse(&[1, 0]).is_err());
        let mut huge = vec![0xff; 8];
        huge.extend_from_slice(b"{}");
        assert!(Container::parse(&huge).is_err());
    }
}
