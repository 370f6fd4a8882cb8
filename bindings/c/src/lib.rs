//! The C ABI of blip2: opaque handles over the library's [`blip2::Blip2`],
//! [`blip2::Blip2Retrieval`] and [`blip2::SharedChat`], status codes with a thread-local error
//! message, and nothing that unwinds across the boundary (every entry point runs inside
//! `catch_unwind`). The header `include/blip2.h` is generated from this file by cbindgen
//! (`tests/header.rs` fails when it drifts); `docs/c-abi.md` has the ownership rules.
//!
//! Generation options travel as a JSON object with transformers' `generate` keyword names
//! (`{"max_new_tokens": 30, "num_beams": 3}`; NULL or "" for the defaults): new options
//! never change a struct layout that compiled apps depend on, and every language the ABI
//! is meant for can write JSON.

#![allow(clippy::missing_safety_doc)] // the header and docs/c-abi.md state each contract

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::{Arc, Mutex};

use blip2::image::{DynamicImage, RgbImage};
use blip2::{
    Blip2, DType, Device, EarlyStopping, Error, GenerationConfig, LoadOptions, SharedChat,
    TextStream, TokenEvent,
};

/// What a call did. Every function that can fail returns one; on anything but
/// `BLIP2_STATUS_OK`, `blip2_last_error()` holds the message.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blip2Status {
    /// Success.
    Ok = 0,
    /// A NULL pointer where a value is required, text that is not UTF-8, malformed options
    /// JSON, invalid generation settings, an unknown device or dtype name, a text longer
    /// than the model's positions, an empty batch.
    InvalidArgument = 1,
    /// An image file that cannot be read or decoded, or pixels of the wrong size.
    Image = 2,
    /// A checkpoint that cannot be loaded: missing or malformed files, missing or
    /// mismatched tensors, a tokenizer problem, or a feature the library does not implement.
    Checkpoint = 3,
    /// The device failed: no GPU adapter, out of memory, device lost, a device limit.
    Device = 4,
    /// A bug: an internal error or a caught panic. The message says what happened.
    Internal = 5,
}

/// A loaded captioning / question-answering model (`Blip2ForConditionalGeneration`).
///
/// Thread safety: immutable once loaded. Any number of threads may call
/// `blip2_caption`, `blip2_ask`, `blip2_generate*` and `blip2_chat_new` on one model at the
/// same time; each call computes independently. Free it once, after the last call returns
/// (chats keep the model alive on their own, see `blip2_chat_new`).
pub struct Blip2Model {
    model: Arc<Blip2>,
}

/// A loaded image-text retrieval model (`Blip2ForImageTextRetrieval`).
///
/// Thread safety: immutable once loaded; any number of threads may call the
/// `blip2_retrieval_*` functions on one handle at the same time.
pub struct Blip2Retrieval {
    model: blip2::Blip2Retrieval,
}

/// A conversation about one image: its features are computed once, and every question is
/// asked with the earlier turns in the prompt.
///
/// Thread safety: a chat may be used from any thread, and calls from several threads are
/// safe, but they are serialised by a lock inside the chat (a conversation has one order).
pub struct Blip2Chat {
    /// The conversation, its model and the KV cache of its previous turn (reused by the
    /// next question: docs/api.md).
    chat: Mutex<SharedChat>,
}

/// A decoded image (RGB or any format the decoder returned; converted as the model's
/// processor converts it when used).
///
/// Thread safety: immutable; may be shared by any number of threads and calls.
pub struct Blip2Image {
    image: DynamicImage,
}

/// Called with each newly settled piece of generated text (UTF-8, NUL-terminated, valid
/// only during the call); the pieces concatenated are the final text. `user` is the
/// pointer given to the generating call. It runs on the calling thread, before the call
/// returns. It must not unwind (no C++ exception, no longjmp) out of the callback.
pub type Blip2TextCallback = Option<unsafe extern "C" fn(piece: *const c_char, user: *mut c_void)>;

/// A failure on its way to the caller: the status and the message for `blip2_last_error`.
struct Fail {
    status: Blip2Status,
    msg: String,
}

impl Fail {
    fn invalid(msg: impl Into<String>) -> Fail {
        Fail {
            status: Blip2Status::InvalidArgument,
            msg: msg.into(),
        }
    }
}

