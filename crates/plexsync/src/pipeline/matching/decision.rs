//! The match decision: from what an index of the Plex library answers,
//! which items hold a scene's files, by these signals, strongest first:
//! recorded ratingKey (verified) → Plex URL on the scene → mapped path →
//! file name + size → unique file name. Every result says why; an
//! ambiguous result is never written. The decision asks the index through
//! [`Lookup`] only, so it is tested without a database.

use crate::clients::stash::{Scene, SceneFile};
use crate::config::PathMap;
use crate::error::{Error, ErrorClass};

use super::paths::{
    file_name, is_file, key_hash, map_path, normalize, percent_decoded, rating_key_in_url, stem, FileKeys, Key,
};

/// What the decision asks of an index of the Plex library.
pub(crate) trait Lookup {
    /// The item `rk`, if the library has it.
    fn item(&self, rk: &str) -> Result<Option<IndexedItem>, Error>;

    /// Rating keys of the items under `key` (a [`key_hash`]) of `kind`
    /// whose own files satisfy `holds`: the key narrows, `holds` decides,
    /// so a hash collision or a moved item never matches.
    fn lookup(&self, kind: Key, key: i64, holds: impl Fn(&FileKeys, Option<u64>) -> bool)
        -> Result<Vec<String>, Error>;
}

/// A Plex item as the index keeps it.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct IndexedItem {
    pub rating_key: Box<str>,
    pub section: Box<str>,
    /// (raw path, size)
    pub files: Box<[(Box<str>, Option<u64>)]>,
    /// Part durations in ms, for tie-breaks.
    pub durations: Box<[u64]>,
}

impl IndexedItem {
    /// Whether one of the item's files is the Stash file `file` (after mapping).
    fn holds(&self, file: &SceneFile, maps: &[PathMap]) -> bool {
        self.files.iter().any(|(p, size)| is_file(file, p, *size, maps))
    }
}

/// How sure a match is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum Confidence {
    Low,
    Medium,
    High,
}

/// A Plex item a scene is delivered to: its ratingKey and its section.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct MatchedItem {
    pub rating_key: String,
    pub section: String,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub enum Match {
    /// The scene's item; `also` lists more items when the scene's files
    /// are separate items in Plex: each gets the metadata.
    Found {
        rating_key: String,
        section: String,
        confidence: Confidence,
        reason: String,
        also: Vec<MatchedItem>,
    },
    Ambiguous {
        candidates: Vec<String>,
        reason: String,
    },
    NotFound {
        tried: Vec<String>,
    },
}

impl Match {
    /// The matched items, the main one first; none unless found.
    pub(crate) fn items(&self) -> Vec<MatchedItem> {
        match self {
            Match::Found { rating_key, section, also, .. } => {
                let main = MatchedItem { rating_key: rating_key.clone(), section: section.clone() };
                std::iter::once(main).chain(also.iter().cloned()).collect()
            }
            _ => Vec::new(),
        }
    }
}

/// Finds the scene's items. `recorded` are the ratingKeys we wrote to last time.
pub(crate) fn find(index: &impl Lookup, scene: &Scene, recorded: &[String], maps: &[PathMap]) -> Result<Match, Error> {
    Ok(explain(index, scene, recorded, maps)?.0)
}

