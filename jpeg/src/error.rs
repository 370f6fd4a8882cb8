//! The decoder's one error type: every variant says what was wrong and where.

/// Why a JPEG could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JpegError {
    /// The data does not start with the SOI marker `FF D8`.
    #[error("not a JPEG file: expected SOI marker FF D8 at offset 0, found {found:02X?}")]
    NotJpeg { found: Vec<u8> },
    /// The file ends before the named structure is complete.
    #[error("truncated JPEG: file ends at offset {offset} inside {context}")]
    Truncated {
        offset: usize,
        context: &'static str,
    },
    /// A marker segment is malformed.
    #[error("bad {marker} segment at offset {offset}: {reason}")]
    BadSegment {
        marker: &'static str,
        offset: usize,
        reason: String,
    },
    /// A marker that is not allowed where it was found.
    #[error("unexpected marker FF {marker:02X} at offset {offset}: {reason}")]
    UnexpectedMarker {
        marker: u8,
        offset: usize,
        reason: &'static str,
    },
    /// The entropy-coded data of a scan is inconsistent.
    #[error(
        "corrupt entropy-coded data in scan {scan} (segment starting at offset {offset}): {reason}"
    )]
    Corrupt {
        scan: usize,
        offset: usize,
        reason: String,
    },
    /// A valid JPEG feature this decoder refuses rather than decode differently from Pillow.
    #[error("unsupported JPEG: {0}")]
    Unsupported(String),
    /// The header asks for more pixels than allowed.
    #[error("JPEG of {width}x{height} pixels exceeds the limit of {limit} pixels")]
    TooLarge { width: u32, height: u32, limit: u64 },
}

pub type Result<T> = std::result::Result<T, JpegError>;
