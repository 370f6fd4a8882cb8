//! `blip2 serve` as a process on a free loopback port, driven by an HTTP client: the
//! OpenAI-compatible endpoints, streaming, errors and limits, batching (parallel answers
//! equal sequential ones), metrics and a graceful SIGTERM.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_blip2");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn example(name: &str) -> PathBuf {
    root().join("examples").join(name)
}

const IMAGES: [&str; 4] = [
    "three_shapes.png",
    "blue_triangle.png",
    "circle_and_triangle.png",
    "yellow_triangle.png",
];

fn data_url(path: &Path) -> String {
    let bytes = std::fs::read(path).expect("example image");
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// A running server; killed on drop. Its stderr (request logs) is kept in `log`.
struct Server {
    child: Child,
    base: String,
    log: Arc<Mutex<String>>,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let mut child = Command::new(BIN)
            .args(["serve", "--port", "0", "--device", "cpu"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("blip2 serve starts");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("first stdout line");
        let base = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        let log = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().expect("stderr");
        let l = log.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                l.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let s = Server { child, base, log };
        let t = Instant::now();
        loop {
            let (st, _) = s.get("/health");
            if st == 200 {
                break;
            }
            assert_eq!(st, 503, "/health before the model is ready");
            assert!(t.elapsed() < Duration::from_secs(120), "model never ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    fn agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into()
    }

    fn get(&self, path: &str) -> (u16, String) {
        let mut r = Self::agent()
            .get(format!("{}{path}", self.base))
            .call()
            .expect("GET");
        let st = r.status().as_u16();
        (st, r.body_mut().read_to_string().unwrap_or_default())
    }

    /// POST JSON; returns status, Retry-After, body.
    fn post_full(
        &self,
        path: &str,
        body: &Value,
        key: Option<&str>,
    ) -> (u16, Option<String>, String) {
        let mut req = Self::agent()
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json");
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        let mut r = req.send(body.to_string()).expect("POST");
        let st = r.status().as_u16();
        let retry = r
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        (st, retry, r.body_mut().read_to_string().unwrap_or_default())
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let (st, _, b) = self.post_full(path, body, None);
        (st, serde_json::from_str(&b).unwrap_or(Value::String(b)))
    }

    /// The `data:` payloads of an SSE response.
    fn stream(&self, path: &str, body: &Value) -> Vec<String> {
        let mut r = Self::agent()
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .send(body.to_string())
            .expect("POST");
        assert_eq!(r.status().as_u16(), 200);
        let ct = r
            .headers()
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        assert!(ct.starts_with("text/event-stream"), "{ct}");
        let mut out = Vec::new();
        for line in BufReader::new(r.body_mut().as_reader()).lines() {
            let line = line.expect("SSE line");
            if let Some(d) = line.strip_prefix("data: ") {
                out.push(d.to_string());
            }
        }
        out
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cli(args: &[&str], stdin: Option<&str>) -> String {
    let mut c = Command::new(BIN)
        .args(args)
        .args(["--device", "cpu", "--quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("blip2 runs");
    {
        use std::io::Write;
        let mut i = c.stdin.take().unwrap();
        if let Some(s) = stdin {
            i.write_all(s.as_bytes()).unwrap();
        }
    }
    let o = c.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

fn chat_body(image: &Path, text: Option<&str>) -> Value {
    let mut parts = vec![json!({"type": "image_url", "image_url": {"url": data_url(image)}})];
    if let Some(t) = text {
        parts.push(json!({"type": "text", "text": t}));
    }
    json!({"model": "blip2-demo", "messages": [{"role": "user", "content": parts}]})
}

fn content(v: &Value) -> String {
    v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("no content in {v}"))
        .to_string()
}

/// Text of an SSE chat stream; checks the framing (role first, finish reason, [DONE] last).
fn stream_text(events: &[String]) -> (String, String) {
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    let mut text = String::new();
    let mut reason = String::new();
    for (i, e) in events[..events.len() - 1].iter().enumerate() {
        let v: Value = serde_json::from_str(e).expect("chunk JSON");
        assert_eq!(v["object"], "chat.completion.chunk", "{v}");
        let c = &v["choices"][0];
        if i == 0 {
            assert_eq!(c["delta"]["role"], "assistant");
        }
        if let Some(t) = c["delta"]["content"].as_str() {
            text.push_str(t);
        }
        if let Some(r) = c["finish_reason"].as_str() {
            reason = r.to_string();
        }
    }
    (text, reason)
}

#[test]
fn health_models_and_metrics() {
    let s = Server::start(&[]);
    let (st, body) = s.get("/health");
    assert_eq!(st, 200);
    assert!(body.contains("\"ok\""), "{body}");
    let (st, body) = s.get("/v1/models");
    assert_eq!(st, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    let m = &v["data"][0];
    assert_eq!(m["id"], "blip2-demo");
    assert_eq!(m["object"], "model");
    assert!(m["family"].as_str().unwrap().starts_with("blip2-"), "{m}");
    let caps: Vec<&str> = m["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        caps.contains(&"caption") && caps.contains(&"vqa") && caps.contains(&"chat"),
        "{caps:?}"
    );
    let (st, body) = s.get("/v1/models/blip2-demo");
    assert_eq!(st, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["id"],
        "blip2-demo"
    );
    assert_eq!(s.get("/v1/models/gpt-4").0, 404);

    let (st, _) = s.post(
        "/v1/chat/completions",
        &chat_body(&example("three_shapes.png"), None),
    );
    assert_eq!(st, 200);
    let (st, _) = s.post("/v1/chat/completions", &json!({"messages": []}));
    assert_eq!(st, 400);
    let (st, text) = s.get("/metrics");
    assert_eq!(st, 200);
    for series in [
        "blip2_requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"} 1",
        "blip2_requests_total{endpoint=\"/v1/chat/completions\",status=\"400\"} 1",
        "blip2_queue_depth 0",
        "blip2_batch_size_bucket{le=\"1\"} 1",
        "blip2_time_to_first_token_seconds_count 1",
        "blip2_time_per_output_token_seconds_count 1",
        "blip2_tokens_per_second ",
        "blip2_generation_tokens_total ",
        "blip2_images_encoded_total 1",
    ] {
        assert!(text.contains(series), "missing {series:?} in\n{text}");
    }
    // Structured request logs: one JSON object per line on stderr (read by a thread, so
    // give it a moment).
    let t = Instant::now();
    let req = loop {
        let log = s.log.lock().unwrap().clone();
        let found = log
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["path"] == "/v1/chat/completions" && v["status"] == 200);
        match found {
            Some(v) => break v,
            None if t.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            None => panic!("no request log line in\n{log}"),
        }
    };
    assert_eq!(req["method"], "POST");
    assert!(req["ms"].as_f64().is_some());
}

/// Captions, answers and a multi-turn chat over HTTP equal `blip2 caption`, `blip2 ask` and
/// `blip2 chat` on the same images; streams concatenate to the same text.
#[test]
fn answers_equal_the_cli() {
    let s = Server::start(&[]);
    for name in ["three_shapes.png", "blue_triangle.png"] {
        let img = example(name);
        let p = img.to_str().unwrap();
        let want = cli(&["caption", p], None).trim().to_string();
        let (st, v) = s.post("/v1/chat/completions", &chat_body(&img, None));
        assert_eq!(st, 200, "{v}");
        assert_eq!(content(&v), want, "caption of {name}");
        assert_eq!(v["object"], "chat.completion");
        let u = &v["usage"];
        assert!(u["prompt_tokens"].as_u64().unwrap() > 0);
        assert_eq!(
            u["total_tokens"].as_u64().unwrap(),
            u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()
        );

        let q = "what color is the background?";
        let want_ask = cli(&["ask", p, q], None).trim().to_string();
        let (st, v) = s.post("/v1/chat/completions", &chat_body(&img, Some(q)));
        assert_eq!(st, 200, "{v}");
        assert_eq!(content(&v), want_ask, "answer about {name}");

        // Stream: same text, OpenAI framing, [DONE] last.
        let mut body = chat_body(&img, Some(q));
        body["stream"] = json!(true);
        let (text, reason) = stream_text(&s.stream("/v1/chat/completions", &body));
        assert_eq!(text, want_ask);
        assert_eq!(reason, "stop");

        // /v1/completions with the raw VQA prompt, vLLM's BLIP-2 convention.
        let (st, v) = s.post(
            "/v1/completions",
            &json!({"prompt": format!("Question: {q} Answer:"), "image": data_url(&img)}),
        );
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["choices"][0]["text"].as_str().unwrap(), want_ask);
        assert_eq!(v["object"], "text_completion");
    }

    // Multi-turn: the client re-sends the image and the answers so far.
    let img = example("three_shapes.png");
    let p = img.to_str().unwrap();
    let (q1, q2) = ("what shape is red?", "what color is the circle?");
    let want: Vec<String> = cli(&["chat", p], Some(&format!("{q1}\n{q2}\n")))
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(want.len(), 2, "{want:?}");
    let (st, v) = s.post("/v1/chat/completions", &chat_body(&img, Some(q1)));
    assert_eq!(st, 200);
    let a1 = content(&v);
    assert_eq!(a1, want[0]);
    let body = json!({"messages": [
        {"role": "system", "content": "ignored"},
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_url(&img)}},
            {"type": "text", "text": q1}]},
        {"role": "assistant", "content": a1},
        {"role": "user", "content": q2},
    ]});
    let (st, v) = s.post("/v1/chat/completions", &body);
    assert_eq!(st, 200, "{v}");
    assert_eq!(content(&v), want[1]);
    // The second turn's image came from the feature cache.
    let (_, m) = s.get("/metrics");
    assert!(m.contains("blip2_feature_cache_hits_total "), "{m}");
    let hits: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("blip2_feature_cache_hits_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(hits >= 1, "{m}");

    // max_tokens and stop.
    let mut body = chat_body(&img, None);
    body["max_tokens"] = json!(2);
    let (st, v) = s.post("/v1/chat/completions", &body);
    assert_eq!(st, 200);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 2);
    let caption = cli(&["caption", p], None).trim().to_string();
    let word = caption.split(' ').nth(2).unwrap().to_string();
    let mut body = chat_body(&img, None);
    body["stop"] = json!([format!(" {word}")]);
    let (_, v) = s.post("/v1/chat/completions", &body);
    let cut = &caption[..caption.find(&format!(" {word}")).unwrap()];
    assert_eq!(content(&v), cut);
    body["stream"] = json!(true);
    let (text, reason) = stream_text(&s.stream("/v1/chat/completions", &body));
    assert_eq!((text.as_str(), reason.as_str()), (cut, "stop"));
}

/// A request that keeps the demo model busy for a while (beam search over the longest
/// answer its 128 positions allow).
fn slow_body(img: &Path) -> Value {
    let mut body = chat_body(img, None);
    body["max_tokens"] = json!(110);
    body["min_tokens"] = json!(110);
    body["num_beams"] = json!(16);
    body
}

fn error_of(v: &Value) -> (&str, &str) {
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    (
        e["type"].as_str().unwrap_or(""),
        e["code"].as_str().unwrap_or(""),
    )
}

#[test]
fn errors_are_openai_shaped() {
    let s = Server::start(&[
        "--api-key",
        "sekrit",
        "--max-body-bytes",
        "200000",
        "--max-image-pixels",
        "1000",
    ]);
    let img = example("three_shapes.png");
    let post = |body: &Value, key: Option<&str>| {
        let (st, retry, b) = s.post_full("/v1/chat/completions", body, key);
        (
            st,
            retry,
            serde_json::from_str::<Value>(&b).unwrap_or(Value::String(b)),
        )
    };
    // Key: 401 without it or with a wrong one; /health and /metrics stay open.
    let (st, _, v) = post(&chat_body(&img, None), None);
    assert_eq!(st, 401);
    assert_eq!(error_of(&v), ("authentication_error", "invalid_api_key"));
    assert_eq!(post(&chat_body(&img, None), Some("wrong")).0, 401);
    assert_eq!(s.get("/health").0, 200);
    assert_eq!(s.get("/metrics").0, 200);
    let k = Some("sekrit");
    // The example is 64x64 = 4096 pixels, above --max-image-pixels 1000.
    let (st, _, v) = post(&chat_body(&img, None), k);
    assert_eq!(st, 400, "{v}\n{}", s.log.lock().unwrap());
    assert_eq!(error_of(&v).1, "invalid_image");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("pixels"),
        "{v}"
    );

    let with_url = |url: &str| json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]});
    for (url, code) in [
        ("https://example.com/cat.png", "invalid_image_url"),
        ("/etc/passwd", "invalid_image_url"),
        ("file:///tmp/x.png", "invalid_image_url"),
        ("data:image/png;base64,@@@not base64@@@", "invalid_image"),
        ("data:image/png;base64,aGVsbG8gd29ybGQ=", "invalid_image"),
    ] {
        let (st, _, v) = post(&with_url(url), k);
        assert_eq!(st, 400, "{url}: {v}");
        assert_eq!(error_of(&v), ("invalid_request_error", code), "{url}");
    }
    let (st, _, v) = post(&json!({"messages": [{"role": "user", "content": "hi"}]}), k);
    assert_eq!((st, error_of(&v).1), (400, "missing_image"));
    let (st, _, v) = post(&json!({"messages": "nope"}), k);
    assert_eq!((st, error_of(&v).1), (400, "invalid_json"));
    let mut body = with_url("data:image/png;base64,AAAA");
    body["n"] = json!(2);
    let (st, _, v) = post(&body, k);
    assert_eq!((st, error_of(&v).1), (400, "invalid_parameter"));
    body["n"] = json!(1);
    body["max_tokens"] = json!(100000);
    let (st, _, v) = post(&body, k);
    assert_eq!((st, error_of(&v).1), (400, "invalid_parameter"));
    // 413 above --max-body-bytes.
    let big = json!({"messages": [{"role": "user", "content": "x".repeat(300_000)}]});
    let (st, _, v) = post(&big, k);
    assert_eq!(st, 413, "{v}");
    assert_eq!(error_of(&v).1, "request_too_large");
    // Unknown endpoint; embeddings on a captioning checkpoint.
    let (st, _, _) = s.post_full("/v1/nothing", &json!({}), k);
    assert_eq!(st, 404);
    let (st, _, b) = s.post_full("/v1/embeddings", &json!({"input": "a cat"}), k);
    assert_eq!(st, 400, "{b}");
    // The server is still up.
    assert_eq!(s.get("/health").0, 200);
}

