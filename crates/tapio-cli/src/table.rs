//! Plain text tables: columns padded to their widest cell, two spaces apart. Every cell is
//! [`clean`]ed: what records and controllers send is data, never terminal control.

/// `s` with every control character (C0, DEL, C1: an escape sequence's ESC, BEL, CSI) written
/// out as `\u{1b}`, so that text from a record or a controller cannot drive the terminal.
/// The rest is kept as it is, so cleaning again changes nothing.
#[inline(never)]
pub fn clean(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// Renders `rows` under `headers`, each cell [`clean`]ed; the last column is not padded.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(clean(cell).chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let last = row.len().saturating_sub(1);
        for (i, cell) in row.iter().enumerate() {
            let cell = &clean(cell);
            out.push_str(cell);
            if i < last {
                let pad = widths.get(i).copied().unwrap_or(0).saturating_sub(cell.chars().count()) + 2;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        // An empty last cell leaves padding behind: no trailing spaces.
        let kept = out.trim_end_matches(' ').len();
        out.truncate(kept);
        out.push('\n');
    }
    out
}

/// `s` [`clean`]ed and cut to `max` characters, with `…` marking the cut.
pub fn truncate(s: &str, max: usize) -> String {
    let mut s = clean(s);
    // Where the (max-1)th character starts, if there are more than `max`.
    let mut starts = s.char_indices().skip(max.saturating_sub(1));
    if let (Some((cut, _)), Some(_)) = (starts.next(), starts.next()) {
        s.truncate(cut);
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_cells_truncate() {
        let t = render(&["A", "BB"], &[vec!["xyz".into(), "1".into()], vec!["q".into(), "22".into()]]);
        assert_eq!(t, "A    BB\nxyz  1\nq    22\n");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("ab", 4), "ab");
    }

    #[test]
    fn control_characters_are_shown_not_sent() {
        let cleaned = clean("a\x1b[2Jb\x07\u{9b}c\u{7f}\té\"\\");
        assert_eq!(cleaned, "a\\u{1b}[2Jb\\u{7}\\u{9b}c\\u{7f}\\u{9}é\"\\");
        assert_eq!(clean(&cleaned), cleaned);
        assert_eq!(truncate("\x1b]0;x", 6), "\\u{1b…");
        let t = render(&["A", "B"], &[vec!["\x1bx".into(), "y".into()]]);
        assert_eq!(t, "A        B\n\\u{1b}x  y\n");
    }
}