/// The status of a library error: callers' mistakes, bad images, bad checkpoints and
/// failing devices are told apart; the message is the library's.
fn status_of(e: &Error) -> Blip2Status {
    use blip2::engine::Error as E;
    match e {
        Error::Invalid(_) | Error::PromptTooLong { .. } => Blip2Status::InvalidArgument,
        Error::Image { .. } => Blip2Status::Image,
        Error::TooLarge { what, .. } if what == "image" => Blip2Status::Image,
        Error::TooLarge { .. } => Blip2Status::Checkpoint,
        Error::Config { .. }
        | Error::Checkpoint { .. }
        | Error::Weights(_)
        | Error::Adapter(_)
        | Error::Tokenizer { .. }
        | Error::Io { .. }
        | Error::Unsupported(_) => Blip2Status::Checkpoint,
        Error::Engine(e) => match e {
            E::NoAdapter(_)
            | E::OutOfMemory(_)
            | E::DeviceLost(_)
            | E::Gpu(_)
            | E::Limit { .. } => Blip2Status::Device,
            E::Invalid(_) => Blip2Status::InvalidArgument,
            _ => Blip2Status::Internal,
        },
        // NaN/inf produced while computing, and a cancellation the C ABI never requests.
        Error::NonFinite { .. } | Error::Cancelled => Blip2Status::Internal,
    }
}

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        Fail {
            status: status_of(&e),
            msg: e.to_string(),
        }
    }
}

