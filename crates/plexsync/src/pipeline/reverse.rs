//! Matching in reverse, for the metadata provider: from the file Plex
//! names to the Stash scene that holds it.
//!
//! Plex sends a path whose tail is reliable and whose head may be the
//! library root, the whole server path, or absent, and never a size. So a
//! candidate is judged by how many trailing components of that path equal
//! those of one of the scene's files (after the path mappings, Unicode NFC,
//! either separator; case ignored only when nothing matches with case).
//! The same refusal of ambiguity as push: an answer is given only when one
//! scene is best. Lookups read an in-memory index of Stash's files, kept
//! fresh by the same `updated_at` watermark as change capture, so no
//! provider call ever costs Stash a query.

use std::collections::HashMap;
use std::time::Instant;

use chrono::{DateTime, Utc};

use crate::clients::stash::{superset_cursor, FileRow, StashClient};
use crate::config::PathMap;
use crate::error::Error;
use crate::pipeline::matching::{map_path, normalize, percent_decoded};

/// Score of a match that explains the whole path Plex sent.
pub const SURE: u8 = 100;
/// Under Plex's threshold: shown to a person fixing a match, never taken
/// by itself.
const MANUAL_ONLY: u8 = 80;
/// Plex takes an automatic match above 85 (its own match API) and one
/// provider reports results under 80 discarded: every automatic answer
/// scores at least this.
pub const AUTOMATIC: u8 = 90;

/// One scene as the index keeps it.
#[derive(Clone, Debug)]
struct Entry {
    title: Box<str>,
    /// The title in lower case, as Fix Match searches compare it (made
    /// once, not at every search).
    folded: Box<str>,
    year: Option<i32>,
    organized: bool,
    /// Its files' paths as Plex would see them (mapped and normalized).
    files: Box<[Box<str>]>,
}

/// A scene that may hold the file, with Plex's score and why.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Candidate {
    pub scene_id: String,
    pub title: String,
    pub year: Option<i32>,
    pub score: u8,
    pub reason: String,
}

/// What Plex asks of a match call, as far as matching goes.
#[derive(Clone, Debug, Default)]
pub struct Query<'a> {
    pub filename: Option<&'a str>,
    pub title: Option<&'a str>,
    pub year: Option<i32>,
    /// A scene id named by the guid of an earlier match.
    pub scene_id: Option<&'a str>,
    /// A person is fixing the match: ranked candidates, not one answer.
    pub manual: bool,
    /// Scenes not organized in Stash are no match (`skipUnorganized`).
    pub organized_only: bool,
}

/// Stash's scenes by the names of their files.
#[derive(Debug, Default)]
pub struct SceneIndex {
    scenes: HashMap<Box<str>, Entry>,
    /// Lower-case file name → ids of the scenes with a file of that name.
    by_name: HashMap<Box<str>, Vec<Box<str>>>,
    maps: Vec<PathMap>,
    /// The newest `updated_at` read, for the next incremental read.
    newest: Option<DateTime<Utc>>,
    pub built_at: Option<Instant>,
    pub refreshed_at: Option<Instant>,
}

/// Lower-case name of the last component.
fn name_of(path: &str) -> String {
    path.rsplit('/').next().unwrap_or(path).to_lowercase()
}

/// How many trailing components `a` and `b` share (compared as given).
fn shared_tail(a: &str, b: &str) -> usize {
    a.rsplit('/').zip(b.rsplit('/')).take_while(|(x, y)| !x.is_empty() && x == y).count()
}

/// The year of a Stash date (`YYYY-MM-DD`, `YYYY-MM` or `YYYY`).
fn year_of(date: Option<&str>) -> Option<i32> {
    date.and_then(|d| d.get(..4)).and_then(|y| y.parse().ok())
}

impl SceneIndex {
    /// Reads every scene's files from Stash, page by page.
    pub async fn build(stash: &StashClient, maps: &[PathMap]) -> Result<Self, Error> {
        let mut index = SceneIndex { maps: maps.to_vec(), ..Default::default() };
        let rows = stash
            .file_rows(None, &mut |done, total| crate::progress::report("reading Stash's files", done, total))
            .await?;
        index.add_rows(rows);
        index.built_at = Some(Instant::now());
        index.refreshed_at = index.built_at;
        Ok(index)
    }

    /// The cursor of the next incremental read: the newest `updated_at`
    /// read, less a generous overlap (Stash compares times as text in its
    /// own offset), in a form below every later time in any zone.
    pub(crate) fn cursor(&self) -> Option<String> {
        self.newest.map(|t| superset_cursor(t - chrono::Duration::minutes(2)))
    }

