//! `blip2 serve`: an OpenAI-compatible HTTP server (axum on tokio) in front of one model
//! worker thread. Files: `api` (request JSON and its conversion into prompts and
//! settings), `routes` (endpoints, middleware, SSE), `scheduler` (the worker and its
//! batching), `cache` (query features by image hash), `limits` (limits and OpenAI-style
//! errors), `metrics` (Prometheus text). docs/serve.md describes the API.

mod cache;
mod metrics;
mod routes;
mod scheduler;

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::Context;
use blip2::model::Blip2Config;
use blip2::{Blip2, Blip2Retrieval, LoadOptions};
use clap::Args;

use crate::cli::common::{AdapterArgs, DTypeArg, DeviceArg, pick_device_explained};
// The request JSON and limits live in the library (`blip2::serve_api`) so that the fuzz
// targets parse requests exactly as the server does.
use blip2::serve_api::{api, limits};
use limits::{ApiError, JoinWait, Limits};
use metrics::Metrics;
use scheduler::{Job, Loaded, Slot};

#[derive(Args, Clone, Debug)]
pub struct ServeOpts {
    /// Hugging Face BLIP-2 checkpoint directory (captioning/VQA or retrieval). Without it
    /// (and without --preset) the demo model built into the binary is served.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Serve a model of this size with random weights instead (tiny, opt-2.7b, opt-6.7b,
    /// flan-t5-xl, flan-t5-xxl): for load tests, as `blip2 bench` does.
    #[arg(long, conflicts_with = "model")]
    pub preset: Option<String>,
    /// Address to bind; the default accepts connections from this machine only.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to bind (0: any free port; the address is printed on stdout).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    #[arg(long, value_enum, default_value_t = DTypeArg::F32)]
    pub dtype: DTypeArg,
    #[command(flatten)]
    pub adapters: AdapterArgs,
    /// Requests generating together in one batch.
    #[arg(long, default_value_t = 8)]
    pub max_batch: usize,
    /// Requests that may wait beyond the running batch; more are refused with 503.
    #[arg(long, default_value_t = 64)]
    pub max_queue: usize,
    /// Require `Authorization: Bearer KEY` on /v1/* (default: the BLIP2_API_KEY
    /// environment variable if set, else no key).
    #[arg(long)]
    pub api_key: Option<String>,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 20 << 20)]
    pub max_body_bytes: usize,
    /// Largest image in pixels (width × height), checked before decoding.
    #[arg(long, default_value_t = 40_000_000)]
    pub max_image_pixels: u64,
    /// Largest max_tokens a request may ask for.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Longest prompt in tokens (the image's query tokens included).
    #[arg(long, default_value_t = 512)]
    pub max_prompt_tokens: usize,
    /// How long a request may wait before joining a running batch, so that requests
    /// arriving meanwhile share its vision and prefill passes: `auto` (as long as a join
    /// has recently cost per joining request) or a number of decode steps (0: the next
    /// step). The wait ends early when the waiting requests fill the free rows.
    #[arg(long, default_value = "auto")]
    pub join_wait_steps: JoinWait,
    /// Images whose query features are kept (LRU by image hash; 0 turns the cache off).
    #[arg(long, default_value_t = 256)]
    pub cache_images: usize,
    /// The model id reported by /v1/models (default: the directory's name, or
    /// blip2-demo / random-PRESET).
    #[arg(long)]
    pub model_id: Option<String>,
    /// No request log lines on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}

/// What /v1/models says about the loaded model.
pub struct ModelInfo {
    pub id: String,
    pub family: String,
    pub generates: bool,
    pub capabilities: Vec<&'static str>,
    pub device: String,
    pub dtype: String,
}

pub struct AppState {
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
    /// Set once the model is loaded (/health turns ready).
    pub info: OnceLock<ModelInfo>,
    tx: Mutex<Option<Sender<Job>>>,
    pub api_key: Option<String>,
    pub started: u64,
    pub next_id: AtomicU64,
    pub quiet_logs: bool,
}

impl AppState {
    pub fn ready(&self) -> Result<&ModelInfo, ApiError> {
        self.info.get().ok_or_else(ApiError::loading)
    }

    /// A place for one request, or 503 when `max_batch + max_queue` are taken.
    pub fn admit(&self) -> Result<Slot, ApiError> {
        let cap = self.limits.max_batch + self.limits.max_queue;
        let m = &self.metrics.in_flight;
        let mut cur = m.load(Ordering::SeqCst);
        loop {
            if cur >= cap {
                return Err(ApiError::queue_full(cap));
            }
            match m.compare_exchange(cur, cur + 1, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return Ok(Slot(self.metrics.clone())),
                Err(now) => cur = now,
            }
        }
    }

    pub fn submit(&self, job: Job) -> Result<(), ApiError> {
        let g = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        match g.as_ref() {
            Some(tx) => tx
                .send(job)
                .map_err(|_| ApiError::internal("the model worker has stopped")),
            None => Err(ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "server_overloaded",
                Some("shutting_down"),
                "the server is shutting down",
            )),
        }
    }
}