impl From<blip2::engine::Error> for Fail {
    fn from(e: blip2::engine::Error) -> Fail {
        Fail::from(Error::Engine(e))
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(msg: &str) {
    let c = CString::new(msg.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// Runs one entry point: its error becomes a status and the thread's last error; a panic
/// is caught and reported as `BLIP2_STATUS_INTERNAL`.
fn guard(f: impl FnOnce() -> Result<(), Fail>) -> Blip2Status {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => Blip2Status::Ok,
        Ok(Err(fail)) => {
            set_last_error(&fail.msg);
            fail.status
        }
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic payload".into());
            set_last_error(&format!("internal error (a panic was caught): {what}"));
            Blip2Status::Internal
        }
    }
}

/// The UTF-8 text behind a required C string.
unsafe fn text<'a>(p: *const c_char, what: &str) -> Result<&'a str, Fail> {
    if p.is_null() {
        return Err(Fail::invalid(format!("{what} is NULL")));
    }
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map_err(|e| Fail::invalid(format!("{what} is not UTF-8: {e}")))
}

/// An optional C string: NULL is None.
unsafe fn opt_text<'a>(p: *const c_char, what: &str) -> Result<Option<&'a str>, Fail> {
    if p.is_null() {
        Ok(None)
    } else {
        unsafe { text(p, what) }.map(Some)
    }
}

/// A required handle.
unsafe fn handle<'a, T>(p: *const T, what: &str) -> Result<&'a T, Fail> {
    unsafe { p.as_ref() }.ok_or_else(|| Fail::invalid(format!("{what} is NULL")))
}

/// Checks a required out-pointer and clears what it points to, so that a failed call
/// leaves NULL there.
unsafe fn out_ptr<'a, T>(p: *mut *mut T, what: &str) -> Result<&'a mut *mut T, Fail> {
    let out = unsafe { p.as_mut() }.ok_or_else(|| Fail::invalid(format!("{what} is NULL")))?;
    *out = std::ptr::null_mut();
    Ok(out)
}

/// A Rust string handed to C: freed with `blip2_string_free`.
fn c_string(s: String) -> Result<*mut c_char, Fail> {
    CString::new(s).map(CString::into_raw).map_err(|_| Fail {
        status: Blip2Status::Internal,
        msg: "generated text holds a NUL byte".into(),
    })
}

/// A caller-provided array of `n` elements (NULL is allowed only when `n` is 0).
unsafe fn slice_mut<'a, T>(p: *mut T, n: usize, what: &str) -> Result<&'a mut [T], Fail> {
    if n == 0 {
        return Ok(&mut []);
    }
    if p.is_null() {
        return Err(Fail::invalid(format!("{what} is NULL")));
    }
    Ok(unsafe { std::slice::from_raw_parts_mut(p, n) })
}

/// `n` C strings.
unsafe fn texts<'a>(p: *const *const c_char, n: usize, what: &str) -> Result<Vec<&'a str>, Fail> {
    if n == 0 {
        return Err(Fail::invalid(format!("{what}: no texts (n is 0)")));
    }
    if p.is_null() {
        return Err(Fail::invalid(format!("{what} is NULL")));
    }
    let ptrs = unsafe { std::slice::from_raw_parts(p, n) };
    ptrs.iter()
        .enumerate()
        .map(|(i, &s)| unsafe { text(s, &format!("{what}[{i}]")) })
        .collect()
}

/// Device and dtype by name: device "auto" (or NULL; `BLIP2_DEVICE` may override it),
/// "cpu" or "gpu"; dtype "f32" (or NULL), "f16", "bf16", "q8" or "q4".
unsafe fn load_options(device: *const c_char, dtype: *const c_char) -> Result<LoadOptions, Fail> {
    let device = match unsafe { opt_text(device, "device") }? {
        None | Some("auto") => Device::auto()?,
        Some("cpu") => Device::cpu(),
        Some("gpu") => Device::gpu()?,
        Some(other) => {
            return Err(Fail::invalid(format!(
                "unknown device '{other}' (expected auto, cpu or gpu)"
            )));
        }
    };
    let dtype = match unsafe { opt_text(dtype, "dtype") }? {
        None => DType::F32,
        Some(d) => d.parse::<DType>()?,
    };
    Ok(LoadOptions {
        device,
        dtype,
        progress: None,
        adapters: Vec::new(),
    })
}

/// The options every generating function takes: a JSON object with transformers'
/// `generate` keyword names, or NULL / "" for the defaults.
pub fn generation_config(json: Option<&str>) -> Result<GenerationConfig, String> {
    use serde_json::Value;
    let mut cfg = GenerationConfig::default();
    let Some(json) = json.filter(|s| !s.trim().is_empty()) else {
        return Ok(cfg);
    };
    let v: Value =
        serde_json::from_str(json).map_err(|e| format!("generation options: bad JSON: {e}"))?;
    let Value::Object(map) = v else {
        return Err("generation options must be a JSON object".into());
    };
    let bad = |k: &str, want: &str, v: &Value| {
        format!("generation option '{k}': expected {want}, got {v}")
    };
    for (k, v) in &map {
        let uint = || {
            v.as_u64()
                .ok_or_else(|| bad(k, "a non-negative integer", v))
        };
        let usize_ = || uint().map(|x| x as usize);
        let u32_ = |v: &Value| {
            v.as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .ok_or_else(|| bad(k, "a token id", v))
        };
        let float = || {
            v.as_f64()
                .map(|x| x as f32)
                .ok_or_else(|| bad(k, "a number", v))
        };
        let boolean = || v.as_bool().ok_or_else(|| bad(k, "true or false", v));
        match k.as_str() {
            "max_new_tokens" => cfg.max_new_tokens = usize_()?,
            "min_new_tokens" => cfg.min_new_tokens = usize_()?,
            "num_beams" => cfg.num_beams = usize_()?,
            "length_penalty" => cfg.length_penalty = float()?,
            "early_stopping" => {
                cfg.early_stopping = match v {
                    Value::Bool(true) => EarlyStopping::True,
                    Value::Bool(false) => EarlyStopping::False,
                    Value::String(s) if s == "never" => EarlyStopping::Never,
                    _ => return Err(bad(k, "true, false or \"never\"", v)),
                }
            }
            "do_sample" => cfg.do_sample = boolean()?,
            "temperature" => cfg.temperature = float()?,
            "top_k" => cfg.top_k = usize_()?,
            "top_p" => cfg.top_p = float()?,
            "repetition_penalty" => cfg.repetition_penalty = float()?,
            "no_repeat_ngram_size" => cfg.no_repeat_ngram_size = usize_()?,
            "seed" => cfg.seed = if v.is_null() { None } else { Some(uint()?) },
            "eos_token_id" => {
                cfg.eos_token_ids = match v {
                    Value::Null => None,
                    Value::Array(a) => Some(a.iter().map(u32_).collect::<Result<_, _>>()?),
                    one => Some(vec![u32_(one)?]),
                }
            }
            "pad_token_id" => cfg.pad_token_id = if v.is_null() { None } else { Some(u32_(v)?) },
            other => {
                return Err(format!(
                    "unknown generation option '{other}' (known: max_new_tokens, min_new_tokens, num_beams, length_penalty, early_stopping, do_sample, temperature, top_k, top_p, repetition_penalty, no_repeat_ngram_size, seed, eos_token_id, pad_token_id)"
                ));
            }
        }
    }
    cfg.validate().map_err(|e| e.to_string())?;
    Ok(cfg)
}

unsafe fn options(json: *const c_char) -> Result<GenerationConfig, Fail> {
    let json = unsafe { opt_text(json, "options") }?;
    generation_config(json).map_err(Fail::invalid)
}

/// Streams settled text pieces of one generation to `cb`, as the CLI streams to stdout.
struct Streamer<'a> {
    stream: TextStream<'a>,
    cb: Blip2TextCallback,
    user: *mut c_void,
    failure: Option<Error>,
}

impl<'a> Streamer<'a> {
    fn new(
        model: &'a Blip2,
        cfg: &GenerationConfig,
        cb: Blip2TextCallback,
        user: *mut c_void,
    ) -> Result<Self, Fail> {
        let eos = model.resolve_generation(cfg)?.eos_token_ids().to_vec();
        Ok(Streamer {
            stream: TextStream::new(&model.tokenizer, &eos),
            cb,
            user,
            failure: None,
        })
    }

