//! One line of `/proc/<pid>/mountinfo` (proc(5)):
//!
//! `<id> <parent> <maj:min> <root> <mount point> <options> [optional fields…] - <fstype> <source> <super options>`
//!
//! The optional fields vary in number, so everything after them is found from the lone `-`
//! separator field. Root and mount point are unescaped on request (the kernel writes
//! space, tab, newline and backslash as `\040`, `\011`, `\012`, `\134`), so lines that
//! are skipped cost no allocation. tapio-identity reads cgroup
//! hierarchies with it; `tapio doctor` reads bpffs, tracefs and cgroup mounts.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

/// The fields of one mount that Tapio reads, as written (see [`Mount::root`] and
/// [`Mount::mount_point`] for the unescaped paths).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount<'a> {
    /// The directory of the mounted filesystem that is mounted here (`/` for all of it).
    pub root_escaped: &'a str,
    pub mount_point_escaped: &'a str,
    pub fstype: &'a str,
    pub source: &'a str,
    /// Per-superblock options (`rw,memory` on a cgroup v1 hierarchy).
    pub super_options: &'a str,
}

/// Parses one line; `None` when it lacks a field or the separator.
pub fn parse_line(line: &str) -> Option<Mount<'_>> {
    let mut fields = line.split(' ');
    let root = fields.nth(3)?;
    let mount_point = fields.next()?;
    let mut after_separator = fields.skip_while(|f| *f != "-").skip(1);
    let fstype = after_separator.next()?;
    let source = after_separator.next()?;
    let super_options = after_separator.next()?;
    Some(Mount { root_escaped: root, mount_point_escaped: mount_point, fstype, source, super_options })
}

impl Mount<'_> {
    /// The root, unescaped; bytes, since nothing makes it UTF-8.
    pub fn root(&self) -> Vec<u8> {
        unescape(self.root_escaped)
    }

    /// The mount point, unescaped.
    pub fn mount_point(&self) -> PathBuf {
        PathBuf::from(OsString::from_vec(unescape(self.mount_point_escaped)))
    }
}

/// The mounts of `text` (a whole mountinfo file), in file order; malformed lines skipped.
pub fn parse(text: &str) -> impl Iterator<Item = Mount<'_>> {
    text.lines().filter_map(parse_line)
}

/// Undoes mountinfo's octal escapes (`\040` for space, `\011`, `\012`, `\134`); anything
/// that is not a complete escape of one byte is kept as it is.
pub fn unescape(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)))
            .map(|d| d.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0')))
            .and_then(|v| u8::try_from(v).ok());
        match octal {
            Some(v) => {
                out.push(v);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_fields_after_a_variable_number_of_optional_ones() {
        let m = parse_line(
            "36 31 0:33 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:12 master:1 - cgroup cgroup rw,cpu,cpuacct",
        )
        .unwrap();
        assert_eq!(m.root(), b"/");
        assert_eq!(m.mount_point(), PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!((m.fstype, m.source, m.super_options), ("cgroup", "cgroup", "rw,cpu,cpuacct"));
        let m = parse_line("25 30 0:23 /kubepods /sys/fs/bpf rw - bpf bpf rw").unwrap();
        assert_eq!((m.root().as_slice(), m.fstype), (&b"/kubepods"[..], "bpf"));
    }

    #[test]
    fn unescapes_paths_and_skips_malformed_lines() {
        let text = "60 40 0:23 / /mnt/with\\040space\\134x rw - cgroup2 cgroup2 rw\n\
                    62 40 0:23 / /mnt/short rw - cgroup2\n\
                    garbage\n\
                    63 40 0:23 / /mnt/nosep rw cgroup2 cgroup2 rw\n\n";
        let mounts: Vec<Mount<'_>> = parse(text).collect();
        assert_eq!(mounts.len(), 1, "{mounts:?}");
        assert_eq!(mounts[0].mount_point(), PathBuf::from("/mnt/with space\\x"));
        assert_eq!(mounts[0].mount_point_escaped, "/mnt/with\\040space\\134x");
    }

    #[test]
    fn unescape_leaves_incomplete_escapes() {
        assert_eq!(unescape("a\\04"), b"a\\04".to_vec());
        assert_eq!(unescape("\\999"), b"\\999".to_vec());
        assert_eq!(unescape("\\012\\011"), b"\n\t".to_vec());
        // 0o777 does not fit a byte: kept literally rather than truncated.
        assert_eq!(unescape("\\777"), b"\\777".to_vec());
    }

    #[test]
    fn this_process_sees_its_root_mount() {
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(parse(&text).any(|m| m.mount_point() == std::path::Path::new("/")), "{text}");
    }
}
