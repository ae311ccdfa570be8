//! Enumerator values of the running kernel that CO-RE cannot name.
//!
//! `bpf_core_enum_value` finds an enumerator through its enum's name, so an enum the
//! kernel declares without one is out of its reach. Linux 6.12 to 6.14 number the block
//! request flags (`__RQF_FLUSH_SEQ`) in such an anonymous enum, where earlier kernels had
//! fixed bits and later ones name the enum `rqf_flags`. The agent reads the value from the
//! kernel's BTF at load and hands it to the program as a read-only global.
//!
//! Hand-written rather than through aya's BTF parser, whose types and strings are not
//! public: one pass over the type section, stepping over every kind by its documented size
//! (`Documentation/bpf/btf.rst`).

/// Where the running kernel publishes its BTF.
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The value of the enumerator `name` in any enum (named or not) of the running kernel's
/// BTF; `None` if the BTF cannot be read or has no such enumerator.
pub fn vmlinux_enumerator(name: &str) -> Option<i64> {
    enumerator(&std::fs::read(VMLINUX_BTF).ok()?, name)
}

/// The value of the enumerator `name` in `btf` (raw little- or big-endian BTF, as the
/// kernel publishes it); `None` if it has none or is not BTF.
pub fn enumerator(btf: &[u8], name: &str) -> Option<i64> {
    let little = match btf.get(..2)? {
        [0x9f, 0xeb] => true,
        [0xeb, 0x9f] => false,
        _ => return None,
    };
    let word = |at: usize| -> Option<u32> {
        let b: [u8; 4] = btf.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(if little { u32::from_le_bytes(b) } else { u32::from_be_bytes(b) })
    };
    let at = |n: u32| usize::try_from(n).ok();
    let header_len = at(word(4)?)?;
    let (type_off, type_len) = (at(word(8)?)?, at(word(12)?)?);
    let (str_off, str_len) = (at(word(16)?)?, at(word(20)?)?);
    let strings = btf.get(header_len.checked_add(str_off)?..header_len.checked_add(str_off)?.checked_add(str_len)?)?;
    let types_start = header_len.checked_add(type_off)?;
    let types_end = types_start.checked_add(type_len)?.min(btf.len());
    let is_name = |offset: u32| {
        let s = at(offset).and_then(|o| strings.get(o..));
        s.is_some_and(|s| s.starts_with(name.as_bytes()) && s.get(name.len()) == Some(&0))
    };

    let mut pos = types_start;
    while pos + 12 <= types_end {
        let info = word(pos + 4)?;
        let (kind, vlen) = ((info >> 24) & 0x1f, at(info & 0xffff)?);
        let members = pos + 12;
        // Bytes that follow the 12-byte common part, by kind.
        let extra = match kind {
            2 | 7..=12 | 16 | 18 => 0, // ptr, fwd, typedef, volatile, const, restrict, func, float, type_tag
            1 | 14 | 17 => 4,          // int, var, decl_tag
            3 => 12,                   // array
            4 | 5 | 15 => vlen.checked_mul(12)?, // struct, union, datasec
            13 => vlen.checked_mul(8)?, // func_proto
            6 => {
                // enum: (name, i32 value) pairs
                for i in 0..vlen {
                    let e = members + i * 8;
                    if is_name(word(e)?) {
                        return Some(i64::from(word(e + 4)? as i32));
                    }
                }
                vlen.checked_mul(8)?
            }
            19 => {
                // enum64: (name, low 32 bits, high 32 bits)
                for i in 0..vlen {
                    let e = members + i * 12;
                    if is_name(word(e)?) {
                        return Some((u64::from(word(e + 8)?) << 32 | u64::from(word(e + 4)?)) as i64);
                    }
                }
                vlen.checked_mul(12)?
            }
            // A kind this build does not know: its size cannot be stepped over.
            _ => return None,
        };
        pos = members.checked_add(extra)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A little-endian BTF blob: `types` (already encoded) and a string section.
    fn blob(types: &[u32], strings: &[u8]) -> Vec<u8> {
        let type_len = (types.len() * 4) as u32;
        let mut b = vec![0x9f, 0xeb, 1, 0];
        for w in [24, 0, type_len, type_len, strings.len() as u32] {
            b.extend_from_slice(&w.to_le_bytes());
        }
        for w in types {
            b.extend_from_slice(&w.to_le_bytes());
        }
        b.extend_from_slice(strings);
        b
    }

    const fn info(kind: u32, vlen: u32) -> u32 {
        kind << 24 | vlen
    }

    #[test]
    fn an_enumerator_is_found_in_an_anonymous_enum_after_other_kinds() {
        // Strings: "" (0), "int" (1), "__RQF_STARTED" (5), "__RQF_FLUSH_SEQ" (19),
        // "s" (35), "__RQF_FLUSH_SEQX" (37).
        let strings = b"\0int\0__RQF_STARTED\0__RQF_FLUSH_SEQ\0s\0__RQF_FLUSH_SEQX\0";
        let types = [
            1,
            info(1, 0),
            4,
            0x20, // int, 4 bytes of encoding
            35,
            info(4, 1),
            8,
            1,
            1,
            0, // struct s { int x; }: one 12-byte member
            0,
            info(13, 1),
            1,
            0,
            1, // func_proto with one 8-byte parameter
            0,
            info(6, 1),
            4,
            37,
            9, // an enum holding only a longer name
            0,
            info(6, 2),
            4,
            5,
            0,
            19,
            1, // the anonymous enum: STARTED 0, FLUSH_SEQ 1
        ];
        let btf = blob(&types, strings);
        assert_eq!(enumerator(&btf, "__RQF_FLUSH_SEQ"), Some(1));
        assert_eq!(enumerator(&btf, "__RQF_STARTED"), Some(0));
        assert_eq!(enumerator(&btf, "__RQF_FLUSH_SEQX"), Some(9));
        assert_eq!(enumerator(&btf, "__RQF_FLUSH"), None, "a prefix of a name is not the name");
        assert_eq!(enumerator(&btf[..btf.len() - 60], "__RQF_FLUSH_SEQ"), None, "a cut blob is not read past");
        assert_eq!(enumerator(b"not btf at all, not at all", "__RQF_FLUSH_SEQ"), None);
        // An enum64 and a kind this build does not know.
        let enum64 = blob(&[0, info(19, 1), 8, 19, 7, 1], strings);
        assert_eq!(enumerator(&enum64, "__RQF_FLUSH_SEQ"), Some((1 << 32) | 7));
        let unknown = blob(&[0, info(31, 0), 0, 0, info(6, 1), 4, 19, 1], strings);
        assert_eq!(enumerator(&unknown, "__RQF_FLUSH_SEQ"), None);
    }

    /// This machine's kernel: `__RQF_FLUSH_SEQ` is 1 from 6.12 on (an enum, anonymous until
    /// it was named `rqf_flags`), and absent before (the flags were plain bits).
    #[test]
    fn this_kernels_btf_is_read() {
        let Ok(btf) = std::fs::read(VMLINUX_BTF) else {
            panic!("this test needs the kernel's BTF at {VMLINUX_BTF}");
        };
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mut numbers = release.split(|c: char| !c.is_ascii_digit()).map(|n| n.parse::<u32>().unwrap_or(0));
        let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
        let expected = (version >= (6, 12)).then_some(1);
        assert_eq!(enumerator(&btf, "__RQF_FLUSH_SEQ"), expected, "kernel {}", release.trim());
        assert_eq!(enumerator(&btf, "BPF_PROG_TYPE_TRACING"), Some(26));
        assert_eq!(enumerator(&btf, "__TAPIO_NO_SUCH_ENUMERATOR"), None);
    }
}