    fn emit(&self, piece: &str) {
        if piece.is_empty() {
            return;
        }
        if let (Some(cb), Ok(c)) = (self.cb, CString::new(piece)) {
            // SAFETY: the caller's callback and user pointer, as the header documents.
            unsafe { cb(c.as_ptr(), self.user) };
        }
    }

    fn on_token(&mut self, e: &TokenEvent) {
        if self.failure.is_some() {
            return;
        }
        match self.stream.push(e.token_id) {
            Ok(piece) => self.emit(&piece),
            Err(err) => self.failure = Some(err),
        }
    }

    fn finish(mut self) -> Result<(), Fail> {
        if let Some(e) = self.failure.take() {
            return Err(e.into());
        }
        let rest = self.stream.finish()?;
        self.emit(&rest);
        Ok(())
    }
}

/// Writes `s` to an optional out-parameter (NULL: the text is dropped).
fn put_text(out: Option<&mut *mut c_char>, s: String) -> Result<(), Fail> {
    if let Some(out) = out {
        *out = c_string(s)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Library-wide
// ---------------------------------------------------------------------------------------

/// The library version, e.g. "0.1.0". Static: do not free.
#[unsafe(no_mangle)]
pub extern "C" fn blip2_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The message of the last failed call on this thread ("" if none failed yet). Owned by
/// the library: valid until the next failing call on the same thread; copy it to keep it.
/// Successful calls leave it unchanged.
#[unsafe(no_mangle)]
pub extern "C" fn blip2_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// Frees a string returned by this library (generated text). NULL is ignored.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn blip2_string_free(s: *mut c_char) {
    if !s.is_null() {
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { CString::from_raw(s) })));
    }
}

// ---------------------------------------------------------------------------------------
// Images
// ---------------------------------------------------------------------------------------

fn put_image(out: &mut *mut Blip2Image, image: DynamicImage) {
    *out = Box::into_raw(Box::new(Blip2Image { image }));
}

/// Decodes an image file (PNG, JPEG, WebP, BMP, GIF, TIFF; the format is read from the
/// content). On success `*out` is a new image to free with `blip2_image_free`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn blip2_image_load(
    path: *const c_char,
    out: *mut *mut Blip2Image,
) -> Blip2Status {
    guard(|| {
        let out = unsafe { out_ptr(out, "out") }?;
        let path = unsafe { text(path, "path") }?;
        put_image(out, blip2::load_image(Path::new(path))?);
        Ok(())
    })
}

/// Decodes an encoded image held in memory (`len` bytes at `data`, copied as needed).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn blip2_image_from_bytes(
    data: *const u8,
    len: usize,
    out: *mut *mut Blip2Image,
) -> Blip2Status {
    guard(|| {
        let out = unsafe { out_ptr(out, "out") }?;
        if data.is_null() {
            return Err(Fail::invalid("data is NULL"));
        }
        let bytes = unsafe { std::slice::from_raw_parts(data, len) };
        put_image(out, blip2::load_image_from_bytes(bytes, "<bytes>")?);
        Ok(())
    })
}

