//! `blip2._blip2`: the native module behind the `blip2` Python package (PyO3, abi3).
//! A thin shell over the library's facade: argument conversion, errors as Python
//! exceptions, the GIL released while the model computes, and streaming through an
//! iterator fed by a worker thread. `python/blip2/__init__.pyi` holds the typed signatures.

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};

use blip2::image::{DynamicImage, GrayAlphaImage, GrayImage, RgbImage, RgbaImage};
use blip2::{
    Blip2 as Model, Blip2Retrieval as RetrievalModel, DType, Device, EarlyStopping, Error,
    GenerationConfig, ImageFeatures, LoadOptions, SharedChat, TextStream,
};
use numpy::ndarray::{Array1, Array2, Array3};
use numpy::{IntoPyArray, PyArray1, PyArray2, PyArray3, PyReadonlyArrayDyn, PyUntypedArray};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyList, PyString, PyTuple};

create_exception!(
    _blip2,
    Blip2Error,
    PyException,
    "Base class of every error the blip2 library raises."
);
create_exception!(
    _blip2,
    InvalidInputError,
    Blip2Error,
    "A bad argument: an unreadable or undecodable image, an invalid generation setting, a text longer than the model's positions, an empty batch."
);
create_exception!(
    _blip2,
    CheckpointError,
    Blip2Error,
    "A checkpoint that cannot be loaded or used: missing or malformed files, missing or mismatched tensors, a tokenizer problem, an unsupported architecture."
);
create_exception!(
    _blip2,
    DeviceError,
    Blip2Error,
    "The device failed: no GPU adapter, out of memory, device lost, a device limit exceeded."
);

/// The library's error as the Python exception of its kind, with the library's message.
fn py_err(e: Error) -> PyErr {
    use blip2::engine::Error as E;
    let msg = e.to_string();
    match &e {
        Error::Invalid(_) | Error::Image { .. } | Error::PromptTooLong { .. } => {
            InvalidInputError::new_err(msg)
        }
        Error::TooLarge { what, .. } if what == "image" => InvalidInputError::new_err(msg),
        Error::TooLarge { .. } => CheckpointError::new_err(msg),
        Error::Config { .. }
        | Error::Checkpoint { .. }
        | Error::Weights(_)
        | Error::Adapter(_)
        | Error::Tokenizer { .. }
        | Error::Io { .. }
        | Error::Unsupported(_) => CheckpointError::new_err(msg),
        Error::Engine(
            E::NoAdapter(_) | E::OutOfMemory(_) | E::DeviceLost(_) | E::Gpu(_) | E::Limit { .. },
        ) => DeviceError::new_err(msg),
        Error::Engine(E::Invalid(_)) => InvalidInputError::new_err(msg),
        Error::Engine(_) => Blip2Error::new_err(msg),
        // NaN/inf produced while computing (broken weights or inputs, an overflow), and a
        // cancellation these bindings never request: the base class.
        Error::NonFinite { .. } | Error::Cancelled => Blip2Error::new_err(msg),
    }
}

fn invalid(msg: impl Into<String>) -> PyErr {
    InvalidInputError::new_err(msg.into())
}

fn load_options(device: &str, dtype: &str) -> Result<LoadOptions, Error> {
    let device = match device {
        "auto" => Device::auto()?,
        "cpu" => Device::cpu(),
        "gpu" => Device::gpu()?,
        other => {
            return Err(Error::Invalid(format!(
                "unknown device '{other}' (expected auto, cpu or gpu)"
            )));
        }
    };
    Ok(LoadOptions {
        device,
        dtype: dtype.parse::<DType>()?,
        progress: None,
        adapters: Vec::new(),
    })
}

// ---------------------------------------------------------------------------------------
// Images
// ---------------------------------------------------------------------------------------

/// An image argument, taken from Python objects while holding the GIL and decoded after
/// releasing it.
enum ImageSrc {
    Path(PathBuf),
    Bytes(Vec<u8>),
    Pixels(DynamicImage),
}

impl ImageSrc {
    fn decode(self) -> Result<DynamicImage, Error> {
        match self {
            ImageSrc::Path(p) => blip2::load_image(p),
            ImageSrc::Bytes(b) => blip2::load_image_from_bytes(&b, "<bytes>"),
            ImageSrc::Pixels(i) => Ok(i),
        }
    }
}