/// With one batch place and no queue, concurrent slow requests get 503 with Retry-After.
#[test]
fn queue_full_is_503_with_retry_after() {
    let s = Arc::new(Server::start(&["--max-batch", "1", "--max-queue", "0"]));
    let img = example("three_shapes.png");
    let body = slow_body(&img);
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (s, body) = (s.clone(), body.clone());
            std::thread::spawn(move || s.post_full("/v1/chat/completions", &body, None))
        })
        .collect();
    let res: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let ok = res.iter().filter(|r| r.0 == 200).count();
    let busy: Vec<_> = res.iter().filter(|r| r.0 == 503).collect();
    assert!(ok >= 1, "{res:?}");
    assert!(!busy.is_empty(), "no 503 among {res:?}");
    for (_, retry, b) in busy {
        assert_eq!(retry.as_deref(), Some("1"));
        let v: Value = serde_json::from_str(b).unwrap();
        assert_eq!(error_of(&v).1, "queue_full");
    }
}

/// 32 parallel requests (several images and questions) get exactly the answers they get
/// one at a time, and they were batched.
#[test]
fn parallel_requests_equal_sequential() {
    // The default join wait (auto) holds joiners so that they share prefills.
    parallel_equal_sequential(&["--max-batch", "8", "--cache-images", "0"], true);
    // Joiners join at the next step.
    parallel_equal_sequential(
        &[
            "--max-batch",
            "8",
            "--cache-images",
            "0",
            "--join-wait-steps",
            "0",
        ],
        false,
    );
    // Joiners held up to 3 steps so that more of them share a vision pass and a prefill.
    parallel_equal_sequential(
        &[
            "--max-batch",
            "8",
            "--cache-images",
            "0",
            "--join-wait-steps",
            "3",
        ],
        true,
    );
}

