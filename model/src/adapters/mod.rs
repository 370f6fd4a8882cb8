//! PEFT LoRA adapters merged into the base weights at load.
//!
//! An adapter directory, as peft's `save_pretrained` writes it, holds `adapter_config.json`
//! ([`LoraConfig`]) and `adapter_model.safetensors`, whose keys are
//! `base_model.model.<module>.lora_A.weight` `[r, in]` and `...lora_B.weight` `[out, r]` (plus
//! `lora_B.bias` with `lora_bias`), trained biases (`<module>.base_layer.bias` or
//! `<module>.bias`) and the whole tensors of `modules_to_save`. [`Adapters::open`] reads every
//! adapter, checks every key against the checkpoint (one [`ModelError::Adapter`] listing every
//! unknown, unpaired or mis-shaped key) and turns them into per-tensor [`Edit`]s, which the
//! [`crate::weights::WeightLoader`] applies in f32 when the model reads that tensor, before
//! converting to the storage dtype (so q8/q4/f16 quantize the merged weight):
//!
//! ```text
//! W += user_scale · (lora_alpha / r) · B·A          (alpha / √r with use_rslora)
//! b += user_scale · (lora_alpha / r) · lora_B.bias  (lora_bias)
//! t  = stored tensor                                (trained biases, modules_to_save)
//! ```
//!
//! This is what peft's `merge_and_unload()` computes. Several adapters apply in order.

mod config;
mod merge;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

pub use config::{CONFIG_FILE, LoraConfig, ModuleSet};
pub(crate) use merge::apply;

use crate::error::{AdapterProblem, AdapterProblems, MAX_WEIGHT_PROBLEMS, ModelError, Result};
use crate::weights::Checkpoint;

pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// The prefix peft's `save_pretrained` gives every key of a LoRA adapter.
pub const KEY_PREFIX: &str = "base_model.model.";

/// One adapter to merge: its directory and a multiplier of its LoRA deltas (1 = as trained).
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterSpec {
    pub dir: PathBuf,
    pub scale: f32,
}

impl AdapterSpec {
    pub fn new(dir: impl Into<PathBuf>) -> AdapterSpec {
        AdapterSpec {
            dir: dir.into(),
            scale: 1.0,
        }
    }
}

/// What one merged adapter changed (`blip2 info`, [`crate::weights::WeightStats`]).
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterStats {
    pub dir: PathBuf,
    pub scale: f32,
    /// Weight matrices that received `scale · B·A`.
    pub merged: usize,
    /// Biases that received `scale · lora_B.bias`.
    pub bias_deltas: usize,
    /// Tensors replaced by the adapter's stored values (trained biases, modules_to_save).
    pub replaced: usize,
}

// Scales are checked finite on open, so equality is reflexive.
impl Eq for AdapterStats {}

/// One change to one checkpoint tensor.
#[derive(Clone, Debug)]
pub(crate) enum Edit {
    /// `W += scale · B·A` with `a` `[rank, in]`, `b` `[out, rank]`, row-major.
    LowRank {
        a: Vec<f32>,
        b: Vec<f32>,
        rank: usize,
        scale: f64,
    },
    /// `bias += scale · b`.
    AddBias { b: Vec<f32>, scale: f64 },
    /// The tensor's values, replaced.
    Replace { values: Vec<f32> },
}

/// An [`Edit`] with where it came from.
#[derive(Clone, Debug)]
pub(crate) struct TargetEdit {
    pub adapter: usize,
    pub key: String,
    pub edit: Edit,
}

/// Every adapter of a load, checked against its checkpoint, as edits per tensor name.
#[derive(Debug, Default)]
pub struct Adapters {
    stats: Vec<AdapterStats>,
    files: Vec<PathBuf>,
    /// Checkpoint tensor name -> its edits in adapter order.
    edits: BTreeMap<String, Vec<TargetEdit>>,
}

/// A key of an adapter file, classified.
enum KeyKind {
    /// `lora_A` / `lora_B` weight, or `lora_B` bias, of `module`.
    A(String),
    B(String),
    BBias(String),
    /// A tensor stored whole, replacing the checkpoint's `target`.
    Replace(String),
}

/// Splits `module.lora_A.weight` (or `module.lora_A.<adapter name>.weight`, as in a raw
/// state dict) into the module and what follows `lora_A`.
fn split_lora<'k>(rest: &'k str, part: &str) -> Option<(&'k str, &'k str)> {
    let at = rest.find(&format!(".{part}."))?;
    let module = &rest[..at];
    let tail = &rest[at + part.len() + 2..];
    let param = tail.rsplit('.').next().unwrap_or(tail);
    Some((module, param))
}