fn pixels_to_image(w: usize, h: usize, c: usize, data: Vec<u8>) -> PyResult<DynamicImage> {
    let (w32, h32) = (
        u32::try_from(w).map_err(|_| invalid("image too wide"))?,
        u32::try_from(h).map_err(|_| invalid("image too tall"))?,
    );
    if w == 0 || h == 0 {
        return Err(invalid(format!("image of {w}x{h} pixels is empty")));
    }
    let bad = || invalid("pixel buffer does not match the image size");
    Ok(match c {
        1 => DynamicImage::ImageLuma8(GrayImage::from_raw(w32, h32, data).ok_or_else(bad)?),
        2 => DynamicImage::ImageLumaA8(GrayAlphaImage::from_raw(w32, h32, data).ok_or_else(bad)?),
        3 => DynamicImage::ImageRgb8(RgbImage::from_raw(w32, h32, data).ok_or_else(bad)?),
        4 => DynamicImage::ImageRgba8(RgbaImage::from_raw(w32, h32, data).ok_or_else(bad)?),
        _ => return Err(invalid(format!("{c} channels (expected 1, 3 or 4)"))),
    })
}

/// A PIL.Image (duck-typed: PIL is not needed unless the caller uses it). RGB, RGBA, L and
/// LA are taken as they are; other modes are converted by PIL to RGBA when they carry
/// transparency and to RGB otherwise, as transformers' `convert_to_rgb` would see them.
fn pil_image(obj: &Bound<'_, PyAny>) -> PyResult<DynamicImage> {
    let mut img = obj.clone();
    let mut mode: String = img.getattr("mode")?.extract()?;
    if !matches!(mode.as_str(), "RGB" | "RGBA" | "L" | "LA") {
        let transparent = img.getattr("info")?.contains("transparency")? || mode.contains('A');
        let target = if transparent { "RGBA" } else { "RGB" };
        img = img.call_method1("convert", (target,))?;
        mode = target.to_string();
    }
    let (w, h): (usize, usize) = img.getattr("size")?.extract()?;
    let data: Vec<u8> = img.call_method0("tobytes")?.extract()?;
    let c = match mode.as_str() {
        "L" => 1,
        "LA" => 2,
        "RGB" => 3,
        _ => 4,
    };
    pixels_to_image(w, h, c, data)
}

/// A numpy uint8 array: HxWx3 (RGB), HxWx4 (RGBA) or HxW (grey).
fn array_image(obj: &Bound<'_, PyAny>) -> PyResult<DynamicImage> {
    let arr: PyReadonlyArrayDyn<'_, u8> = obj.extract().map_err(|_| {
        let dtype = obj
            .getattr("dtype")
            .and_then(|d| d.str().map(|s| s.to_string()))
            .unwrap_or_default();
        invalid(format!(
            "an image array must have dtype uint8 (HxWx3 RGB), got {dtype}"
        ))
    })?;
    let a = arr.as_array();
    let (h, w, c) = match *a.shape() {
        [h, w] => (h, w, 1),
        [h, w, c @ (3 | 4)] => (h, w, c),
        ref s => {
            return Err(invalid(format!(
                "an image array must be HxWx3 (RGB), HxWx4 (RGBA) or HxW (grey), got shape {s:?}"
            )));
        }
    };
    pixels_to_image(w, h, c, a.iter().copied().collect())
}

fn image_src(obj: &Bound<'_, PyAny>) -> PyResult<ImageSrc> {
    if obj.cast::<PyString>().is_ok() {
        return Ok(ImageSrc::Path(PathBuf::from(obj.extract::<String>()?)));
    }
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(ImageSrc::Bytes(b.as_bytes().to_vec()));
    }
    if let Ok(b) = obj.cast::<PyByteArray>() {
        return Ok(ImageSrc::Bytes(b.to_vec()));
    }
    if obj.hasattr("__fspath__")? {
        let p: PathBuf = obj.extract()?;
        return Ok(ImageSrc::Path(p));
    }
    if obj.cast::<PyUntypedArray>().is_ok() {
        return Ok(ImageSrc::Pixels(array_image(obj)?));
    }
    if obj.hasattr("tobytes")? && obj.hasattr("mode")? && obj.hasattr("size")? {
        return Ok(ImageSrc::Pixels(pil_image(obj)?));
    }
    Err(PyTypeError::new_err(format!(
        "an image must be a path (str or os.PathLike), encoded bytes, a PIL image or a uint8 numpy array of HxWx3, got {}",
        obj.get_type().name()?
    )))
}