/// The same on a Flan-T5 checkpoint: its rows join and leave the running batch too (each
/// with its own encoder output), answering as they do one at a time.
#[test]
fn parallel_t5_requests_equal_sequential() {
    let dir = root().join("tests/fixtures/models/blip2-flan-t5-tiny");
    let dir = dir.to_str().expect("UTF-8 path");
    parallel_equal_sequential(
        &["--model", dir, "--max-batch", "8", "--cache-images", "0"],
        true,
    );
}

/// 32 parallel requests answer as sequential ones; `prefills_shared`: some joining prompts
/// were prefilled together (checked where the server holds joiners).
fn parallel_equal_sequential(args: &[&str], prefills_shared: bool) {
    let s = Arc::new(Server::start(args));
    let questions = [
        None,
        Some("what color is the background?"),
        Some("how many shapes are there?"),
        Some("what shape is yellow?"),
    ];
    let bodies: Vec<Value> = (0..32)
        .map(|i| chat_body(&example(IMAGES[i % 4]), questions[(i / 4) % 4]))
        .collect();
    let sequential: Vec<String> = bodies
        .iter()
        .map(|b| {
            let (st, v) = s.post("/v1/chat/completions", b);
            assert_eq!(st, 200, "{v}");
            content(&v)
        })
        .collect();
    let threads: Vec<_> = bodies
        .iter()
        .cloned()
        .map(|b| {
            let s = s.clone();
            std::thread::spawn(move || {
                let (st, v) = s.post("/v1/chat/completions", &b);
                assert_eq!(st, 200, "{v}");
                content(&v)
            })
        })
        .collect();
    let parallel: Vec<String> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(parallel, sequential);
    let (_, m) = s.get("/metrics");
    let get = |name: &str| -> f64 {
        m.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} in {m}"))
            .trim()
            .parse()
            .unwrap()
    };
    // blip2_batch_size counts rows per decode step: some steps ran several requests' rows.
    assert!(
        get("blip2_batch_size_sum ") > get("blip2_batch_size_count "),
        "{m}"
    );
    assert!(get("blip2_batch_size_bucket{le=\"1\"} ") < get("blip2_batch_size_count "));
    if prefills_shared {
        assert!(
            get("blip2_prefill_batch_size_sum ") > get("blip2_prefill_batch_size_count "),
            "{m}"
        );
    }
}

