//! HTTP routes, the API-key and logging middleware, and the streaming of generation events
//! as server-sent events.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as Sse, KeepAlive};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tower_http::catch_panic::CatchPanicLayer;

use super::AppState;
use super::api::{
    ChatRequest, CompletionRequest, EmbedInput, EmbeddingRequest, GenRequest, MatchRequest,
};
use super::cache::image_key;
use super::limits::ApiError;
use super::scheduler::{EmbedItem, EmbedJob, Event, Finished, GenJob, Job, MatchJob, check_image};

type S = Arc<AppState>;

pub fn router(state: S) -> Router {
    let limit = state.limits.max_body_bytes;
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model_by_id))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/match", post(match_texts))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .layer(middleware::from_fn_with_state(state.clone(), log_and_count))
        .layer(CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| {
                ApiError::internal("the request handler panicked").into_response()
            },
        ))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The series name of a path, for metrics (unknown paths share one name).
fn endpoint(path: &str) -> &'static str {
    match path {
        "/health" => "/health",
        "/metrics" => "/metrics",
        "/v1/models" => "/v1/models",
        "/v1/chat/completions" => "/v1/chat/completions",
        "/v1/completions" => "/v1/completions",
        "/v1/embeddings" => "/v1/embeddings",
        "/v1/match" => "/v1/match",
        _ => "other",
    }
}

/// One JSON line per request on stderr, and the request counters.
async fn log_and_count(State(s): State<S>, req: Request, next: Next) -> Response {
    let t = Instant::now();
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let id = s.next_id.fetch_add(1, Ordering::Relaxed);
    let resp = next.run(req).await;
    let secs = t.elapsed().as_secs_f64();
    let status = resp.status().as_u16();
    s.metrics.request(endpoint(&path), status, secs);
    if !s.quiet_logs {
        let line = json!({
            "ts": unix_now(),
            "level": if status >= 500 { "error" } else { "info" },
            "request_id": id,
            "method": method,
            "path": path,
            "status": status,
            "ms": (secs * 1e6).round() / 1e3,
            "queue": s.metrics.in_flight.load(Ordering::Relaxed),
        });
        eprintln!("{line}");
    }
    resp
}

/// With `--api-key`, `/v1/*` needs `Authorization: Bearer KEY`; /health and /metrics stay open.
async fn auth(State(s): State<S>, req: Request, next: Next) -> Response {
    if let Some(key) = &s.api_key
        && req.uri().path().starts_with("/v1/")
    {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !same(given.trim().as_bytes(), key.as_bytes()) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

/// Comparison in time independent of where the strings differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

async fn health(State(s): State<S>) -> Response {
    match s.info.get() {
        Some(i) => Json(json!({"status": "ok", "model": i.id})).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "loading"})),
        )
            .into_response(),
    }
}

async fn metrics(State(s): State<S>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(s.limits.max_queue),
    )
        .into_response()
}

async fn models(State(s): State<S>) -> Result<Response, ApiError> {
    Ok(Json(json!({"object": "list", "data": [model_object(&s)?]})).into_response())
}

/// `GET /v1/models/{id}`: the model object when `id` is the served model's, else 404.
async fn model_by_id(State(s): State<S>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let m = model_object(&s)?;
    if m["id"] != id.as_str() {
        return Err(ApiError::not_found(format!(
            "no model '{id}' here (this server serves '{}')",
            m["id"].as_str().unwrap_or("")
        )));
    }
    Ok(Json(m).into_response())
}

fn model_object(s: &AppState) -> Result<Value, ApiError> {
    let i = s.ready()?;
    Ok(json!({
            "id": i.id,
            "object": "model",
            "created": s.started,
            "owned_by": "blip2",
            "family": i.family,
            "capabilities": i.capabilities,
            "device": i.device,
            "dtype": i.dtype,
            "max_tokens": s.limits.max_tokens,
            "max_prompt_tokens": s.limits.max_prompt_tokens,
    }))
}

/// The body as JSON of type `T`: 413 above the limit, 400 when it does not parse.
fn parse<T: serde::de::DeserializeOwned>(
    s: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(s.limits.max_body_bytes)
        } else {
            ApiError::invalid("invalid_body", r.body_text())
        }
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::invalid("invalid_json", format!("invalid request body: {e}")))
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Completion,
}

async fn chat(
    State(s): State<S>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: ChatRequest = parse(&s, body)?;
    let g = req.into_gen(&s.limits)?;
    generate(s, g, Kind::Chat).await
}

async fn completions(
    State(s): State<S>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: CompletionRequest = parse(&s, body)?;
    let g = req.into_gen(&s.limits)?;
    generate(s, g, Kind::Completion).await
}