    /// Adds or replaces scenes.
    pub(crate) fn add_rows(&mut self, rows: Vec<FileRow>) {
        for row in rows {
            if let Ok(t) = DateTime::parse_from_rfc3339(&row.updated_at) {
                self.newest = self.newest.max(Some(t.with_timezone(&Utc)));
            }
            let files: Box<[Box<str>]> =
                row.files.iter().map(|f| map_path(&f.path, &self.maps, false).into_boxed_str()).collect();
            let id: Box<str> = row.id.into();
            if let Some(old) = self.scenes.get(&id) {
                for f in old.files.iter() {
                    if let Some(ids) = self.by_name.get_mut(name_of(f).as_str()) {
                        ids.retain(|i| *i != id);
                    }
                }
            }
            for f in files.iter() {
                let ids = self.by_name.entry(name_of(f).into()).or_default();
                if !ids.contains(&id) {
                    ids.push(id.clone());
                }
            }
            let title: Box<str> = row.title.unwrap_or_default().trim().into();
            let folded = title.to_lowercase().into();
            let year = year_of(row.date.as_deref());
            self.scenes.insert(id, Entry { title, folded, year, organized: row.organized, files });
        }
    }

    pub fn len(&self) -> usize {
        self.scenes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.scenes.is_empty()
    }

    /// Whether the index holds scene `id`.
    pub fn has(&self, id: &str) -> bool {
        self.scenes.contains_key(id)
    }

    /// Scene `id` as a candidate; `None` when the index lacks it (the
    /// name map and the scenes are kept together, so never).
    fn candidate(&self, id: &str, score: u8, reason: String) -> Option<Candidate> {
        let entry = self.scenes.get(id)?;
        Some(Candidate { scene_id: id.to_string(), title: entry.title.to_string(), year: entry.year, score, reason })
    }

    /// The scenes with a file of the name Plex sent, each with how many
    /// trailing components agree and whether case had to be ignored.
    fn by_file(&self, filename: &str) -> Vec<(&str, usize, bool, usize)> {
        let given = normalize(filename, false);
        let decoded = percent_decoded(&given).map(|d| normalize(&d, false)).filter(|d| *d != given);
        let forms: Vec<String> = std::iter::once(given).chain(decoded).collect();
        let mut found = Vec::new();
        for form in &forms {
            let parts = form.split('/').filter(|p| !p.is_empty()).count();
            let Some(ids) = self.by_name.get(name_of(form).as_str()) else { continue };
            let folded = form.to_lowercase();
            for id in ids {
                let Some(files) = self.scenes.get(id).map(|e| &e.files) else { continue };
                let exact = files.iter().map(|f| shared_tail(f, form)).max().unwrap_or(0);
                let (tail, fold) = if exact > 0 {
                    (exact, false)
                } else {
                    (files.iter().map(|f| shared_tail(&f.to_lowercase(), &folded)).max().unwrap_or(0), true)
                };
                if tail > 0 {
                    found.push((&**id, tail, fold, parts));
                }
            }
        }
        found.sort_by(|a, b| (b.1, !b.2).cmp(&(a.1, !a.2)).then(a.0.cmp(b.0)));
        let mut seen = std::collections::HashSet::new();
        found.retain(|c| seen.insert(c.0));
        found
    }

    /// Answers a match call: with `manual`, every candidate, best first;
    /// otherwise the one scene that is best, or none when it is not sure.
    pub fn find(&self, q: &Query<'_>) -> Vec<Candidate> {
        let mut found = self.ranked(q);
        if q.organized_only {
            found.retain(|c| self.scenes.get(c.scene_id.as_str()).is_some_and(|e| e.organized));
        }
        found
    }