/// A request that arrives while another decodes joins its batch between two steps
/// (`blip2_joined_running_total`), and both get the answers they get alone. Retried in case
/// the long request ends before the second arrives.
#[test]
fn a_request_arriving_mid_decode_joins_the_running_batch() {
    let s = Server::start(&["--max-batch", "4"]);
    let img = example("three_shapes.png");
    let mut long = chat_body(&img, None);
    // The demo model has 128 positions.
    long["max_tokens"] = json!(110);
    long["min_tokens"] = json!(110);
    let short = chat_body(&example(IMAGES[1]), Some("what shape is yellow?"));
    let (st, v) = s.post("/v1/chat/completions", &long);
    assert_eq!(st, 200, "{v}");
    let long_alone = content(&v);
    let (st, v) = s.post("/v1/chat/completions", &short);
    assert_eq!(st, 200, "{v}");
    let short_alone = content(&v);
    let joined = |s: &Server| -> f64 {
        let (_, m) = s.get("/metrics");
        m.lines()
            .find_map(|l| l.strip_prefix("blip2_joined_running_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no blip2_joined_running_total in {m}"))
    };
    assert_eq!(
        joined(&s),
        0.0,
        "requests one at a time join no running batch"
    );
    let mut streamed = long.clone();
    streamed["stream"] = json!(true);
    for _ in 0..10 {
        let mut r = Server::agent()
            .post(format!("{}/v1/chat/completions", s.base))
            .header("content-type", "application/json")
            .send(streamed.to_string())
            .expect("POST");
        let mut rd = BufReader::new(r.body_mut().as_reader());
        let mut events = Vec::new();
        let mut line = String::new();
        // The role chunk, then the first text: the long request is decoding.
        while events.len() < 2 {
            line.clear();
            assert!(rd.read_line(&mut line).unwrap() > 0, "stream ended early");
            if let Some(d) = line.trim_end().strip_prefix("data: ") {
                events.push(d.to_string());
            }
        }
        let (st, v) = s.post("/v1/chat/completions", &short);
        assert_eq!(st, 200, "{v}");
        assert_eq!(content(&v), short_alone, "the joining request's answer");
        for line in rd.lines() {
            if let Some(d) = line.unwrap().strip_prefix("data: ") {
                events.push(d.to_string());
            }
        }
        assert_eq!(
            stream_text(&events).0,
            long_alone,
            "the running request's answer"
        );
        if joined(&s) > 0.0 {
            return;
        }
    }
    panic!("the second request never joined the running batch");
}