/// Wraps raw pixels: `height` rows of `width` RGB triples (8 bits each), tightly packed
/// (`width * height * 3` bytes, copied).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn blip2_image_from_rgb(
    pixels: *const u8,
    width: u32,
    height: u32,
    out: *mut *mut Blip2Image,
) -> Blip2Status {
    guard(|| {
        let out = unsafe { out_ptr(out, "out") }?;
        if pixels.is_null() {
            return Err(Fail::invalid("pixels is NULL"));
        }
        if width == 0 || height == 0 {
            return Err(Fail {
                status: Blip2Status::Image,
                msg: format!("image of {width}x{height} pixels is empty"),
            });
        }
        let n = (width as usize)
            .checked_mul(height as usize)
            .and_then(|p| p.checked_mul(3))
            .ok_or_else(|| Fail::invalid("image size overflows"))?;
        let data = unsafe { std::slice::from_raw_parts(pixels, n) }.to_vec();
        let rgb = RgbImage::from_raw(width, height, data)
            .ok_or_else(|| Fail::invalid("pixel buffer does not match the size"))?;
        put_image(out, DynamicImage::ImageRgb8(rgb));
        Ok(())
    })
}

/// Frees an image. NULL is ignored.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn blip2_image_free(image: *mut Blip2Image) {
    if !image.is_null() {
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(image) })));
    }
}

// ---------------------------------------------------------------------------------------
// Captioning model
// ---------------------------------------------------------------------------------------

/// Loads a Hugging Face BLIP-2 checkpoint directory, or the demo model built into the
/// library when `dir` is NULL. `device`: "auto" (or NULL), "cpu" or "gpu"; `dtype`:
/// "f32" (or NULL), "f16", "bf16" (CPU only), "q8" or "q4". On success `*out` is a new
/// model to free with `blip2_model_free`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn blip2_model_load(
    dir: *const c_char,
    device: *const c_char,
    dtype: *const c_char,
    out: *mut *mut Blip2Model,
) -> Blip2Status {
    guard(|| {
        let out = unsafe { out_ptr(out, "out") }?;
        let dir = unsafe { opt_text(dir, "dir") }?;
        let opts = unsafe { load_options(device, dtype) }?;
        let model = match dir {
            Some(d) => Blip2::load(d, opts)?,
            None => blip2::demo::load_demo(opts)?,
        };
        *out = Box::into_raw(Box::new(Blip2Model {
            model: Arc::new(model),
        }));
        Ok(())
    })
}

/// Frees a model. NULL is ignored. Chats made from it stay usable (they hold the model).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn blip2_model_free(model: *mut Blip2Model) {
    if !model.is_null() {
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(model) })));
    }
}

/// The common body of caption / ask / generate (streaming or not).
unsafe fn run_generate(
    model: *const Blip2Model,
    image: *const Blip2Image,
    prompt: Option<String>,
    options_json: *const c_char,
    cb: Option<(Blip2TextCallback, *mut c_void)>,
    out_text: Option<&mut *mut c_char>,
) -> Result<(), Fail> {
    let model = &unsafe { handle(model, "model") }?.model;
    let image = &unsafe { handle(image, "image") }?.image;
    let cfg = unsafe { options(options_json) }?;
    let g = match cb {
        None => model.generate(image, prompt.as_deref(), &cfg)?,
        Some((cb, user)) => {
            let mut s = Streamer::new(model, &cfg, cb, user)?;
            let g = model.generate_stream(image, prompt.as_deref(), &cfg, |e| s.on_token(e))?;
            s.finish()?;
            g
        }
    };
    put_text(out_text, g.text)
}

/// A caption for the image (no prompt). `options_json`: generation options or NULL. On
/// success `*out_text` is a new string to free with `blip2_string_free`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn blip2_caption(
    model: *const Blip2Model,
    image: *const Blip2Image,
    options_json: *const c_char,
    out_text: *mut *mut c_char,
) -> Blip2Status {
    guard(|| {
        let out = unsafe { out_ptr(out_text, "out_text") }?;
        unsafe { run_generate(model, image, None, options_json, None, Some(out)) }
    })
}

/// Answers a question about the image (prompt "Question: {question} Answer:").
#[unsafe(no_mangle)]
pub unsafe extern "C" fn blip2_ask(
    model: *const Blip2Model,
    image: *const Blip2Image,
    question: *const c_char,
    options_json: *const c_char,
    out_text: *mut *mut c_char,
) -> Blip2Status {
    guard(|| {
        let out = unsafe { out_ptr(out_text, "out_text") }?;
        let q = unsafe { text(question, "question") }?;
        let prompt = blip2::vqa_prompt(q);
        unsafe { run_generate(model, image, Some(prompt), options_json, None, Some(out)) }
    })
}

