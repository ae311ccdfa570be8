//! Takes the line info out of a compiled eBPF object's BTF.
//!
//! clang records, for every instruction, the source line it came from: records in
//! `.BTF.ext` and the text of each line in `.BTF`'s string table, a third of each object.
//! Only verifier logs and `bpftool prog dump` show them; loading, CO-RE relocation and
//! verification need the types, the function info and the CO-RE records, which stay. The
//! string table keeps only the strings something left still names, so type names and
//! relocation access strings move to new offsets.
//!
//! Used by build.rs and by tapio-bpf's tests (`#[path]`): one copy of the format's walk.
//! The layouts are the kernel's UAPI (`include/uapi/linux/btf.h`) and libbpf's `.BTF.ext`
//! (`struct btf_ext_header`); anything it does not know is an error, never a guess.

use std::collections::HashMap;

/// The two sections of an object with its line info left out, ready to replace the old ones.
pub struct WithoutLines {
    pub btf: Vec<u8>,
    pub btf_ext: Vec<u8>,
}

fn u16_at(data: &[u8], at: usize) -> Result<u16, String> {
    data.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]])).ok_or_else(|| format!("truncated at byte {at}"))
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, String> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| format!("truncated at byte {at}"))
}

fn u64_at(data: &[u8], at: usize) -> Result<u64, String> {
    Ok(u64::from(u32_at(data, at)?) | (u64::from(u32_at(data, at + 4)?) << 32))
}

fn put_u32(data: &mut [u8], at: usize, value: u32) {
    data[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

/// The bytes of the section named `name` in a little-endian ELF64 object, if it has one.
pub fn section<'a>(elf: &'a [u8], name: &str) -> Result<Option<&'a [u8]>, String> {
    if elf.get(..6) != Some(b"\x7fELF\x02\x01") {
        return Err("not a little-endian ELF64 object".into());
    }
    let headers = u64_at(elf, 0x28)? as usize;
    let (entry, count, names) = (u16_at(elf, 0x3a)? as usize, u16_at(elf, 0x3c)? as usize, u16_at(elf, 0x3e)? as usize);
    let bounds = |index: usize| -> Result<(usize, usize, usize), String> {
        let at = headers + index * entry;
        let (offset, size) = (u64_at(elf, at + 24)? as usize, u64_at(elf, at + 32)? as usize);
        if offset.checked_add(size).is_none_or(|end| end > elf.len()) {
            return Err(format!("section {index} lies outside the object"));
        }
        Ok((u32_at(elf, at)? as usize, offset, size))
    };
    let (_, names_at, names_len) = bounds(names)?;
    let names = &elf[names_at..names_at + names_len];
    for index in 0..count {
        let (name_at, offset, size) = bounds(index)?;
        let end = names.get(name_at..).and_then(|rest| rest.iter().position(|&b| b == 0));
        if end.is_some_and(|end| &names[name_at..name_at + end] == name.as_bytes()) {
            return Ok(Some(&elf[offset..offset + size]));
        }
    }
    Ok(None)
}

/// The `len` bytes at `off` after a header of `base` bytes.
fn slice(data: &[u8], off: u32, len: u32, base: usize) -> Result<&[u8], String> {
    let start = base + off as usize;
    data.get(start..start + len as usize).ok_or_else(|| format!("a block of {len} B at byte {start} is truncated"))
}

/// The NUL-terminated string at `offset` of a string table.
fn string_at(strings: &[u8], offset: u32) -> Result<&[u8], String> {
    let rest = strings.get(offset as usize..).ok_or_else(|| format!("string offset {offset} past the table"))?;
    let end = rest.iter().position(|&b| b == 0).ok_or_else(|| format!("string at {offset} is not terminated"))?;
    Ok(&rest[..end])
}

