//! Server metrics in the Prometheus text exposition format (`GET /metrics`).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A cumulative histogram with fixed upper bounds.
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        for (b, c) in self.bounds.iter().zip(&mut self.counts) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

const SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const BATCH: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

struct Inner {
    /// (endpoint, status) -> count
    requests: BTreeMap<(String, u16), u64>,
    batch_size: Histogram,
    ttft: Histogram,
    per_token: Histogram,
    request_seconds: Histogram,
    prompt_tokens: u64,
    generated_tokens: u64,
    images_encoded: u64,
    cache_hits: u64,
    cache_misses: u64,
    cancelled: u64,
    /// Requests that joined a batch already decoding (continuous batching).
    joined_running: u64,
    /// Tokens per second of the last batch's decode (all rows together).
    last_tokens_per_second: f64,
    /// Worker seconds per phase of continuous batching, in [`Phase`] order.
    phase_seconds: [f64; 3],
    prefill_batch: Histogram,
}

/// What the continuous-batching worker spends its time on (`blip2_worker_seconds_total`).
#[derive(Clone, Copy)]
pub enum Phase {
    /// Image decoding, preprocessing, ViT, Q-Former and projection of joining requests.
    Vision = 0,
    /// The joining prompts' prefill and first tokens.
    Prefill = 1,
    /// Decode steps of the running rows.
    Decode = 2,
}

const PHASES: [&str; 3] = ["vision", "prefill", "decode"];

pub struct Metrics {
    inner: Mutex<Inner>,
    /// Admitted requests not yet finished (running or waiting).
    pub in_flight: AtomicUsize,
    /// Requests taken by the worker and running now.
    pub running: AtomicUsize,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            inner: Mutex::new(Inner {
                requests: BTreeMap::new(),
                batch_size: Histogram::new(BATCH),
                ttft: Histogram::new(SECONDS),
                per_token: Histogram::new(SECONDS),
                request_seconds: Histogram::new(SECONDS),
                prompt_tokens: 0,
                generated_tokens: 0,
                images_encoded: 0,
                cache_hits: 0,
                cache_misses: 0,
                cancelled: 0,
                joined_running: 0,
                last_tokens_per_second: 0.0,
                phase_seconds: [0.0; 3],
                prefill_batch: Histogram::new(BATCH),
            }),
            in_flight: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
        }
    }
}

