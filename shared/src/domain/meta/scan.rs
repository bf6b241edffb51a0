//! A cursor over a JSON text for the one-pass reader ([`super::statuses_only`]): it reads
//! the few keys that reader wants, steps over everything else, and checks every byte it
//! passes as strictly as `serde_json` would. It answers `None` ("the tree reader's") for
//! anything it does not read exactly as [`super::parse_tree`] would: an escape in a string
//! it must read (or a key), a `\u` escape, an exponent, a number of more than 200 digits
//! (which may not fit a float), nesting deeper than [`MAX_DEPTH`], and anything that is not
//! JSON. Declining is always safe: the tree reader then reads the body.

/// Objects and arrays inside each other at most (`serde_json` refuses beyond 128).
const MAX_DEPTH: usize = 100;
/// Digits of one number at most.
const MAX_DIGITS: usize = 200;

pub(super) struct Cursor<'a> {
    text: &'a str,
    at: usize,
    depth: usize,
}

impl<'a> Cursor<'a> {
    pub(super) fn new(text: &'a str) -> Self {
        Self {
            text,
            at: 0,
            depth: 0,
        }
    }

    #[inline(always)]
    fn byte(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.byte() {
            self.at += 1;
        }
    }

    /// The next byte that is not whitespace, not taken. (Meta writes no whitespace between
    /// tokens: the next byte is looked at first.)
    #[inline(always)]
    pub(super) fn peek(&mut self) -> Option<u8> {
        match self.byte()? {
            b' ' | b'\t' | b'\n' | b'\r' => {
                self.skip_whitespace();
                self.byte()
            }
            b => Some(b),
        }
    }

    #[inline(always)]
    fn eat(&mut self, b: u8) -> Option<()> {
        (self.peek()? == b).then(|| self.at += 1)
    }

    #[inline(always)]
    fn took(&mut self, b: u8) -> bool {
        self.eat(b).is_some()
    }

    /// The text's end: nothing but whitespace left.
    pub(super) fn end(&mut self) -> Option<()> {
        self.peek().is_none().then_some(())
    }

    /// Steps over the bytes that are neither a quote, a backslash nor a control byte, eight
    /// at a time while eight are left.
    #[inline(always)]
    fn skip_plain(&mut self) {
        let bytes = self.text.as_bytes();
        loop {
            // A `match`, not `map_or`: at opt-level `z` the combinator stays a call per word
            // (2% of a webhook's time in perf), and `plain_prefix` is not inlined into it.
            let run = match bytes.get(self.at..self.at + 8) {
                Some(word) => plain_prefix(word),
                None => 0,
            };
            if run == 0 {
                return;
            }
            self.at += run;
        }
    }

    /// A string without escapes, borrowed from the text.
    pub(super) fn str(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.at;
        loop {
            self.skip_plain();
            match self.byte()? {
                b'"' => {
                    let s = self.text.get(start..self.at)?;
                    self.at += 1;
                    return Some(s);
                }
                b'\\' | 0..=0x1f => return None,
                _ => self.at += 1,
            }
        }
    }

    /// A string without escapes, or `null` (`Some(None)`).
    pub(super) fn str_or_null(&mut self) -> Option<Option<&'a str>> {
        if self.peek()? == b'n' {
            self.literal("null")?;
            return Some(None);
        }
        self.str().map(Some)
    }

    /// Steps over a string, checking its escapes.
    fn skip_str(&mut self) -> Option<()> {
        self.eat(b'"')?;
        loop {
            self.skip_plain();
            match self.byte()? {
                b'"' => {
                    self.at += 1;
                    return Some(());
                }
                b'\\' => {
                    self.at += 1;
                    match self.byte()? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.at += 1,
                        // `\u` (perhaps a lone surrogate, which serde refuses) and bad escapes.
                        _ => return None,
                    }
                }
                0..=0x1f => return None,
                _ => self.at += 1,
            }
        }
    }

    fn literal(&mut self, word: &str) -> Option<()> {
        self.skip_whitespace();
        let end = self.at + word.len();
        (self.text.as_bytes().get(self.at..end)? == word.as_bytes()).then(|| self.at = end)
    }

    /// A number, as its text: `-?(0|[1-9][0-9]*)(\.[0-9]+)?`, at most [`MAX_DIGITS`] digits.
    pub(super) fn number(&mut self) -> Option<&'a str> {
        self.skip_whitespace();
        let start = self.at;
        if self.byte() == Some(b'-') {
            self.at += 1;
        }
        let int = self.digits()?;
        if int > 1 && self.text.as_bytes().get(self.at - int) == Some(&b'0') {
            return None; // a leading zero
        }
        let mut all = int;
        if self.byte() == Some(b'.') {
            self.at += 1;
            all += self.digits()?;
        }
        if matches!(self.byte(), Some(b'e' | b'E')) || all > MAX_DIGITS {
            return None;
        }
        self.text.get(start..self.at)
    }

    /// One or more digits: how many.
    fn digits(&mut self) -> Option<usize> {
        let start = self.at;
        while let Some(b'0'..=b'9') = self.byte() {
            self.at += 1;
        }
        let n = self.at - start;
        (n > 0).then_some(n)
    }

    fn deeper(&mut self) -> Option<()> {
        self.depth += 1;
        (self.depth <= MAX_DEPTH).then_some(())
    }

    /// An object, each key (one without escapes) and its value given to `field`, which
    /// must take the value.
    pub(super) fn object(
        &mut self,
        mut field: impl FnMut(&mut Self, &'a str) -> Option<()>,
    ) -> Option<()> {
        self.eat(b'{')?;
        self.deeper()?;
        if !self.took(b'}') {
            loop {
                let key = self.str()?;
                self.eat(b':')?;
                field(self, key)?;
                if !self.took(b',') {
                    self.eat(b'}')?;
                    break;
                }
            }
        }
        self.depth -= 1;
        Some(())
    }

    /// An array, each item given to `item`, which must take it.
    pub(super) fn array(&mut self, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.eat(b'[')?;
        self.deeper()?;
        if !self.took(b']') {
            loop {
                item(self)?;
                if !self.took(b',') {
                    self.eat(b']')?;
                    break;
                }
            }
        }
        self.depth -= 1;
        Some(())
    }

    /// Steps over any value, checking it.
    pub(super) fn skip(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.skip_str(),
            b'{' => self.object(|c, _| c.skip()),
            b'[' => self.array(Self::skip),
            b't' => self.literal("true"),
            b'f' => self.literal("false"),
            b'n' => self.literal("null"),
            _ => self.number().map(drop),
        }
    }
}