/// The earliest position where one of `stops` begins in `text`.
fn stop_at(text: &str, stops: &[String]) -> Option<usize> {
    stops.iter().filter_map(|s| text.find(s.as_str())).min()
}

/// Bytes at the end of `text` that could begin a stop sequence (held back while streaming).
fn stop_prefix_len(text: &str, stops: &[String]) -> usize {
    let longest = stops.iter().map(String::len).max().unwrap_or(0);
    (1..longest.min(text.len() + 1))
        .rev()
        .find(|&k| {
            let at = text.len() - k;
            text.is_char_boundary(at) && stops.iter().any(|s| s.starts_with(&text[at..]))
        })
        .unwrap_or(0)
}

async fn generate(s: S, g: GenRequest, kind: Kind) -> Result<Response, ApiError> {
    let info = s.ready()?;
    if !info.generates {
        return Err(ApiError::unsupported(format!(
            "{} is a retrieval checkpoint: it embeds and matches (/v1/embeddings, /v1/match), it does not generate text",
            info.id
        )));
    }
    check_image(&g.image, s.limits.max_image_pixels)?;
    let model = info.id.clone();
    let (tx, rx) = mpsc::unbounded_channel();
    let slot = s.admit()?;
    let GenRequest {
        image,
        prompt,
        config,
        stop,
        stream,
        include_usage,
    } = g;
    s.submit(Job::Gen(GenJob {
        key: image_key(&image),
        image,
        prompt,
        config,
        events: tx,
        stream,
        admitted: Instant::now(),
        _slot: slot,
    }))?;
    let id = format!(
        "{}-{:x}",
        if kind == Kind::Chat {
            "chatcmpl"
        } else {
            "cmpl"
        },
        s.next_id.fetch_add(1, Ordering::Relaxed)
    );
    let created = unix_now();
    if stream {
        return Ok(stream_response(
            rx,
            stop,
            include_usage,
            kind,
            id,
            model,
            created,
        ));
    }
    let f = collect(rx).await?;
    let (text, reason) = match stop_at(&f.text, &stop) {
        Some(p) => (f.text[..p].to_string(), "stop"),
        None => (f.text.clone(), f.finish_reason),
    };
    let choice = match kind {
        Kind::Chat => json!({
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": null,
            "finish_reason": reason,
        }),
        Kind::Completion => {
            json!({"index": 0, "text": text, "logprobs": null, "finish_reason": reason})
        }
    };
    Ok(Json(json!({
        "id": id,
        "object": if kind == Kind::Chat { "chat.completion" } else { "text_completion" },
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": usage(&f),
    }))
    .into_response())
}

fn usage(f: &Finished) -> Value {
    json!({
        "prompt_tokens": f.prompt_tokens,
        "completion_tokens": f.completion_tokens,
        "total_tokens": f.prompt_tokens + f.completion_tokens,
    })
}

/// Waits for the end of a generation (deltas are not needed: `Done` has the whole text).
async fn collect(mut rx: mpsc::UnboundedReceiver<Event>) -> Result<Finished, ApiError> {
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Delta(_) => {}
            Event::Done(f) => return Ok(f),
            Event::Error(e) => return Err(e),
        }
    }
    Err(ApiError::internal(
        "the model worker dropped the request (see the server log)",
    ))
}