fn classify(key: &str) -> std::result::Result<KeyKind, String> {
    let Some(rest) = key.strip_prefix(KEY_PREFIX) else {
        return Err(format!(
            "peft's keys start with '{KEY_PREFIX}' (an adapter saved by PeftModel.save_pretrained)"
        ));
    };
    for (part, what) in [
        ("lora_embedding_A", "LoRA on an embedding table"),
        ("lora_embedding_B", "LoRA on an embedding table"),
        ("lora_magnitude_vector", "DoRA magnitudes"),
    ] {
        if rest.contains(&format!(".{part}")) {
            return Err(format!("{what} is not supported"));
        }
    }
    if let Some((module, param)) = split_lora(rest, "lora_A") {
        return match param {
            "weight" => Ok(KeyKind::A(module.into())),
            _ => Err(format!("lora_A has no '{param}' (weight only)")),
        };
    }
    if let Some((module, param)) = split_lora(rest, "lora_B") {
        return match param {
            "weight" => Ok(KeyKind::B(module.into())),
            "bias" => Ok(KeyKind::BBias(module.into())),
            _ => Err(format!("lora_B has no '{param}'")),
        };
    }
    if rest.contains("lora_") {
        return Err("not a LoRA tensor this library knows".into());
    }
    // `m.base_layer.bias` (a trained bias of a LoRA layer) and `m.modules_to_save.<name>.w`
    // (a raw state dict) name the base tensor `m.bias` / `m.w`.
    let mut parts: Vec<&str> = rest.split('.').collect();
    while let Some(i) = parts.iter().position(|p| *p == "modules_to_save") {
        parts.drain(i..(i + 2).min(parts.len()));
    }
    parts.retain(|p| *p != "base_layer");
    Ok(KeyKind::Replace(parts.join(".")))
}

/// Little-endian F32/F16/BF16 bytes as f32, or why not.
fn decode(dtype: Dtype, bytes: &[u8]) -> std::result::Result<Vec<f32>, String> {
    let v: Vec<f32> = match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => {
            return Err(format!(
                "stored as {other:?}; only F32, F16 and BF16 are read"
            ));
        }
    };
    let bad = v.iter().filter(|x| !x.is_finite()).count();
    if bad > 0 {
        return Err(format!("{bad} NaN or infinite values"));
    }
    Ok(v)
}

/// A checkpoint tensor an adapter may edit: its shape, or `None` for a random-weight
/// checkpoint (every name exists; shapes are checked when the model asks).
fn base_shape<'c>(
    ckpt: &'c Checkpoint,
    target: &str,
    key: &str,
    problems: &mut Vec<AdapterProblem>,
) -> Option<Option<&'c [usize]>> {
    if ckpt.is_random() {
        return Some(None);
    }
    match ckpt.meta(target) {
        Some(m) => Some(Some(m.shape)),
        None => {
            problems.push(AdapterProblem::Unknown {
                key: key.into(),
                target: target.into(),
            });
            None
        }
    }
}

fn check_shape(
    problems: &mut Vec<AdapterProblem>,
    key: &str,
    expected: &[usize],
    found: &[usize],
    what: &str,
) -> bool {
    if expected == found {
        return true;
    }
    problems.push(AdapterProblem::ShapeMismatch {
        key: key.into(),
        expected: expected.to_vec(),
        found: found.to_vec(),
        what: what.into(),
    });
    false
}

type Loaded = (String, Vec<usize>, Vec<f32>);

impl Adapters {
    /// Reads `specs` in order and checks each against `ckpt`.
    pub fn open(specs: &[AdapterSpec], ckpt: &Checkpoint) -> Result<Adapters> {
        let mut out = Adapters::default();
        for spec in specs {
            out.add(spec, ckpt)?;
        }
        Ok(out)
    }