/// Generates text for the image after `prompt` (passed verbatim; NULL: no prompt).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn blip2_generate(
    model: *const Blip2Model,
    image: *const Blip2Image,
    prompt: *const c_char,
    options_json: *const c_char,
    out_text: *mut *mut c_char,
) -> Blip2Status {
    guard(|| {
        let out = unsafe { out_ptr(out_text, "out_text") }?;
        let prompt = unsafe { opt_text(prompt, "prompt") }?.map(str::to_string);
        unsafe { run_generate(model, image, prompt, options_json, None, Some(out)) }
    })
}

/// `blip2_generate` that calls `callback(piece, user)` with each newly settled piece of
/// text while generating (beam search: once the search ends). `out_text` may be NULL;
/// otherwise it receives the whole text, as `blip2_generate` returns it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn blip2_generate_stream(
    model: *const Blip2Model,
    image: *const Blip2Image,
    prompt: *const c_char,
    options_json: *const c_char,
    callback: Blip2TextCallback,
    user: *mut c_void,
    out_text: *mut *mut c_char,
) -> Blip2Status {
    guard(|| {
        let out = if out_text.is_null() {
            None
        } else {
            Some(unsafe { out_ptr(out_text, "out_text") }?)
        };
        if callback.is_none() {
            return Err(Fail::invalid("callback is NULL"));
        }
        let prompt = unsafe { opt_text(prompt, "prompt") }?.map(str::to_string);
        unsafe {
            run_generate(
                model,
                image,
                prompt,
                options_json,
                Some((callback, user)),
                out,
            )
        }
    })
}

// ---------------------------------------------------------------------------------------
// Chat
// ---------------------------------------------------------------------------------------

/// Starts a conversation about `image` (runs the image encoder once). The chat holds its
/// own reference to the model: freeing the model handle first is allowed. Free the chat
/// with `blip2_chat_free`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn blip2_chat_new(
    model: *const Blip2Model,
    image: *const Blip2Image,
    out: *mut *mut Blip2Chat,
) -> Blip2Status {
    guard(|| {
        let out = unsafe { out_ptr(out, "out") }?;
        let model = unsafe { handle(model, "model") }?.model.clone();
        let image = &unsafe { handle(image, "image") }?.image;
        let features = model.image_features(&[image])?;
        let chat = SharedChat::new(model, features)?;
        *out = Box::into_raw(Box::new(Blip2Chat {
            chat: Mutex::new(chat),
        }));
        Ok(())
    })
}

unsafe fn chat_ask(
    chat: *const Blip2Chat,
    question: *const c_char,
    options_json: *const c_char,
    cb: Option<(Blip2TextCallback, *mut c_void)>,
    out_text: Option<&mut *mut c_char>,
) -> Result<(), Fail> {
    let chat = unsafe { handle(chat, "chat") }?;
    let question = unsafe { text(question, "question") }?;
    let cfg = unsafe { options(options_json) }?;
    let mut shared = chat.chat.lock().unwrap_or_else(|p| p.into_inner());
    let model = shared.model().clone();
    let result = shared.with(|c| match cb {
        None => c.ask(question, &cfg).map_err(Fail::from),
        Some((cb, user)) => Streamer::new(&model, &cfg, cb, user).and_then(|mut s| {
            let g = c.ask_stream(question, &cfg, |e| s.on_token(e))?;
            s.finish()?;
            Ok(g)
        }),
    });
    put_text(out_text, result?.text)
}

/// Asks the next question of the conversation; the answer is recorded as a turn.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn blip2_chat_ask(
    chat: *const Blip2Chat,
    question: *const c_char,
    options_json: *const c_char,
    out_text: *mut *mut c_char,
) -> Blip2Status {
    guard(|| {
        let out = unsafe { out_ptr(out_text, "out_text") }?;
        unsafe { chat_ask(chat, question, options_json, None, Some(out)) }
    })
}

