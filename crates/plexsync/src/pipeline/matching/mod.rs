//! Finding a scene's Plex item, in one folder: [`paths`] (normalized,
//! mapped, the keys a file is looked up by), [`index`] (the Plex library in
//! a private SQLite file, read in pages), [`decision`] (which items hold a
//! scene's files; every result says why, and an ambiguous one is never
//! written) and [`suggestions`] (path mappings proposed from the files both
//! hold). The delivery's side of matching (keeping the index current,
//! re-reading candidates, finding a scene's targets) is
//! `pipeline/sync/locate.rs`.

mod decision;
mod index;
mod paths;
mod suggestions;

pub(crate) use decision::decision_line;
pub use decision::{Confidence, Match, MatchedItem};
pub use index::LibraryIndex;
pub(crate) use paths::{file_name_of, is_file, map_path, normalize, percent_decoded, rating_key_in_url, under_maps};
pub use suggestions::{suggest_mappings, MappingTally, Suggestion};

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::clients::plex::{PlexItem, PlexMedia, PlexPart};
    use crate::clients::stash::{Scene, SceneFile};
    use crate::config::PathMap;

    fn item(rk: &str, path: &str, size: u64) -> PlexItem {
        PlexItem {
            rating_key: rk.into(),
            media: vec![PlexMedia {
                parts: vec![PlexPart { file: path.into(), size: Some(size), ..Default::default() }],
            }],
            ..Default::default()
        }
    }

    fn scene(path: &str, size: u64) -> Scene {
        Scene {
            id: "1".into(),
            files: vec![SceneFile { path: path.into(), size, ..Default::default() }],
            ..Default::default()
        }
    }

    fn maps() -> Vec<PathMap> {
        vec![
            PathMap { stash: "/data".into(), plex: "/media".into() },
            PathMap { stash: "/data/special".into(), plex: "/other".into() },
        ]
    }

    #[test]
    fn normalization_and_longest_prefix_mapping() {
        assert_eq!(normalize("D:\\\\Videos\\a.mp4", false), "D:/Videos/a.mp4");
        assert_eq!(normalize("/x//Cafe\u{301} ./a.mp4", false), "/x/Café/a.mp4");
        assert_eq!(map_path("/data/special/a.mp4", &maps(), false), "/other/a.mp4");
        assert_eq!(map_path("/data/a.mp4", &maps(), false), "/media/a.mp4");
        assert_eq!(map_path("/database/a.mp4", &maps(), false), "/database/a.mp4", "component boundary");
        assert_eq!(rating_key_in_url("plex/library/metadata/123"), Some("123".into()));
        assert_eq!(rating_key_in_url("https://x/library/metadata/77/refresh"), Some("77".into()));
        assert_eq!(rating_key_in_url("https://example.com/scene/1"), None);
    }

    #[test]
    fn stored_index_is_reused_only_for_the_same_server_and_while_young() {
        let mut index = LibraryIndex::empty().unwrap();
        index.insert("1", &item("10", "/media/a/x.mp4", 5)).unwrap();
        index.built_at = Some(Instant::now());
        let meta = index.meta("http://plex/|");
        let rows: Vec<String> = index.rows(None).map(|r| r.unwrap().1).collect();
        let hour = std::time::Duration::from_secs(3600);
        let mut back = LibraryIndex::from_meta("http://plex/|", &meta, hour).unwrap();
        assert!(rows.iter().all(|r| back.insert_row(r)));
        assert!(!back.insert_row("{not json"), "an unreadable row is refused");
        assert!(matches!(back.find(&scene("/data/a/x.mp4", 5), &[], &maps()).unwrap(), Match::Found { .. }));
        assert!(LibraryIndex::from_meta("http://other/|", &meta, hour).is_none(), "other server");
        let old = meta.replace("\"built_at_ms\":", "\"built_at_ms\":0,\"x\":");
        assert!(LibraryIndex::from_meta("http://plex/|", &old, hour).is_none(), "too old");
    }

    #[test]
    fn rows_come_back_in_runs_and_a_full_read_reports_what_moved() {
        let items: Vec<PlexItem> =
            (0..2_500).map(|i| item(&i.to_string(), &format!("/media/{i}/v{i}.mp4"), i)).collect();
        let mut old = LibraryIndex::empty().unwrap();
        assert_eq!(old.insert_all("1", &items).unwrap().len(), 2_500, "all new");
        assert!(old.insert_all("1", &items).unwrap().is_empty(), "nothing changed");
        let rows: Vec<String> = old.rows(None).map(|r| r.unwrap().0).collect();
        assert_eq!(rows.len(), 2_500, "three runs of rows, none lost or repeated");
        assert_eq!(rows.iter().collect::<std::collections::BTreeSet<_>>().len(), 2_500);
        let mut fresh = LibraryIndex::empty().unwrap();
        let mut moved = items.clone();
        moved[7] = item("7", "/media/elsewhere/v7.mp4", 7);
        moved.truncate(2_400);
        fresh.insert_all("1", &moved).unwrap();
        let mut gone = fresh.moved_since(&old).unwrap();
        gone.sort();
        assert_eq!(gone.len(), 101, "one moved, a hundred gone: {:?}", &gone[..3]);
        assert!(gone.contains(&"7".to_string()) && gone.contains(&"2499".to_string()));
        fresh.forget("8").unwrap();
        assert_eq!((fresh.count_in("1"), fresh.count_in("2"), fresh.len()), (2_399, 0, 2_400));
        assert!(matches!(fresh.find(&scene("/data/8/v8.mp4", 8), &[], &maps()).unwrap(), Match::NotFound { .. }));
        // Kept as items come and go: what a count of the rows says.
        fresh.insert("2", &item("9", "/media/9/v9.mp4", 9)).unwrap();
        fresh.forget("8").unwrap();
        fresh.insert("1", &item("8", "/media/8/v8.mp4", 8)).unwrap();
        fresh.insert("1", &item("8", "/media/8/v8.mp4", 8)).unwrap();
        fresh.forget("no such key").unwrap();
        let counted = |section: &str| -> usize {
            let sql = "SELECT count(*) FROM items WHERE section = ?1 AND held > 0";
            fresh.db().query_row(sql, [section], |r| r.get::<_, i64>(0)).map(crate::units::to_usize).unwrap()
        };
        assert_eq!((fresh.count_in("1"), fresh.count_in("2")), (counted("1"), counted("2")));
        assert_eq!((fresh.count_in("1"), fresh.count_in("2")), (2_399, 1));
    }

    #[test]
    fn the_first_lookup_sizes_the_page_cache_to_the_file() {
        let index = LibraryIndex::empty().unwrap();
        let kib = || -> i64 { index.db().pragma_query_value(None, "cache_size", |r| r.get(0)).unwrap() };
        assert_eq!(kib(), -2000, "SQLite's default until the index is searched");
        let _ = index.find(&scene("/data/a/x.mp4", 5), &[], &maps()).unwrap();
        assert_eq!(kib(), -2048, "a small index gets the rule's floor");
    }

    #[test]
    fn an_item_whose_file_moved_no_longer_matches_its_old_path() {
        let mut index = LibraryIndex::empty().unwrap();
        index.insert("1", &item("10", "/media/a/x.mp4", 5)).unwrap();
        index.insert("1", &item("10", "/media/b/moved.mp4", 6)).unwrap();
        assert_eq!(index.len(), 1);
        assert!(matches!(index.find(&scene("/data/a/x.mp4", 5), &[], &maps()).unwrap(), Match::NotFound { .. }));
        assert!(matches!(index.find(&scene("/data/b/moved.mp4", 6), &[], &maps()).unwrap(), Match::Found { .. }));
    }

    #[test]
    fn signals_in_order_and_ambiguity() {
        let mut index = LibraryIndex::empty().unwrap();
        index.insert("1", &item("10", "/media/a/x.mp4", 5)).unwrap();
        index.insert("1", &item("11", "/media/b/dup.mp4", 7)).unwrap();
        index.insert("1", &item("12", "/media/c/dup.mp4", 7)).unwrap();
        index.insert("1", &item("13", "/media/d/Y.MP4", 9)).unwrap();
        let m = maps();
        assert!(
            matches!(index.find(&scene("/data/a/x.mp4", 5), &[], &m).unwrap(), Match::Found { ref rating_key, confidence: Confidence::High, .. } if rating_key == "10")
        );
        assert!(
            matches!(index.find(&scene("/data/b/dup.mp4", 7), &[], &m).unwrap(), Match::Found { ref rating_key, .. } if rating_key == "11")
        );
        assert!(matches!(index.find(&scene("/elsewhere/dup.mp4", 7), &[], &m).unwrap(), Match::Ambiguous { .. }));
        assert!(matches!(
            index.find(&scene("/data/d/y.mp4", 9), &[], &m).unwrap(),
            Match::Found { confidence: Confidence::Medium, .. }
        ));
        assert!(matches!(index.find(&scene("/data/zzz.mp4", 1), &[], &m).unwrap(), Match::NotFound { .. }));
        // A recorded key that still holds the file wins; a stale one is reported and skipped.
        assert!(
            matches!(index.find(&scene("/data/a/x.mp4", 5), &["10".to_string()], &m).unwrap(), Match::Found { ref reason, .. } if reason.contains("recorded"))
        );
        // A Plex URL naming another video (a rebuild, another server) is
        // refused, and the path decides.
        let mut s = scene("/data/a/x.mp4", 5);
        s.urls = vec!["plex/library/metadata/13".into()];
        let (found, trace) = index.explain(&s, &["12".to_string()], &m).unwrap();
        assert!(matches!(found, Match::Found { ref rating_key, .. } if rating_key == "10"), "{found:?}");
        assert!(trace.iter().any(|l| l.contains("names 13") && l.ends_with("ignored")), "{trace:?}");
        s.urls = vec!["plex/library/metadata/999".into()];
        assert!(decision::refused_url(&index, &s, &m).unwrap().is_some_and(|why| why.contains("not in the library")));
        // A URL naming the item that holds the file settles a duplicate.
        let mut s = scene("/elsewhere/dup.mp4", 7);
        s.urls = vec!["plex/library/metadata/12".into()];
        assert!(
            matches!(index.find(&s, &[], &m).unwrap(), Match::Found { ref rating_key, ref reason, .. } if rating_key == "12" && reason.contains("URL"))
        );
    }
}
