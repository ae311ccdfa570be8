//! Reading a small file (config, profile, token) with a size cap.
//!
//! `std::fs::read` trusts the file: pointed at `/dev/zero` or a runaway log it reads until
//! memory runs out. Every Tapio binary links this crate, so the one capped reader lives
//! here (std only, nothing added to the dependency list) and each caller names its cap.

use std::io::{self, Read};
use std::path::Path;

/// Caps for the files Tapio binaries read at start.
pub mod caps {
    /// A bearer token file (a Kubernetes service-account token is 1–2 KiB).
    pub const TOKEN_BYTES: u64 = 64 * 1024;
    /// A config, profile or saved-state file.
    pub const CONFIG_BYTES: u64 = 4 * 1024 * 1024;
}

/// The whole content of `path`, or an error once it holds more than `cap` bytes. A
/// regular file over the cap fails before a byte is read; a device or pipe (no length)
/// fails after `cap + 1` bytes.
pub fn read_capped(path: &Path, cap: u64) -> io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let too_large = || io::Error::new(io::ErrorKind::InvalidData, format!("file is larger than {cap} bytes"));
    let meta = file.metadata()?;
    if meta.is_file() && meta.len() > cap {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len().min(cap)).unwrap_or(0));
    file.take(cap.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return Err(too_large());
    }
    Ok(bytes)
}

/// [`read_capped`] as UTF-8 text.
pub fn read_capped_string(path: &Path, cap: u64) -> io::Result<String> {
    String::from_utf8(read_capped(path, cap)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "file is not UTF-8 text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_within_the_cap_and_refuses_beyond_it() {
        let path = std::env::temp_dir().join(format!("tapio-wire-capped-i13-{}", std::process::id()));
        std::fs::write(&path, b"0123456789").unwrap();
        assert_eq!(read_capped(&path, 10).unwrap(), b"0123456789");
        let e = read_capped(&path, 9).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert_eq!(e.to_string(), "file is larger than 9 bytes");
        std::fs::write(&path, [0xff, 0xfe]).unwrap();
        assert!(read_capped_string(&path, 10).unwrap_err().to_string().contains("not UTF-8"));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn an_endless_device_fails_after_the_cap() {
        let e = read_capped(Path::new("/dev/zero"), 1 << 20).unwrap_err();
        assert_eq!(e.to_string(), "file is larger than 1048576 bytes");
    }
}
