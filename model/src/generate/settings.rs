//! Generation settings: what a caller asks for ([`GenerationConfig`]), what a checkpoint
//! supplies ([`GenerationDefaults`]), and the two combined and checked once
//! ([`ResolvedGeneration`]), which is all the decoding loops read.

use serde::Serialize;

use super::sampling::random_seed;
use crate::{ModelError, Result};

/// HF's `early_stopping`: `true`, `false` or `"never"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EarlyStopping {
    /// Stop as soon as `num_beams` hypotheses are finished.
    True,
    /// Stop when the best running beam (at its current length) cannot beat the worst
    /// finished hypothesis (HF's default heuristic).
    #[default]
    False,
    /// Canonical beam search: stop only when no running beam can improve, estimated at the
    /// longest possible length when `length_penalty > 0`.
    Never,
}

impl Serialize for EarlyStopping {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            EarlyStopping::True => s.serialize_bool(true),
            EarlyStopping::False => s.serialize_bool(false),
            EarlyStopping::Never => s.serialize_str("never"),
        }
    }
}

impl std::str::FromStr for EarlyStopping {
    type Err = ModelError;
    fn from_str(v: &str) -> Result<Self> {
        match v {
            "true" => Ok(EarlyStopping::True),
            "false" => Ok(EarlyStopping::False),
            "never" => Ok(EarlyStopping::Never),
            other => Err(ModelError::Invalid(format!(
                "early_stopping must be true, false or never, got '{other}'"
            ))),
        }
    }
}

/// How to generate. Defaults are `transformers`' library defaults (greedy, 20 new tokens,
/// and for sampling temperature 1, top_k 50, top_p 1).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GenerationConfig {
    pub max_new_tokens: usize,
    pub min_new_tokens: usize,
    /// 1 = greedy or plain sampling; more = beam search (beam sampling with `do_sample`).
    pub num_beams: usize,
    /// Exponent of the length normalisation of finished beam hypotheses.
    pub length_penalty: f32,
    pub early_stopping: EarlyStopping,
    pub do_sample: bool,
    pub temperature: f32,
    /// 0 disables top-k.
    pub top_k: usize,
    /// 1 disables top-p.
    pub top_p: f32,
    pub repetition_penalty: f32,
    /// 0 disables the n-gram ban.
    pub no_repeat_ngram_size: usize,
    /// Seed of the sampler; `None` draws a fresh one per call (resolve the settings with
    /// [`GenerationConfig::resolve`] or `Blip2::resolve_generation` to learn it beforehand).
    pub seed: Option<u64>,
    /// Overrides the checkpoint's eos id(s) when set.
    pub eos_token_ids: Option<Vec<u32>>,
    /// Overrides the checkpoint's pad id (used to pad prompts of a batch) when set.
    pub pad_token_id: Option<u32>,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig {
            max_new_tokens: 20,
            min_new_tokens: 0,
            num_beams: 1,
            length_penalty: 1.0,
            early_stopping: EarlyStopping::False,
            do_sample: false,
            temperature: 1.0,
            top_k: 50,
            top_p: 1.0,
            repetition_penalty: 1.0,
            no_repeat_ngram_size: 0,
            seed: None,
            eos_token_ids: None,
            pad_token_id: None,
        }
    }
}

impl GenerationConfig {
    /// Beam search with `num_beams` beams (otherwise the defaults).
    pub fn beam_search(num_beams: usize) -> Self {
        GenerationConfig {
            num_beams,
            ..Default::default()
        }
    }

    /// Sampling with the given seed (otherwise the defaults).
    pub fn sampling(seed: u64) -> Self {
        GenerationConfig {
            do_sample: true,
            seed: Some(seed),
            ..Default::default()
        }
    }