/// One image, or a list/tuple of images (a batch).
fn images_arg(obj: &Bound<'_, PyAny>) -> PyResult<(Vec<ImageSrc>, bool)> {
    if obj.cast::<PyList>().is_ok() || obj.cast::<PyTuple>().is_ok() {
        let v = obj
            .try_iter()?
            .map(|o| image_src(&o?))
            .collect::<PyResult<Vec<_>>>()?;
        if v.is_empty() {
            return Err(invalid("empty list of images"));
        }
        Ok((v, true))
    } else {
        Ok((vec![image_src(obj)?], false))
    }
}

fn decode_all(srcs: Vec<ImageSrc>) -> Result<Vec<DynamicImage>, Error> {
    srcs.into_iter().map(ImageSrc::decode).collect()
}

/// A text or a list of texts.
fn texts_arg(obj: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    if let Ok(s) = obj.extract::<String>() {
        return Ok(vec![s]);
    }
    let v: Vec<String> = obj
        .extract()
        .map_err(|_| PyTypeError::new_err("texts must be a str or a list of str"))?;
    if v.is_empty() {
        return Err(invalid("empty list of texts"));
    }
    Ok(v)
}

// ---------------------------------------------------------------------------------------
// Generation settings
// ---------------------------------------------------------------------------------------

const GENERATION_KEYS: &str = "max_new_tokens, min_new_tokens, num_beams, length_penalty, early_stopping, do_sample, temperature, top_k, top_p, repetition_penalty, no_repeat_ngram_size, seed, eos_token_id, pad_token_id";