/// Clients that leave mid-stream free their places (once their rows finish: a running
/// batch is not interrupted); the server stays up.
#[test]
fn disconnect_frees_the_slot() {
    let s = Server::start(&["--max-batch", "1", "--max-queue", "3"]);
    let img = example("three_shapes.png");
    let mut body = chat_body(&img, None);
    // The demo model has 128 positions.
    body["max_tokens"] = json!(110);
    body["min_tokens"] = json!(110);
    body["stream"] = json!(true);
    for _ in 0..3 {
        let mut r = Server::agent()
            .post(format!("{}/v1/chat/completions", s.base))
            .header("content-type", "application/json")
            .send(body.to_string())
            .expect("POST");
        assert_eq!(r.status().as_u16(), 200);
        let mut rd = BufReader::new(r.body_mut().as_reader());
        let mut line = String::new();
        rd.read_line(&mut line).unwrap();
        assert!(line.starts_with("data: "), "{line}");
        // Dropped here: the connection closes mid-stream.
    }
    let t = Instant::now();
    loop {
        let (_, m) = s.get("/metrics");
        if m.contains("blip2_queue_depth 0\n") && m.contains("blip2_running 0\n") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "slots never freed:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (st, v) = s.post("/v1/chat/completions", &chat_body(&img, None));
    assert_eq!(st, 200, "{v}");

    // A batch whose only client leaves stops at its next decode step (beam search over 110
    // tokens takes long enough on the demo model; retried in case the machine is so fast
    // that it finishes before the disconnect is seen).
    let mut slow = slow_body(&img);
    slow["stream"] = json!(true);
    let cancelled = |s: &Server| -> u64 {
        let (_, m) = s.get("/metrics");
        m.lines()
            .find_map(|l| l.strip_prefix("blip2_cancelled_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no blip2_cancelled_total in {m}"))
    };
    let mut stopped = false;
    for _ in 0..5 {
        let mut r = Server::agent()
            .post(format!("{}/v1/chat/completions", s.base))
            .header("content-type", "application/json")
            .send(slow.to_string())
            .expect("POST");
        let mut line = String::new();
        BufReader::new(r.body_mut().as_reader())
            .read_line(&mut line)
            .unwrap();
        drop(r);
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5)
            && !s.get("/metrics").1.contains("blip2_running 0\n")
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        if cancelled(&s) > 0 {
            stopped = true;
            break;
        }
    }
    assert!(stopped, "a lone disconnected stream was never cancelled");
    let (st, v) = s.post("/v1/chat/completions", &chat_body(&img, None));
    assert_eq!(st, 200, "{v}");
}