    fn ranked(&self, q: &Query<'_>) -> Vec<Candidate> {
        let mut out: Vec<Candidate> = Vec::new();
        let files = q.filename.map(|f| self.by_file(f)).unwrap_or_default();
        // A re-match names the scene it chose before: still its file?
        if let Some(id) = q.scene_id.filter(|id| self.has(id)) {
            // Still the best for the file, and alone there: otherwise the
            // file went to another scene, and the path decides again.
            let best = files.first().map(|c| (c.1, c.2));
            let best_ones: Vec<&str> = files.iter().filter(|c| Some((c.1, c.2)) == best).map(|c| c.0).collect();
            if q.filename.is_none() || best_ones == [id] {
                out.extend(self.candidate(id, SURE, "the scene of the earlier match, still holding the file".into()));
                if !q.manual {
                    return out;
                }
            }
        }
        if let Some(&(best_id, tail, fold, parts)) = files.first() {
            // On the name alone, a name equal but for case is a rival too.
            let rivals = files.iter().filter(|c| c.1 == tail && (tail == 1 || c.2 == fold)).count();
            // A name alone is push's "unique file name": taken, at the
            // lowest automatic score, only when Plex sent nothing else;
            // folders that disagree say it is another video (the same name
            // elsewhere), which a person may still choose.
            let score = match (tail >= parts && parts >= 2, tail >= 2, fold) {
                (true, _, false) => SURE,
                (true, _, true) | (false, true, false) => 95,
                _ if parts == 1 => AUTOMATIC,
                _ => MANUAL_ONLY,
            };
            if score == MANUAL_ONLY && !q.manual {
                tracing::info!(
                    "provider: {:?} has the name of scene {best_id}'s file in another folder; no automatic match",
                    for_log(q.filename.unwrap_or_default())
                );
                return Vec::new();
            }
            if rivals == 1 && !out.iter().any(|c| c.scene_id == best_id) {
                let how = if fold { " (ignoring case)" } else { "" };
                let reason = format!("{tail} of {parts} path components agree{how}");
                out.extend(self.candidate(best_id, score, reason));
            } else if rivals > 1 && !q.manual {
                tracing::info!(
                    "provider: {} Stash scenes could hold {:?}; no automatic match (Fix Match in Plex shows them)",
                    rivals,
                    for_log(q.filename.unwrap_or_default())
                );
                return Vec::new();
            }
        }
        if !q.manual {
            return out;
        }
        // Ranked, under the automatic threshold: a person chooses.
        let mut rank = 80u8;
        for (id, tail, fold, parts) in files {
            if out.iter().any(|c| c.scene_id == id) {
                continue;
            }
            let how = if fold { ", ignoring case" } else { "" };
            out.extend(self.candidate(id, rank, format!("{tail} of {parts} path components agree{how}")));
            rank = rank.saturating_sub(1).max(50);
        }
        self.by_title(q, &mut out);
        out.truncate(20);
        out
    }

    /// Manual matches by title: scenes whose title contains what the
    /// person typed (case ignored), the year agreeing first.
    fn by_title(&self, q: &Query<'_>, out: &mut Vec<Candidate>) {
        let Some(title) = q.title.map(|t| t.trim().to_lowercase()).filter(|t| t.len() >= 2) else { return };
        let mut hits: Vec<(&str, bool, bool)> = self
            .scenes
            .iter()
            .filter(|(id, _)| !out.iter().any(|c| *c.scene_id == ***id))
            .filter_map(|(id, e)| {
                let t = &*e.folded;
                t.contains(title.as_str()).then_some((&**id, t == title, q.year.is_some() && e.year == q.year))
            })
            .collect();
        hits.sort_by(|a, b| (b.1, b.2).cmp(&(a.1, a.2)).then(a.0.cmp(b.0)));
        for (i, (id, same, _)) in hits.into_iter().take(20).enumerate() {
            let score = if same { 70u8 } else { 60 }.saturating_sub(u8::try_from(i.min(10)).unwrap_or(10));
            out.extend(self.candidate(id, score, "title".into()));
        }
    }
}

/// The most of a file name a client sent that goes into a log line.
const LOGGED_NAME_MAX: usize = 160;

