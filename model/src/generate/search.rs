//! The decoding entry point: greedy search and sampling here, beam search in
//! [`super::beam`].

use super::beam::beam_search;
use super::decode_model::{DecodeModel, DecodeOutput, TokenEvent, check_logits};
use blip2_engine::{Device, Tensor};

use super::row::{RowDecoder, choose_rows};
use super::settings::ResolvedGeneration;
use crate::{ModelError, Result};

/// Decodes a batch with `cfg` (settings, eos ids and sampler seed). `first` holds the
/// prefill's `[B · vocab]` logits (one row per batch row); `seen` the ids each row's
/// processors count (HF's `input_ids`). `on_token` sees each new token as it is chosen;
/// beam search reports the returned hypothesis once the search ends.
pub fn decode(
    first: Vec<f32>,
    seen: Vec<Vec<u32>>,
    cfg: &ResolvedGeneration,
    model: &mut dyn DecodeModel,
    on_token: &mut dyn FnMut(&TokenEvent),
) -> Result<DecodeOutput> {
    let vocab = model.vocab();
    if vocab == 0 || first.len() != seen.len() * vocab || seen.is_empty() {
        return Err(ModelError::Invalid(format!(
            "{} logits for {} rows of vocabulary {vocab}",
            first.len(),
            seen.len()
        )));
    }
    check_logits(&first, 0)?;
    let eos = cfg.eos_token_ids();
    if cfg.num_beams() > 1 {
        let out = beam_search(first, seen, cfg, model)?;
        for (row, toks) in out.tokens.iter().enumerate() {
            for (index, &token_id) in toks.iter().enumerate() {
                on_token(&TokenEvent {
                    row,
                    token_id,
                    index,
                    is_eos: eos.contains(&token_id),
                });
            }
        }
        return Ok(out);
    }
    one_path(first, seen, cfg, model, on_token)
}

