//! Names as the terminal shows them: a file name is the workload's, and may hold a newline or
//! escape sequences that would forge `log` lines or `diff` headers. A name that needs it is
//! shown as git shows it: in double quotes, with C-style escapes (`\n`, `\033`, `\"`, `\\`).

use std::borrow::Cow;
use std::fmt::Write;

/// `name` as it can be printed: unchanged if it is plain UTF-8 without control characters,
/// quotes or backslashes; quoted and escaped otherwise.
pub fn quoted(name: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(name) {
        Ok(s) if !s.chars().any(needs_escape) => Cow::Borrowed(s),
        _ => Cow::Owned(format!("\"{}\"", escaped(name))),
    }
}

/// `text` with control characters, invalid UTF-8 and backslashes escaped (no quotes added):
/// for free text that carries names, such as a marker's detail or a process name.
pub fn escaped(text: &[u8]) -> String {
    let mut out = String::with_capacity(text.len());
    for chunk in text.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => {
                    let mut buf = [0; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        let _ = write!(out, "\\{b:03o}");
                    }
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\{b:03o}");
        }
    }
    out
}

fn needs_escape(c: char) -> bool {
    c.is_control() || c == '"' || c == '\\'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_pass_and_hostile_ones_are_quoted() {
        assert_eq!(quoted(b"/tmp/w/a b.txt"), "/tmp/w/a b.txt");
        assert_eq!(quoted("/tmp/w/été".as_bytes()), "/tmp/w/été");
        assert_eq!(
            quoted(b"/tmp/a\n   +0.1s  write /etc/passwd"),
            "\"/tmp/a\\n   +0.1s  write /etc/passwd\""
        );
        assert_eq!(quoted(b"/e\x1b[31mred"), "\"/e\\033[31mred\"");
        assert_eq!(quoted(b"/q\"\\"), "\"/q\\\"\\\\\"");
        assert_eq!(quoted(b"/bad\xff"), "\"/bad\\377\"");
        // C1 controls: U+009B is a CSI to a UTF-8 terminal.
        assert_eq!(quoted("/c\u{9b}1m".as_bytes()), "\"/c\\302\\2331m\"");
    }
}