/// `filename` as a log line shows it: its tail, at most
/// [`LOGGED_NAME_MAX`] characters, so a request cannot make a line long.
fn for_log(filename: &str) -> String {
    let count = filename.chars().count();
    if count <= LOGGED_NAME_MAX {
        return filename.to_string();
    }
    let tail: String = filename.chars().skip(count - LOGGED_NAME_MAX).collect();
    format!("…{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clients::stash::SceneFile;

    #[test]
    fn a_file_name_in_a_log_line_is_bounded() {
        assert_eq!(for_log("/media/a.mp4"), "/media/a.mp4");
        let long = format!("/{}/é.mp4", "x".repeat(60_000));
        let shown = for_log(&long);
        assert_eq!(shown.chars().count(), LOGGED_NAME_MAX + 1);
        assert!(shown.starts_with('…') && shown.ends_with("/é.mp4"), "the tail is kept: {shown}");
    }

    fn row(id: &str, title: &str, paths: &[&str]) -> FileRow {
        FileRow {
            id: id.into(),
            title: Some(title.into()),
            date: Some("2024-05-01".into()),
            organized: id != "3",
            updated_at: "2026-01-01T00:00:00Z".into(),
            files: paths.iter().map(|p| SceneFile { path: p.to_string(), ..Default::default() }).collect(),
        }
    }

    fn index() -> SceneIndex {
        let mut i =
            SceneIndex { maps: vec![PathMap { stash: "/data".into(), plex: "/media".into() }], ..Default::default() };
        i.add_rows(vec![
            row("1", "One", &["/data/Movies/a/x.mp4"]),
            row("2", "Two", &["/data/Movies/b/dup.mp4"]),
            row("3", "Three", &["/data/Movies/c/dup.mp4"]),
            row("4", "Café", &["/data/Movies/Cafe\u{301}.MP4"]),
        ]);
        i
    }

    fn auto(i: &SceneIndex, filename: &str) -> Vec<String> {
        let q = Query { filename: Some(filename), ..Default::default() };
        i.find(&q).into_iter().map(|c| format!("{}:{}", c.scene_id, c.score)).collect()
    }

    #[test]
    fn every_form_of_filename_finds_the_scene() {
        let i = index();
        assert_eq!(auto(&i, "/media/Movies/a/x.mp4"), ["1:100"], "full path");
        assert_eq!(auto(&i, "/Movies/a/x.mp4"), ["1:100"], "relative to the library's parent");
        assert_eq!(auto(&i, "a/x.mp4"), ["1:100"], "relative to the library root");
        assert_eq!(auto(&i, "C:\\Media\\Movies\\a\\x.mp4"), ["1:95"], "another head, Windows separators");
        assert!(auto(&i, "/Movies/elsewhere/x.mp4").is_empty(), "the name in another folder is another video");
        assert_eq!(auto(&i, "x.mp4"), ["1:90"], "the name alone, unique");
        assert_eq!(auto(&i, "/media/Movies/a/x%2Emp4"), ["1:100"], "percent-encoded");
        assert_eq!(auto(&i, "/Movies/Café.MP4"), ["4:100"], "NFC and NFD are one name");
        assert_eq!(auto(&i, "/movies/café.mp4"), ["4:95"], "case only when nothing matches with it");
    }

    #[test]
    fn ambiguity_is_refused_unless_a_person_chooses() {
        let i = index();
        assert_eq!(auto(&i, "/Movies/b/dup.mp4"), ["2:100"], "the folder decides");
        assert!(auto(&i, "dup.mp4").is_empty(), "two scenes hold a file of that name");
        assert!(auto(&i, "/elsewhere/dup.mp4").is_empty());
        assert!(auto(&i, "/media/Movies/zzz.mp4").is_empty());
        let q = Query { filename: Some("dup.mp4"), title: Some("t"), manual: true, ..Default::default() };
        let ranked: Vec<(String, u8)> = i.find(&q).into_iter().map(|c| (c.scene_id, c.score)).collect();
        assert_eq!(ranked[..2], [("2".to_string(), 80), ("3".to_string(), 79)]);
        assert!(ranked.iter().all(|(_, s)| *s < 85), "none would be taken automatically");
        assert!(ranked.iter().any(|(id, _)| id == "3"), "the title finds Three: {ranked:?}");
        let q = Query { organized_only: true, ..q };
        assert!(i.find(&q).iter().all(|c| c.scene_id != "3"), "skipUnorganized leaves Three out");
    }

    #[test]
    fn a_rematch_keeps_its_scene_only_while_it_holds_the_file() {
        let mut i = index();
        let q = Query { filename: Some("/Movies/a/x.mp4"), scene_id: Some("1"), ..Default::default() };
        assert_eq!(i.find(&q)[0].scene_id, "1");
        i.add_rows(vec![row("1", "One", &["/data/Movies/a/renamed.mp4"]), row("9", "Nine", &["/data/Movies/a/x.mp4"])]);
        let found = i.find(&q);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].scene_id, "9", "the file moved to another scene");
        // Another scene holding the exact path outranks the name alone.
        i.add_rows(vec![row("1", "One", &["/data/Other/x.mp4"])]);
        let q = Query { filename: Some("/Movies/a/x.mp4"), scene_id: Some("1"), ..Default::default() };
        assert_eq!(i.find(&q).iter().map(|c| c.scene_id.as_str()).collect::<Vec<_>>(), ["9"]);
    }
}