/// Finds the scene's items and says how: one line per signal tried.
/// Each file is resolved on its own; a scene whose files are different
/// items matches all of them, and one file that could be several items
/// makes the whole scene ambiguous.
pub(crate) fn explain(
    index: &impl Lookup,
    scene: &Scene,
    recorded: &[String],
    maps: &[PathMap],
) -> Result<(Match, Vec<String>), Error> {
    let mut trace = Vec::new();
    if !recorded.is_empty() {
        let keys = recorded.join(", ");
        // Each recorded item read once, kept when it holds a file of the scene.
        let mut items = Vec::new();
        for rk in recorded {
            items.extend(index.item(rk)?.filter(|i| scene.files.iter().any(|f| i.holds(f, maps))));
        }
        let all_held = scene.files.iter().all(|f| items.iter().any(|i| i.holds(f, maps)));
        let holding: Vec<String> = items.iter().map(|i| i.rating_key.to_string()).collect();
        if all_held && !holding.is_empty() {
            trace.push(format!("recorded ratingKey {keys}: still holds the scene's files — match"));
            let reason = format!("recorded ratingKey {}, same files", holding.join(", "));
            return Ok(decided(found(index, &holding, Confidence::High, reason)?, trace));
        }
        trace.push(format!("recorded ratingKey {keys}: no longer holds every file of the scene"));
    }
    // The old agent's URL names no server and goes stale after a
    // rebuild, a migration or on a second server: a candidate only,
    // taken when the item holds one of the scene's files.
    if let Some(rk) = scene.urls.iter().rev().find_map(|u| rating_key_in_url(u)) {
        match refused_url(index, scene, maps)? {
            None => {
                trace.push(format!("Plex URL on the scene names {rk}, which holds the scene's file — match"));
                let reason = format!("Plex URL on the scene names {rk}, same file");
                return Ok(decided(found(index, std::slice::from_ref(&rk), Confidence::High, reason)?, trace));
            }
            Some(why) => trace.push(why),
        }
    }
    let mut per_file = Vec::with_capacity(scene.files.len());
    for f in &scene.files {
        per_file.push((f, file_candidates(index, f, maps, &mut trace)?));
    }
    // Only the strongest signal counts: a weaker one never outvotes it.
    let best = per_file.iter().flat_map(|(_, c)| c).map(|c| c.1).max();
    let mut chosen: Vec<(String, Confidence, String)> = Vec::new();
    let mut ambiguous = None;
    for (file, mut candidates) in per_file {
        candidates.retain(|c| Some(c.1) == best);
        candidates.sort_by(|a, b| a.0.cmp(&b.0));
        candidates.dedup_by(|a, b| a.0 == b.0);
        match candidates.as_slice() {
            [] => {}
            [one] => chosen.push(one.clone()),
            many => match break_tie(index, file, many)? {
                Some(one) => chosen.push(one),
                None => ambiguous = Some(many.iter().map(|(rk, _, _)| rk.clone()).collect::<Vec<_>>()),
            },
        }
    }
    chosen.sort_by(|a, b| a.0.cmp(&b.0));
    chosen.dedup_by(|a, b| a.0 == b.0);
    let decision = match (ambiguous, chosen.as_slice()) {
        (Some(candidates), _) => Match::Ambiguous {
            reason: format!("{} Plex items could hold one of the scene's files", candidates.len()),
            candidates,
        },
        (None, []) => Match::NotFound { tried: trace.clone() },
        (None, [(rk, confidence, reason)]) => found(index, std::slice::from_ref(rk), *confidence, reason.clone())?,
        (None, many) => {
            let keys: Vec<String> = many.iter().map(|c| c.0.clone()).collect();
            let confidence = many.iter().map(|c| c.1).min().unwrap_or(Confidence::Low);
            let reasons: Vec<&str> = many.iter().map(|c| c.2.as_str()).collect();
            found(index, &keys, confidence, format!("one item per file: {}", reasons.join("; ")))?
        }
    };
    Ok(decided(decision, trace))
}

/// Why the Plex URL on the scene (the newest one) is not taken, when it
/// is not: the item it names holds none of the scene's files.
pub(crate) fn refused_url(index: &impl Lookup, scene: &Scene, maps: &[PathMap]) -> Result<Option<String>, Error> {
    let Some(rk) = scene.urls.iter().rev().find_map(|u| rating_key_in_url(u)) else { return Ok(None) };
    if holds_any(index, &rk, scene, maps)? {
        return Ok(None);
    }
    Ok(Some(match index.item(&rk)? {
        Some(_) => format!("Plex URL on the scene names {rk}, which holds none of the scene's files (a stale URL: another video): ignored"),
        None => format!("Plex URL on the scene names {rk}, which is not in the library: ignored"),
    }))
}

