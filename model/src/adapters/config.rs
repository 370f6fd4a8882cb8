//! `adapter_config.json` of a PEFT LoRA adapter, and peft's rules for which modules it
//! targets and with which rank and alpha (peft 0.21: `check_target_module_exists`,
//! `get_pattern_key`, `LoraLayer.update_layer`).

use std::path::Path;

use regex::Regex;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::Value;

use crate::config::json::{Obj, parse_json};
use crate::error::{ModelError, Result};

pub const CONFIG_FILE: &str = "adapter_config.json";

/// `target_modules` / `exclude_modules`: a list of names (a module matches when its name
/// equals one or ends with "." + one) or one regex that must match the whole name.
#[derive(Clone, Debug)]
pub enum ModuleSet {
    Names(Vec<String>),
    Regex(Regex),
}

impl ModuleSet {
    fn matches_names(names: &[String], module: &str) -> bool {
        names
            .iter()
            .any(|t| module == t || module.ends_with(&format!(".{t}")))
    }
}

/// `layers_to_transform`: one layer index or a list.
#[derive(Clone, Debug)]
enum Layers {
    One(u64),
    List(Vec<u64>),
}

/// The fields of peft's `LoraConfig` a merge depends on (the others only matter for
/// training), checked on parse.
#[derive(Clone, Debug)]
pub struct LoraConfig {
    pub r: usize,
    pub lora_alpha: f64,
    pub target_modules: ModuleSet,
    exclude_modules: Option<ModuleSet>,
    pub use_rslora: bool,
    /// "none", "all" or "lora_only": which biases were trained (and are in the file).
    pub bias: String,
    /// A bias on `lora_B` (`lora_B.bias` keys, added times the scaling on merge).
    pub lora_bias: bool,
    /// Modules whose every tensor the file replaces; peft never puts LoRA on them.
    modules_to_save: Vec<Regex>,
    /// (regex, value) in the file's order: the first that matches a module wins.
    rank_pattern: Vec<(Regex, usize)>,
    alpha_pattern: Vec<(Regex, f64)>,
    layers_to_transform: Option<Layers>,
    layers_pattern: Vec<Regex>,
}

/// A regex from a config value, compiled with `regex` (linear time whatever the pattern;
/// Python-only syntax such as look-around is refused with the key that holds it).
fn compile(obj: &Obj, key: &str, pattern: &str) -> Result<Regex> {
    Regex::new(pattern).map_err(|e| {
        obj.err(
            key,
            format!("regex {pattern:?} is not supported (Rust regex syntax, no look-around or backreferences): {e}"),
        )
    })
}

/// `\A(?:pattern)\z`: Python's `re.fullmatch`.
fn full(obj: &Obj, key: &str, pattern: &str) -> Result<Regex> {
    compile(obj, key, pattern)?; // the error names the user's pattern, not the wrapper
    compile(obj, key, &format!(r"\A(?:{pattern})\z"))
}

/// A JSON object's entries in the order the file lists them (`serde_json::Map` sorts keys;
/// peft's pattern lookups take the first match in dict order).
struct Ordered(Vec<(String, Value)>);

impl<'de> serde::Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_unit<E>(self) -> std::result::Result<Ordered, E> {
                Ok(Ordered(Vec::new()))
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<Ordered, A::Error> {
                let mut v = Vec::new();
                while let Some(e) = m.next_entry::<String, Value>()? {
                    v.push(e);
                }
                Ok(Ordered(v))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(serde::Deserialize)]
struct Patterns {
    #[serde(default)]
    rank_pattern: Option<Ordered>,
    #[serde(default)]
    alpha_pattern: Option<Ordered>,
}

/// Settings that change what a LoRA layer computes in ways a plain merge cannot express:
/// refused by name rather than merged wrongly.
const VARIANTS: [(&str, &str); 13] = [
    (
        "use_dora",
        "DoRA (weight-decomposed LoRA) is not supported: merge it with peft (merge_and_unload) and load the merged checkpoint",
    ),
    ("use_qalora", "QALoRA is not supported"),
    ("use_bdlora", "block-diagonal LoRA is not supported"),
    ("velora_config", "VeLoRA is not supported"),
    (
        "alora_invocation_tokens",
        "activated LoRA (aLoRA) applies only after its invocation tokens; it cannot be merged",
    ),
    ("monteclora_config", "MonteCLoRA is not supported"),
    ("arrow_config", "Arrow routing is not supported"),
    ("kasa_config", "KaSA is not supported"),
    ("layer_replication", "layer replication is not supported"),
    (
        "trainable_token_indices",
        "trainable tokens are not supported",
    ),
    (
        "target_parameters",
        "LoRA on parameters (target_parameters) is not supported",
    ),
    (
        "megatron_config",
        "Megatron parallel layers are not supported",
    ),
    ("lora_ga_config", "LoRA-GA is not supported"),
];

