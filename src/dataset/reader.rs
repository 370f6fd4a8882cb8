//! Worker threads that read, decode and preprocess images ahead of the model.
//!
//! Workers take item indices in order from a shared counter, but never more than `window`
//! items ahead of what the consumer has taken: at most `window` preprocessed images exist at
//! any time (bounded memory however slow the model or one image is). The consumer gets the
//! items back in order through [`Reader::next`].

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use blip2::ImageLoadOptions;
use blip2::model::config::ImageProcessorConfig;

use super::inputs::{Location, WorkItem};

/// Limits applied to every item before and while it is decoded.
#[derive(Clone, Copy, Debug)]
pub struct ReadLimits {
    /// Largest encoded size read (the file or tar member size is checked first).
    pub max_bytes: u64,
    /// Largest width x height decoded (checked on the header, before decoding).
    pub max_pixels: u64,
}

/// One preprocessed image: `[3, h, w]` f32 values, channels first.
pub struct Pixels {
    pub data: Vec<f32>,
    pub hw: (usize, usize),
}

/// What a worker made of an item: its pixels, or why it could not (the error row's text).
pub type Prepared = Result<Pixels, String>;

struct Gate {
    /// (next index to hand out, items taken by the consumer, stop).
    state: Mutex<(usize, usize, bool)>,
    cv: Condvar,
}

pub struct Reader {
    gate: Arc<Gate>,
    rx: Receiver<(usize, Prepared)>,
    pending: BTreeMap<usize, Prepared>,
    next: usize,
    end: usize,
    workers: Vec<JoinHandle<()>>,
}

impl Reader {
    /// Starts `threads` workers over `items` (all of them are read, in order).
    pub fn start(
        items: Arc<Vec<WorkItem>>,
        cfg: ImageProcessorConfig,
        load: ImageLoadOptions,
        limits: ReadLimits,
        threads: usize,
        window: usize,
    ) -> Reader {
        let window = window.max(1);
        let gate = Arc::new(Gate {
            state: Mutex::new((0, 0, false)),
            cv: Condvar::new(),
        });
        let (tx, rx) = sync_channel(window);
        let end = items.len();
        let workers = (0..threads.max(1))
            .map(|_| {
                let (items, gate, tx, cfg) = (items.clone(), gate.clone(), tx.clone(), cfg.clone());
                std::thread::spawn(move || worker(&items, &gate, &tx, &cfg, &load, limits, window))
            })
            .collect();
        Reader {
            gate,
            rx,
            pending: BTreeMap::new(),
            next: 0,
            end,
            workers,
        }
    }

    /// The next item's result, in item order; None after the last.
    pub fn next(&mut self) -> Option<Prepared> {
        if self.next >= self.end {
            return None;
        }
        let want = self.next;
        let got = loop {
            if let Some(p) = self.pending.remove(&want) {
                break p;
            }
            match self.rx.recv() {
                Ok((i, p)) => {
                    self.pending.insert(i, p);
                }
                // Every worker is gone without sending it: only a panic outside the
                // guarded decode can do that.
                Err(_) => break Err("reader thread stopped unexpectedly".to_string()),
            }
        };
        self.next += 1;
        let mut st = self.gate.state.lock().unwrap_or_else(|e| e.into_inner());
        st.1 = self.next;
        self.gate.cv.notify_all();
        Some(got)
    }
}