    /// Rejects settings `transformers` would reject, and values that cannot mean anything.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Invalid(m));
        if self.max_new_tokens == 0 {
            return bad("max_new_tokens must be at least 1".into());
        }
        if self.min_new_tokens > self.max_new_tokens {
            return bad(format!(
                "min_new_tokens ({}) exceeds max_new_tokens ({})",
                self.min_new_tokens, self.max_new_tokens
            ));
        }
        if self.num_beams == 0 {
            return bad("num_beams must be at least 1".into());
        }
        if !self.length_penalty.is_finite() {
            return bad(format!(
                "length_penalty must be a finite number, got {}",
                self.length_penalty
            ));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad(format!(
                "repetition_penalty must be a positive number, got {}",
                self.repetition_penalty
            ));
        }
        if !(self.temperature.is_finite() && (self.temperature > 0.0 || !self.do_sample)) {
            return bad(format!(
                "temperature must be a positive number when sampling, got {} (for greedy decoding, turn sampling off)",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        Ok(())
    }

    /// Validates these settings and completes them: the eos and pad ids from `defaults`
    /// where none is set here, and a fresh seed when sampling without one. The result is
    /// what a decoding run uses (and reports).
    pub fn resolve(&self, defaults: &GenerationDefaults) -> Result<ResolvedGeneration> {
        self.validate()?;
        let seed = match self.seed {
            None if self.do_sample => Some(random_seed()),
            s => s,
        };
        Ok(ResolvedGeneration {
            max_new_tokens: self.max_new_tokens,
            min_new_tokens: self.min_new_tokens,
            num_beams: self.num_beams,
            length_penalty: self.length_penalty,
            early_stopping: self.early_stopping,
            do_sample: self.do_sample,
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            repetition_penalty: self.repetition_penalty,
            no_repeat_ngram_size: self.no_repeat_ngram_size,
            seed,
            eos_token_ids: self
                .eos_token_ids
                .clone()
                .unwrap_or_else(|| defaults.eos_token_ids.clone()),
            pad_token_id: self.pad_token_id.unwrap_or(defaults.pad_token_id),
        })
    }
}

/// What a checkpoint supplies to generation when the settings leave it open.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GenerationDefaults {
    /// Ids that end a sequence.
    pub eos_token_ids: Vec<u32>,
    /// Id that pads the prompts of a batch to one length.
    pub pad_token_id: u32,
}

/// A [`GenerationConfig`] validated once and completed with the checkpoint's
/// [`GenerationDefaults`] and the sampler seed: what decoding reads. Built only by
/// [`GenerationConfig::resolve`], and read-only (the fields are private), so holding one
/// means the settings are valid. Serialises with the keys of [`GenerationConfig`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ResolvedGeneration {
    max_new_tokens: usize,
    min_new_tokens: usize,
    num_beams: usize,
    length_penalty: f32,
    early_stopping: EarlyStopping,
    do_sample: bool,
    temperature: f32,
    top_k: usize,
    top_p: f32,
    repetition_penalty: f32,
    no_repeat_ngram_size: usize,
    seed: Option<u64>,
    eos_token_ids: Vec<u32>,
    pad_token_id: u32,
}