impl LoraConfig {
    /// Reads and checks `dir/adapter_config.json`.
    pub fn from_dir(dir: &Path) -> Result<LoraConfig> {
        let path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ModelError::checkpoint(&path, "file not found (a PEFT adapter directory holds adapter_config.json and adapter_model.safetensors)")
            } else {
                ModelError::io(&path, e)
            }
        })?;
        Self::parse(&text, &path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<LoraConfig> {
        let v = parse_json(text, path)?;
        let o = Obj::root(path, &v)?;
        let peft_type = o.opt_string("peft_type")?.unwrap_or_default();
        if peft_type != "LORA" {
            return Err(o.err(
                "peft_type",
                format!("is {peft_type:?}; only LoRA adapters (\"LORA\") are merged"),
            ));
        }
        for (key, msg) in VARIANTS {
            let set = match o.get(key) {
                None | Some(Value::Bool(false)) => false,
                Some(Value::Object(m)) => !m.is_empty(),
                Some(Value::Array(a)) => !a.is_empty(),
                Some(_) => true,
            };
            if set {
                return Err(ModelError::Unsupported(format!(
                    "{}: {key}: {msg}",
                    path.display()
                )));
            }
        }
        let r = o.usize("r", 8)?;
        if r == 0 {
            return Err(o.err("r", "must be at least 1".into()));
        }
        let lora_alpha = o.f64("lora_alpha", 8.0)?;
        if !lora_alpha.is_finite() {
            return Err(o.err("lora_alpha", "must be finite".into()));
        }
        let module_set = |key: &str| -> Result<Option<ModuleSet>> {
            Ok(match o.get(key) {
                None => None,
                Some(Value::String(s)) => Some(ModuleSet::Regex(full(&o, key, s)?)),
                Some(_) => Some(ModuleSet::Names(o.string_list(key)?)),
            })
        };
        let Some(target_modules) = module_set("target_modules")? else {
            return Err(o.err(
                "target_modules",
                "is missing: the adapter names no modules".into(),
            ));
        };
        let exclude_modules = module_set("exclude_modules")?;
        let bias = o.string("bias", "none")?;
        if !["none", "all", "lora_only"].contains(&bias.as_str()) {
            return Err(o.err(
                "bias",
                format!("is {bias:?}; expected \"none\", \"all\" or \"lora_only\""),
            ));
        }
        // peft: `re.match(rf"(^|.*\.){m}($|\..*)", key)` (the name is used as a regex there too).
        let modules_to_save = o
            .string_list("modules_to_save")?
            .iter()
            .map(|m| {
                compile(
                    &o,
                    "modules_to_save",
                    &format!(r"\A(?:|.*\.)(?:{m})(?:\z|\..*)"),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let patterns: Patterns = serde_json::from_str(text)
            .map_err(|e| ModelError::config(path, "rank_pattern", e.to_string()))?;
        // peft's get_pattern_key: `re.match(rf"(.*\.)?({key})$", module)`.
        let pattern_re = |key: &str, p: &str| compile(&o, key, &format!(r"\A(?:.*\.)?(?:{p})\z"));
        let mut rank_pattern = Vec::new();
        for (p, v) in patterns.rank_pattern.map_or(Vec::new(), |p| p.0) {
            match v.as_u64().filter(|&x| x > 0) {
                Some(x) => rank_pattern.push((pattern_re("rank_pattern", &p)?, x as usize)),
                None => {
                    return Err(o.err(
                        &format!("rank_pattern.{p}"),
                        format!("expected a positive integer, found {v}"),
                    ));
                }
            }
        }
        let mut alpha_pattern = Vec::new();
        for (p, v) in patterns.alpha_pattern.map_or(Vec::new(), |p| p.0) {
            match v.as_f64().filter(|x| x.is_finite()) {
                Some(x) => alpha_pattern.push((pattern_re("alpha_pattern", &p)?, x)),
                None => {
                    return Err(o.err(
                        &format!("alpha_pattern.{p}"),
                        format!("expected a number, found {v}"),
                    ));
                }
            }
        }
        let layers_to_transform = match o.get("layers_to_transform") {
            None => None,
            Some(Value::Array(a)) if a.is_empty() => None,
            Some(Value::Array(a)) => Some(Layers::List(
                a.iter()
                    .map(|x| {
                        x.as_u64().ok_or_else(|| {
                            o.err(
                                "layers_to_transform",
                                format!("expected layer indices, found {x}"),
                            )
                        })
                    })
                    .collect::<Result<_>>()?,
            )),
            Some(_) => o.opt_u64("layers_to_transform")?.map(Layers::One),
        };
        let layers_pattern = match o.get("layers_pattern") {
            None => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(_) => o.string_list("layers_pattern")?,
        }
        .iter()
        .map(|p| {
            compile(
                &o,
                "layers_pattern",
                &format!(r"\A(?:|.*?\.)(?:{p})\.(?P<idx>\d+)\."),
            )
        })
        .collect::<Result<Vec<_>>>()?;
        Ok(LoraConfig {
            r,
            lora_alpha,
            target_modules,
            exclude_modules,
            use_rslora: o.bool("use_rslora", false)?,
            bias,
            lora_bias: o.bool("lora_bias", false)?,
            modules_to_save,
            rank_pattern,
            alpha_pattern,
            layers_to_transform,
            layers_pattern,
        })
    }

    /// Whether peft puts a LoRA layer on `module` (peft's `check_target_module_exists`).
    pub fn targets(&self, module: &str) -> bool {
        match &self.exclude_modules {
            Some(ModuleSet::Regex(re)) if re.is_match(module) => return false,
            Some(ModuleSet::Names(n)) if ModuleSet::matches_names(n, module) => return false,
            _ => {}
        }
        if self.modules_to_save.iter().any(|re| re.is_match(module)) {
            return false;
        }
        match &self.target_modules {
            ModuleSet::Regex(re) => re.is_match(module),
            ModuleSet::Names(names) if names.iter().any(|t| t == module) => true,
            ModuleSet::Names(names) => {
                ModuleSet::matches_names(names, module) && self.layer_selected(module)
            }
        }
    }

    /// `layers_to_transform` (with a list of targets only): the module's first numbered
    /// path segment after `layers_pattern` (or after any segment) must be listed.
    fn layer_selected(&self, module: &str) -> bool {
        let Some(layers) = &self.layers_to_transform else {
            return true;
        };
        let any_layer = Regex::new(r"\A.*?\.[^.]*\.(?P<idx>\d+)\.").expect("constant regex");
        let idx = if self.layers_pattern.is_empty() {
            any_layer.captures(module)
        } else {
            self.layers_pattern
                .iter()
                .find_map(|re| re.captures(module))
        }
        .and_then(|c| c.name("idx")?.as_str().parse::<u64>().ok());
        match (idx, layers) {
            (None, _) => false,
            (Some(i), Layers::One(l)) => i == *l,
            (Some(i), Layers::List(l)) => l.contains(&i),
        }
    }

    /// The rank of `module` (`rank_pattern`, else `r`).
    pub fn rank(&self, module: &str) -> usize {
        self.rank_pattern
            .iter()
            .find(|(re, _)| re.is_match(module))
            .map_or(self.r, |(_, r)| *r)
    }

    /// peft's scaling of `module`: alpha / r, or alpha / sqrt(r) with rank-stabilised LoRA,
    /// with `alpha_pattern` / `rank_pattern` overrides.
    pub fn scaling(&self, module: &str) -> f64 {
        let alpha = self
            .alpha_pattern
            .iter()
            .find(|(re, _)| re.is_match(module))
            .map_or(self.lora_alpha, |(_, a)| *a);
        let r = self.rank(module) as f64;
        if self.use_rslora {
            alpha / r.sqrt()
        } else {
            alpha / r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> LoraConfig {
        let text = format!(r#"{{"peft_type": "LORA", "r": 8, "lora_alpha": 16{extra}}}"#);
        LoraConfig::parse(&text, Path::new("adapter_config.json")).unwrap()
    }

    #[test]
    fn list_targets_match_whole_names_or_dotted_suffixes() {
        let c = cfg(r#", "target_modules": ["query", "attention.value"]"#);
        assert!(c.targets("qformer.encoder.layer.0.attention.attention.query"));
        assert!(c.targets("query"));
        assert!(c.targets("qformer.encoder.layer.0.attention.attention.value"));
        assert!(!c.targets("qformer.encoder.layer.0.crossattention.attention.key"));
        assert!(!c.targets("x.myquery"));
    }

    #[test]
    fn string_target_is_a_full_match_regex() {
        let c = cfg(r#", "target_modules": ".*\\.(q_proj|v_proj)""#);
        assert!(c.targets("language_model.model.decoder.layers.0.self_attn.q_proj"));
        assert!(!c.targets("language_model.model.decoder.layers.0.self_attn.q_proj.extra"));
        assert!(!c.targets("q_proj"));
    }

    #[test]
    fn exclusions_and_modules_to_save_win_over_targets() {
        let c = cfg(
            r#", "target_modules": ["dense"], "exclude_modules": ["output_query.dense"], "modules_to_save": ["intermediate_query"]"#,
        );
        assert!(c.targets("qformer.encoder.layer.0.attention.output.dense"));
        assert!(!c.targets("qformer.encoder.layer.0.output_query.dense"));
        assert!(!c.targets("qformer.encoder.layer.0.intermediate_query.dense"));
    }

    #[test]
    fn layers_to_transform_picks_the_first_numbered_segment() {
        let c = cfg(
            r#", "target_modules": ["fc1"], "layers_to_transform": [1], "layers_pattern": "layers""#,
        );
        assert!(c.targets("vision_model.encoder.layers.1.mlp.fc1"));
        assert!(!c.targets("vision_model.encoder.layers.0.mlp.fc1"));
        let c = cfg(r#", "target_modules": ["fc1"], "layers_to_transform": 0"#);
        assert!(c.targets("vision_model.encoder.layers.0.mlp.fc1"));
        assert!(!c.targets("vision_model.encoder.layers.2.mlp.fc1"));
    }

    #[test]
    fn patterns_override_rank_and_alpha_in_file_order() {
        // "fc.*" is listed first and wins over "fc1" although a sorted map would put it second.
        let c = cfg(
            r#", "target_modules": ["fc1"], "rank_pattern": {"fc1": 2, "fc.*": 4}, "alpha_pattern": {"layers\\.0\\.mlp\\.fc1": 3}"#,
        );
        assert_eq!(c.rank("a.layers.0.mlp.fc1"), 2);
        assert_eq!(c.rank("a.layers.0.mlp.fc2"), 4);
        assert_eq!(c.rank("a.layers.0.mlp.proj"), 8);
        // alpha 3 over rank 2.
        assert_eq!(c.scaling("a.layers.0.mlp.fc1"), 1.5);
        // alpha 16 over rank 2.
        assert_eq!(c.scaling("a.layers.1.mlp.fc1"), 8.0);
        let rs = cfg(r#", "target_modules": ["q"], "use_rslora": true"#);
        assert_eq!(rs.scaling("q"), 16.0 / 8f64.sqrt());
    }

    #[test]
    fn variants_and_bad_values_are_refused_by_name() {
        let bad = |extra: &str| {
            let text = format!(r#"{{"peft_type": "LORA", "target_modules": ["q"]{extra}}}"#);
            LoraConfig::parse(&text, Path::new("adapter_config.json"))
                .unwrap_err()
                .to_string()
        };
        assert!(bad(r#", "use_dora": true"#).contains("use_dora"));
        assert!(bad(r#", "bias": "some""#).contains("bias"));
        assert!(bad(r#", "r": 0"#).contains("'r'"));
        let ia3 = LoraConfig::parse(r#"{"peft_type": "IA3"}"#, Path::new("a.json"));
        assert!(ia3.unwrap_err().to_string().contains("peft_type"));
        let lookaround = bad(r#", "target_modules": "(?!x).*""#);
        assert!(lookaround.contains("target_modules"), "{lookaround}");
    }
}
