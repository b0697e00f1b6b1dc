//! Paths as Stash and Plex write them, made comparable: normalized,
//! mapped from Stash's view to Plex's, and the keys a file is looked up by.

use crate::clients::stash::SceneFile;
use crate::config::PathMap;

/// Normalizes a path for comparison: `\` → `/`, Unicode NFC, repeated
/// separators collapsed, trailing spaces and dots of each component
/// dropped (Windows ignores them), optionally case-folded.
pub(crate) fn normalize(path: &str, fold_case: bool) -> String {
    let slashed = path.replace('\\', "/");
    let unified = crate::pipeline::sanitize::nfc(&slashed);
    let mut out = String::with_capacity(unified.len());
    for (i, part) in unified.split('/').enumerate() {
        if part.is_empty() && i > 0 {
            continue;
        }
        if i > 0 {
            out.push('/');
        }
        out.push_str(part.trim_end_matches([' ', '.']));
    }
    if fold_case {
        out.to_lowercase()
    } else {
        out
    }
}

/// Decodes `%XX` sequences when the result is valid UTF-8 and differs
/// (paths that went through a URL somewhere).
pub(crate) fn percent_decoded(path: &str) -> Option<String> {
    if !path.contains('%') {
        return None;
    }
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8().ok()?;
    (decoded != path).then(|| decoded.into_owned())
}

/// Applies the longest matching `stash => plex` prefix rule, comparing
/// normalized forms and only at component boundaries.
pub(crate) fn map_path(stash_path: &str, maps: &[PathMap], fold_case: bool) -> String {
    let path = normalize(stash_path, fold_case);
    let mut best: Option<(usize, String)> = None;
    for m in maps {
        let from = normalize(&m.stash, fold_case);
        let from = from.trim_end_matches('/');
        let rest = match path.strip_prefix(from) {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
            _ => continue,
        };
        if best.as_ref().is_none_or(|(len, _)| from.len() > *len) {
            let to = normalize(&m.plex, fold_case);
            best = Some((from.len(), format!("{}{rest}", to.trim_end_matches('/'))));
        }
    }
    best.map(|(_, p)| p).unwrap_or(path)
}

/// Whether `stash_path` lies under one of the mappings' Stash prefixes
/// (ignoring case, at component boundaries). Without mappings every path
/// does: Stash and Plex then see the same paths.
pub(crate) fn under_maps(stash_path: &str, maps: &[PathMap]) -> bool {
    let path = normalize(stash_path, true);
    maps.is_empty()
        || maps.iter().any(|m| {
            let from = normalize(&m.stash, true);
            path.strip_prefix(from.trim_end_matches('/')).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
}

pub(super) fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The path without its extension (the part after the last dot of the name).
pub(super) fn stem(path: &str) -> &str {
    match path.rsplit_once('.') {
        Some((stem, ext)) if !ext.contains('/') => stem,
        _ => path,
    }
}

/// The ratingKey in a Plex URL the agent left on a scene
/// (`plex/library/metadata/12345`, possibly with more after it).
pub(crate) fn rating_key_in_url(url: &str) -> Option<String> {
    let rest = url.split("/library/metadata/").nth(1)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    (!digits.is_empty()).then_some(digits)
}

/// A lookup key: 64 bits of a hash, as SQLite's integer.
pub(super) fn key_hash(key: impl std::hash::Hash) -> i64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    let hash = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(key);
    // The bits as SQLite's signed integer: a key, not a quantity.
    hash.cast_signed()
}

/// The lookups an item's files are found by, as stored in `keys.kind`.
#[derive(Clone, Copy)]
pub(crate) enum Key {
    Path = 0,
    Name = 1,
    NameSize = 2,
    StemSize = 3,
}

/// The lookup keys of one file: its normalized path, its file name (lower
/// case) and its stem (lower case).
pub(crate) struct FileKeys {
    pub(super) path: String,
    pub(super) name: String,
    pub(super) stem: String,
}

impl FileKeys {
    pub(super) fn of(path: &str) -> Self {
        let path = normalize(path, false);
        let (name, stem) = (file_name(&path).to_lowercase(), stem(&path).to_lowercase());
        Self { path, name, stem }
    }
}

/// Whether the Stash file `file` is the Plex file `path` (with `size`):
/// the same path after mapping (ignoring case), or the same file name and size.
pub(crate) fn is_file(file: &SceneFile, path: &str, size: Option<u64>, maps: &[PathMap]) -> bool {
    let mapped = map_path(&file.path, maps, true);
    let plex = normalize(path, true);
    plex == mapped || (file_name(&plex) == file_name(&mapped) && size == Some(file.size))
}

/// The file name of a Plex or Stash path (either separator).
pub(crate) fn file_name_of(path: &str) -> &str {
    path.rsplit(['/', '\\']).next().unwrap_or(path)
}