/// Byte positions (within the types) of every string offset the BTF types hold.
fn type_name_fields(types: &[u8]) -> Result<Vec<usize>, String> {
    let mut fields = Vec::new();
    let mut at = 0;
    while at < types.len() {
        let info = u32_at(types, at + 4)?;
        let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
        fields.push(at);
        at += 12;
        // Per kind: bytes that follow the common part, and where names sit in them.
        let (extra, names_every) = match kind {
            // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG
            2 | 7 | 8 | 9 | 10 | 11 | 12 | 16 | 18 => (0, None),
            // INT, VAR, DECL_TAG: one u32; ARRAY: struct btf_array
            1 | 14 | 17 => (4, None),
            3 => (12, None),
            // STRUCT, UNION: members (name, type, offset); ENUM64: (name, value low, value
            // high); ENUM: (name, value); FUNC_PROTO: params (name, type)
            4 | 5 | 19 => (vlen * 12, Some(12)),
            6 | 13 => (vlen * 8, Some(8)),
            // DATASEC: (var type, offset, size), no names
            15 => (vlen * 12, None),
            other => return Err(format!("BTF kind {other} at byte {at} is not one this build knows")),
        };
        if let Some(step) = names_every {
            fields.extend((0..vlen).map(|i| at + i * step));
        }
        at += extra;
    }
    if at != types.len() {
        return Err("the last BTF type runs past the type section".into());
    }
    Ok(fields)
}

/// One `.BTF.ext` info block (function info or CO-RE records): its record size, then
/// sections of (name offset, record count, records). Returns the positions (within the
/// block) of every string offset it holds: each section's name, and in each record the
/// u32 at each of `string_fields`.
fn info_block_name_fields(block: &[u8], string_fields: &[usize]) -> Result<Vec<usize>, String> {
    if block.is_empty() {
        return Ok(Vec::new());
    }
    let record = u32_at(block, 0)? as usize;
    if string_fields.iter().any(|&f| f + 4 > record) {
        return Err(format!("records of {record} bytes are too short"));
    }
    let (mut fields, mut at) = (Vec::new(), 4);
    while at < block.len() {
        fields.push(at);
        let count = u32_at(block, at + 4)? as usize;
        at += 8;
        for i in 0..count {
            fields.extend(string_fields.iter().map(|f| at + i * record + f));
        }
        at += count * record;
    }
    if at != block.len() {
        return Err("an info section runs past its block".into());
    }
    Ok(fields)
}

/// The new string table, built from the strings the kept parts name.
struct Strings<'a> {
    old: &'a [u8],
    new: Vec<u8>,
    placed: HashMap<&'a [u8], u32>,
}

impl<'a> Strings<'a> {
    fn new(old: &'a [u8]) -> Self {
        // Offset 0 is the empty string in every BTF string table.
        Self { old, new: vec![0], placed: HashMap::from([(&b""[..], 0)]) }
    }

    /// Rewrites every string offset at `fields` of `data` to the offset of the same string
    /// in the new table, adding the string to it first if it is not there yet.
    fn move_fields(&mut self, data: &mut [u8], fields: &[usize]) -> Result<(), String> {
        for &at in fields {
            let string = string_at(self.old, u32_at(data, at)?)?;
            let offset = match self.placed.get(string) {
                Some(&offset) => offset,
                None => {
                    let offset = u32::try_from(self.new.len()).map_err(|_| "string table too large")?;
                    self.new.extend_from_slice(string);
                    self.new.push(0);
                    self.placed.insert(string, offset);
                    offset
                }
            };
            put_u32(data, at, offset);
        }
        Ok(())
    }
}

/// An object's `.BTF` and `.BTF.ext`, split into the parts the rewrite keeps.
struct Parts<'a> {
    btf: &'a [u8],
    ext: &'a [u8],
    header_len: usize,
    ext_header_len: usize,
    types: &'a [u8],
    strings: &'a [u8],
    funcs: &'a [u8],
    core: &'a [u8],
}

impl<'a> Parts<'a> {
    fn of(elf: &'a [u8]) -> Result<Option<Self>, String> {
        let (Some(btf), Some(ext)) = (section(elf, ".BTF")?, section(elf, ".BTF.ext")?) else {
            return Ok(None);
        };
        if u16_at(btf, 0)? != 0xeb9f || u16_at(ext, 0)? != 0xeb9f {
            return Err("BTF magic missing".into());
        }
        // struct btf_header: magic, version, flags, hdr_len, type_off, type_len, str_off, str_len.
        let header_len = u32_at(btf, 4)? as usize;
        // struct btf_ext_header: magic, version, flags, hdr_len, func_info_off/len,
        // line_info_off/len, then (when hdr_len says so) core_relo_off/len.
        let ext_header_len = u32_at(ext, 4)? as usize;
        if ext_header_len < 24 {
            return Err(format!(".BTF.ext header of {ext_header_len} B"));
        }
        let core =
            if ext_header_len >= 32 { slice(ext, u32_at(ext, 24)?, u32_at(ext, 28)?, ext_header_len)? } else { &[] };
        Ok(Some(Self {
            btf,
            ext,
            header_len,
            ext_header_len,
            types: slice(btf, u32_at(btf, 8)?, u32_at(btf, 12)?, header_len)?,
            strings: slice(btf, u32_at(btf, 16)?, u32_at(btf, 20)?, header_len)?,
            funcs: slice(ext, u32_at(ext, 8)?, u32_at(ext, 12)?, ext_header_len)?,
            core,
        }))
    }

