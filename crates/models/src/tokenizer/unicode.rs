//! Code point classes used by the pre-tokenizers, as llama.cpp's `unicode.cpp` defines them.

use unicode_general_category::{get_general_category, GeneralCategory as G};

/// The class of a code point for the pre-tokenizer regexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// `\p{L}`.
    Letter,
    /// `\p{N}`.
    Number,
    /// `\s` (the Unicode White_Space set, as llama.cpp's table).
    Space,
    /// Everything else (punctuation, symbols, marks, controls, unassigned).
    Other,
}

/// Classifies a code point. Whitespace wins over the general category, as in
/// llama.cpp (which maps non-ASCII whitespace to `\v` before matching).
#[inline]
pub(crate) fn class(c: char) -> Class {
    if c.is_ascii() {
        return if c.is_ascii_alphabetic() {
            Class::Letter
        } else if c.is_ascii_digit() {
            Class::Number
        } else if c.is_ascii_whitespace() || c == '\x0b' {
            Class::Space
        } else {
            Class::Other
        };
    }
    if c.is_whitespace() {
        return Class::Space;
    }
    match get_general_category(c) {
        G::UppercaseLetter
        | G::LowercaseLetter
        | G::TitlecaseLetter
        | G::ModifierLetter
        | G::OtherLetter => Class::Letter,
        G::DecimalNumber | G::LetterNumber | G::OtherNumber => Class::Number,
        _ => Class::Other,
    }
}

/// GPT-2's reversible byte -> code point map (bytes that are printable map to
/// themselves, the rest to 256 + n).
pub(crate) fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut assigned = [false; 256];
    for b in (0x21u32..=0x7e).chain(0xa1..=0xac).chain(0xae..=0xff) {
        table[b as usize] = char::from_u32(b).unwrap_or('\0');
        assigned[b as usize] = true;
    }
    let mut n = 0u32;
    for b in 0..256usize {
        if !assigned[b] {
            table[b] = char::from_u32(256 + n).unwrap_or('\0');
            n += 1;
        }
    }
    table
}

/// The inverse of [`byte_to_char_table`], indexed by code point (< 324).
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    let c = c as u32;
    match c {
        0x21..=0x7e | 0xa1..=0xac | 0xae..=0xff => Some(c as u8),
        256..=323 => {
            // The n-th unprintable byte, in increasing byte order.
            let mut n = c - 256;
            for b in 0u32..256 {
                let printable = (0x21..=0x7e).contains(&b)
                    || (0xa1..=0xac).contains(&b)
                    || (0xae..=0xff).contains(&b);
                if !printable {
                    if n == 0 {
                        return Some(b as u8);
                    }
                    n -= 1;
                }
            }
            None
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_is_a_bijection() {
        let t = byte_to_char_table();
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(t[b as usize]), Some(b));
        }
        assert_eq!(t[b' ' as usize], '\u{120}'); // 'Ġ'
        assert_eq!(t[b'\n' as usize], '\u{10a}'); // 'Ċ'
    }

    #[test]
    fn classes() {
        assert_eq!(class('a'), Class::Letter);
        assert_eq!(class('日'), Class::Letter);
        assert_eq!(class('²'), Class::Number);
        assert_eq!(class('٣'), Class::Number);
        assert_eq!(class('\u{a0}'), Class::Space);
        assert_eq!(class('\u{3000}'), Class::Space);
        assert_eq!(class('😀'), Class::Other);
        assert_eq!(class('\u{301}'), Class::Other);
        assert_eq!(class('\x1c'), Class::Other);
    }
}
