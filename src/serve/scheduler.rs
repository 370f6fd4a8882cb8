//! The model's worker thread and its batching loop. The HTTP side never touches tensors:
//! handlers send [`Job`]s through a channel, and one std thread owning the model runs them.
//!
//! Generative checkpoints (OPT, LLaMA, T5) batch continuously ([`continuous`]): between
//! two decode steps the loop takes the jobs waiting, up to `--max-batch` running rows (they
//! may wait while the batch steps on, `--join-wait-steps`, for more to share their passes);
//! their images not in the feature cache go through preprocessing, the ViT, the Q-Former
//! and the projection together (the others come from the cache, keyed by the SHA-256 of
//! the image bytes); their prompts are prefilled together (one padded forward; T5's
//! encoded) and join the running [`DecodeBatch`]. Every step is one forward pass over all
//! running rows, each with its own settings (greedy or sampled with its own seed); a row
//! leaves as soon as it ends or its client disconnects. Beam-search jobs run alone between
//! two steps.
//!
//! Retrieval checkpoints run their jobs one at a time ([`retrieval`]): an embedding or a
//! match is one forward pass, with nothing to share between requests.
//!
//! Model work runs under `catch_unwind`: a panic fails the requests it was running (500)
//! and the loop goes on.

use std::collections::HashMap;
use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use blip2::engine::Tensor;
use blip2::image::DynamicImage;
use blip2::{
    Blip2, Blip2Retrieval, DecodeBatch, Generation, GenerationConfig, ImageFeatures, Join, SeqId,
    TextStream, TokenEvent,
};
use tokio::sync::{mpsc::UnboundedSender, oneshot};

use super::cache::{ImageKey, Lru};
use super::limits::{ApiError, JoinWait, Limits, from_model_error};
use super::metrics::{Metrics, Phase};

/// The loaded checkpoint: a captioning/VQA model or a retrieval one.
pub enum Loaded {
    Gen(Box<Blip2>),
    Retrieval(Box<Blip2Retrieval>),
}

/// What a generation request sends back, in order: text deltas, then `Done` (or `Error`).
#[derive(Debug)]
pub enum Event {
    Delta(String),
    Done(Finished),
    Error(ApiError),
}

#[derive(Debug, Clone)]
pub struct Finished {
    pub text: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// "stop" (eos) or "length" (max_tokens reached).
    pub finish_reason: &'static str,
}

/// An admitted request's place: freed (the in-flight count decremented) when the job is
/// dropped, whether it finished, failed, or its client left.
pub struct Slot(pub Arc<Metrics>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct GenJob {
    pub image: Vec<u8>,
    pub key: ImageKey,
    pub prompt: Option<String>,
    pub config: GenerationConfig,
    pub events: UnboundedSender<Event>,
    /// Text deltas are sent only to a streamed request (the others wait for `Done`: a
    /// delta per token would only wake their handler).
    pub stream: bool,
    pub admitted: Instant,
    /// Held until the job is dropped.
    pub _slot: Slot,
}

pub enum EmbedItem {
    Text(String),
    Image(Vec<u8>),
}

/// One vector per input and its number of rows.
pub type Embeddings = Vec<(Vec<f32>, usize)>;

pub struct EmbedJob {
    pub inputs: Vec<EmbedItem>,
    /// One vector per input (an image: its Q query embeddings, row after row) and the
    /// number of rows.
    pub reply: oneshot::Sender<Result<Embeddings, ApiError>>,
    /// Held until the job is dropped.
    pub _slot: Slot,
}

pub struct MatchJob {
    pub image: Vec<u8>,
    pub texts: Vec<String>,
    pub reply: oneshot::Sender<Result<Vec<blip2::MatchScore>, ApiError>>,
    /// Held until the job is dropped.
    pub _slot: Slot,
}

pub enum Job {
    Gen(GenJob),
    Embed(EmbedJob),
    Match(MatchJob),
}

impl Job {
    /// The client is gone (its receiver was dropped): no need to run.
    fn abandoned(&self) -> bool {
        match self {
            Job::Gen(j) => j.events.is_closed(),
            Job::Embed(j) => j.reply.is_closed(),
            Job::Match(j) => j.reply.is_closed(),
        }
    }
}

/// Checks that `bytes` are an image of a supported format within the pixel limit, from
/// its header (nothing is decoded).
pub fn check_image(bytes: &[u8], max_pixels: u64) -> Result<(u32, u32), ApiError> {
    let reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ApiError::bad_image(format!("cannot read the image: {e}")))?;
    if reader.format().is_none() {
        return Err(ApiError::bad_image(
            "not a supported image format (expected PNG, JPEG, WebP, BMP, GIF or TIFF)",
        ));
    }
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| ApiError::bad_image(format!("cannot read the image header: {e}")))?;
    let px = w as u64 * h as u64;
    if px > max_pixels {
        return Err(ApiError::bad_image(format!(
            "image of {w}x{h} = {px} pixels is above the server's limit of {max_pixels} (--max-image-pixels)"
        )));
    }
    Ok((w, h))
}

