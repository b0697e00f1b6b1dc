//! Turning Stash values into Plex-safe values: one pure function per kind
//! of field, each returning the clean value and what it changed.
//!
//! | kind        | rules                                                                    | limit        |
//! |-------------|--------------------------------------------------------------------------|--------------|
//! | one-line    | NFC; control, zero-width and BOM characters removed; whitespace runs → one space; trimmed | 255 chars |
//! | multi-line  | NFC; control characters removed except newline and tab; CRLF → LF; trimmed | 10 000 chars |
//! | date        | `YYYY-MM-DD` real calendar date, year 1800–2200; `YYYY-MM` → first of month; `YYYY` → year only | — |
//! | name / tag  | one-line rules; empty dropped; duplicates (ignoring case) dropped          | 255 chars, 100 entries |
//! | URL         | http(s) with a host, no credentials in it                                 | 2 048 chars  |
//!
//! Cuts happen between grapheme clusters: never inside an emoji sequence or
//! between a letter and its accents.

use unicode_normalization::UnicodeNormalization;
use unicode_segmentation::UnicodeSegmentation;

pub const ONE_LINE_MAX: usize = 255;
pub const MULTI_LINE_MAX: usize = 10_000;
pub(crate) const LIST_MAX: usize = 100;

/// A value after cleaning, with notes on what was changed (empty when
/// nothing was).
#[derive(Clone, Debug, PartialEq)]
pub struct Clean<T> {
    pub value: T,
    pub notes: Vec<String>,
}

fn is_invisible(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{2028}' | '\u{2029}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}')
}

/// Cuts `s` to at most `max` characters, at a grapheme cluster boundary.
fn truncate(s: &str, max: usize) -> (String, bool) {
    if s.chars().count() <= max {
        return (s.to_string(), false);
    }
    let mut out = String::new();
    let mut count = 0;
    for g in s.graphemes(true) {
        let n = g.chars().count();
        if count + n > max {
            break;
        }
        out.push_str(g);
        count += n;
    }
    (out.trim_end().to_string(), true)
}

/// `text` in Unicode NFC. Most text is NFC already (all ASCII is), and
/// the quick check that says so costs a fraction of composing it again
/// char by char, which was 3 % of a first sync's CPU and a tenth of
/// reconcile's.
pub(crate) fn nfc(text: &str) -> std::borrow::Cow<'_, str> {
    match unicode_normalization::is_nfc_quick(text.chars()) {
        unicode_normalization::IsNormalized::Yes => text.into(),
        _ => text.nfc().collect::<String>().into(),
    }
}

/// `s` cut to at most `max` characters at a grapheme boundary.
pub(crate) fn cut(s: &str, max: usize) -> String {
    truncate(s, max).0
}

/// A one-line text field (title, studio, tagline, a name).
pub fn one_line(raw: &str, max: usize) -> Clean<String> {
    let mut notes = Vec::new();
    let text = nfc(raw);
    let mut out = String::with_capacity(text.len());
    let mut removed = false;
    let mut last_space = true;
    for c in text.chars() {
        if c.is_whitespace() {
            if !last_space {
                out.push(' ');
            }
            last_space = true;
        } else if c.is_control() || is_invisible(c) {
            removed = true;
        } else {
            out.push(c);
            last_space = false;
        }
    }
    if removed {
        notes.push("removed control or invisible characters".into());
    }
    let trimmed = out.trim_end();
    let (value, cut) = truncate(trimmed, max);
    if cut {
        notes.push(format!("cut to {max} characters"));
    }
    Clean { value, notes }
}

/// A multi-line text field (summary).
pub fn multi_line(raw: &str, max: usize) -> Clean<String> {
    let mut notes = Vec::new();
    let lines = raw.replace("\r\n", "\n").replace('\r', "\n");
    let text = nfc(&lines);
    let mut removed = false;
    let kept: String = text
        .chars()
        .filter(|c| {
            let keep = *c == '\n' || *c == '\t' || !(c.is_control() || is_invisible(*c));
            removed |= !keep;
            keep
        })
        .collect();
    if removed {
        notes.push("removed control or invisible characters".into());
    }
    let (value, cut) = truncate(kept.trim(), max);
    if cut {
        notes.push(format!("cut to {max} characters"));
    }
    Clean { value, notes }
}

/// A release date: `(YYYY-MM-DD, year)`, year only, or nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlexDate {
    pub date: Option<String>,
    pub year: i32,
}