/// SSE: OpenAI's chunk objects, one per text delta, a last chunk with the finish reason,
/// usage when asked for, then `data: [DONE]`. A client that goes away closes the channel,
/// which drops the job if it has not started.
fn stream_response(
    mut rx: mpsc::UnboundedReceiver<Event>,
    stop: Vec<String>,
    include_usage: bool,
    kind: Kind,
    id: String,
    model: String,
    created: u64,
) -> Response {
    let (tx, out) = mpsc::channel::<Result<Sse, Infallible>>(64);
    let object = if kind == Kind::Chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let chunk = move |delta: Option<&str>, reason: Option<&str>, role: bool| -> Sse {
        let choice = match kind {
            Kind::Chat => {
                let mut d = serde_json::Map::new();
                if role {
                    d.insert("role".into(), "assistant".into());
                }
                if let Some(t) = delta {
                    d.insert("content".into(), t.into());
                }
                json!({"index": 0, "delta": d, "logprobs": null, "finish_reason": reason})
            }
            Kind::Completion => {
                json!({"index": 0, "text": delta.unwrap_or(""), "logprobs": null, "finish_reason": reason})
            }
        };
        Sse::default().data(
            json!({"id": id, "object": object, "created": created, "model": model, "choices": [choice]}).to_string(),
        )
    };
    tokio::spawn(async move {
        let send = |e: Sse| {
            let tx = tx.clone();
            async move { tx.send(Ok(e)).await.is_ok() }
        };
        if kind == Kind::Chat && !send(chunk(Some(""), None, true)).await {
            return;
        }
        let mut full = String::new();
        let mut emitted = 0usize;
        loop {
            let ev = tokio::select! {
                ev = rx.recv() => ev,
                _ = tx.closed() => return,
            };
            match ev {
                Some(Event::Delta(d)) => {
                    full.push_str(&d);
                    if let Some(p) = stop_at(&full, &stop) {
                        if p > emitted && !send(chunk(Some(&full[emitted..p]), None, false)).await {
                            return;
                        }
                        let _ = send(chunk(None, Some("stop"), false)).await;
                        let _ = send(Sse::default().data("[DONE]")).await;
                        return;
                    }
                    let safe = full.len() - stop_prefix_len(&full, &stop);
                    if safe > emitted {
                        if !send(chunk(Some(&full[emitted..safe]), None, false)).await {
                            return;
                        }
                        emitted = safe;
                    }
                }
                Some(Event::Done(f)) => {
                    if full.len() > emitted
                        && !send(chunk(Some(&full[emitted..]), None, false)).await
                    {
                        return;
                    }
                    if !send(chunk(None, Some(f.finish_reason), false)).await {
                        return;
                    }
                    if include_usage {
                        let v = json!({"object": object, "created": created, "choices": [], "usage": usage(&f)});
                        if !send(Sse::default().data(v.to_string())).await {
                            return;
                        }
                    }
                    let _ = send(Sse::default().data("[DONE]")).await;
                    return;
                }
                Some(Event::Error(e)) => {
                    let _ = send(Sse::default().data(e.body().to_string())).await;
                    let _ = send(Sse::default().data("[DONE]")).await;
                    return;
                }
                None => {
                    let e = ApiError::internal(
                        "the model worker dropped the request (see the server log)",
                    );
                    let _ = send(Sse::default().data(e.body().to_string())).await;
                    let _ = send(Sse::default().data("[DONE]")).await;
                    return;
                }
            }
        }
    });
    axum::response::Sse::new(ReceiverStream::new(out))
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn embeddings(
    State(s): State<S>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: EmbeddingRequest = parse(&s, body)?;
    let info = s.ready()?;
    if info.generates {
        return Err(ApiError::unsupported(format!(
            "{} generates text; embeddings need a retrieval checkpoint (Blip2ForImageTextRetrieval, e.g. Salesforce/blip2-itm-vit-g)",
            info.id
        )));
    }
    let inputs = req.inputs()?;
    let mut items = Vec::with_capacity(inputs.len());
    for x in inputs {
        items.push(match x {
            EmbedInput::Text(t) => EmbedItem::Text(t),
            EmbedInput::Image(b) => {
                check_image(&b, s.limits.max_image_pixels)?;
                EmbedItem::Image(b)
            }
        });
    }
    let slot = s.admit()?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    s.submit(Job::Embed(EmbedJob {
        inputs: items,
        reply: tx,
        _slot: slot,
    }))?;
    let out = rx.await.map_err(|_| {
        ApiError::internal("the model worker dropped the request (see the server log)")
    })??;
    let data: Vec<Value> = out
        .into_iter()
        .enumerate()
        .map(|(i, (v, rows))| {
            let dim = v.len() / rows.max(1);
            json!({"object": "embedding", "index": i, "embedding": v, "shape": [rows, dim]})
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": req.model.unwrap_or_else(|| info.id.clone()),
        "usage": {"prompt_tokens": 0, "total_tokens": 0},
    }))
    .into_response())
}

async fn match_texts(
    State(s): State<S>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: MatchRequest = parse(&s, body)?;
    let info = s.ready()?;
    if info.generates {
        return Err(ApiError::unsupported(format!(
            "{} generates text; /v1/match needs a retrieval checkpoint (Blip2ForImageTextRetrieval)",
            info.id
        )));
    }
    if req.texts.is_empty() {
        return Err(ApiError::invalid("invalid_input", "texts is empty"));
    }
    let image = super::api::image_from_url(&req.image)?;
    check_image(&image, s.limits.max_image_pixels)?;
    let slot = s.admit()?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    s.submit(Job::Match(MatchJob {
        image,
        texts: req.texts.clone(),
        reply: tx,
        _slot: slot,
    }))?;
    let scores = rx.await.map_err(|_| {
        ApiError::internal("the model worker dropped the request (see the server log)")
    })??;
    let data: Vec<Value> = req
        .texts
        .iter()
        .zip(scores)
        .map(|(t, sc)| json!({"text": t, "itm": sc.itm, "itc": sc.itc}))
        .collect();
    Ok(Json(json!({"object": "list", "model": info.id, "data": data})).into_response())
}
