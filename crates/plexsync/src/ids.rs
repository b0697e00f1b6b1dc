//! Stash's object ids, in the one form Stash writes them.

use std::fmt;

/// A Stash object's id (a scene, performer, studio or tag): a positive
/// integer in Stash's database, written in decimal without a leading zero.
/// Parsed once where an id arrives (a hook, a task's arguments, the
/// daemon's page, the provider, Stash's answers), so `"007"` and `"7"` are
/// one scene: one queue row, one record, one Plex item.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StashId(String);

/// A scene's id.
pub type SceneId = StashId;

impl StashId {
    /// Decimal digits (leading zeros allowed; nothing else, not even a
    /// space) naming a positive id within SQLite's integers.
    pub fn parse(s: &str) -> Option<Self> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n: i64 = s.trim_start_matches('0').parse().ok()?;
        (n > 0).then(|| Self(n.to_string()))
    }

    /// Only the id's own spelling: where two spellings must never be two
    /// answers (the provider's ratingKeys, which Plex keeps).
    pub fn exact(s: &str) -> Option<Self> {
        Self::parse(s).filter(|id| id.0 == s)
    }

    /// An id in Stash's JSON, sent as a number or as a string of digits.
    pub fn from_json(value: &serde_json::Value) -> Option<Self> {
        match value {
            serde_json::Value::Number(n) => Self::parse(&n.as_u64()?.to_string()),
            serde_json::Value::String(s) => Self::parse(s),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StashId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_id_has_one_spelling() {
        assert_eq!(StashId::parse("007"), StashId::parse("7"));
        assert_eq!(StashId::parse("007").unwrap().as_str(), "7");
        assert_eq!(StashId::from_json(&serde_json::json!(7)), StashId::parse("7"));
        assert_eq!(StashId::from_json(&serde_json::json!("0042")).unwrap().to_string(), "42");
        for bad in ["", "0", "000", "-1", "+1", " 7", "7 ", "1e3", "٣", "99999999999999999999"] {
            assert_eq!(StashId::parse(bad), None, "{bad:?}");
        }
        assert_eq!(StashId::exact("7").unwrap().as_str(), "7");
        assert_eq!(StashId::exact("07"), None, "the provider answers one spelling");
        assert_eq!(StashId::from_json(&serde_json::json!(-3)), None);
        assert_eq!(StashId::from_json(&serde_json::json!(1.5)), None);
    }
}
