//! Short ASCII text held inline: an evidence record's id, timestamp and addresses. The agent
//! makes these for every record it emits, and as `String`s each was an allocation and a
//! free on its drain (a flood's records are made and dropped by the million).

use std::fmt;

/// At most `N` (≤ 255) ASCII bytes, held inline; compared and ordered as its bytes. Only
/// ASCII ever gets in (every way in checks it), so the text is always valid UTF-8.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AsciiText<const N: usize> {
    bytes: [u8; N],
    len: u8,
}

impl<const N: usize> AsciiText<N> {
    /// `text`, if it is ASCII and fits.
    pub fn from_ascii(text: &[u8]) -> Option<Self> {
        let mut out = Self::default();
        out.push_ascii(text).then_some(out)
    }

    /// Appends `text` if it is ASCII and fits; else leaves this as it was and says so.
    pub fn push_ascii(&mut self, text: &[u8]) -> bool {
        let at = usize::from(self.len);
        match self.bytes.get_mut(at..at + text.len()) {
            Some(room) if text.is_ascii() && at + text.len() <= usize::from(u8::MAX) => {
                room.copy_from_slice(text);
                self.len += text.len() as u8;
                true
            }
            _ => false,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    pub fn as_str(&self) -> &str {
        // SAFETY: only `push_ascii` writes the bytes, and only ASCII, so the first `len` are
        // ASCII, hence UTF-8.
        unsafe { std::str::from_utf8_unchecked(self.as_bytes()) }
    }
}

impl<const N: usize> Default for AsciiText<N> {
    /// The empty text.
    fn default() -> Self {
        Self { bytes: [0; N], len: 0 }
    }
}

impl<const N: usize> fmt::Write for AsciiText<N> {
    /// ASCII that fits; anything else is an error and leaves the text as it was.
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.push_ascii(s.as_bytes()) {
            Ok(())
        } else {
            Err(fmt::Error)
        }
    }
}

impl<const N: usize> AsRef<str> for AsciiText<N> {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl<const N: usize> fmt::Display for AsciiText<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<const N: usize> fmt::Debug for AsciiText<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl<const N: usize> PartialEq<&str> for AsciiText<N> {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt::Write;

    #[test]
    fn only_ascii_that_fits_gets_in() {
        let mut t = AsciiText::<8>::from_ascii(b"abc").unwrap();
        assert_eq!(t.as_str(), "abc");
        assert!(!t.push_ascii(b"defghi"), "one byte too many");
        assert!(!t.push_ascii("é".as_bytes()), "not ASCII");
        assert!(write!(t, "{}", 12345).is_ok());
        assert_eq!(t, "abc12345");
        assert!(write!(t, "x").is_err());
        assert_eq!(t.as_str(), "abc12345", "a refused write leaves the text as it was");
        assert_eq!(AsciiText::<4>::from_ascii(b"abcde"), None);
        assert_eq!(AsciiText::<4>::from_ascii(&[b'a', 0x80]), None);
        assert_eq!(AsciiText::<4>::default().as_str(), "");
        assert_eq!(format!("{t} {t:?}"), "abc12345 \"abc12345\"");
    }

    #[test]
    fn texts_order_as_their_bytes() {
        let (a, b) = (AsciiText::<4>::from_ascii(b"0AB").unwrap(), AsciiText::<4>::from_ascii(b"0B").unwrap());
        assert!(a < b);
    }
}
