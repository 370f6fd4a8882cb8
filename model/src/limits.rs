//! Caps on what a file or a request may make us allocate, checked before the allocation.
//!
//! Every file the library reads whole (JSON configs, tokenizers, images) goes through
//! [`read_bounded`]: it refuses anything but a regular file (a FIFO, `/dev/zero` or a
//! directory never reaches `read`), checks the size the filesystem reports, and still reads
//! at most `cap + 1` bytes in case the file grows meanwhile. Images are also capped by their
//! pixel count, read from the header before decoding.

use std::io::Read;
use std::path::Path;

use crate::{ModelError, Result};

/// JSON files of a checkpoint (config, processor, generation config, shard index,
/// tokenizer_config, special_tokens_map). The largest real ones are a few hundred KB.
pub const MAX_JSON_BYTES: u64 = 64 << 20;
/// `tokenizer.json`: tens of MB for 250k-token vocabularies; 512 MiB leaves room.
pub const MAX_TOKENIZER_BYTES: u64 = 512 << 20;
/// An encoded image file or upload.
pub const MAX_IMAGE_BYTES: u64 = 256 << 20;
/// Width x height of a decoded image: 64 MP (8192 x 8192) is 192 MB of RGB.
pub const MAX_IMAGE_PIXELS: u64 = 64 << 20;

/// Reads a whole regular file of at most `cap` bytes; `what` names the file's role in the
/// error ("config", "image", ...).
pub fn read_bounded(path: &Path, cap: u64, what: &str) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path).map_err(|e| ModelError::io(path, e))?;
    if !meta.is_file() {
        return Err(ModelError::TooLarge {
            what: what.to_string(),
            path: path.to_path_buf(),
            msg: format!("not a regular file ({})", file_kind(&meta)),
        });
    }
    if meta.len() > cap {
        return Err(too_large(path, what, Some(meta.len()), cap));
    }
    let f = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    f.take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ModelError::io(path, e))?;
    if bytes.len() as u64 > cap {
        return Err(too_large(path, what, None, cap));
    }
    Ok(bytes)
}

/// [`read_bounded`] for UTF-8 text.
pub fn read_text_bounded(path: &Path, cap: u64, what: &str) -> Result<String> {
    let bytes = read_bounded(path, cap, what)?;
    String::from_utf8(bytes).map_err(|e| {
        ModelError::config(
            path,
            "",
            format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// Reads a stream to its end, failing once it passes `cap` bytes; `name` names the stream
/// ("<stdin>") and `what` its role.
pub fn read_stream_bounded(mut r: impl Read, cap: u64, what: &str, name: &str) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    (&mut r)
        .take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ModelError::io(name, e))?;
    if bytes.len() as u64 > cap {
        return Err(too_large(Path::new(name), what, None, cap));
    }
    Ok(bytes)
}

/// `found` is the size when it is known (a file's length); a stream that was cut off at the
/// limit only says it went past it.
fn too_large(path: &Path, what: &str, found: Option<u64>, cap: u64) -> ModelError {
    ModelError::TooLarge {
        what: what.to_string(),
        path: path.to_path_buf(),
        msg: match found {
            Some(found) => format!(
                "{} exceeds the {what} limit of {}",
                human(found),
                human(cap)
            ),
            None => format!("more than the {what} limit of {}", human(cap)),
        },
    }
}

/// What stands at `path` when it is not a regular file one can read ("a directory", "a
/// FIFO", "a symbolic link that cannot be followed (...)"); None for a regular file or
/// nothing at all.
pub fn non_file_entry(path: &Path) -> Option<String> {
    std::fs::symlink_metadata(path).ok()?;
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => None,
        Ok(m) => Some(file_kind(&m).to_string()),
        Err(e) => Some(format!("a symbolic link that cannot be followed ({e})")),
    }
}

fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        return "a directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    "not a file"
}

/// "3.0 MiB (3145728 bytes)".
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut v = bytes as f64;
    let mut unit = "bytes";
    for u in UNITS {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit} ({bytes} bytes)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_devices_directories_and_big_files() {
        let dir = std::env::temp_dir().join(format!("blip2-limits-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let e = read_bounded(&dir, 10, "config").unwrap_err().to_string();
        assert!(e.contains("not a regular file (a directory)"), "{e}");
        #[cfg(unix)]
        {
            let e = read_bounded(Path::new("/dev/zero"), 10, "image").unwrap_err();
            assert!(e.to_string().contains("a character device"), "{e}");
        }
        let f = dir.join("big.json");
        std::fs::write(&f, vec![b' '; 11]).unwrap();
        let e = read_bounded(&f, 10, "config").unwrap_err().to_string();
        assert!(
            e.contains("11 bytes exceeds the config limit of 10 bytes"),
            "{e}"
        );
        assert_eq!(read_bounded(&f, 11, "config").unwrap().len(), 11);
        let e = read_stream_bounded(std::io::repeat(0), 1000, "image", "<stdin>").unwrap_err();
        assert_eq!(
            e.to_string(),
            "image <stdin>: more than the image limit of 1000 bytes"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(10), "10 bytes");
        assert_eq!(human(3 << 20), "3.0 MiB (3145728 bytes)");
    }
}