/// Decodes an image with the pixel limit enforced by the decoder too (a header that lies
/// cannot make it allocate more).
pub fn decode_image(bytes: &[u8], max_pixels: u64) -> Result<DynamicImage, ApiError> {
    let (w, h) = check_image(bytes, max_pixels)?;
    let mut reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ApiError::bad_image(format!("cannot read the image: {e}")))?;
    let mut lim = image::Limits::default();
    lim.max_image_width = Some(w);
    lim.max_image_height = Some(h);
    // 16-bit RGBA is 8 bytes per pixel; leave room for a conversion copy.
    lim.max_alloc = Some(max_pixels.saturating_mul(16));
    reader.limits(lim);
    reader
        .decode()
        .map_err(|e| ApiError::bad_image(format!("cannot decode the image: {e}")))
}

/// The worker loop: runs until every sender of `rx` is gone.
pub fn run(
    model: Loaded,
    rx: Receiver<Job>,
    metrics: Arc<Metrics>,
    limits: Limits,
    cache_entries: usize,
) {
    match &model {
        Loaded::Gen(m) => {
            let cache = Mutex::new(Lru::<Tensor>::new(cache_entries));
            continuous(m, &model, rx, &metrics, &limits, &cache)
        }
        Loaded::Retrieval(_) => retrieval(&model, rx, &metrics, &limits),
    }
}

/// Retrieval checkpoints: one job at a time, in arrival order (an embedding or a match is
/// one forward pass; generation requests are refused).
fn retrieval(model: &Loaded, rx: Receiver<Job>, metrics: &Metrics, limits: &Limits) {
    while let Ok(job) = rx.recv() {
        if job.abandoned() {
            continue;
        }
        match job {
            Job::Gen(g) => fail(
                vec![g],
                &ApiError::unsupported("this checkpoint does not generate text"),
            ),
            Job::Embed(e) => guarded(metrics, 1, || embed(model, e, limits)),
            Job::Match(m) => guarded(metrics, 1, || match_job(model, m, limits)),
        }
    }
}

/// A request decoding in the continuous batch.
struct Running<'m> {
    job: GenJob,
    prompt_tokens: usize,
    max_new_tokens: usize,
    eos: Vec<u32>,
    stream: TextStream<'m>,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Running<'_> {
    fn token(&mut self, e: &TokenEvent, metrics: &Metrics) {
        let now = Instant::now();
        if self.first.is_none() {
            self.first = Some(now);
            metrics.first_token((now - self.job.admitted).as_secs_f64());
        }
        self.last = Some(now);
        if self.job.stream
            && let Ok(d) = self.stream.push(e.token_id)
            && !d.is_empty()
        {
            let _ = self.job.events.send(Event::Delta(d));
        }
    }

    fn finish(mut self, g: blip2::Result<Generation>, metrics: &Metrics) {
        let g = match g {
            Ok(g) => g,
            Err(e) => {
                let _ = self.job.events.send(Event::Error(from_model_error(&e)));
                return;
            }
        };
        if self.job.stream
            && let Ok(rest) = self.stream.finish()
            && !rest.is_empty()
        {
            let _ = self.job.events.send(Event::Delta(rest));
        }
        let n = g.token_ids.len();
        let per_token = match (self.first, self.last) {
            (Some(a), Some(b)) if n > 1 => Some((b - a).as_secs_f64() / (n - 1) as f64),
            _ => None,
        };
        metrics.sequence(self.prompt_tokens, n, per_token);
        let ended = g.token_ids.last().is_some_and(|t| self.eos.contains(t));
        let _ = self.job.events.send(Event::Done(Finished {
            text: g.text,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: n,
            finish_reason: if !ended && n >= self.max_new_tokens {
                "length"
            } else {
                "stop"
            },
        }));
    }
}