impl Metrics {
    fn with(&self, f: impl FnOnce(&mut Inner)) {
        // A panic while the lock was held leaves plain counters: still usable.
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    pub fn request(&self, endpoint: &str, status: u16, seconds: f64) {
        self.with(|m| {
            *m.requests
                .entry((endpoint.to_string(), status))
                .or_default() += 1;
            m.request_seconds.observe(seconds);
        })
    }

    pub fn batch(&self, size: usize) {
        self.with(|m| m.batch_size.observe(size as f64))
    }

    pub fn first_token(&self, seconds: f64) {
        self.with(|m| m.ttft.observe(seconds))
    }

    /// One finished sequence: its prompt and new tokens, and the mean time per new token
    /// after the first.
    pub fn sequence(&self, prompt_tokens: usize, new_tokens: usize, per_token: Option<f64>) {
        self.with(|m| {
            m.prompt_tokens += prompt_tokens as u64;
            m.generated_tokens += new_tokens as u64;
            if let Some(s) = per_token {
                m.per_token.observe(s);
            }
        })
    }

    /// Requests whose batch was stopped because every client had gone.
    pub fn cancelled(&self, n: usize) {
        self.with(|m| m.cancelled += n as u64)
    }

    pub fn joined_running(&self) {
        self.with(|m| m.joined_running += 1)
    }

    pub fn decode_rate(&self, tokens_per_second: f64) {
        self.with(|m| m.last_tokens_per_second = tokens_per_second)
    }

    pub fn phase(&self, phase: Phase, seconds: f64) {
        self.with(|m| m.phase_seconds[phase as usize] += seconds)
    }

    /// One joint prefill of `rows` joining prompts that took `seconds`.
    pub fn prefill(&self, rows: usize, seconds: f64) {
        self.with(|m| {
            m.phase_seconds[Phase::Prefill as usize] += seconds;
            m.prefill_batch.observe(rows as f64);
        })
    }

    pub fn images(&self, encoded: usize, hits: usize) {
        self.with(|m| {
            m.images_encoded += encoded as u64;
            m.cache_misses += encoded as u64;
            m.cache_hits += hits as u64;
        })
    }

    pub fn render(&self, max_queue: usize) -> String {
        let mut out = String::new();
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        let running = self.running.load(Ordering::Relaxed);
        self.with(|m| {
            out.push_str("# HELP blip2_requests_total HTTP requests answered, by endpoint and status.\n# TYPE blip2_requests_total counter\n");
            for ((ep, st), n) in &m.requests {
                let _ = writeln!(out, "blip2_requests_total{{endpoint=\"{ep}\",status=\"{st}\"}} {n}");
            }
            let _ = writeln!(
                out,
                "# HELP blip2_queue_depth Requests admitted and waiting for the model.\n# TYPE blip2_queue_depth gauge\nblip2_queue_depth {}",
                in_flight.saturating_sub(running)
            );
            let _ = writeln!(
                out,
                "# HELP blip2_running Requests in the batch running now.\n# TYPE blip2_running gauge\nblip2_running {running}"
            );
            let _ = writeln!(
                out,
                "# HELP blip2_queue_capacity Waiting places beyond the running batch (--max-queue).\n# TYPE blip2_queue_capacity gauge\nblip2_queue_capacity {max_queue}"
            );
            m.batch_size.render(&mut out, "blip2_batch_size", "Rows per decode step (continuous batching; T5 and beam search: requests per batch).");
            m.prefill_batch.render(&mut out, "blip2_prefill_batch_size", "Prompts prefilled together when joining a running batch (continuous batching).");
            m.ttft.render(&mut out, "blip2_time_to_first_token_seconds", "From admission to the first new token.");
            m.per_token.render(&mut out, "blip2_time_per_output_token_seconds", "Mean time per new token after the first, per sequence.");
            m.request_seconds.render(&mut out, "blip2_request_duration_seconds", "From the request to the response's head (streams: its start).");
            let counters = [
                ("blip2_prompt_tokens_total", "Prompt tokens processed (image tokens included).", m.prompt_tokens),
                ("blip2_generation_tokens_total", "New tokens generated.", m.generated_tokens),
                ("blip2_images_encoded_total", "Images run through the vision tower and Q-Former.", m.images_encoded),
                ("blip2_feature_cache_hits_total", "Images whose query features came from the cache.", m.cache_hits),
                ("blip2_feature_cache_misses_total", "Images whose query features were computed.", m.cache_misses),
                ("blip2_cancelled_total", "Requests stopped mid-generation because their clients disconnected.", m.cancelled),
                ("blip2_joined_running_total", "Requests that joined a batch already decoding, between two of its steps.", m.joined_running),
            ];
            for (name, help, v) in counters {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
            }
            out.push_str("# HELP blip2_worker_seconds_total Model-thread seconds of continuous batching, by phase (vision: decoding and encoding joining images; prefill: joining prompts; decode: steps).\n# TYPE blip2_worker_seconds_total counter\n");
            for (name, v) in PHASES.iter().zip(m.phase_seconds) {
                let _ = writeln!(out, "blip2_worker_seconds_total{{phase=\"{name}\"}} {v}");
            }
            let _ = writeln!(
                out,
                "# HELP blip2_tokens_per_second Decode throughput of the last decode step or batch (all sequences).\n# TYPE blip2_tokens_per_second gauge\nblip2_tokens_per_second {}",
                m.last_tokens_per_second
            );
        });
        out
    }
}