/// Retrieval checkpoint: /v1/match equals `blip2 match --json`; /v1/embeddings embeds texts
/// and images; chat is refused.
#[test]
fn retrieval_endpoints() {
    let dir = root().join("tests/fixtures/models/blip2-itm-tiny");
    let d = dir.to_str().unwrap();
    let s = Server::start(&["--model", d]);
    let img = root().join("tests/fixtures/images/scene_rgb.png");
    let texts = [
        "a red circle and a blue square on a gradient background",
        "a dog on a boat",
    ];
    let want: Vec<Value> = cli(
        &[
            "match",
            img.to_str().unwrap(),
            texts[0],
            texts[1],
            "--model",
            d,
            "--json",
        ],
        None,
    )
    .lines()
    .map(|l| serde_json::from_str(l).unwrap())
    .collect();
    let (st, v) = s.post(
        "/v1/match",
        &json!({"image": data_url(&img), "texts": texts}),
    );
    assert_eq!(st, 200, "{v}");
    for (got, want) in v["data"].as_array().unwrap().iter().zip(&want) {
        assert_eq!(got["text"], want["text"]);
        for k in ["itm", "itc"] {
            let (a, b) = (got[k].as_f64().unwrap(), want[k].as_f64().unwrap());
            assert!((a - b).abs() < 1e-6, "{k}: {a} vs {b}");
        }
    }
    let (st, v) = s.post(
        "/v1/embeddings",
        &json!({"input": [texts[0], data_url(&img)]}),
    );
    assert_eq!(st, 200, "{v}");
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    let t: Vec<f64> = data[0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let norm: f64 = t.iter().map(|x| x * x).sum::<f64>().sqrt();
    assert!(
        (norm - 1.0).abs() < 1e-4,
        "text embedding is normalised: {norm}"
    );
    let shape = &data[1]["shape"];
    assert_eq!(
        data[1]["embedding"].as_array().unwrap().len() as u64,
        shape[0].as_u64().unwrap() * shape[1].as_u64().unwrap()
    );
    assert_eq!(shape[1].as_u64().unwrap() as usize, t.len());
    let (st, v) = s.post("/v1/chat/completions", &chat_body(&img, None));
    assert_eq!(st, 400, "{v}");
    assert_eq!(error_of(&v).1, "unsupported_by_model");
    let (_, m) = s.get("/v1/models");
    assert!(m.contains("\"embeddings\""), "{m}");
}

/// SIGTERM: the requests admitted (one running, the others queued) complete, then the
/// process exits 0.
#[cfg(unix)]
#[test]
fn sigterm_drains_and_exits_zero() {
    let mut s = Server::start(&["--max-batch", "1"]);
    let body = slow_body(&example("three_shapes.png"));
    let n = 6;
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let (url, body) = (format!("{}/v1/chat/completions", s.base), body.clone());
            std::thread::spawn(move || {
                let mut r = Server::agent()
                    .post(url)
                    .header("content-type", "application/json")
                    .send(body.to_string())
                    .expect("POST");
                (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
            })
        })
        .collect();
    // Wait until all are admitted and one is running.
    let start = Instant::now();
    loop {
        let m = s.get("/metrics").1;
        if m.contains("blip2_running 1\n") && m.contains(&format!("blip2_queue_depth {}\n", n - 1))
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "requests never queued:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe {
        libc::kill(s.child.id() as i32, libc::SIGTERM);
    }
    for t in threads {
        let (st, b) = t.join().unwrap();
        assert_eq!(st, 200, "{b}");
        let v: Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["usage"]["completion_tokens"], 110);
    }
    let status = s.child.wait().unwrap();
    assert!(
        status.success(),
        "exit status {status:?}\n{}",
        s.log.lock().unwrap()
    );
    assert!(s.log.lock().unwrap().contains("draining"));
}