/// Greedy search or sampling (num_beams = 1): each row a [`RowDecoder`] on the seed's
/// stream of its index, the choices made by [`choose_rows`] (on a GPU where the logits
/// are, when the model leaves them there). Rows that end are dropped from the model's
/// state (HF keeps feeding them pad; the other rows do not depend on them either way).
fn one_path(
    first: Vec<f32>,
    seen: Vec<Vec<u32>>,
    cfg: &ResolvedGeneration,
    model: &mut dyn DecodeModel,
    on_token: &mut dyn FnMut(&TokenEvent),
) -> Result<DecodeOutput> {
    let vocab = model.vocab();
    let b = seen.len();
    let mut rows = seen
        .into_iter()
        .enumerate()
        .map(|(r, s)| RowDecoder::with_stream(cfg.clone(), s, r as u64))
        .collect::<Result<Vec<_>>>()?;
    // Batch row of each model state row.
    let mut active: Vec<usize> = (0..b).collect();
    let mut logits = Tensor::from_f32(first, &[b, vocab], &Device::Cpu)?;
    let mut steps = 0;
    loop {
        let chosen = {
            let mut running: Vec<&mut RowDecoder> = rows
                .iter_mut()
                .enumerate()
                .filter(|(r, _)| active.contains(r))
                .map(|(_, d)| d)
                .collect();
            choose_rows(&logits, &mut running)?
        };
        // A row's error (non-finite logits) fails the whole batch, before any of the
        // step's tokens is reported.
        let chosen = chosen.into_iter().collect::<Result<Vec<_>>>()?;
        let mut keep = Vec::with_capacity(active.len());
        let mut next = Vec::with_capacity(active.len());
        for (r, (&row, tok)) in active.iter().zip(&chosen).enumerate() {
            on_token(&TokenEvent {
                row,
                token_id: tok.token_id,
                index: tok.index,
                is_eos: tok.is_eos,
            });
            if !tok.finished {
                keep.push(r);
                next.push(tok.token_id);
            }
        }
        if keep.is_empty() {
            break;
        }
        if keep.len() != active.len() {
            model.select_rows(&keep)?;
            active = keep.iter().map(|&r| active[r]).collect();
        }
        steps += 1;
        logits = match model.step_logits(&next)? {
            Some(t) => t,
            None => {
                let v = model.step(&next)?;
                if v.len() != next.len() * vocab {
                    return Err(ModelError::Invalid(format!(
                        "model step returned {} logits, expected {}",
                        v.len(),
                        next.len() * vocab
                    )));
                }
                Tensor::from_f32(v, &[next.len(), vocab], &Device::Cpu)?
            }
        };
    }
    Ok(DecodeOutput {
        tokens: rows.iter().map(|r| r.tokens().to_vec()).collect(),
        scores: vec![None; b],
        steps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::settings::GenerationConfig;
    use crate::generate::test_util::{TableModel, resolved, spread_table};

    fn lp(p: &[f32]) -> Vec<f32> {
        p.iter().map(|&v| v.ln()).collect()
    }

    /// NaN or infinite logits stop greedy, sampling and beam search with a typed error
    /// naming the step, whether they come from the prefill or from a later step.
    #[test]
    fn nonfinite_logits_are_an_error() {
        let v = 3;
        // After token 1 the model returns NaN; after 0 it prefers token 1.
        let table = vec![
            vec![-50.0, 50.0, -50.0],
            vec![f32::NAN, 0.0, 0.0],
            vec![0.0; 3],
        ];
        let model = || TableModel {
            vocab: v,
            table: table.clone(),
            rows: 1,
            selects: vec![],
        };
        let greedy = GenerationConfig::default();
        let sample = GenerationConfig {
            do_sample: true,
            seed: Some(1),
            ..Default::default()
        };
        let beams = GenerationConfig {
            num_beams: 2,
            ..Default::default()
        };
        for cfg in [greedy, sample, beams] {
            let cfg = resolved(cfg, &[2]);
            let e = decode(
                table[0].clone(),
                vec![vec![0]],
                &cfg,
                &mut model(),
                &mut |_| {},
            )
            .unwrap_err();
            assert!(
                matches!(&e, ModelError::NonFinite { what, count: 1, .. } if what.ends_with("token 1")),
                "{e}"
            );
            let e = decode(
                vec![0.0, f32::INFINITY, 0.0],
                vec![vec![0]],
                &cfg,
                &mut model(),
                &mut |_| {},
            )
            .unwrap_err();
            assert!(
                e.to_string().contains("logits for generated token 0"),
                "{e}"
            );
        }
    }

    /// Finished rows leave the model state; the others keep their row order.
    #[test]
    fn greedy_drops_finished_rows() {
        let v = 4;
        // after token t the best next token is: 0→1, 1→2, 2→3 (eos), 3→3
        let table = vec![
            vec![0.0, 1.0, 0.0, 0.0],
            vec![0.0, 0.0, 1.0, 0.0],
            vec![0.0, 0.0, 0.0, 1.0],
            vec![0.0, 0.0, 0.0, 1.0],
        ];
        let mut m = TableModel {
            vocab: v,
            table: table.clone(),
            rows: 2,
            selects: vec![],
        };
        let first = [table[1].clone(), table[0].clone()].concat();
        let mut events = Vec::new();
        let out = decode(
            first,
            vec![vec![1], vec![0]],
            &resolved(GenerationConfig::default(), &[3]),
            &mut m,
            &mut |e| events.push(*e),
        )
        .unwrap();
        assert_eq!(out.tokens, vec![vec![2, 3], vec![1, 2, 3]]);
        assert_eq!(m.selects, vec![vec![1]]);
        assert_eq!(events.len(), 5);
        assert!(events.iter().filter(|e| e.is_eos).count() == 2);
    }

    #[test]
    fn sampling_is_reproducible_per_seed_and_row() {
        let v = 16;
        let table = spread_table(v);
        let run = |seed: u64, rows: usize| {
            let mut m = TableModel {
                vocab: v,
                table: table.clone(),
                rows,
                selects: vec![],
            };
            let first: Vec<f32> = (0..rows).flat_map(|_| table[0].clone()).collect();
            let cfg = GenerationConfig {
                do_sample: true,
                top_k: 0,
                max_new_tokens: 12,
                eos_token_ids: None,
                seed: Some(seed),
                ..Default::default()
            };
            decode(
                first,
                vec![vec![0]; rows],
                &resolved(cfg, &[]),
                &mut m,
                &mut |_| {},
            )
            .unwrap()
            .tokens
        };
        assert_eq!(run(5, 1), run(5, 1));
        assert_ne!(
            run(5, 1),
            run(6, 1),
            "different seeds should differ on 12 draws from 16 tokens"
        );
        // Row 0 of a batch draws from the same stream as the single-row run.
        assert_eq!(run(5, 3)[0], run(5, 1)[0]);
    }

    /// A hand-checked search where greedy and beam search disagree: greedy takes token 1
    /// (p 0.5) and then a flat tail; beam search finds 2 → eos with joint probability 0.4·0.9.
    #[test]
    fn beam_finds_the_better_joint_sequence() {
        // vocab: 0 = eos, 1, 2, 3
        let table = vec![
            lp(&[0.25, 0.25, 0.25, 0.25]),
            lp(&[0.3, 0.3, 0.2, 0.2]),
            lp(&[0.9, 0.04, 0.03, 0.03]),
            lp(&[0.25, 0.25, 0.25, 0.25]),
        ];
        let first = lp(&[0.05, 0.5, 0.4, 0.05]);
        let cfg = GenerationConfig {
            num_beams: 2,
            max_new_tokens: 5,
            ..Default::default()
        };
        let mut m = TableModel {
            vocab: 4,
            table: table.clone(),
            rows: 1,
            selects: vec![],
        };
        let mut ev: Vec<TokenEvent> = Vec::new();
        let out = decode(
            first.clone(),
            vec![vec![3]],
            &resolved(cfg, &[0]),
            &mut m,
            &mut |e| ev.push(*e),
        )
        .unwrap();
        assert_eq!(out.tokens, vec![vec![2, 0]]);
        // Score = (ln 0.4 + ln 0.9) / 2; f32 log-softmax of exact logs: 1e-6.
        let want = (0.4f32.ln() + 0.9f32.ln()) / 2.0;
        assert!((out.scores[0].unwrap() - want).abs() < 1e-6);
        // The first reorder expands prefill row 0 to both beams.
        assert_eq!(m.selects[0], vec![0, 0]);
        assert_eq!(
            ev.iter().map(|e| e.token_id).collect::<Vec<_>>(),
            vec![2, 0]
        );
        // Greedy on the same model goes 1 → (0.3 tie → first index) 0.
        let mut m = TableModel {
            vocab: 4,
            table,
            rows: 1,
            selects: vec![],
        };
        let g = decode(
            first,
            vec![vec![3]],
            &resolved(
                GenerationConfig {
                    max_new_tokens: 5,
                    ..Default::default()
                },
                &[0],
            ),
            &mut m,
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(g.tokens, vec![vec![1, 0]]);
    }
}