/// Whether the item `rk` holds one of the scene's files.
fn holds_any(index: &impl Lookup, rk: &str, scene: &Scene, maps: &[PathMap]) -> Result<bool, Error> {
    Ok(index.item(rk)?.is_some_and(|item| scene.files.iter().any(|f| item.holds(f, maps))))
}

/// `items` (the first is the main one) as a match.
fn found(index: &impl Lookup, items: &[String], confidence: Confidence, reason: String) -> Result<Match, Error> {
    let mut with_section = Vec::with_capacity(items.len());
    for rk in items {
        let section = index.item(rk)?.map(|i| i.section.to_string()).unwrap_or_default();
        with_section.push(MatchedItem { rating_key: rk.clone(), section });
    }
    let mut with_section = with_section.into_iter();
    let Some(MatchedItem { rating_key, section }) = with_section.next() else {
        return Err(Error::new(ErrorClass::Bug, format!("a match of no item ({reason})")));
    };
    Ok(Match::Found { rating_key, section, confidence, reason, also: with_section.collect() })
}

/// The candidates of one scene file, by the first signal that has any.
fn file_candidates(
    index: &impl Lookup,
    file: &SceneFile,
    maps: &[PathMap],
    trace: &mut Vec<String>,
) -> Result<Vec<(String, Confidence, String)>, Error> {
    let mapped = map_path(&file.path, maps, false);
    let mut keys = vec![mapped.clone()];
    keys.extend(percent_decoded(&mapped).map(|p| normalize(&p, false)));
    trace.push(format!("file {} → {}", file.path, keys.join(" | ")));
    let with = |rks: &[String], c: Confidence, why: String| -> Vec<(String, Confidence, String)> {
        rks.iter().map(|rk| (rk.clone(), c, why.clone())).collect()
    };
    let mut exact = Vec::new();
    for k in &keys {
        exact.extend(index.lookup(Key::Path, key_hash(k), |f, _| &f.path == k)?);
    }
    if !exact.is_empty() {
        trace.push(format!("  exact path: items {}", exact.join(", ")));
        return Ok(with(&exact, Confidence::High, format!("path {mapped}")));
    }
    trace.push("  exact path: none".into());
    let mut folded = Vec::new();
    for k in keys.iter().map(|k| k.to_lowercase()) {
        // Paths equal but for case have equal file names in lower case:
        // the name keys hold the candidates.
        folded.extend(index.lookup(Key::Name, key_hash(file_name(&k)), |f, _| f.path.to_lowercase() == k)?);
    }
    if !folded.is_empty() {
        trace.push(format!("  path ignoring case: items {}", folded.join(", ")));
        return Ok(with(&folded, Confidence::Medium, format!("path {mapped} (ignoring case)")));
    }
    trace.push("  path ignoring case: none".into());
    let decoded = keys.last().unwrap_or(&mapped);
    let name = file_name(decoded).to_lowercase();
    let size = Some(file.size);
    let rks = index.lookup(Key::NameSize, key_hash((&name, &file.size)), |f, s| f.name == name && s == size)?;
    if !rks.is_empty() {
        trace.push(format!("  file name {name} + size {}: items {}", file.size, rks.join(", ")));
        return Ok(with(&rks, Confidence::Medium, format!("file name {name} and size {}", file.size)));
    }
    trace.push(format!("  file name {name} + size {}: none", file.size));
    let stem_of = stem(decoded).to_lowercase();
    let rks = index.lookup(Key::StemSize, key_hash((&stem_of, &file.size)), |f, s| f.stem == stem_of && s == size)?;
    if !rks.is_empty() {
        trace.push(format!("  same name, other extension, same size: items {}", rks.join(", ")));
        return Ok(with(&rks, Confidence::Medium, format!("{} with another extension, same size", stem(decoded))));
    }
    trace.push("  same name with another extension: none".into());
    // A name alone only where Plex does not say the size: a file of the
    // same name and another size is another video (a re-encode, or the
    // same name in a folder Plex has not scanned yet).
    let sized = index.lookup(Key::Name, key_hash(&name), |f, s| f.name == name && s.is_some())?;
    if !sized.is_empty() {
        trace.push(format!("  file name {name} alone: items {} hold it with another size", sized.join(", ")));
        return Ok(Vec::new());
    }
    Ok(match index.lookup(Key::Name, key_hash(&name), |f, _| f.name == name)?.as_slice() {
        [rk] => {
            trace.push(format!("  file name {name} alone: only item {rk}"));
            vec![(rk.clone(), Confidence::Low, format!("unique file name {name}"))]
        }
        [] => {
            trace.push(format!("  file name {name} alone: none"));
            Vec::new()
        }
        many => {
            trace.push(format!("  file name {name} alone: {} items, not unique", many.len()));
            Vec::new()
        }
    })
}