/// Continuous batching over a step-level [`DecodeBatch`] (every generative model).
fn continuous(
    model: &Blip2,
    loaded: &Loaded,
    rx: Receiver<Job>,
    metrics: &Metrics,
    limits: &Limits,
    cache: &Mutex<Lru<Tensor>>,
) {
    let mut batch = model.decode_batch();
    let mut rows: HashMap<SeqId, Running> = HashMap::new();
    let mut next_id: SeqId = 0;
    let max = limits.max_batch.max(1);
    let mut closed = false;
    // Jobs taken but not joined yet, and the steps and time the oldest of them has waited.
    let mut waiting: Vec<Job> = Vec::new();
    let mut waited = 0;
    let mut waiting_since = Instant::now();
    // Seconds a join has recently stalled the batch per joining request (JoinWait::Auto).
    let mut join_share = JoinShare::default();
    loop {
        // Block only when nothing runs or waits; otherwise take what waits, up to the free
        // rows.
        if batch.is_empty() && waiting.is_empty() {
            if closed {
                return;
            }
            match rx.recv() {
                Ok(j) => waiting.push(j),
                Err(_) => return,
            }
        }
        while !closed && batch.len() + waiting.len() < max {
            match rx.try_recv() {
                Ok(j) => {
                    if waiting.is_empty() {
                        waiting_since = Instant::now();
                    }
                    waiting.push(j)
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => closed = true,
            }
        }
        waiting.retain(|j| !j.abandoned());
        if waiting.is_empty() {
            waited = 0;
        }
        // The jobs wait (the batch stepping on) until they fill the free rows or the oldest
        // has waited long enough (JoinWait), so that more of them share one vision pass
        // and one prefill.
        let join_now = batch.is_empty()
            || closed
            || batch.len() + waiting.len() >= max
            || match limits.join_wait {
                JoinWait::Steps(n) => waited >= n,
                JoinWait::Auto => waiting_since.elapsed().as_secs_f64() >= join_share.get(),
            };
        let jobs = if join_now {
            waited = 0;
            std::mem::take(&mut waiting)
        } else {
            waited += 1;
            Vec::new()
        };
        let mut joining = Vec::new();
        for job in jobs {
            match job {
                Job::Gen(g) if g.config.num_beams <= 1 => joining.push(g),
                // Beam search keeps several rows per request: alone, between two steps.
                Job::Gen(g) => {
                    metrics.batch(1);
                    guarded(metrics, 1, || generate(model, g, limits, cache, metrics));
                }
                Job::Embed(e) => guarded(metrics, 1, || embed(loaded, e, limits)),
                Job::Match(m) => guarded(metrics, 1, || match_job(loaded, m, limits)),
            }
        }
        if !joining.is_empty() {
            let was_running = !batch.is_empty();
            let (n, t) = (joining.len(), Instant::now());
            let joined = catch_unwind(AssertUnwindSafe(|| {
                join(
                    model,
                    &mut batch,
                    &mut rows,
                    &mut next_id,
                    joining,
                    limits,
                    cache,
                    metrics,
                    was_running,
                )
            }));
            if joined.is_err() {
                reset(model, &mut batch, &mut rows, "a join panicked");
                continue;
            }
            join_share.record(t.elapsed().as_secs_f64(), n);
        }
        // Rows whose client left free their place now.
        for id in batch.ids() {
            if rows.get(&id).is_none_or(|r| r.job.events.is_closed()) {
                let _ = batch.remove(id);
                rows.remove(&id);
                metrics.cancelled(1);
            }
        }
        if batch.is_empty() {
            metrics.running.store(0, Ordering::SeqCst);
            continue;
        }
        let n = batch.len();
        metrics.batch(n);
        metrics.running.store(n, Ordering::SeqCst);
        let t = Instant::now();
        let stepped = catch_unwind(AssertUnwindSafe(|| {
            batch.step(&mut |e| {
                if let Some(r) = rows.get_mut(&e.row) {
                    r.token(e, metrics);
                }
            })
        }));
        metrics.phase(Phase::Decode, t.elapsed().as_secs_f64());
        match stepped {
            Ok(Ok(ended)) => {
                metrics.decode_rate(n as f64 / t.elapsed().as_secs_f64().max(1e-9));
                for (id, g) in ended {
                    if let Some(r) = rows.remove(&id) {
                        r.finish(g, metrics);
                    }
                }
            }
            Ok(Err(e)) => {
                let e = from_model_error(&e);
                for (_, r) in rows.drain() {
                    let _ = r.job.events.send(Event::Error(e.clone()));
                }
            }
            Err(_) => reset(model, &mut batch, &mut rows, "a decode step panicked"),
        }
        metrics.running.store(batch.len(), Ordering::SeqCst);
    }
}

/// Seconds per joining request of the recent joins (vision pass, prefill and first
/// tokens over the number of requests joining): an exponential moving average, zero until
/// the first join, so that the first requests join at once.
#[derive(Default)]
struct JoinShare(Option<f64>);

impl JoinShare {
    /// Weight of the newest join: a few joins are enough to follow a change of load.
    const NEW: f64 = 0.25;

    fn record(&mut self, seconds: f64, requests: usize) {
        let share = seconds / requests.max(1) as f64;
        self.0 = Some(match self.0 {
            Some(old) => old + Self::NEW * (share - old),
            None => share,
        });
    }

    fn get(&self) -> f64 {
        self.0.unwrap_or(0.0)
    }
}

/// After a panic: the batch's state is unknown, so its requests fail (500) and a fresh
/// batch goes on.
fn reset<'m>(
    model: &'m Blip2,
    batch: &mut DecodeBatch<'m>,
    rows: &mut HashMap<SeqId, Running>,
    what: &str,
) {
    eprintln!(
        "{{\"level\":\"error\",\"msg\":\"{what}; its requests failed, the server goes on\"}}"
    );
    rows.clear();
    *batch = model.decode_batch();
}

