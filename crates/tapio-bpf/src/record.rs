//! Safe decoding of fixed-layout records read from a ring buffer.
//!
//! Kernel records are untrusted bytes: a record is accepted only when its length is exactly
//! the size of the struct its header announces; anything else is a [`DecodeError`] for the
//! caller to count, never a guess.

use crate::abi::tapio_event_header;

/// A plain-old-data ABI struct: every bit pattern is a valid value.
///
/// # Safety
/// Implement only for `#[repr(C)]` structs made solely of integers, arrays of integers and
/// other `Record` structs, with no implicit padding (bindgen names every pad as a field).
pub unsafe trait Record: Copy {}

// SAFETY: a bindgen repr(C) mirror of an ABI header struct: integers only, padding explicit.
unsafe impl Record for tapio_event_header {}

/// Why a ring-buffer record was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than the common header.
    TooShort { len: usize },
    /// The header names a kind this agent does not know.
    UnknownKind { kind: u32 },
    /// The length does not match the struct of the announced kind.
    WrongSize { kind: u32, len: usize, expected: usize },
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooShort { len } => write!(f, "record of {len} bytes is shorter than the header"),
            Self::UnknownKind { kind } => write!(f, "unknown record kind {kind}"),
            Self::WrongSize { kind, len, expected } => {
                write!(f, "record kind {kind} has {len} bytes, expected {expected}")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// Reads a `T` from exactly `size_of::<T>()` bytes.
pub fn read_exact<T: Record>(bytes: &[u8]) -> Option<T> {
    if bytes.len() != std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: the length matches and `T: Record` accepts any bit pattern; the read is
    // unaligned because ring-buffer records are only 8-byte aligned by convention.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Reads the common header at the start of a record.
pub fn read_header(bytes: &[u8]) -> Result<tapio_event_header, DecodeError> {
    let size = std::mem::size_of::<tapio_event_header>();
    if bytes.len() < size {
        return Err(DecodeError::TooShort { len: bytes.len() });
    }
    read_exact(&bytes[..size]).ok_or(DecodeError::TooShort { len: bytes.len() })
}

/// Decodes a record of kind `kind` whose struct is `T`.
pub fn decode_as<T: Record>(bytes: &[u8], kind: u32) -> Result<T, DecodeError> {
    read_exact(bytes).ok_or(DecodeError::WrongSize { kind, len: bytes.len(), expected: std::mem::size_of::<T>() })
}

/// Decodes a record of kind `kind` that the kernel writes as only the first `prefix` bytes of
/// `T` (a kind whose facts end early); the rest of `T` reads as zero. Exactly `prefix` bytes
/// are accepted.
pub fn decode_prefix<T: Record + Default>(bytes: &[u8], kind: u32, prefix: usize) -> Result<T, DecodeError> {
    if bytes.len() != prefix || prefix > std::mem::size_of::<T>() {
        return Err(DecodeError::WrongSize { kind, len: bytes.len(), expected: prefix });
    }
    let mut value = T::default();
    // SAFETY: `prefix` bytes fit inside `value` (checked above), `T: Record` accepts any bit
    // pattern, and the source and the local value do not overlap.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), (&mut value as *mut T).cast::<u8>(), prefix) };
    Ok(value)
}

/// The bytes of a record, as the kernel lays them out (for tests, benchmarks, encoders).
pub fn as_bytes<T: Record>(value: &T) -> &[u8] {
    // SAFETY: `T: Record` is plain old data with no implicit padding (build.rs asks bindgen
    // for explicit padding fields), so all `size_of::<T>()` bytes are initialised.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
}

/// A fixed comm field as text (up to the first NUL; invalid UTF-8 replaced).
pub fn comm_str(comm: &[u8]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    // Nearly every comm is valid UTF-8: checked whole, it costs a fraction of the lossy
    // conversion's chunk by chunk walk (a record's comm on the agent's drain).
    match std::str::from_utf8(&comm[..end]) {
        Ok(text) => text.to_owned(),
        Err(_) => String::from_utf8_lossy(&comm[..end]).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_needs_its_full_size() {
        assert_eq!(read_header(&[0u8; 15]), Err(DecodeError::TooShort { len: 15 }));
        let mut bytes = [0u8; 16];
        bytes[8] = 2;
        bytes[12] = 7;
        let h = read_header(&bytes).unwrap();
        assert_eq!((h.kind, h.generation), (2, 7));
    }

    #[test]
    fn exact_size_is_required() {
        assert!(read_exact::<tapio_event_header>(&[0u8; 17]).is_none());
        assert!(read_exact::<tapio_event_header>(&[0u8; 16]).is_some());
    }

    #[test]
    fn comm_stops_at_nul_and_tolerates_garbage() {
        assert_eq!(comm_str(b"curl\0\0\0\0\0\0\0\0\0\0\0\0"), "curl");
        assert_eq!(comm_str(b"0123456789abcdef"), "0123456789abcdef");
        assert_eq!(comm_str(&[0xff, b'a', 0]), "\u{fffd}a");
    }
}