    fn add(&mut self, spec: &AdapterSpec, ckpt: &Checkpoint) -> Result<()> {
        if !spec.scale.is_finite() {
            return Err(ModelError::Invalid(format!(
                "adapter {}: scale {} is not a finite number",
                spec.dir.display(),
                spec.scale
            )));
        }
        let cfg = LoraConfig::from_dir(&spec.dir)?;
        let file = spec.dir.join(WEIGHTS_FILE);
        if !file.exists() {
            let bin = spec.dir.join("adapter_model.bin");
            return Err(ModelError::checkpoint(
                &file,
                if bin.exists() {
                    "file not found; adapter_model.bin (a pickle) is not read: save the adapter with safe_serialization=True"
                } else {
                    "file not found"
                },
            ));
        }
        let bytes = std::fs::read(&file).map_err(|e| ModelError::io(&file, e))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| ModelError::checkpoint(&file, format!("not a safetensors file: {e}")))?;
        let idx = self.stats.len();
        let mut stats = AdapterStats {
            dir: spec.dir.clone(),
            scale: spec.scale,
            merged: 0,
            bias_deltas: 0,
            replaced: 0,
        };
        let mut problems = Vec::new();
        // module -> (A, B, B bias)
        type Pair = (Option<Loaded>, Option<Loaded>, Option<Loaded>);
        let mut pairs: BTreeMap<String, Pair> = BTreeMap::new();
        let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
        names.sort();
        let mut edits: Vec<(String, TargetEdit)> = Vec::new();
        for key in names {
            let view = st
                .tensor(&key)
                .map_err(|e| ModelError::checkpoint(&file, format!("tensor {key}: {e}")))?;
            let kind = match classify(&key) {
                Ok(k) => k,
                Err(msg) => {
                    problems.push(AdapterProblem::Unsupported { key, msg });
                    continue;
                }
            };
            let values = match decode(view.dtype(), view.data()) {
                Ok(v) => v,
                Err(msg) => {
                    problems.push(AdapterProblem::BadValues { key, msg });
                    continue;
                }
            };
            let loaded = (key.clone(), view.shape().to_vec(), values);
            match kind {
                KeyKind::A(m) => pairs.entry(m).or_default().0 = Some(loaded),
                KeyKind::B(m) => pairs.entry(m).or_default().1 = Some(loaded),
                KeyKind::BBias(m) => pairs.entry(m).or_default().2 = Some(loaded),
                KeyKind::Replace(target) => {
                    let Some(base) = base_shape(ckpt, &target, &key, &mut problems) else {
                        continue;
                    };
                    if let Some(base) = base
                        && !check_shape(
                            &mut problems,
                            &key,
                            base,
                            &loaded.1,
                            "the checkpoint's tensor",
                        )
                    {
                        continue;
                    }
                    stats.replaced += 1;
                    edits.push((
                        target,
                        TargetEdit {
                            adapter: idx,
                            key,
                            edit: Edit::Replace { values: loaded.2 },
                        },
                    ));
                }
            }
        }
        for (module, (a, b, bias)) in pairs {
            let (a, b) = match (a, b) {
                (Some(a), Some(b)) => (a, b),
                (Some((key, ..)), None) | (None, Some((key, ..))) => {
                    let missing = if key.contains(".lora_A") {
                        key.replacen(".lora_A", ".lora_B", 1)
                    } else {
                        key.replacen(".lora_B", ".lora_A", 1)
                    };
                    problems.push(AdapterProblem::Unpaired { key, missing });
                    continue;
                }
                (None, None) => {
                    if let Some((key, ..)) = bias {
                        let missing = key.replacen(".bias", ".weight", 1);
                        problems.push(AdapterProblem::Unpaired { key, missing });
                    }
                    continue;
                }
            };
            if !cfg.targets(&module) {
                problems.push(AdapterProblem::NotTargeted { key: a.0, module });
                continue;
            }
            let target = format!("{module}.weight");
            let Some(base) = base_shape(ckpt, &target, &a.0, &mut problems) else {
                continue;
            };
            let rank = cfg.rank(&module);
            let (out_f, in_f) = match base {
                Some(&[o, i]) => (o, i),
                Some(other) => {
                    problems.push(AdapterProblem::Unsupported {
                        key: a.0,
                        msg: format!(
                            "{target} has shape {other:?}; LoRA merges into linear weights [out, in] only"
                        ),
                    });
                    continue;
                }
                // Random weights: the pair's own shapes, checked against the model's later.
                None => (
                    b.1.first().copied().unwrap_or(0),
                    a.1.get(1).copied().unwrap_or(0),
                ),
            };
            let rank_what =
                format!("rank {rank} from adapter_config.json, in_features of {target}");
            let ok_a = check_shape(&mut problems, &a.0, &[rank, in_f], &a.1, &rank_what);
            let what_b = format!("out_features of {target}, rank {rank}");
            let ok_b = check_shape(&mut problems, &b.0, &[out_f, rank], &b.1, &what_b);
            if !(ok_a && ok_b) {
                continue;
            }
            let scale = cfg.scaling(&module) * f64::from(spec.scale);
            if let Some((bkey, bshape, bvals)) = bias {
                let bias_target = format!("{module}.bias");
                let Some(base) = base_shape(ckpt, &bias_target, &bkey, &mut problems) else {
                    continue;
                };
                let base = base.map_or(vec![out_f], <[usize]>::to_vec);
                if !check_shape(&mut problems, &bkey, &base, &bshape, "the layer's bias") {
                    continue;
                }
                stats.bias_deltas += 1;
                edits.push((
                    bias_target,
                    TargetEdit {
                        adapter: idx,
                        key: bkey,
                        edit: Edit::AddBias { b: bvals, scale },
                    },
                ));
            }
            stats.merged += 1;
            edits.push((
                target,
                TargetEdit {
                    adapter: idx,
                    key: a.0,
                    edit: Edit::LowRank {
                        a: a.2,
                        b: b.2,
                        rank,
                        scale,
                    },
                },
            ));
        }
        if !problems.is_empty() {
            return Err(adapter_error(&spec.dir, problems));
        }
        // Replacements first, then deltas: peft loads the stored tensors into the model, then
        // merges (a trained bias plus lora_B.bias times the scaling).
        edits.sort_by_key(|(_, e)| !matches!(e.edit, Edit::Replace { .. }));
        for (target, e) in edits {
            self.edits.entry(target).or_default().push(e);
        }
        self.stats.push(stats);
        self.files.push(file);
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.stats.is_empty()
    }

    /// Per adapter, what it merges.
    pub fn stats(&self) -> &[AdapterStats] {
        &self.stats
    }

    /// The edits of checkpoint tensor `name`, in order.
    pub(crate) fn edits(&self, name: &str) -> Option<&[TargetEdit]> {
        self.edits.get(name).map(Vec::as_slice)
    }

    /// The safetensors file of adapter `i` (for problems found while merging).
    pub(crate) fn file(&self, i: usize) -> &Path {
        &self.files[i]
    }

    /// `Ok` when the model read every tensor an adapter edits (`read` says whether it did);
    /// else the first adapter's unused keys.
    pub(crate) fn check_used(&self, read: impl Fn(&str) -> bool) -> Result<()> {
        let mut unused: HashMap<usize, Vec<AdapterProblem>> = HashMap::new();
        for (target, edits) in &self.edits {
            if read(target) {
                continue;
            }
            for e in edits {
                unused
                    .entry(e.adapter)
                    .or_default()
                    .push(AdapterProblem::Unused {
                        key: e.key.clone(),
                        target: target.clone(),
                    });
            }
        }
        match unused.into_iter().min_by_key(|(i, _)| *i) {
            None => Ok(()),
            Some((i, problems)) => Err(adapter_error(&self.stats[i].dir, problems)),
        }
    }
}