/// Sets `slot` once: a key given twice is the tree reader's (serde refuses a repeated
/// field; the tree keeps the last).
pub(super) fn once<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(value);
    Some(())
}

/// How many of `word`'s first bytes are neither a quote, a backslash nor below 0x20: 8 when
/// none is. SWAR: a byte `x` of `v` is zero where `x - 1` borrows into its top bit while
/// `x`'s own is clear; a borrow can only mark bytes after a true one, so the lowest mark is
/// exact (and the word is read little-endian, its first byte lowest).
#[inline(always)]
pub(super) fn plain_prefix(word: &[u8]) -> usize {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const TOPS: u64 = u64::from_ne_bytes([0x80; 8]);
    let Ok(word) = <[u8; 8]>::try_from(word) else {
        return 0;
    };
    let v = u64::from_le_bytes(word);
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x & TOPS;
    let quote = zero_byte(v ^ (ONES * u64::from(b'"')));
    let backslash = zero_byte(v ^ (ONES * u64::from(b'\\')));
    // Below 0x20: `x - 0x20` borrows into the top bit (for x < 0xa0 with it clear).
    let control = v.wrapping_sub(ONES * 0x20) & !v & TOPS;
    ((quote | backslash | control).trailing_zeros() / 8) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the cursor steps over all of `text` as one value.
    fn skips(text: &str) -> bool {
        let mut c = Cursor::new(text);
        c.skip().is_some() && c.end().is_some()
    }

    #[test]
    fn the_cursor_steps_over_what_serde_json_reads_and_declines_the_rest() {
        for json in [
            r#"{"a":[1,-2,3.25,0,-0.5,true,false,null,"x\"y\\z\/\n",{}],"b":{"c":[]}}"#,
            " [ 1 , { \"k\" : \"v\" } ] ",
            "\"é€\"",
            "0",
        ] {
            assert!(skips(json), "{json}");
            assert!(serde_json::from_str::<serde_json::Value>(json).is_ok());
        }
        // Not JSON, or JSON the one-pass reader leaves to the tree.
        for odd in [
            "",
            "{",
            "[1,]",
            r#"{"a":1,}"#,
            "01",
            "-",
            "1.",
            ".5",
            "1e5",
            "tru",
            "nul",
            r#""\u0041""#,
            r#""\x""#,
            "\"a\u{1}b\"",
            "[1] 2",
            r#"{"a" 1}"#,
            r#"{1:2}"#,
            r#"{"a\"b":1}"#,
            "+1",
        ] {
            assert!(!skips(odd), "{odd:?}");
        }
        assert!(!skips(&"9".repeat(MAX_DIGITS + 1)));
        assert!(skips(&"9".repeat(MAX_DIGITS)));
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(skips(&nested(MAX_DEPTH)));
        assert!(!skips(&nested(MAX_DEPTH + 1)));
    }

    #[test]
    fn a_string_is_borrowed_unless_it_has_an_escape() {
        assert_eq!(Cursor::new(r#" "wamid.A==" "#).str(), Some("wamid.A=="));
        assert_eq!(
            Cursor::new(r#""a long string of more than eight bytes""#).str(),
            Some("a long string of more than eight bytes")
        );
        assert_eq!(Cursor::new(r#""a\/b""#).str(), None);
        assert_eq!(Cursor::new("null").str_or_null(), Some(None));
        assert_eq!(Cursor::new("1").str_or_null(), None);
        assert_eq!(Cursor::new(r#""unterminated"#).str(), None);
    }

    #[test]
    fn a_words_plain_prefix_ends_at_its_first_quote_backslash_or_control_byte() {
        for special in (0u8..0x20).chain([b'"', b'\\']) {
            for at in 0..8 {
                for filler in [b'a', b' ', 0x7f, 0x80, 0x9f, 0xa0, 0xff, 0x21, b'e'] {
                    let mut word = [filler; 8];
                    word[at] = special;
                    assert_eq!(plain_prefix(&word), at, "{word:?}");
                    // A second special byte after the first changes nothing.
                    if at < 7 {
                        word[7] = 0;
                        assert_eq!(plain_prefix(&word), at, "{word:?}");
                    }
                }
            }
        }
        for byte in 0x20u8..=0xff {
            if byte != b'"' && byte != b'\\' {
                assert_eq!(plain_prefix(&[byte; 8]), 8, "{byte:#x}");
            }
        }
        assert_eq!(plain_prefix(b"short"), 0);
    }
}