/// transformers' `generate` keyword arguments as a [`GenerationConfig`].
fn generation(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<GenerationConfig> {
    let mut cfg = GenerationConfig::default();
    let Some(kw) = kwargs else {
        return Ok(cfg);
    };
    for (k, v) in kw.iter() {
        let k: String = k.extract()?;
        let typed = |want: &str| {
            PyTypeError::new_err(format!(
                "{k} must be {want}, got {}",
                v.get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default()
            ))
        };
        let uint = || {
            v.extract::<usize>()
                .map_err(|_| typed("a non-negative int"))
        };
        let float = || v.extract::<f32>().map_err(|_| typed("a number"));
        match k.as_str() {
            "max_new_tokens" => cfg.max_new_tokens = uint()?,
            "min_new_tokens" => cfg.min_new_tokens = uint()?,
            "num_beams" => cfg.num_beams = uint()?,
            "length_penalty" => cfg.length_penalty = float()?,
            "early_stopping" => {
                cfg.early_stopping = if let Ok(b) = v.extract::<bool>() {
                    if b {
                        EarlyStopping::True
                    } else {
                        EarlyStopping::False
                    }
                } else if v.extract::<String>().is_ok_and(|s| s == "never") {
                    EarlyStopping::Never
                } else {
                    return Err(typed("True, False or \"never\""));
                }
            }
            "do_sample" => cfg.do_sample = v.extract().map_err(|_| typed("a bool"))?,
            "temperature" => cfg.temperature = float()?,
            "top_k" => cfg.top_k = uint()?,
            "top_p" => cfg.top_p = float()?,
            "repetition_penalty" => cfg.repetition_penalty = float()?,
            "no_repeat_ngram_size" => cfg.no_repeat_ngram_size = uint()?,
            "seed" => {
                cfg.seed = v
                    .extract::<Option<u64>>()
                    .map_err(|_| typed("a non-negative int or None"))?
            }
            "eos_token_id" => {
                cfg.eos_token_ids = if v.is_none() {
                    None
                } else if let Ok(one) = v.extract::<u32>() {
                    Some(vec![one])
                } else {
                    Some(
                        v.extract::<Vec<u32>>()
                            .map_err(|_| typed("an int or a list of int"))?,
                    )
                }
            }
            "pad_token_id" => {
                cfg.pad_token_id = v
                    .extract::<Option<u32>>()
                    .map_err(|_| typed("an int or None"))?
            }
            other => {
                return Err(PyTypeError::new_err(format!(
                    "unexpected keyword argument '{other}' (generation options: {GENERATION_KEYS})"
                )));
            }
        }
    }
    cfg.validate().map_err(py_err)?;
    Ok(cfg)
}

// ---------------------------------------------------------------------------------------
// Streaming
// ---------------------------------------------------------------------------------------

enum Piece {
    Text(String),
    End(Result<(), Error>),
}

/// An iterator over the pieces of text of one generation, as they are generated; the
/// pieces joined are the whole text (what the non-streaming call returns). Generation runs
/// on a worker thread; waiting for the next piece releases the GIL.
#[pyclass(module = "blip2._blip2")]
pub struct TextIterator {
    rx: Mutex<Option<Receiver<Piece>>>,
}

#[pymethods]
impl TextIterator {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<String>> {
        // Lock and wait without the GIL: another thread may be iterating too.
        let got = py.detach(|| {
            let mut guard = self.rx.lock().unwrap_or_else(|p| p.into_inner());
            let rx = guard.as_ref()?;
            let got = rx.recv();
            if !matches!(got, Ok(Piece::Text(_))) {
                *guard = None;
            }
            Some(got)
        });
        match got {
            None => Ok(None),
            Some(Ok(Piece::Text(s))) => Ok(Some(s)),
            Some(Ok(Piece::End(r))) => r.map(|()| None).map_err(py_err),
            Some(Err(_)) => Err(Blip2Error::new_err(
                "the generation thread stopped without a result (internal error)",
            )),
        }
    }
}

/// Runs `work` on a new thread, which sends the settled pieces of text of the tokens
/// `work` reports to `emit`, then the end; returns the Python iterator over them.
fn spawn_stream(
    model: Arc<Model>,
    cfg: GenerationConfig,
    work: impl FnOnce(&Model, &GenerationConfig, &mut dyn FnMut(u32)) -> Result<(), Error>
    + Send
    + 'static,
) -> PyResult<TextIterator> {
    let eos = model
        .resolve_generation(&cfg)
        .map_err(py_err)?
        .eos_token_ids()
        .to_vec();
    let (tx, rx): (Sender<Piece>, Receiver<Piece>) = channel();
    std::thread::Builder::new()
        .name("blip2-stream".into())
        .spawn(move || {
            let mut stream = TextStream::new(&model.tokenizer, &eos);
            let mut failure: Option<Error> = None;
            let r = work(&model, &cfg, &mut |id| {
                if failure.is_some() {
                    return;
                }
                match stream.push(id) {
                    Ok(s) if !s.is_empty() => {
                        let _ = tx.send(Piece::Text(s));
                    }
                    Ok(_) => {}
                    Err(e) => failure = Some(e),
                }
            });
            let r = r.and_then(|()| failure.map_or(Ok(()), Err));
            let r = r.and_then(|()| {
                let rest = stream.finish()?;
                if !rest.is_empty() {
                    let _ = tx.send(Piece::Text(rest));
                }
                Ok(())
            });
            // A dropped iterator closes the channel: nothing more to tell.
            let _ = tx.send(Piece::End(r));
        })
        .map_err(|e| Blip2Error::new_err(format!("cannot start the generation thread: {e}")))?;
    Ok(TextIterator {
        rx: Mutex::new(Some(rx)),
    })
}

// ---------------------------------------------------------------------------------------
// Captioning model
// ---------------------------------------------------------------------------------------

/// A BLIP-2 captioning / question-answering model (Blip2ForConditionalGeneration).
/// Thread-safe: one model may serve any number of Python threads at once; the GIL is
/// released while it computes.
#[pyclass(module = "blip2._blip2", frozen, name = "Blip2")]
pub struct PyBlip2 {
    model: Arc<Model>,
}

/// Prompts for a batch: one for all rows (or none), or one per row.
fn prompts_arg(obj: Option<&Bound<'_, PyAny>>, n: usize) -> PyResult<Vec<Option<String>>> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else {
        return Ok(vec![None; n]);
    };
    if let Ok(s) = obj.extract::<String>() {
        return Ok(vec![Some(s); n]);
    }
    let v: Vec<String> = obj
        .extract()
        .map_err(|_| PyTypeError::new_err("a prompt must be a str, None or a list of str"))?;
    if v.len() != n {
        return Err(invalid(format!("{n} images but {} prompts", v.len())));
    }
    Ok(v.into_iter().map(Some).collect())
}