/// `blip2_chat_ask` streaming the answer to `callback` as `blip2_generate_stream` does.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn blip2_chat_ask_stream(
    chat: *const Blip2Chat,
    question: *const c_char,
    options_json: *const c_char,
    callback: Blip2TextCallback,
    user: *mut c_void,
    out_text: *mut *mut c_char,
) -> Blip2Status {
    guard(|| {
        let out = if out_text.is_null() {
            None
        } else {
            Some(unsafe { out_ptr(out_text, "out_text") }?)
        };
        if callback.is_none() {
            return Err(Fail::invalid("callback is NULL"));
        }
        unsafe { chat_ask(chat, question, options_json, Some((callback, user)), out) }
    })
}

/// Frees a chat. NULL is ignored.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn blip2_chat_free(chat: *mut Blip2Chat) {
    if !chat.is_null() {
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(chat) })));
    }
}

// ---------------------------------------------------------------------------------------
// Retrieval
// ---------------------------------------------------------------------------------------

/// Loads a `Blip2ForImageTextRetrieval` checkpoint directory (e.g. blip2-itm-vit-g);
/// `device` and `dtype` as for `blip2_model_load`. Free it with `blip2_retrieval_free`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn blip2_retrieval_load(
    dir: *const c_char,
    device: *const c_char,
    dtype: *const c_char,
    out: *mut *mut Blip2Retrieval,
) -> Blip2Status {
    guard(|| {
        let out = unsafe { out_ptr(out, "out") }?;
        let dir = unsafe { text(dir, "dir") }?;
        let opts = unsafe { load_options(device, dtype) }?;
        let model = blip2::Blip2Retrieval::load(dir, opts)?;
        *out = Box::into_raw(Box::new(Blip2Retrieval { model }));
        Ok(())
    })
}

/// Frees a retrieval model. NULL is ignored.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn blip2_retrieval_free(model: *mut Blip2Retrieval) {
    if !model.is_null() {
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(model) })));
    }
}

/// The embedding sizes: an image embedding is `num_query * dim` floats (one unit row per
/// query token), a text embedding `dim` floats. Either out-pointer may be NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn blip2_retrieval_dims(
    model: *const Blip2Retrieval,
    out_num_query: *mut usize,
    out_dim: *mut usize,
) -> Blip2Status {
    guard(|| {
        let m = &unsafe { handle(model, "model") }?.model;
        if let Some(q) = unsafe { out_num_query.as_mut() } {
            *q = m.num_query_tokens();
        }
        if let Some(d) = unsafe { out_dim.as_mut() } {
            *d = m.embed_dim();
        }
        Ok(())
    })
}

/// Scores `image` against `n_texts` texts: `out_itm[i]` the ITM match probability in
/// [0, 1], `out_itc[i]` the ITC similarity in [-1, 1] (either array may be NULL; each
/// holds `n_texts` floats, allocated by the caller).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn blip2_retrieval_match(
    model: *const Blip2Retrieval,
    image: *const Blip2Image,
    texts_: *const *const c_char,
    n_texts: usize,
    out_itm: *mut f32,
    out_itc: *mut f32,
) -> Blip2Status {
    guard(|| {
        let m = &unsafe { handle(model, "model") }?.model;
        let image = &unsafe { handle(image, "image") }?.image;
        let t = unsafe { texts(texts_, n_texts, "texts") }?;
        let scores = m.match_scores(image, &t)?;
        if !out_itm.is_null() {
            let o = unsafe { slice_mut(out_itm, n_texts, "out_itm") }?;
            for (o, s) in o.iter_mut().zip(&scores) {
                *o = s.itm;
            }
        }
        if !out_itc.is_null() {
            let o = unsafe { slice_mut(out_itc, n_texts, "out_itc") }?;
            for (o, s) in o.iter_mut().zip(&scores) {
                *o = s.itc;
            }
        }
        Ok(())
    })
}