impl Drop for Reader {
    /// Stops the workers after their current item and waits for them. A worker never
    /// blocks in `send`: at most `window` items are handed out and not yet taken, and the
    /// channel holds `window`.
    fn drop(&mut self) {
        {
            let mut st = self.gate.state.lock().unwrap_or_else(|e| e.into_inner());
            st.2 = true;
            self.gate.cv.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn worker(
    items: &[WorkItem],
    gate: &Gate,
    tx: &SyncSender<(usize, Prepared)>,
    cfg: &ImageProcessorConfig,
    load: &ImageLoadOptions,
    limits: ReadLimits,
    window: usize,
) {
    loop {
        let i = {
            let mut st = gate.state.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if st.2 || st.0 >= items.len() {
                    return;
                }
                if st.0 < st.1 + window {
                    break;
                }
                st = gate.cv.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            st.0 += 1;
            st.0 - 1
        };
        // A decoder bug must cost one row, not the run.
        let out = catch_unwind(AssertUnwindSafe(|| prepare(&items[i], cfg, load, limits)))
            .unwrap_or_else(|_| Err("the image decoder panicked on this file".to_string()));
        if tx.send((i, out)).is_err() {
            return;
        }
    }
}

/// Reads, checks, decodes and preprocesses one item.
pub fn prepare(
    item: &WorkItem,
    cfg: &ImageProcessorConfig,
    load: &ImageLoadOptions,
    limits: ReadLimits,
) -> Prepared {
    let bytes = read_bytes(&item.location, limits.max_bytes)?;
    let (w, h) = image_size(&bytes)?;
    let px = w as u64 * h as u64;
    if px > limits.max_pixels {
        return Err(format!(
            "image of {w}x{h} = {px} pixels is above the limit of {} (--max-image-pixels)",
            limits.max_pixels
        ));
    }
    let img =
        blip2::load_image_from_bytes_with(&bytes, &item.path, load).map_err(|e| e.to_string())?;
    let data = blip2::model::preprocess::preprocess(&img, cfg).map_err(|e| e.to_string())?;
    let hw = if cfg.do_resize {
        cfg.size
    } else {
        (img.height() as usize, img.width() as usize)
    };
    Ok(Pixels { data, hw })
}

/// The item's encoded bytes, refusing more than `max` before reading them.
fn read_bytes(loc: &Location, max: u64) -> Result<Vec<u8>, String> {
    let too_big = |len: u64| {
        format!("{len} bytes is above the limit of {max} bytes per image (--max-image-bytes)")
    };
    match loc {
        Location::Invalid(reason) => Err(reason.clone()),
        Location::File(p) => {
            let f = std::fs::File::open(p).map_err(|e| format!("cannot open: {e}"))?;
            let len = f.metadata().map_err(|e| format!("cannot stat: {e}"))?.len();
            if len > max {
                return Err(too_big(len));
            }
            let mut bytes = Vec::with_capacity(len as usize);
            // `take` keeps a file that grows while it is read within the limit.
            f.take(max + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| format!("cannot read: {e}"))?;
            if bytes.len() as u64 > max {
                return Err(too_big(bytes.len() as u64));
            }
            Ok(bytes)
        }
        Location::TarMember { tar, offset, len } => {
            if *len > max {
                return Err(too_big(*len));
            }
            let mut f =
                std::fs::File::open(tar).map_err(|e| format!("cannot open the tar: {e}"))?;
            f.seek(SeekFrom::Start(*offset))
                .map_err(|e| format!("cannot seek in the tar: {e}"))?;
            let mut bytes = Vec::with_capacity(*len as usize);
            f.take(*len)
                .read_to_end(&mut bytes)
                .map_err(|e| format!("cannot read the tar member: {e}"))?;
            if (bytes.len() as u64) < *len {
                return Err(format!(
                    "tar member truncated: {} of {len} bytes present",
                    bytes.len()
                ));
            }
            Ok(bytes)
        }
    }
}

/// Width and height from the header alone (nothing decoded).
fn image_size(bytes: &[u8]) -> Result<(u32, u32), String> {
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| format!("cannot read the image: {e}"))?;
    if reader.format().is_none() {
        return Err(
            "not a supported image format (expected PNG, JPEG, WebP, BMP, GIF or TIFF)".into(),
        );
    }
    reader
        .into_dimensions()
        .map_err(|e| format!("cannot read the image header: {e}"))
}