impl PyBlip2 {
    /// The common body of caption / ask / generate: one image (a str back, or an iterator
    /// with `stream`) or a list of images (a list of str back).
    fn run(
        &self,
        py: Python<'_>,
        image: &Bound<'_, PyAny>,
        prompts: Option<&Bound<'_, PyAny>>,
        map_prompt: fn(String) -> String,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let kwargs = kwargs.map(|k| k.copy()).transpose()?;
        let stream = match &kwargs {
            Some(k) => match k.get_item("stream")? {
                Some(v) => {
                    k.del_item("stream")?;
                    v.is_truthy()?
                }
                None => false,
            },
            None => false,
        };
        let cfg = generation(kwargs.as_ref())?;
        let (srcs, batch) = images_arg(image)?;
        let prompts: Vec<Option<String>> = prompts_arg(prompts, srcs.len())?
            .into_iter()
            .map(|p| p.map(map_prompt))
            .collect();
        if stream {
            if batch {
                return Err(invalid("stream=True takes one image, not a list"));
            }
            let src = srcs.into_iter().next().expect("one image");
            let prompt = prompts.into_iter().next().flatten();
            let it = spawn_stream(self.model.clone(), cfg, move |m, cfg, emit| {
                let img = src.decode()?;
                m.generate_stream(&img, prompt.as_deref(), cfg, |e| emit(e.token_id))?;
                Ok(())
            })?;
            return Ok(Py::new(py, it)?.into_any());
        }
        let model = &*self.model;
        let texts = py
            .detach(|| -> Result<Vec<String>, Error> {
                let imgs = decode_all(srcs)?;
                let refs: Vec<&DynamicImage> = imgs.iter().collect();
                let ps: Vec<Option<&str>> = prompts.iter().map(|p| p.as_deref()).collect();
                let gens = if refs.len() == 1 {
                    vec![model.generate(refs[0], ps[0], &cfg)?]
                } else {
                    model.generate_batch(&refs, &ps, &cfg)?
                };
                Ok(gens.into_iter().map(|g| g.text).collect())
            })
            .map_err(py_err)?;
        if batch {
            Ok(PyList::new(py, texts)?.into_any().unbind())
        } else {
            let t = texts.into_iter().next().unwrap_or_default();
            Ok(PyString::new(py, &t).into_any().unbind())
        }
    }
}

#[pymethods]
impl PyBlip2 {
    /// Loads a Hugging Face BLIP-2 checkpoint directory, or the demo model built into the
    /// library when `path` is None. `device`: "auto", "cpu" or "gpu"; `dtype`: "f32",
    /// "f16", "bf16" (CPU only), "q8" or "q4".
    #[staticmethod]
    #[pyo3(signature = (path=None, device="auto", dtype="f16"))]
    fn load(py: Python<'_>, path: Option<PathBuf>, device: &str, dtype: &str) -> PyResult<Self> {
        let model = py
            .detach(|| {
                let opts = load_options(device, dtype)?;
                match path {
                    Some(p) => Model::load(p, opts),
                    None => blip2::demo::load_demo(opts),
                }
            })
            .map_err(py_err)?;
        Ok(PyBlip2 {
            model: Arc::new(model),
        })
    }

    /// A caption of the image (no prompt), or of each image of a list.
    #[pyo3(signature = (image, **generation))]
    fn caption(
        &self,
        py: Python<'_>,
        image: &Bound<'_, PyAny>,
        generation: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        self.run(py, image, None, |p| p, generation)
    }

    /// Answers a question about the image (prompt "Question: {question} Answer:").
    #[pyo3(signature = (image, question, **generation))]
    fn ask(
        &self,
        py: Python<'_>,
        image: &Bound<'_, PyAny>,
        question: &Bound<'_, PyAny>,
        generation: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        if question.is_none() {
            return Err(PyTypeError::new_err("question must be a str"));
        }
        self.run(
            py,
            image,
            Some(question),
            |q| blip2::vqa_prompt(&q),
            generation,
        )
    }

    /// Generates text for the image after `prompt` (passed verbatim; None: no prompt).
    #[pyo3(signature = (image, prompt=None, **generation))]
    fn generate(
        &self,
        py: Python<'_>,
        image: &Bound<'_, PyAny>,
        prompt: Option<&Bound<'_, PyAny>>,
        generation: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        self.run(py, image, prompt, |p| p, generation)
    }