impl ResolvedGeneration {
    pub fn max_new_tokens(&self) -> usize {
        self.max_new_tokens
    }
    pub fn min_new_tokens(&self) -> usize {
        self.min_new_tokens
    }
    pub fn num_beams(&self) -> usize {
        self.num_beams
    }
    pub fn length_penalty(&self) -> f32 {
        self.length_penalty
    }
    pub fn early_stopping(&self) -> EarlyStopping {
        self.early_stopping
    }
    pub fn do_sample(&self) -> bool {
        self.do_sample
    }
    pub fn temperature(&self) -> f32 {
        self.temperature
    }
    pub fn top_k(&self) -> usize {
        self.top_k
    }
    pub fn top_p(&self) -> f32 {
        self.top_p
    }
    pub fn repetition_penalty(&self) -> f32 {
        self.repetition_penalty
    }
    pub fn no_repeat_ngram_size(&self) -> usize {
        self.no_repeat_ngram_size
    }
    /// The sampler seed: always set when sampling; otherwise what the caller set (unused).
    pub fn seed(&self) -> Option<u64> {
        self.seed
    }
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_token_ids
    }
    pub fn pad_token_id(&self) -> u32 {
        self.pad_token_id
    }

    /// Seed of the per-row random streams. Only sampling draws from them, and then
    /// [`GenerationConfig::resolve`] has set the seed; 0 stands in otherwise.
    pub(super) fn rng_seed(&self) -> u64 {
        self.seed.unwrap_or(0)
    }

    /// Fewest candidates a sampling warper may leave: HF keeps 1 + #eos for beam sampling,
    /// so that a beam can always continue past an eos.
    pub(super) fn min_tokens_to_keep(&self) -> usize {
        if self.num_beams > 1 {
            self.eos_token_ids.len() + 1
        } else {
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_settings_are_rejected() {
        let bad = [
            GenerationConfig {
                max_new_tokens: 0,
                ..Default::default()
            },
            GenerationConfig {
                min_new_tokens: 30,
                ..Default::default()
            },
            GenerationConfig {
                repetition_penalty: 0.0,
                ..Default::default()
            },
            GenerationConfig {
                num_beams: 0,
                ..Default::default()
            },
            GenerationConfig {
                do_sample: true,
                temperature: 0.0,
                ..Default::default()
            },
            GenerationConfig {
                do_sample: true,
                temperature: -1.0,
                ..Default::default()
            },
            GenerationConfig {
                top_p: 0.0,
                ..Default::default()
            },
            GenerationConfig {
                top_p: 1.5,
                ..Default::default()
            },
            GenerationConfig {
                top_p: f32::NAN,
                ..Default::default()
            },
            GenerationConfig {
                length_penalty: f32::INFINITY,
                ..Default::default()
            },
        ];
        for c in bad {
            let e = c.validate().expect_err("rejected");
            assert!(matches!(e, ModelError::Invalid(_)), "{e}");
            // resolve validates: an invalid config never becomes a ResolvedGeneration.
            let e = c
                .resolve(&GenerationDefaults::default())
                .expect_err("rejected");
            assert!(matches!(e, ModelError::Invalid(_)), "{e}");
        }
        // Temperature 0 is only an error when sampling (HF ignores it for greedy).
        GenerationConfig {
            temperature: 0.0,
            ..Default::default()
        }
        .validate()
        .unwrap();
        GenerationConfig::sampling(3).validate().unwrap();
        GenerationConfig::beam_search(4).validate().unwrap();
    }

    #[test]
    fn early_stopping_parses_and_serialises_like_hf() {
        assert_eq!(
            "never".parse::<EarlyStopping>().unwrap(),
            EarlyStopping::Never
        );
        assert!("sometimes".parse::<EarlyStopping>().is_err());
        let j = serde_json::to_value(GenerationConfig {
            early_stopping: EarlyStopping::Never,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(j["early_stopping"], "never");
        assert_eq!(
            serde_json::to_value(GenerationConfig::default()).unwrap()["early_stopping"],
            false
        );
    }

    fn defaults() -> GenerationDefaults {
        GenerationDefaults {
            eos_token_ids: vec![2],
            pad_token_id: 1,
        }
    }

    #[test]
    fn resolve_fills_what_the_config_leaves_open() {
        let r = GenerationConfig::default().resolve(&defaults()).unwrap();
        assert_eq!(r.eos_token_ids(), &[2]);
        assert_eq!(r.pad_token_id(), 1);
        assert_eq!(r.seed(), None, "no seed is drawn for greedy search");
        // Settings of the config win over the checkpoint's.
        let r = GenerationConfig {
            eos_token_ids: Some(vec![]),
            pad_token_id: Some(7),
            ..GenerationConfig::sampling(9)
        }
        .resolve(&defaults())
        .unwrap();
        assert_eq!(r.eos_token_ids(), &[] as &[u32]);
        assert_eq!(r.pad_token_id(), 7);
        assert_eq!(r.seed(), Some(9));
        // Sampling without a seed draws one.
        let r = GenerationConfig {
            do_sample: true,
            ..Default::default()
        }
        .resolve(&defaults())
        .unwrap();
        assert!(r.seed().is_some());
    }

    /// The resolved settings report under the same keys as the requested ones, with the
    /// open values filled in.
    #[test]
    fn resolved_serialises_with_the_config_keys() {
        let cfg = GenerationConfig {
            early_stopping: EarlyStopping::Never,
            ..GenerationConfig::beam_search(3)
        };
        let c = serde_json::to_value(&cfg).unwrap();
        let r = serde_json::to_value(cfg.resolve(&defaults()).unwrap()).unwrap();
        let keys = |v: &serde_json::Value| {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        assert_eq!(keys(&r), keys(&c));
        for (k, v) in c.as_object().unwrap() {
            match k.as_str() {
                "eos_token_ids" => assert_eq!(r[k], serde_json::json!([2])),
                "pad_token_id" => assert_eq!(r[k], 1),
                _ => assert_eq!(&r[k], v, "{k}"),
            }
        }
    }
}