/// Parses a Stash date; an impossible one is an error naming the value.
pub fn date(raw: &str) -> Result<PlexDate, String> {
    let s = raw.trim();
    let parts: Vec<&str> = s.split('-').collect();
    let num = |p: &str, len: usize| {
        (p.len() == len && p.chars().all(|c| c.is_ascii_digit())).then(|| p.parse::<u32>().ok()).flatten()
    };
    let (y, m, d) = match parts.as_slice() {
        [y] => (num(y, 4), Some(0), Some(0)),
        [y, m] => (num(y, 4), num(m, 2), Some(1)),
        [y, m, d] => (num(y, 4), num(m, 2), num(d, 2)),
        _ => (None, None, None),
    };
    let (Some(y), Some(m), Some(d)) = (y, m, d) else {
        return Err(format!("'{s}' is not a date (YYYY-MM-DD)"));
    };
    let year = match i32::try_from(y) {
        Ok(year) if (1800..=2200).contains(&year) => year,
        _ => return Err(format!("'{s}' has an implausible year")),
    };
    if m == 0 {
        return Ok(PlexDate { date: None, year });
    }
    match chrono::NaiveDate::from_ymd_opt(year, m, d) {
        Some(date) => Ok(PlexDate { date: Some(date.format("%Y-%m-%d").to_string()), year }),
        None => Err(format!("'{s}' is not a real calendar date")),
    }
}

/// A URL that may be handed to Plex (performer photos): http(s) with a
/// host, at most 2 048 characters, no user or password in it.
pub(crate) fn url(raw: &str) -> Result<String, String> {
    let trimmed = raw.trim();
    if trimmed.len() > 2048 {
        return Err("URL longer than 2048 characters".into());
    }
    let parsed = url::Url::parse(trimmed).map_err(|e| format!("not a URL ({e})"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(format!("only http(s) URLs with a host are allowed, got {}:", parsed.scheme()));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("URL carries credentials".into());
    }
    Ok(parsed.to_string())
}

/// A list of names (tags, performers): cleaned, empty and duplicate
/// (ignoring case) entries dropped, at most `max` kept, order kept.
pub fn name_list<'a>(raw: impl IntoIterator<Item = &'a str>, max: usize) -> Clean<Vec<String>> {
    let mut notes = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    let mut dropped = 0;
    for name in raw {
        let clean = one_line(name, ONE_LINE_MAX).value;
        if clean.is_empty() || !seen.insert(clean.to_lowercase()) {
            dropped += 1;
            continue;
        }
        out.push(clean);
    }
    if dropped > 0 {
        notes.push(format!("dropped {dropped} empty or duplicate entries"));
    }
    if out.len() > max {
        notes.push(format!("kept the first {max} of {} entries", out.len()));
        out.truncate(max);
    }
    Clean { value: out, notes }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_cleans_and_cuts_safely() {
        let c = one_line("  A\u{0}B\u{200B}  C\n\tD\u{FEFF} ", 255);
        assert_eq!(c.value, "AB C D");
        assert!(!c.notes.is_empty());
        // NFD input comes out NFC.
        assert_eq!(one_line("Cafe\u{301}", 255).value, "Café");
        // Cutting never leaves a base without its combining mark, nor splits an emoji.
        let cut = truncate("abe\u{301}\u{302}x", 3);
        assert_eq!(cut.0, "ab");
        let family = "\u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467}";
        assert_eq!(truncate(&format!("ab{family}"), 4).0, "ab");
        assert_eq!(one_line("Tom & Jerry = #1", 255), Clean { value: "Tom & Jerry = #1".into(), notes: vec![] });
    }

    #[test]
    fn urls() {
        assert_eq!(url(" http://stash:9999/performer/1/image ").unwrap(), "http://stash:9999/performer/1/image");
        assert!(url("file:///etc/passwd").is_err());
        assert!(url("javascript:alert(1)").is_err());
        assert!(url("http://user:pw@host/x").is_err());
    }

    #[test]
    fn multi_line_keeps_newlines() {
        assert_eq!(multi_line("a\r\nb\u{7}\tc", 100).value, "a\nb\tc");
    }

    #[test]
    fn dates() {
        assert_eq!(date("2020-02-29").unwrap(), PlexDate { date: Some("2020-02-29".into()), year: 2020 });
        assert_eq!(date("2020-05").unwrap().date.as_deref(), Some("2020-05-01"));
        assert_eq!(date("2020").unwrap(), PlexDate { date: None, year: 2020 });
        for bad in ["0000-00-00", "2021-02-29", "2020-13-01", "yesterday", "20-1-1", ""] {
            assert!(date(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lists_dedupe_ignoring_case() {
        let c = name_list(["Drama", "drama ", "", "Comedy"], 100);
        assert_eq!(c.value, ["Drama", "Comedy"]);
        assert_eq!(name_list(["a", "b", "c"], 2).value, ["a", "b"]);
    }
}