    /// Where the kept parts hold string offsets: types, function info, CO-RE records
    /// (struct bpf_core_relo: insn_off, type_id, access_str_off, kind).
    fn name_fields(&self) -> Result<[Vec<usize>; 3], String> {
        Ok([
            type_name_fields(self.types)?,
            info_block_name_fields(self.funcs, &[])?,
            info_block_name_fields(self.core, &[8])?,
        ])
    }
}

/// `.BTF` and `.BTF.ext` of `elf` without line info, or `None` if it has no `.BTF.ext`.
pub fn without_line_info(elf: &[u8]) -> Result<Option<WithoutLines>, String> {
    let Some(parts) = Parts::of(elf)? else { return Ok(None) };
    let [type_fields, func_fields, core_fields] = parts.name_fields()?;
    let mut strings = Strings::new(parts.strings);
    let mut new_types = parts.types.to_vec();
    strings.move_fields(&mut new_types, &type_fields)?;
    let mut new_funcs = parts.funcs.to_vec();
    strings.move_fields(&mut new_funcs, &func_fields)?;
    let mut new_core = parts.core.to_vec();
    strings.move_fields(&mut new_core, &core_fields)?;
    let new_strings = strings.new;

    let mut new_btf = parts.btf[..parts.header_len].to_vec();
    let (types_len, strings_len) = (new_types.len() as u32, new_strings.len() as u32);
    put_u32(&mut new_btf, 8, 0);
    put_u32(&mut new_btf, 12, types_len);
    put_u32(&mut new_btf, 16, types_len);
    put_u32(&mut new_btf, 20, strings_len);
    new_btf.extend_from_slice(&new_types);
    new_btf.extend_from_slice(&new_strings);

    let mut new_ext = parts.ext[..parts.ext_header_len].to_vec();
    let funcs_len = new_funcs.len() as u32;
    put_u32(&mut new_ext, 8, 0);
    put_u32(&mut new_ext, 12, funcs_len);
    put_u32(&mut new_ext, 16, funcs_len);
    put_u32(&mut new_ext, 20, 0);
    if parts.ext_header_len >= 32 {
        put_u32(&mut new_ext, 24, funcs_len);
        put_u32(&mut new_ext, 28, new_core.len() as u32);
    }
    new_ext.extend_from_slice(&new_funcs);
    new_ext.extend_from_slice(&new_core);
    Ok(Some(WithoutLines { btf: new_btf, btf_ext: new_ext }))
}

/// Every string the kept parts name, in order (types, function info, CO-RE records), and
/// the bytes of those parts with the names blanked: what must not change when line info is
/// taken out. (For tests: build.rs does not call it.)
#[cfg_attr(not(test), allow(dead_code))]
pub fn kept_parts(elf: &[u8]) -> Result<(Vec<Vec<u8>>, Vec<u8>), String> {
    let parts = Parts::of(elf)?.ok_or("no .BTF.ext")?;
    let (mut names, mut blanked) = (Vec::new(), Vec::new());
    for (part, fields) in [parts.types, parts.funcs, parts.core].into_iter().zip(parts.name_fields()?) {
        let mut bytes = part.to_vec();
        for at in fields {
            names.push(string_at(parts.strings, u32_at(part, at)?)?.to_vec());
            put_u32(&mut bytes, at, 0);
        }
        blanked.extend_from_slice(&bytes);
    }
    Ok((names, blanked))
}

/// Bytes of the string table (what compaction shrinks).
#[cfg_attr(not(test), allow(dead_code))]
pub fn string_table_len(elf: &[u8]) -> Result<usize, String> {
    Ok(Parts::of(elf)?.ok_or("no .BTF.ext")?.strings.len())
}

/// Bytes of line info in an object's `.BTF.ext` (0 once taken out).
pub fn line_info_len(elf: &[u8]) -> Result<u32, String> {
    match section(elf, ".BTF.ext")? {
        Some(ext) => u32_at(ext, 20),
        None => Ok(0),
    }
}