/// Ranks `n_texts` texts for `image`, best ITM probability first: `out_index[k]` is the
/// input index of the k-th best text, `out_itm[k]` / `out_itc[k]` its scores (caller
/// arrays of `n_texts` elements; the score arrays may be NULL).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn blip2_retrieval_rank(
    model: *const Blip2Retrieval,
    image: *const Blip2Image,
    texts_: *const *const c_char,
    n_texts: usize,
    out_index: *mut usize,
    out_itm: *mut f32,
    out_itc: *mut f32,
) -> Blip2Status {
    guard(|| {
        let m = &unsafe { handle(model, "model") }?.model;
        let image = &unsafe { handle(image, "image") }?.image;
        let t = unsafe { texts(texts_, n_texts, "texts") }?;
        let idx = unsafe { slice_mut(out_index, n_texts, "out_index") }?;
        let ranked = m.rank(image, &t)?;
        for (o, r) in idx.iter_mut().zip(&ranked) {
            *o = r.index;
        }
        if !out_itm.is_null() {
            let o = unsafe { slice_mut(out_itm, n_texts, "out_itm") }?;
            for (o, r) in o.iter_mut().zip(&ranked) {
                *o = r.score.itm;
            }
        }
        if !out_itc.is_null() {
            let o = unsafe { slice_mut(out_itc, n_texts, "out_itc") }?;
            for (o, r) in o.iter_mut().zip(&ranked) {
                *o = r.score.itc;
            }
        }
        Ok(())
    })
}

/// Normalised ITC embeddings of `n_images` images, written to `out` (a caller array of
/// `n_images * num_query * dim` floats, see `blip2_retrieval_dims`), image after image,
/// each `[num_query, dim]` row-major.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn blip2_retrieval_embed_images(
    model: *const Blip2Retrieval,
    images: *const *const Blip2Image,
    n_images: usize,
    out: *mut f32,
) -> Blip2Status {
    guard(|| {
        let m = &unsafe { handle(model, "model") }?.model;
        if n_images == 0 {
            return Err(Fail::invalid("images: no images (n_images is 0)"));
        }
        if images.is_null() {
            return Err(Fail::invalid("images is NULL"));
        }
        let ptrs = unsafe { std::slice::from_raw_parts(images, n_images) };
        let imgs: Vec<&DynamicImage> = ptrs
            .iter()
            .enumerate()
            .map(|(i, &p)| unsafe { handle(p, &format!("images[{i}]")) }.map(|h| &h.image))
            .collect::<Result<_, _>>()?;
        let size = m.num_query_tokens() * m.embed_dim();
        let out = unsafe { slice_mut(out, n_images * size, "out") }?;
        let emb = m.image_embeddings(&imgs)?;
        for (o, e) in out.chunks_exact_mut(size).zip(&emb) {
            o.copy_from_slice(e.as_slice());
        }
        Ok(())
    })
}

/// Normalised ITC embeddings of `n_texts` texts, written to `out` (a caller array of
/// `n_texts * dim` floats), text after text.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn blip2_retrieval_embed_texts(
    model: *const Blip2Retrieval,
    texts_: *const *const c_char,
    n_texts: usize,
    out: *mut f32,
) -> Blip2Status {
    guard(|| {
        let m = &unsafe { handle(model, "model") }?.model;
        let t = unsafe { texts(texts_, n_texts, "texts") }?;
        let dim = m.embed_dim();
        let out = unsafe { slice_mut(out, n_texts * dim, "out") }?;
        let emb = m.text_embeddings(&t)?;
        for (o, e) in out.chunks_exact_mut(dim).zip(&emb) {
            o.copy_from_slice(e.as_slice());
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_with_hf_names() {
        let c = generation_config(Some(
            r#"{"max_new_tokens": 5, "num_beams": 2, "early_stopping": "never", "eos_token_id": [2, 3], "seed": 7}"#,
        ))
        .unwrap();
        assert_eq!(c.max_new_tokens, 5);
        assert_eq!(c.num_beams, 2);
        assert_eq!(c.early_stopping, EarlyStopping::Never);
        assert_eq!(c.eos_token_ids, Some(vec![2, 3]));
        assert_eq!(c.seed, Some(7));
        assert_eq!(
            generation_config(None).unwrap(),
            GenerationConfig::default()
        );
        assert_eq!(
            generation_config(Some("  ")).unwrap(),
            GenerationConfig::default()
        );
        let e = generation_config(Some(r#"{"max_tokens": 5}"#)).unwrap_err();
        assert!(e.contains("unknown generation option 'max_tokens'"), "{e}");
        let e = generation_config(Some(r#"{"top_p": 2}"#)).unwrap_err();
        assert!(e.contains("top_p must be in (0, 1]"), "{e}");
        let e = generation_config(Some("[1]")).unwrap_err();
        assert!(e.contains("JSON object"), "{e}");
    }

    #[test]
    fn handles_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Blip2Model>();
        check::<Blip2Retrieval>();
        check::<Blip2Chat>();
        check::<Blip2Image>();
    }
}
