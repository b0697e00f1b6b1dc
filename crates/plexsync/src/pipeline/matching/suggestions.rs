//! Path mappings proposed from the files Stash and Plex both hold.

use std::collections::HashMap;

use crate::error::Error;

use super::decision::Lookup;
use super::index::LibraryIndex;
use super::paths::{file_name, key_hash, normalize, FileKeys, Key};

/// A proposed `stash => plex` prefix rule and how many files it explains.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Suggestion {
    pub stash: String,
    pub plex: String,
    pub files: usize,
}

/// Proposes path mappings: every Stash file whose name and size exist once
/// in Plex is paired with that Plex file; the components both paths share
/// at the end are dropped, and what is left of each is a prefix rule. Rules
/// are ranked by how many files they explain.
pub fn suggest_mappings(stash_files: &[(String, u64)], index: &LibraryIndex) -> Result<Vec<Suggestion>, Error> {
    let mut tally = MappingTally::default();
    for (path, size) in stash_files {
        tally.add(index, path, *size)?;
    }
    Ok(tally.rules())
}

/// The prefix rules [`suggest_mappings`] proposes, counted as Stash's files
/// come, so a library is never held whole: one entry per distinct rule.
#[derive(Debug, Default)]
pub struct MappingTally {
    counts: HashMap<(String, String), usize>,
    /// Stash files seen.
    pub files: usize,
}

impl MappingTally {
    /// Counts the rule the Stash file `path` of `size` bytes explains, if any.
    pub fn add(&mut self, index: &LibraryIndex, path: &str, size: u64) -> Result<(), Error> {
        self.files += 1;
        let stash = normalize(path, false);
        let name = file_name(&stash).to_lowercase();
        let same = |f: &FileKeys, s: Option<u64>| f.name == name && s == Some(size);
        let Ok::<[String; 1], _>([rk]) =
            Lookup::lookup(index, Key::NameSize, key_hash((&name, &size)), same)?.try_into()
        else {
            return Ok(());
        };
        let Some(item) = Lookup::item(index, &rk)? else { return Ok(()) };
        let Some((plex, _)) = item.files.iter().find(|(p, s)| same(&FileKeys::of(p), *s)) else { return Ok(()) };
        let plex = normalize(plex, false);
        let (a, b): (Vec<&str>, Vec<&str>) = (stash.split('/').collect(), plex.split('/').collect());
        let common = a.iter().rev().zip(b.iter().rev()).take_while(|(x, y)| x.eq_ignore_ascii_case(y)).count();
        let prefix = |parts: &[&str]| {
            let p = parts.join("/");
            if p.is_empty() {
                "/".to_string()
            } else {
                p
            }
        };
        *self.counts.entry((prefix(&a[..a.len() - common]), prefix(&b[..b.len() - common]))).or_default() += 1;
        Ok(())
    }

    /// The rules that change a path, the one explaining most files first.
    pub fn rules(self) -> Vec<Suggestion> {
        let mut rules: Vec<Suggestion> = self
            .counts
            .into_iter()
            .filter(|((s, p), _)| s != p)
            .map(|((stash, plex), files)| Suggestion { stash, plex, files })
            .collect();
        rules.sort_by(|x, y| y.files.cmp(&x.files).then(x.stash.cmp(&y.stash)));
        rules
    }
}
