//! What a label a person types may hold: a key's, tenant's or campaign's name, a reason, a
//! reference, an email. Shown to other people (the console, the audit, a callback's
//! receiver), such text must look like what it is: no control characters (NUL, a newline,
//! a terminal escape), and none of the invisible characters that make two different labels
//! look alike or reorder what is shown around them — the bidirectional embeddings,
//! overrides and isolates ("Trojan Source": `\u{202E}gnp.exe` shows as `exe.png`), the
//! zero-width space and word joiner, the byte order mark, and the line and paragraph
//! separators. The joiners (U+200C, U+200D) and the direction marks (U+200E, U+200F) stay
//! allowed in names: Persian, the Indic scripts and emoji sequences need them. Message
//! content is never checked here: it is the tenant's to send as it is.

/// Whether `c` may not appear in a label (see the module docs).
pub fn hidden_or_control(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200B}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{2069}'
                | '\u{FEFF}'
        )
}

/// Whether `s` holds no character [`hidden_or_control`] refuses.
pub fn plain_label(s: &str) -> bool {
    !s.chars().any(hidden_or_control)
}

/// Whether `c` may not appear in an email address: what a label may not hold, and also
/// the joiners, the direction marks and the soft hyphen, which an address never needs and
/// which make `a\u{200D}dmin@…` look like `admin@…`.
pub fn hidden_in_email(c: char) -> bool {
    hidden_or_control(c) || matches!(c, '\u{00AD}' | '\u{200C}'..='\u{200F}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_with_a_direction_override_or_an_invisible_space_is_not_plain() {
        for bad in [
            "billing\u{0}",
            "line\nbreak",
            "esc\u{1b}[31m",
            "\u{202E}gnp.exe",
            "iso\u{2066}late",
            "zero\u{200B}width",
            "bom\u{FEFF}",
            "word\u{2060}joiner",
            "para\u{2029}sep",
            "c1\u{85}",
        ] {
            assert!(!plain_label(bad), "{bad:?}");
        }
    }

    #[test]
    fn names_in_any_script_with_their_joiners_and_marks_are_plain() {
        for good in [
            "Billing key",
            "کلید\u{200C}ها",
            "क्\u{200D}ष",
            "👩\u{200D}💻 team",
            "שלום\u{200F} 42",
            "Ünïcödé — ok",
        ] {
            assert!(plain_label(good), "{good:?}");
        }
    }

    #[test]
    fn an_email_may_not_hide_a_joiner_or_a_soft_hyphen() {
        for c in [
            '\u{200D}', '\u{200C}', '\u{200E}', '\u{AD}', '\u{200B}', '\u{202E}',
        ] {
            assert!(hidden_in_email(c), "{c:?}");
        }
        assert!(!"admin@example.com".chars().any(hidden_in_email));
    }
}