    /// A conversation about the image; its features are computed once, here.
    fn chat(&self, py: Python<'_>, image: &Bound<'_, PyAny>) -> PyResult<PyChat> {
        let src = image_src(image)?;
        let model = &*self.model;
        let features = py
            .detach(|| -> Result<ImageFeatures, Error> {
                let img = src.decode()?;
                model.image_features(&[&img])
            })
            .map_err(py_err)?;
        let chat = SharedChat::new(self.model.clone(), features).map_err(py_err)?;
        Ok(PyChat {
            model: self.model.clone(),
            state: Arc::new(Mutex::new(chat)),
        })
    }

    /// The device the model runs on, e.g. "cpu" or "gpu(NVIDIA H100)".
    #[getter]
    fn device(&self) -> String {
        format!("{:?}", self.model.device())
    }

    fn __repr__(&self) -> String {
        format!(
            "Blip2(device={:?}, weights={})",
            self.device(),
            self.model.weight_stats().linear_dtype
        )
    }
}

/// The conversation with its model and the KV cache of its previous turn (reused by the
/// next question).
type ChatState = Arc<Mutex<SharedChat>>;

/// Runs one turn of a chat under its lock.
fn chat_turn(
    state: &ChatState,
    question: &str,
    cfg: &GenerationConfig,
    on_token: &mut dyn FnMut(u32),
) -> Result<String, Error> {
    let mut chat = state.lock().unwrap_or_else(|p| p.into_inner());
    let r = chat.with(|c| c.ask_stream(question, cfg, |e| on_token(e.token_id)));
    Ok(r?.text)
}

/// A conversation about one image (from `Blip2.chat`). Questions are asked with the earlier
/// turns in the prompt. Calls from several threads are safe and take turns.
#[pyclass(module = "blip2._blip2", frozen, name = "Chat")]
pub struct PyChat {
    model: Arc<Model>,
    state: ChatState,
}

#[pymethods]
impl PyChat {
    /// Answers `question` in the context of the earlier turns and records the turn;
    /// with `stream=True`, an iterator over the pieces of the answer.
    #[pyo3(signature = (question, stream=false, **generation))]
    fn ask(
        &self,
        py: Python<'_>,
        question: String,
        stream: bool,
        generation: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let cfg = self::generation(generation)?;
        if stream {
            let state = self.state.clone();
            let it = spawn_stream(self.model.clone(), cfg, move |_, cfg, emit| {
                chat_turn(&state, &question, cfg, emit).map(|_| ())
            })?;
            return Ok(Py::new(py, it)?.into_any());
        }
        let state = &self.state;
        let text = py
            .detach(|| chat_turn(state, &question, &cfg, &mut |_| {}))
            .map_err(py_err)?;
        Ok(PyString::new(py, &text).into_any().unbind())
    }

    /// The turns so far, as (question, answer) pairs.
    #[getter]
    fn turns(&self) -> Vec<(String, String)> {
        let mut chat = self.state.lock().unwrap_or_else(|p| p.into_inner());
        chat.with(|c| {
            c.turns()
                .iter()
                .map(|t| (t.question.clone(), t.answer.clone()))
                .collect()
        })
    }

    /// Forgets the conversation (the image features stay).
    fn clear(&self) {
        let mut chat = self.state.lock().unwrap_or_else(|p| p.into_inner());
        chat.with(|c| c.clear());
    }
}

// ---------------------------------------------------------------------------------------
// Retrieval
// ---------------------------------------------------------------------------------------

/// One float32 score per text.
type Scores<'py> = Bound<'py, PyArray1<f32>>;

/// A BLIP-2 image-text retrieval model (Blip2ForImageTextRetrieval, e.g.
/// Salesforce/blip2-itm-vit-g): ITM match probabilities, ITC similarities and embeddings.
/// Thread-safe; the GIL is released while it computes.
#[pyclass(module = "blip2._blip2", frozen, name = "Retrieval")]
pub struct PyRetrieval {
    model: Arc<RetrievalModel>,
}

#[pymethods]
impl PyRetrieval {
    /// Loads a retrieval checkpoint directory. `device`: "auto", "cpu" or "gpu"; `dtype`:
    /// "f32", "f16", "bf16" (CPU only), "q8" or "q4".
    #[staticmethod]
    #[pyo3(signature = (path, device="auto", dtype="f32"))]
    fn load(py: Python<'_>, path: PathBuf, device: &str, dtype: &str) -> PyResult<Self> {
        let model = py
            .detach(|| RetrievalModel::load(path, load_options(device, dtype)?))
            .map_err(py_err)?;
        Ok(PyRetrieval {
            model: Arc::new(model),
        })
    }