/// New jobs join the running batch: features for all of them at once, then their prompts
/// prefilled together (one left-padded forward), each row with its own settings.
#[allow(clippy::too_many_arguments)]
fn join<'m>(
    model: &'m Blip2,
    batch: &mut DecodeBatch<'m>,
    rows: &mut HashMap<SeqId, Running<'m>>,
    next_id: &mut SeqId,
    jobs: Vec<GenJob>,
    limits: &Limits,
    cache: &Mutex<Lru<Tensor>>,
    metrics: &Metrics,
    was_running: bool,
) {
    let t = Instant::now();
    let Some((run, features)) = prepare(model, jobs, limits, cache, metrics) else {
        return;
    };
    metrics.phase(Phase::Vision, t.elapsed().as_secs_f64());
    let t = Instant::now();
    // (feature row, request, settings) of the jobs whose settings resolve.
    let mut new = Vec::with_capacity(run.len());
    for (r, (job, prompt_tokens)) in run.into_iter().enumerate() {
        let settings = match model.resolve_generation(&job.config) {
            Ok(s) => s,
            Err(e) => {
                let _ = job.events.send(Event::Error(from_model_error(&e)));
                continue;
            }
        };
        let eos = settings.eos_token_ids().to_vec();
        let id = *next_id;
        *next_id = next_id.wrapping_add(1);
        let row = Running {
            stream: TextStream::new(&model.tokenizer, &eos),
            prompt_tokens,
            max_new_tokens: settings.max_new_tokens(),
            eos,
            job,
            first: None,
            last: None,
        };
        new.push((id, r, row, settings));
    }
    if new.is_empty() {
        return;
    }
    let joins: Vec<Join> = new
        .iter()
        .map(|(id, r, row, settings)| Join {
            id: *id,
            row: *r,
            prompt: row.job.prompt.as_deref(),
            settings,
        })
        .collect();
    let mut firsts: Vec<TokenEvent> = Vec::with_capacity(joins.len());
    let added = batch.add_many(&features, &joins, &mut |e| firsts.push(*e));
    drop(joins);
    metrics.prefill(new.len(), t.elapsed().as_secs_f64());
    let mut new: HashMap<SeqId, Running> =
        new.into_iter().map(|(id, _, row, _)| (id, row)).collect();
    for e in &firsts {
        if let Some(row) = new.get_mut(&e.row) {
            row.token(e, metrics);
        }
    }
    let added = match added {
        Ok(a) => a,
        Err(e) => {
            let e = from_model_error(&e);
            for (_, row) in new {
                let _ = row.job.events.send(Event::Error(e.clone()));
            }
            return;
        }
    };
    for (id, res) in added {
        let Some(row) = new.remove(&id) else {
            continue;
        };
        match res {
            Ok(None) => {
                if was_running {
                    metrics.joined_running();
                }
                rows.insert(id, row);
            }
            Ok(Some(g)) => row.finish(Ok(g), metrics),
            Err(e) => row.finish(Err(e), metrics),
        }
    }
}