/// Loads the model of `o` (demo, directory or preset) and describes it.
fn load(o: &ServeOpts) -> anyhow::Result<(Loaded, ModelInfo)> {
    let (device, why) = pick_device_explained(o.device)?;
    let dinfo = device.info();
    eprintln!("device: {} [{}] ({why})", dinfo.name, dinfo.backend);
    let opts = LoadOptions {
        device: device.clone(),
        dtype: o.dtype.dtype(),
        progress: None,
        adapters: o.adapters.specs()?,
    };
    let dtype = format!("{:?}", o.dtype).to_lowercase();
    let gen_caps = vec!["caption", "vqa", "chat"];
    let family = |m: &Blip2| {
        m.config
            .text_config
            .as_ref()
            .map_or("blip2".to_string(), |t| format!("blip2-{}", t.model_type()))
    };
    let (loaded, id, family, generates) = if let Some(p) = &o.preset {
        anyhow::ensure!(
            o.adapters.dirs.is_empty(),
            "--adapter merges into a checkpoint's weights; --preset serves random weights"
        );
        let config = Blip2Config::preset(p)?;
        let m = Blip2::random(config, &device, o.dtype.dtype(), 0)?;
        let f = family(&m);
        (Loaded::Gen(Box::new(m)), format!("random-{p}"), f, true)
    } else if let Some(dir) = &o.model {
        let name = dir
            .file_name()
            .map_or("blip2".to_string(), |n| n.to_string_lossy().into_owned());
        let cfg =
            Blip2Config::from_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
        if cfg.is_retrieval() {
            let m = Blip2Retrieval::load(dir, opts)
                .with_context(|| format!("loading {}", dir.display()))?;
            (
                Loaded::Retrieval(Box::new(m)),
                name,
                "blip2-retrieval".to_string(),
                false,
            )
        } else {
            let m = Blip2::load(dir, opts).with_context(|| format!("loading {}", dir.display()))?;
            let f = family(&m);
            (Loaded::Gen(Box::new(m)), name, f, true)
        }
    } else {
        let m = blip2::demo::load_demo(opts).context("loading the embedded demo model")?;
        let f = family(&m);
        (Loaded::Gen(Box::new(m)), "blip2-demo".to_string(), f, true)
    };
    let info = ModelInfo {
        id: o.model_id.clone().unwrap_or(id),
        family,
        generates,
        capabilities: if generates {
            gen_caps
        } else {
            vec!["embeddings", "match"]
        },
        device: dinfo.name.clone(),
        dtype,
    };
    Ok((loaded, info))
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!(
        "{{\"level\":\"info\",\"msg\":\"shutting down: no new connections; draining in-flight requests\"}}"
    );
}

/// Binds, prints `listening on http://ADDR` as the first line of stdout, loads the model on
/// the worker thread (/health says 503 until it is ready), serves until SIGTERM or Ctrl-C,
/// drains the requests in flight and returns.
pub fn serve(o: &ServeOpts) -> anyhow::Result<()> {
    anyhow::ensure!(o.max_batch >= 1, "--max-batch must be at least 1");
    #[cfg(unix)]
    // SAFETY: no other thread exists yet. A server must not die of a write to a closed
    // socket or pipe; the CLI's other commands restore the default action instead.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let limits = Limits {
        max_body_bytes: o.max_body_bytes,
        max_image_pixels: o.max_image_pixels,
        max_tokens: o.max_tokens,
        max_prompt_tokens: o.max_prompt_tokens,
        max_batch: o.max_batch,
        max_queue: o.max_queue,
        join_wait: o.join_wait_steps,
    };
    let api_key = o
        .api_key
        .clone()
        .or_else(|| std::env::var("BLIP2_API_KEY").ok())
        .filter(|k| !k.is_empty());
    let (tx, rx) = std::sync::mpsc::channel::<Job>();
    let state = Arc::new(AppState {
        limits: limits.clone(),
        metrics: Arc::new(Metrics::default()),
        info: OnceLock::new(),
        tx: Mutex::new(Some(tx)),
        api_key,
        started: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        next_id: AtomicU64::new(1),
        quiet_logs: o.quiet,
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let listener = rt
        .block_on(tokio::net::TcpListener::bind((o.host.as_str(), o.port)))
        .with_context(|| format!("binding {}:{}", o.host, o.port))?;
    let addr = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on http://{addr}");
        let _ = out.flush();
    }
    // The worker: loads the model, then runs the batching loop until the channel closes.
    let worker = {
        let state = state.clone();
        let o = o.clone();
        std::thread::Builder::new()
            .name("blip2-model".into())
            .spawn(move || {
                let (model, info) = match load(&o) {
                    Ok(x) => x,
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        std::process::exit(1);
                    }
                };
                eprintln!(
                    "{}",
                    serde_json::json!({"level": "info", "msg": "model ready", "model": info.id, "family": info.family, "device": info.device})
                );
                let metrics = state.metrics.clone();
                let limits = state.limits.clone();
                let _ = state.info.set(info);
                drop(state);
                scheduler::run(model, rx, metrics, limits, o.cache_images);
            })
            .context("starting the model thread")?
    };
    let app = routes::router(state.clone());
    rt.block_on(async {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await
    })
    .context("serving")?;
    // Every connection has closed: no handler can submit any more. Closing the channel
    // ends the worker once it has finished what it holds.
    state.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
    worker
        .join()
        .map_err(|_| anyhow::anyhow!("the model thread panicked"))?;
    eprintln!("{{\"level\":\"info\",\"msg\":\"stopped\"}}");
    Ok(())
}