fn adapter_error(dir: &Path, mut problems: Vec<AdapterProblem>) -> ModelError {
    problems.sort_by(|a, b| a.key().cmp(b.key()));
    let more = problems.len().saturating_sub(MAX_WEIGHT_PROBLEMS);
    problems.truncate(MAX_WEIGHT_PROBLEMS);
    ModelError::Adapter(AdapterProblems {
        adapter: dir.to_path_buf(),
        problems,
        more,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_their_modules_and_targets() {
        let m = |k: &str| match classify(k) {
            Ok(KeyKind::A(m)) => format!("A {m}"),
            Ok(KeyKind::B(m)) => format!("B {m}"),
            Ok(KeyKind::BBias(m)) => format!("Bb {m}"),
            Ok(KeyKind::Replace(t)) => format!("R {t}"),
            Err(e) => format!("E {e}"),
        };
        assert_eq!(m("base_model.model.q.k.lora_A.weight"), "A q.k");
        assert_eq!(m("base_model.model.q.k.lora_B.default.weight"), "B q.k");
        assert_eq!(m("base_model.model.q.k.lora_B.bias"), "Bb q.k");
        assert_eq!(m("base_model.model.q.k.base_layer.bias"), "R q.k.bias");
        assert_eq!(
            m("base_model.model.proj.modules_to_save.default.weight"),
            "R proj.weight"
        );
        assert_eq!(m("base_model.model.proj.weight"), "R proj.weight");
        assert!(m("model.q.lora_A.weight").starts_with("E peft's keys"));
        assert!(m("base_model.model.emb.lora_embedding_A").contains("embedding"));
        assert!(m("base_model.model.q.lora_magnitude_vector").contains("DoRA"));
    }
}