/// Runs `f` as `n` running requests; a panic is reported and the loop goes on (the jobs
/// it owned are dropped, so their clients get a 500).
fn guarded(metrics: &Metrics, n: usize, f: impl FnOnce()) {
    metrics.running.store(n, Ordering::SeqCst);
    if catch_unwind(AssertUnwindSafe(f)).is_err() {
        eprintln!(
            "{{\"level\":\"error\",\"msg\":\"a batch panicked; its requests failed, the server goes on\"}}"
        );
    }
    metrics.running.store(0, Ordering::SeqCst);
}

fn fail(jobs: Vec<GenJob>, e: &ApiError) {
    for j in jobs {
        let _ = j.events.send(Event::Error(e.clone()));
    }
}

/// The jobs' prompts checked and their image features (cached ones, and the missing
/// images encoded together), as one features batch with a row per job still running; the
/// jobs that failed on the way are answered with their error.
fn prepare(
    model: &Blip2,
    jobs: Vec<GenJob>,
    limits: &Limits,
    cache: &Mutex<Lru<Tensor>>,
    metrics: &Metrics,
) -> Option<(Vec<(GenJob, usize)>, ImageFeatures)> {
    // Prompt lengths, within the limit.
    let mut rows = Vec::with_capacity(jobs.len());
    for j in jobs {
        match model.prompt_ids(j.prompt.as_deref()) {
            Ok(ids) if ids.len() > limits.max_prompt_tokens => {
                let e = ApiError::invalid(
                    "prompt_too_long",
                    format!(
                        "the prompt has {} tokens (image tokens included), above the server's limit of {} (--max-prompt-tokens)",
                        ids.len(),
                        limits.max_prompt_tokens
                    ),
                );
                let _ = j.events.send(Event::Error(e));
            }
            Ok(ids) => rows.push((j, ids.len())),
            Err(e) => {
                let _ = j.events.send(Event::Error(from_model_error(&e)));
            }
        }
    }
    // Features: cached ones, and the missing images encoded together.
    let mut feats: Vec<Option<Tensor>> = {
        let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
        rows.iter().map(|(j, _)| c.get(&j.key)).collect()
    };
    let hits = feats.iter().filter(|f| f.is_some()).count();
    let mut missing: Vec<ImageKey> = Vec::new();
    let mut images: Vec<DynamicImage> = Vec::new();
    let mut bad: Vec<(ImageKey, ApiError)> = Vec::new();
    for (i, (j, _)) in rows.iter().enumerate() {
        if feats[i].is_some() || missing.contains(&j.key) || bad.iter().any(|(k, _)| *k == j.key) {
            continue;
        }
        match decode_image(&j.image, limits.max_image_pixels) {
            Ok(img) => {
                missing.push(j.key);
                images.push(img);
            }
            Err(e) => bad.push((j.key, e)),
        }
    }
    if !images.is_empty() {
        let refs: Vec<&DynamicImage> = images.iter().collect();
        // What is cached per image: the projected queries, or InstructBLIP's ViT output
        // (its Q-Former reads each request's prompt).
        let projected = match model.image_features(&refs) {
            Ok(f) => model.reusable_features(f),
            Err(e) => {
                let e = from_model_error(&e);
                fail(rows.into_iter().map(|(j, _)| j).collect(), &e);
                return None;
            }
        };
        let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
        for (m, key) in missing.iter().enumerate() {
            let one = match blip2::engine::ops::narrow(&projected, 0, m, 1) {
                Ok(t) => t,
                Err(e) => {
                    let e = ApiError::internal(e.to_string());
                    fail(rows.into_iter().map(|(j, _)| j).collect(), &e);
                    return None;
                }
            };
            c.insert(*key, one.clone());
            for (i, (j, _)) in rows.iter().enumerate() {
                if j.key == *key {
                    feats[i] = Some(one.clone());
                }
            }
        }
    }
    metrics.images(images.len(), hits);
    // Rows whose image could not be decoded leave here.
    let mut run = Vec::with_capacity(rows.len());
    let mut row_feats = Vec::with_capacity(rows.len());
    for ((j, n), f) in rows.into_iter().zip(feats) {
        match f {
            Some(f) => {
                run.push((j, n));
                row_feats.push(f);
            }
            None => {
                let e = bad
                    .iter()
                    .find(|(k, _)| *k == j.key)
                    .map(|(_, e)| e.clone())
                    .unwrap_or_else(|| ApiError::internal("image features missing"));
                let _ = j.events.send(Event::Error(e));
            }
        }
    }
    if run.is_empty() {
        return None;
    }
    let projected = if row_feats.len() == 1 {
        row_feats.pop().expect("one row")
    } else {
        let refs: Vec<&Tensor> = row_feats.iter().collect();
        match blip2::engine::ops::concat(&refs, 0) {
            Ok(t) => t,
            Err(e) => {
                let e = ApiError::internal(e.to_string());
                fail(run.into_iter().map(|(j, _)| j).collect(), &e);
                return None;
            }
        }
    };
    let features = match model.features_from_reusable(projected) {
        Ok(f) => f,
        Err(e) => {
            let e = from_model_error(&e);
            fail(run.into_iter().map(|(j, _)| j).collect(), &e);
            return None;
        }
    };
    Some((run, features))
}

