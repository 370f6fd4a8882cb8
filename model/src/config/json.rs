//! A typed reader over parsed JSON objects: every read names the file and the dotted key
//! at fault (`config.json: key 'text_config.d_model': expected an unsigned integer, found
//! "abc"`). Parsing goes through `serde_json::Value` rather than serde derive for exactly
//! that reason; JSON null counts as absent (HF writes null for "use the default").

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{ModelError, Result};

/// Parses a JSON file's text; `path` names the file in the error.
pub(crate) fn parse_json(text: &str, path: &Path) -> Result<Value> {
    serde_json::from_str(text)
        .map_err(|e| ModelError::config(path, "", format!("invalid JSON: {e}")))
}

/// A JSON object with its file and dotted key path, for typed reads with precise errors.
pub(crate) struct Obj<'a> {
    file: &'a Path,
    prefix: String,
    map: &'a Map<String, Value>,
}

fn describe(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 60 {
        format!("{}...", &s[..s.floor_char_boundary(60)])
    } else {
        s
    }
}

impl<'a> Obj<'a> {
    pub(crate) fn root(file: &'a Path, v: &'a Value) -> Result<Obj<'a>> {
        match v {
            Value::Object(map) => Ok(Obj {
                file,
                prefix: String::new(),
                map,
            }),
            other => Err(ModelError::config(
                file,
                "",
                format!(
                    "expected a JSON object at the top level, found {}",
                    describe(other)
                ),
            )),
        }
    }

    pub(crate) fn key(&self, k: &str) -> String {
        if self.prefix.is_empty() {
            k.to_string()
        } else {
            format!("{}.{k}", self.prefix)
        }
    }

    pub(crate) fn err(&self, k: &str, msg: String) -> ModelError {
        ModelError::config(self.file, self.key(k), msg)
    }

    /// The value, treating JSON null as absent (HF writes null for "use the default").
    pub(crate) fn get(&self, k: &str) -> Option<&'a Value> {
        self.map.get(k).filter(|v| !v.is_null())
    }

    pub(crate) fn obj(&self, k: &str) -> Result<Option<Obj<'a>>> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(Obj {
                file: self.file,
                prefix: self.key(k),
                map,
            })),
            Some(other) => {
                Err(self.err(k, format!("expected an object, found {}", describe(other))))
            }
        }
    }

    pub(crate) fn opt_u64(&self, k: &str) -> Result<Option<u64>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(x) => Ok(Some(x)),
                // 2.0 is accepted as 2 (some tools write integral floats).
                None => match v.as_f64() {
                    Some(f) if f >= 0.0 && f.fract() == 0.0 && f < 9.0e15 => Ok(Some(f as u64)),
                    _ => Err(self.err(
                        k,
                        format!("expected an unsigned integer, found {}", describe(v)),
                    )),
                },
            },
        }
    }

    pub(crate) fn opt_usize(&self, k: &str) -> Result<Option<usize>> {
        self.opt_u64(k)?
            .map(|x| usize::try_from(x).map_err(|_| self.err(k, format!("{x} is too large"))))
            .transpose()
    }

    pub(crate) fn usize(&self, k: &str, default: usize) -> Result<usize> {
        Ok(self.opt_usize(k)?.unwrap_or(default))
    }

    pub(crate) fn opt_u32(&self, k: &str) -> Result<Option<u32>> {
        self.opt_u64(k)?
            .map(|x| {
                u32::try_from(x)
                    .map_err(|_| self.err(k, format!("{x} does not fit a token id (u32)")))
            })
            .transpose()
    }

    /// A token id that may be stored as a list (eos_token_id: [1, 2]): the first one.
    pub(crate) fn first_u32(&self, k: &str) -> Result<Option<u32>> {
        match self.get(k) {
            Some(Value::Array(items)) => match items.first() {
                None => Ok(None),
                Some(v) => match v.as_u64().and_then(|x| u32::try_from(x).ok()) {
                    Some(x) => Ok(Some(x)),
                    None => Err(self.err(k, format!("expected token ids, found {}", describe(v)))),
                },
            },
            _ => self.opt_u32(k),
        }
    }

    pub(crate) fn f64(&self, k: &str, default: f64) -> Result<f64> {
        match self.get(k) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.err(k, format!("expected a number, found {}", describe(v)))),
        }
    }

    pub(crate) fn bool(&self, k: &str, default: bool) -> Result<bool> {
        match self.get(k) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(self.err(k, format!("expected true or false, found {}", describe(v)))),
        }
    }

    pub(crate) fn opt_string(&self, k: &str) -> Result<Option<String>> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(self.err(k, format!("expected a string, found {}", describe(v)))),
        }
    }

    pub(crate) fn string(&self, k: &str, default: &str) -> Result<String> {
        Ok(self.opt_string(k)?.unwrap_or_else(|| default.to_string()))
    }

    pub(crate) fn string_list(&self, k: &str) -> Result<Vec<String>> {
        match self.get(k) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => {
                        Err(self.err(k, format!("expected strings, found {}", describe(other))))
                    }
                })
                .collect(),
            Some(v) => Err(self.err(
                k,
                format!("expected a list of strings, found {}", describe(v)),
            )),
        }
    }

    /// Per-channel values: a list of 3 numbers or one number for all channels.
    pub(crate) fn triple(&self, k: &str, default: [f64; 3]) -> Result<[f64; 3]> {
        match self.get(k) {
            None => Ok(default),
            Some(Value::Number(n)) => {
                let x = n.as_f64().unwrap_or(f64::NAN);
                Ok([x, x, x])
            }
            Some(Value::Array(items)) if items.len() == 3 => {
                let mut out = [0.0; 3];
                for (o, v) in out.iter_mut().zip(items) {
                    *o = v.as_f64().ok_or_else(|| {
                        self.err(k, format!("expected numbers, found {}", describe(v)))
                    })?;
                }
                Ok(out)
            }
            Some(v) => Err(self.err(
                k,
                format!(
                    "expected 3 numbers (one per RGB channel), found {}",
                    describe(v)
                ),
            )),
        }
    }
}