    /// Scores the image against each text: (itm, itc), two float32 arrays of len(texts):
    /// the ITM match probability in [0, 1] and the ITC similarity in [-1, 1].
    fn r#match<'py>(
        &self,
        py: Python<'py>,
        image: &Bound<'py, PyAny>,
        texts: &Bound<'py, PyAny>,
    ) -> PyResult<(Scores<'py>, Scores<'py>)> {
        let src = image_src(image)?;
        let texts = texts_arg(texts)?;
        let model = &*self.model;
        let scores = py
            .detach(|| model.match_scores(&src.decode()?, &texts))
            .map_err(py_err)?;
        let itm: Vec<f32> = scores.iter().map(|s| s.itm).collect();
        let itc: Vec<f32> = scores.iter().map(|s| s.itc).collect();
        Ok((itm.into_pyarray(py), itc.into_pyarray(py)))
    }

    /// The texts ranked for the image, best ITM probability first: (indices, itm, itc),
    /// an int64 array of input indices and the scores in that order.
    fn rank<'py>(
        &self,
        py: Python<'py>,
        image: &Bound<'py, PyAny>,
        texts: &Bound<'py, PyAny>,
    ) -> PyResult<(Bound<'py, PyArray1<i64>>, Scores<'py>, Scores<'py>)> {
        let src = image_src(image)?;
        let texts = texts_arg(texts)?;
        let model = &*self.model;
        let ranked = py
            .detach(|| model.rank(&src.decode()?, &texts))
            .map_err(py_err)?;
        let idx: Array1<i64> = ranked.iter().map(|r| r.index as i64).collect();
        let itm: Array1<f32> = ranked.iter().map(|r| r.score.itm).collect();
        let itc: Array1<f32> = ranked.iter().map(|r| r.score.itc).collect();
        Ok((
            idx.into_pyarray(py),
            itm.into_pyarray(py),
            itc.into_pyarray(py),
        ))
    }

    /// Normalised ITC embeddings of the images (one image or a list): float32
    /// [n_images, num_query_tokens, embed_dim].
    fn embed_images<'py>(
        &self,
        py: Python<'py>,
        images: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray3<f32>>> {
        let (srcs, _) = images_arg(images)?;
        let model = &*self.model;
        let (q, d) = (model.num_query_tokens(), model.embed_dim());
        let embs = py
            .detach(|| {
                let imgs = decode_all(srcs)?;
                let refs: Vec<&DynamicImage> = imgs.iter().collect();
                model.image_embeddings(&refs)
            })
            .map_err(py_err)?;
        let n = embs.len();
        let data: Vec<f32> = embs.into_iter().flat_map(|e| e.into_vec()).collect();
        let arr = Array3::from_shape_vec((n, q, d), data)
            .map_err(|e| Blip2Error::new_err(format!("embedding shape: {e}")))?;
        Ok(arr.into_pyarray(py))
    }

    /// Normalised ITC embeddings of the texts (one text or a list): float32
    /// [n_texts, embed_dim].
    fn embed_texts<'py>(
        &self,
        py: Python<'py>,
        texts: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let texts = texts_arg(texts)?;
        let model = &*self.model;
        let d = model.embed_dim();
        let embs = py
            .detach(|| model.text_embeddings(&texts))
            .map_err(py_err)?;
        let n = embs.len();
        let data: Vec<f32> = embs.into_iter().flat_map(|e| e.into_vec()).collect();
        let arr = Array2::from_shape_vec((n, d), data)
            .map_err(|e| Blip2Error::new_err(format!("embedding shape: {e}")))?;
        Ok(arr.into_pyarray(py))
    }

    /// Query tokens per image embedding.
    #[getter]
    fn num_query_tokens(&self) -> usize {
        self.model.num_query_tokens()
    }

    /// Width of the ITC embeddings.
    #[getter]
    fn embed_dim(&self) -> usize {
        self.model.embed_dim()
    }
}

#[pymodule]
fn _blip2(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<PyBlip2>()?;
    m.add_class::<PyChat>()?;
    m.add_class::<PyRetrieval>()?;
    m.add_class::<TextIterator>()?;
    m.add("Blip2Error", py.get_type::<Blip2Error>())?;
    m.add("InvalidInputError", py.get_type::<InvalidInputError>())?;
    m.add("CheckpointError", py.get_type::<CheckpointError>())?;
    m.add("DeviceError", py.get_type::<DeviceError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