/// One beam-search job, decoded alone between two steps of the continuous batch.
fn generate(
    model: &Blip2,
    job: GenJob,
    limits: &Limits,
    cache: &Mutex<Lru<Tensor>>,
    metrics: &Metrics,
) {
    let settings = match model.resolve_generation(&job.config) {
        Ok(s) => s,
        Err(e) => return fail(vec![job], &from_model_error(&e)),
    };
    let Some((run, features)) = prepare(model, vec![job], limits, cache, metrics) else {
        return;
    };
    let prompts: Vec<Option<&str>> = run.iter().map(|(j, _)| j.prompt.as_deref()).collect();
    let eos = settings.eos_token_ids().to_vec();
    let mut streams: Vec<TextStream> = run
        .iter()
        .map(|_| TextStream::new(&model.tokenizer, &eos))
        .collect();
    let mut first: Vec<Option<Instant>> = vec![None; run.len()];
    let mut last: Vec<Option<Instant>> = vec![None; run.len()];
    let t = Instant::now();
    // The client gone: stop at the next step.
    let all_gone = || run.iter().all(|(j, _)| j.events.is_closed());
    let out = model.generate_from_features_cancellable(
        &features,
        &prompts,
        &settings,
        &mut |e| {
            let now = Instant::now();
            let r = e.row;
            if first[r].is_none() {
                first[r] = Some(now);
                metrics.first_token((now - run[r].0.admitted).as_secs_f64());
            }
            last[r] = Some(now);
            if run[r].0.stream
                && let Ok(d) = streams[r].push(e.token_id)
                && !d.is_empty()
            {
                let _ = run[r].0.events.send(Event::Delta(d));
            }
        },
        &all_gone,
    );
    let gens = match out {
        Ok(g) => g,
        Err(blip2::Error::Cancelled) => {
            metrics.cancelled(run.len());
            return;
        }
        Err(e) => {
            let e = from_model_error(&e);
            return fail(run.into_iter().map(|(j, _)| j).collect(), &e);
        }
    };
    let took = t.elapsed().as_secs_f64();
    let total: usize = gens.iter().map(|g| g.token_ids.len()).sum();
    if took > 0.0 {
        metrics.decode_rate(total as f64 / took);
    }
    for (r, ((j, prompt_tokens), g)) in run.into_iter().zip(gens).enumerate() {
        if j.stream
            && let Ok(rest) = streams[r].finish()
            && !rest.is_empty()
        {
            let _ = j.events.send(Event::Delta(rest));
        }
        let n = g.token_ids.len();
        let per_token = match (first[r], last[r]) {
            (Some(a), Some(b)) if n > 1 => Some((b - a).as_secs_f64() / (n - 1) as f64),
            _ => None,
        };
        metrics.sequence(prompt_tokens, n, per_token);
        let ended = g.token_ids.last().is_some_and(|t| eos.contains(t));
        let _ = j.events.send(Event::Done(Finished {
            text: g.text,
            prompt_tokens,
            completion_tokens: n,
            finish_reason: if !ended && n >= settings.max_new_tokens() {
                "length"
            } else {
                "stop"
            },
        }));
    }
}