/// Several candidates for one file: its duration may single one out
/// (within 2 s); otherwise the file is ambiguous.
fn break_tie(
    index: &impl Lookup,
    file: &SceneFile,
    many: &[(String, Confidence, String)],
) -> Result<Option<(String, Confidence, String)>, Error> {
    let mut close = Vec::new();
    for c in many {
        let durations = index.item(&c.0)?.map(|i| i.durations).unwrap_or_default();
        if durations.iter().any(|d| (file.duration - *d as f64 / 1000.0).abs() <= 2.0) {
            close.push(c);
        }
    }
    Ok(match close.as_slice() {
        [(rk, _, reason)] => Some((rk.clone(), Confidence::Low, format!("{reason}; duration breaks a tie"))),
        _ => None,
    })
}

/// The decision, with its line added to the trace.
fn decided(decision: Match, mut trace: Vec<String>) -> (Match, Vec<String>) {
    trace.push(decision_line(&decision));
    (decision, trace)
}

/// The trace's last line: what was decided.
pub(crate) fn decision_line(decision: &Match) -> String {
    match decision {
        Match::Found { rating_key, confidence, reason, also, .. } if !also.is_empty() => {
            let more: Vec<&str> = also.iter().map(|i| i.rating_key.as_str()).collect();
            format!("decision: items {rating_key}, {} ({confidence:?} confidence: {reason})", more.join(", "))
        }
        Match::Found { rating_key, confidence, reason, .. } => {
            format!("decision: item {rating_key} ({confidence:?} confidence: {reason})")
        }
        Match::Ambiguous { candidates, reason } => {
            format!("decision: ambiguous, nothing written: {reason} ({})", candidates.join(", "))
        }
        Match::NotFound { .. } => "decision: not in Plex".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The decision's view of a library, with no database: a list whose
    /// lookup ignores the key and lets `holds` decide, which is exactly
    /// what the key narrows in the real index.
    struct Items(Vec<IndexedItem>);

    impl Lookup for Items {
        fn item(&self, rk: &str) -> Result<Option<IndexedItem>, Error> {
            Ok(self.0.iter().find(|i| &*i.rating_key == rk).cloned())
        }

        fn lookup(&self, _: Key, _: i64, holds: impl Fn(&FileKeys, Option<u64>) -> bool) -> Result<Vec<String>, Error> {
            Ok(self
                .0
                .iter()
                .filter(|i| i.files.iter().any(|(p, size)| holds(&FileKeys::of(p), *size)))
                .map(|i| i.rating_key.to_string())
                .collect())
        }
    }

    fn item(rk: &str, path: &str, size: Option<u64>, duration_ms: u64) -> IndexedItem {
        IndexedItem {
            rating_key: rk.into(),
            section: "1".into(),
            files: vec![(path.into(), size)].into(),
            durations: vec![duration_ms].into(),
        }
    }

    fn scene(path: &str, size: u64, duration: f64) -> Scene {
        Scene {
            id: "1".into(),
            files: vec![SceneFile { path: path.into(), size, duration, ..Default::default() }],
            ..Default::default()
        }
    }

    fn maps() -> Vec<PathMap> {
        vec![PathMap { stash: "/data".into(), plex: "/media".into() }]
    }

    fn decide(items: Vec<IndexedItem>, scene: &Scene, recorded: &[&str]) -> Match {
        let recorded: Vec<String> = recorded.iter().map(|r| r.to_string()).collect();
        find(&Items(items), scene, &recorded, &maps()).unwrap()
    }

    fn found(m: &Match) -> Option<(&str, Confidence)> {
        match m {
            Match::Found { rating_key, confidence, .. } => Some((rating_key, *confidence)),
            _ => None,
        }
    }

    #[test]
    fn the_mapped_path_wins_over_a_weaker_signal_elsewhere() {
        let items = vec![item("1", "/media/a/v.mp4", Some(5), 0), item("2", "/other/v.mp4", Some(5), 0)];
        let m = decide(items, &scene("/data/a/v.mp4", 5, 0.0), &[]);
        assert_eq!(found(&m), Some(("1", Confidence::High)), "{m:?}");
    }

    #[test]
    fn a_file_name_with_another_size_is_another_video() {
        let items = vec![item("1", "/other/v.mp4", Some(6), 0)];
        assert!(matches!(decide(items, &scene("/data/a/v.mp4", 5, 0.0), &[]), Match::NotFound { .. }));
        // Where Plex does not say the size, a unique name is a weak match.
        let no_size = vec![item("1", "/other/v.mp4", None, 0)];
        let m = decide(no_size, &scene("/data/a/v.mp4", 5, 0.0), &[]);
        assert_eq!(found(&m), Some(("1", Confidence::Low)), "{m:?}");
    }

    #[test]
    fn two_candidates_are_ambiguous_unless_the_duration_singles_one_out() {
        let two = || vec![item("1", "/x/v.mp4", Some(5), 60_000), item("2", "/y/v.mp4", Some(5), 90_000)];
        let m = decide(two(), &scene("/data/a/v.mp4", 5, 10.0), &[]);
        assert!(matches!(m, Match::Ambiguous { ref candidates, .. } if candidates.len() == 2), "{m:?}");
        let m = decide(two(), &scene("/data/a/v.mp4", 5, 89.0), &[]);
        assert_eq!(found(&m), Some(("2", Confidence::Low)), "{m:?}");
    }

    #[test]
    fn a_recorded_key_counts_only_while_it_holds_the_file() {
        let items = || vec![item("7", "/media/a/v.mp4", Some(5), 0), item("8", "/media/b/other.mp4", Some(9), 0)];
        let m = decide(items(), &scene("/data/a/v.mp4", 5, 0.0), &["7"]);
        assert!(matches!(m, Match::Found { ref reason, .. } if reason.starts_with("recorded")), "{m:?}");
        // Recorded 8 no longer holds the file: the path decides, not the record.
        let m = decide(items(), &scene("/data/a/v.mp4", 5, 0.0), &["8"]);
        assert!(
            matches!(m, Match::Found { ref rating_key, ref reason, .. } if rating_key == "7" && reason.starts_with("path")),
            "{m:?}"
        );
    }

    #[test]
    fn a_plex_url_naming_another_video_is_ignored() {
        let items = vec![item("7", "/media/a/v.mp4", Some(5), 0), item("8", "/media/b/w.mp4", Some(9), 0)];
        let mut s = scene("/data/a/v.mp4", 5, 0.0);
        s.urls = vec!["https://plex/library/metadata/8".into()];
        let lib = Items(items);
        assert!(refused_url(&lib, &s, &maps()).unwrap().is_some_and(|why| why.contains("holds none")));
        assert_eq!(found(&find(&lib, &s, &[], &maps()).unwrap()), Some(("7", Confidence::High)));
    }
}
