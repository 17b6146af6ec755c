//! Typed access to `config.json` values with errors naming the file and key.

use std::path::Path;

use serde_json::{Map, Value};

use super::CheckpointError;

/// A JSON object of a config file, with the key path used in messages.
#[derive(Clone, Copy)]
pub(crate) struct Obj<'a> {
    pub file: &'a Path,
    /// Key path of this object (`""` for the root, `"model_args."` for a member).
    pub path: &'static str,
    pub map: &'a Map<String, Value>,
}

impl<'a> Obj<'a> {
    /// The root object of a config file.
    pub fn root(file: &'a Path, value: &'a Value) -> Result<Obj<'a>, CheckpointError> {
        let map = value.as_object().ok_or_else(|| CheckpointError::Config {
            file: file.to_path_buf(),
            key: "(root)".to_string(),
            reason: "must be a JSON object".to_string(),
        })?;
        Ok(Obj { file, path: "", map })
    }

    /// A member object (absent or `null` gives `None`).
    pub fn object(&self, key: &str, path: &'static str) -> Result<Option<Obj<'a>>, CheckpointError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(map)) => Ok(Some(Obj { file: self.file, path, map })),
            Some(_) => Err(self.error(key, "must be an object")),
        }
    }

    /// The error for member `key`.
    pub fn error(&self, key: &str, reason: impl Into<String>) -> CheckpointError {
        CheckpointError::Config {
            file: self.file.to_path_buf(),
            key: format!("{}{key}", self.path),
            reason: reason.into(),
        }
    }

    /// Full key path of a member, for messages.
    pub fn key(&self, key: &str) -> String {
        format!("{}{key}", self.path)
    }

    /// A member, treating `null` as absent.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// `true` when the member is present with any value, including `null`.
    pub fn contains(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    pub fn usize(&self, key: &str) -> Result<Option<usize>, CheckpointError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|x| usize::try_from(x).ok())
                .map(Some)
                .ok_or_else(|| self.error(key, format!("must be a non-negative integer, found {v}"))),
        }
    }

    pub fn f64(&self, key: &str) -> Result<Option<f64>, CheckpointError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite())
                .map(Some)
                .ok_or_else(|| self.error(key, format!("must be a number, found {v}"))),
        }
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>, CheckpointError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => {
                v.as_bool().map(Some).ok_or_else(|| self.error(key, format!("must be true or false, found {v}")))
            }
        }
    }

    pub fn str(&self, key: &str) -> Result<Option<&'a str>, CheckpointError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| self.error(key, format!("must be a string, found {v}"))),
        }
    }

    /// An integer or a pair of integers (`img_size: 224` or `[224, 224]`).
    pub fn pair(&self, key: &str) -> Result<Option<[usize; 2]>, CheckpointError> {
        let v = match self.get(key) {
            None => return Ok(None),
            Some(v) => v,
        };
        let as_usize = |x: &Value| x.as_u64().and_then(|x| usize::try_from(x).ok());
        let pair = match v {
            Value::Array(a) if a.len() == 2 => as_usize(&a[0]).zip(as_usize(&a[1])).map(|(h, w)| [h, w]),
            other => as_usize(other).map(|s| [s, s]),
        };
        pair.map(Some).ok_or_else(|| self.error(key, format!("must be an integer or a pair of integers, found {v}")))
    }

    /// An array of numbers; a single number is accepted as a one-element array.
    pub fn floats(&self, key: &str) -> Result<Option<Vec<f64>>, CheckpointError> {
        let v = match self.get(key) {
            None => return Ok(None),
            Some(v) => v,
        };
        let bad = || self.error(key, format!("must be a number or an array of numbers, found {v}"));
        match v {
            Value::Array(a) => a
                .iter()
                .map(|x| x.as_f64().filter(|f| f.is_finite()))
                .collect::<Option<Vec<_>>>()
                .map(Some)
                .ok_or_else(bad),
            other => other.as_f64().filter(|f| f.is_finite()).map(|f| Some(vec![f])).ok_or_else(bad),
        }
    }
}

/// Class names from a list (`["cat", ...]`) or an index map (`{"0": "cat", ...}`) with every
/// index `0..n` present exactly once.
pub(crate) fn label_list(obj: &Obj<'_>, key: &str) -> Result<Option<Vec<String>>, CheckpointError> {
    let v = match obj.get(key) {
        None => return Ok(None),
        Some(v) => v,
    };
    match v {
        Value::Array(items) => items
            .iter()
            .map(|x| x.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .map(Some)
            .ok_or_else(|| obj.error(key, "must hold strings")),
        Value::Object(map) => {
            let mut labels: Vec<Option<String>> = vec![None; map.len()];
            for (k, name) in map {
                let i: usize = k.parse().map_err(|_| obj.error(key, format!("key `{k}` is not a class index")))?;
                let slot = labels.get_mut(i).ok_or_else(|| {
                    obj.error(key, format!("class index {i} is out of range for {} labels", map.len()))
                })?;
                let name =
                    name.as_str().ok_or_else(|| obj.error(key, format!("label of class {i} is not a string")))?;
                if slot.replace(name.to_string()).is_some() {
                    return Err(obj.error(key, format!("class index {i} appears twice")));
                }
            }
            // `map.len()` slots and every index < len filled at most once: all are filled.
            Ok(Some(labels.into_iter().map(Option::unwrap_or_default).collect()))
        }
        _ => Err(obj.error(key, "must be a list or an index-to-name map")),
    }
}