fn embed(model: &Loaded, job: EmbedJob, limits: &Limits) {
    let Loaded::Retrieval(m) = model else {
        let _ = job.reply.send(Err(ApiError::unsupported(
            "embeddings need a retrieval checkpoint",
        )));
        return;
    };
    let res = (|| -> Result<Embeddings, ApiError> {
        let mut texts = Vec::new();
        let mut images = Vec::new();
        for x in &job.inputs {
            match x {
                EmbedItem::Text(t) => texts.push(t.as_str()),
                EmbedItem::Image(b) => images.push(decode_image(b, limits.max_image_pixels)?),
            }
        }
        let refs: Vec<&DynamicImage> = images.iter().collect();
        let mut imgs = m
            .image_embeddings(&refs)
            .map_err(|e| from_model_error(&e))?
            .into_iter();
        let mut txts = if texts.is_empty() {
            Vec::new().into_iter()
        } else {
            m.text_embeddings(&texts)
                .map_err(|e| from_model_error(&e))?
                .into_iter()
        };
        job.inputs
            .iter()
            .map(|x| {
                match x {
                    EmbedItem::Text(_) => txts.next().map(|t| (t.into_vec(), 1)),
                    EmbedItem::Image(_) => imgs.next().map(|i| {
                        let q = i.num_query();
                        (i.into_vec(), q)
                    }),
                }
                .ok_or_else(|| ApiError::internal("embedding count mismatch"))
            })
            .collect()
    })();
    let _ = job.reply.send(res);
}

fn match_job(model: &Loaded, job: MatchJob, limits: &Limits) {
    let Loaded::Retrieval(m) = model else {
        let _ = job.reply.send(Err(ApiError::unsupported(
            "/v1/match needs a retrieval checkpoint",
        )));
        return;
    };
    let res = decode_image(&job.image, limits.max_image_pixels).and_then(|img| {
        m.match_scores(&img, &job.texts)
            .map_err(|e| from_model_error(&e))
    });
    let _ = job.reply.send(res);
}

#[cfg(test)]
mod tests {
    use super::JoinShare;

    #[test]
    fn join_share_starts_at_zero_and_follows_the_cost_per_request() {
        let mut s = JoinShare::default();
        assert_eq!(s.get(), 0.0, "the first requests join at once");
        s.record(0.4, 4);
        assert!((s.get() - 0.1).abs() < 1e-12, "the first join sets it");
        s.record(0.2, 1);
        assert!((s.get() - (0.1 + 0.25 * 0.1)).abs() < 1e-12);
        s.record(0.0, 0);
        assert!(
            s.get() < 0.125 && s.get() > 0.0,
            "no requests counts as one"
        );
    }
}
