//! Text from the guest or a store (crash messages, titles, console lines, kernel releases) made
//! safe to print on a terminal: control characters are shown escaped, never sent.

use std::borrow::Cow;

/// `s` with every control character (C0 including newline and tab, DEL, C1 such as the 8-bit
/// CSI) escaped as Rust writes it (`\u{1b}`, `\n`); other text unchanged. A caller that prints
/// several lines escapes each line.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape("kernel BUG at mm/slub.c:42"), "kernel BUG at mm/slub.c:42");
        assert!(matches!(escape("plain ü"), Cow::Borrowed(_)));
        assert_eq!(escape("\x1b]0;owned\x07\x1b[2J"), "\\u{1b}]0;owned\\u{7}\\u{1b}[2J");
        assert_eq!(escape("a\rb\nc\td\x7f"), "a\\rb\\nc\\td\\u{7f}");
        assert_eq!(escape("\u{9b}31m"), "\\u{9b}31m");
    }
}
