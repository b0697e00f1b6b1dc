//! What StashPlexAgent's preferences make of a scene: the gates, the
//! formatted title, the genres and the collections PlexSync manages. The
//! old plugin only asked Plex to refresh; this agent wrote what a switching
//! user sees, so its rules are kept (`docs/migration.md` lists the few
//! places where PlexSync is right where the agent was not).

use crate::clients::stash::{Named, Scene};
use crate::config::{AgentPrefs, Settings};

/// Why the scene is not synced, when a gate stops it (the agent's
/// `RequireOrganized`, `RequireURL` and `RequireStashID`).
pub(crate) fn gate(scene: &Scene, settings: &Settings) -> Option<&'static str> {
    if settings.skip_unorganized && !scene.organized {
        return Some("not organized in Stash (skipUnorganized is on)");
    }
    if settings.agent.require_url && scene.urls.iter().all(|u| u.trim().is_empty()) {
        return Some("no URL in Stash (RequireURL is on)");
    }
    if settings.agent.require_stash_id && scene.stash_ids.is_empty() {
        return Some("no stash-box id in Stash (RequireStashID is on)");
    }
    None
}

/// Whether a tag may reach Plex: not listed in `IgnoreTags`, and not one of
/// the "ambiguous" tags scrapers leave (the agent's rule, kept).
fn shown(tag: &Named, prefs: &AgentPrefs) -> bool {
    !prefs.ignore_tags.contains(&tag.id) && !tag.name.to_lowercase().contains("ambiguous")
}

/// The genres: the scene's shown tags, then (with `AppendPerformerTags`)
/// its performers' shown tags.
pub(crate) fn genres<'a>(scene: &'a Scene, prefs: &AgentPrefs) -> Vec<&'a str> {
    let performer_tags = scene.performers.iter().filter(|_| prefs.append_performer_tags).flat_map(|p| p.tags.iter());
    scene.tags.iter().chain(performer_tags).filter(|t| shown(t, prefs)).map(|t| t.name.as_str()).collect()
}

/// Whether a shown tag becomes a collection: listed in
/// `CreateTagCollectionTags`, or with `CreateAllTagCollectionTags` not listed.
fn tag_collection(tag: &Named, prefs: &AgentPrefs) -> bool {
    prefs.tag_collections.contains(&tag.id) != prefs.all_tag_collections
}

/// The collections the settings make for the scene, in the agent's order:
/// organized, rating, site, studio, movies (Stash's groups), performers,
/// tags.
pub(crate) fn collections(scene: &Scene, prefs: &AgentPrefs) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(name) = prefs.organized_collection.as_ref().filter(|_| scene.organized) {
        out.push(name.clone());
    }
    if let Some(n) = rating_stars(scene).filter(|_| prefs.rating_collection) {
        out.push(format!("Rating: {n} Stars"));
    }
    if let Some(studio) = &scene.studio {
        if let Some(prefix) = &prefs.site_collection {
            out.push(format!("{prefix}{}", studio.name));
        }
        if let Some(prefix) = &prefs.studio_collection {
            match &studio.parent_studio {
                Some(parent) => out.push(format!("{prefix}{}", parent.name)),
                None if prefs.site_for_studio => out.push(format!("{prefix}{}", studio.name)),
                None => {}
            }
        }
    }
    if let Some(prefix) = &prefs.movie_collection {
        out.extend(scene.groups.iter().map(|g| format!("{prefix}{}", g.group.name)));
    }
    if let Some(prefix) = &prefs.performer_collection {
        out.extend(scene.performers.iter().map(|p| format!("{prefix}{}", p.name)));
    }
    let performer_tags = scene.performers.iter().filter(|_| prefs.append_performer_tags).flat_map(|p| p.tags.iter());
    out.extend(
        scene
            .tags
            .iter()
            .chain(performer_tags)
            .filter(|t| shown(t, prefs) && tag_collection(t, prefs))
            .map(|t| t.name.clone()),
    );
    out
}

/// The agent's star count: Stash's `rating100 / 10` rounded down (Plex's
/// Python 2 divided integers), none when that is zero.
fn rating_stars(scene: &Scene) -> Option<i64> {
    scene.rating100.map(|r| r / 10).filter(|n| *n > 0)
}

/// Stash's `rating100` on Plex's ten-point scale (`85` → `8.5`).
pub(crate) fn ten_point(rating100: Option<i64>) -> Option<String> {
    let r = rating100?.clamp(0, 100);
    Some(if r % 10 == 0 { (r / 10).to_string() } else { format!("{}.{}", r / 10, r % 10) })
}

/// A rating Plex shows (0–10) as [`ten_point`] writes it, to compare.
pub(crate) fn ten_point_of_plex(rating: f64) -> Option<String> {
    ten_point(Some(crate::units::round(rating * 10.0)))
}

/// Which collections on a Plex item PlexSync manages (and so may remove):
/// those it wrote there before, those whose name starts with the prefix of
/// a collection kind that is on, the organized collection, `Rating: n
/// Stars` while rating collections are on, and, on an item written by a
/// version that kept no names, the bare studio names it made then. Every
/// other collection is a person's and stays.
#[derive(Clone, Debug, Default)]
pub(crate) struct Managed {
    written: Option<Vec<String>>,
    prefixes: Vec<String>,
    exact: Vec<String>,
    ratings: bool,
    earlier: Vec<String>,
}

impl Managed {
    /// `written`: the names recorded at the last write to the item;
    /// `wrote_before`: whether collections were written there at all.
    pub(crate) fn new(scene: &Scene, prefs: &AgentPrefs, written: Option<Vec<String>>, wrote_before: bool) -> Self {
        let prefixes =
            [&prefs.site_collection, &prefs.studio_collection, &prefs.movie_collection, &prefs.performer_collection]
                .into_iter()
                .flatten()
                .filter(|p| !p.trim().is_empty())
                .cloned()
                .collect();
        let earlier = match (&written, wrote_before, &scene.studio) {
            (None, true, Some(studio)) => std::iter::once(studio.name.clone())
                .chain(studio.parent_studio.iter().map(|p| p.name.clone()))
                .collect(),
            _ => Vec::new(),
        };
        Self {
            written,
            prefixes,
            exact: prefs.organized_collection.iter().cloned().collect(),
            ratings: prefs.rating_collection,
            earlier,
        }
    }

    pub(crate) fn owns(&self, name: &str) -> bool {
        let same = |n: &String| n.eq_ignore_ascii_case(name);
        self.written.iter().flatten().any(same)
            || self.prefixes.iter().any(|p| name.starts_with(p.as_str()))
            || self.exact.iter().any(same)
            || (self.ratings && is_rating_collection(name))
            || self.earlier.iter().any(same)
    }
}

fn is_rating_collection(name: &str) -> bool {
    name.strip_prefix("Rating: ")
        .and_then(|rest| rest.strip_suffix(" Stars"))
        .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
}

/// The title from `TitleFormat` (variables `performer`, `title`, `date`,
/// `studio`, `filename`). `title` is the scene's own title, or its file
/// name when it has none; `performer` is the first performer with a name
/// and no `IgnoreTags` tag. A variable without a value is left out with
/// the separator before it, so no dangling ` - ` remains.
pub(crate) fn formatted_title(scene: &Scene, prefs: &AgentPrefs, fallback: &str) -> String {
    let own = scene.title.as_deref().map(str::trim).unwrap_or("");
    if own.is_empty() {
        return fallback.to_string();
    }
    let performer = scene
        .performers
        .iter()
        .find(|p| !p.name.trim().is_empty() && !p.tags.iter().any(|t| prefs.ignore_tags.contains(&t.id)))
        .map(|p| p.name.trim());
    let mut title = own;
    if let Some(name) = performer {
        if prefs.remove_performer_from_title {
            title = title.strip_prefix(name).unwrap_or(title);
        }
        title = title.strip_prefix(" - ").unwrap_or(title).trim();
    }
    let file_stem = scene.files.first().map(|f| f.basename.rsplit_once('.').map_or(f.basename.as_str(), |(s, _)| s));
    let value = |name: &str| -> Option<&str> {
        match name {
            "performer" => performer,
            "title" => Some(title),
            "date" => scene.date.as_deref(),
            "studio" => scene.studio.as_ref().map(|s| s.name.as_str()),
            "filename" => file_stem,
            _ => None,
        }
    };
    let rendered = render(&prefs.title_format, value);
    if rendered.trim().is_empty() {
        fallback.to_string()
    } else {
        rendered
    }
}

/// Variables `TitleFormat` knows.
pub(crate) const TITLE_VARIABLES: [&str; 5] = ["performer", "title", "date", "studio", "filename"];

/// `format` with each `{name}` replaced by `value(name)`. A variable
/// without a value is left out with its brackets (an opening bracket just
/// before it, a closing one just after) and the separator before it; text
/// before the first variable and after the last one stays. An unknown
/// `{name}` stays as written.
fn render<'a>(format: &str, value: impl Fn(&str) -> Option<&'a str>) -> String {
    // Alternating literal, variable, literal, …, literal.
    let mut literals = vec![String::new()];
    let mut values: Vec<Option<&str>> = Vec::new();
    let mut rest = format;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}').map(|c| open + c) else { break };
        let name = &rest[open + 1..close];
        let last = literals.last_mut().expect("starts with one literal");
        last.push_str(&rest[..open]);
        if TITLE_VARIABLES.contains(&name) {
            values.push(value(name).map(str::trim).filter(|v| !v.is_empty()));
            literals.push(String::new());
        } else {
            last.push_str(&rest[open..=close]);
        }
        rest = &rest[close + 1..];
    }
    literals.last_mut().expect("starts with one literal").push_str(rest);
    // Each literal: brackets closing the variable before it, the
    // separator, brackets opening the variable after it.
    let parts: Vec<(&str, &str, &str)> = literals
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let closer = if i == 0 { 0 } else { l.len() - l.trim_start_matches([')', ']', '}']).len() };
            let (closing, rest) = l.split_at(closer);
            let opener = if i == values.len() { 0 } else { rest.len() - rest.trim_end_matches(['(', '[', '{']).len() };
            let (separator, opening) = rest.split_at(rest.len() - opener);
            (closing, separator, opening)
        })
        .collect();
    let mut out = parts[0].1.to_string();
    let mut kept_any = false;
    for (i, v) in values.iter().enumerate() {
        let Some(v) = v else { continue };
        if kept_any {
            out.push_str(parts[i].1);
        }
        out.push_str(parts[i].2);
        out.push_str(v);
        out.push_str(parts[i + 1].0);
        kept_any = true;
    }
    if !values.is_empty() {
        out.push_str(parts[values.len()].1);
    }
    out.trim().trim_end_matches([' ', '-', '–', '|', ',', ':']).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clients::stash::{ParentStudio, Performer, SceneFile, SceneGroup, StashIdRef, Studio};

    fn named(id: &str, name: &str) -> Named {
        Named { id: id.into(), name: name.into() }
    }

    fn scene() -> Scene {
        Scene {
            id: "7".into(),
            title: Some("Jane Doe - Beach Day".into()),
            date: Some("2021-06-01".into()),
            rating100: Some(85),
            organized: true,
            files: vec![SceneFile { basename: "beach.day.mp4".into(), ..SceneFile::default() }],
            studio: Some(Studio {
                id: "2".into(),
                name: "Sunset".into(),
                parent_studio: Some(ParentStudio { id: "1".into(), name: "Big Network".into() }),
            }),
            performers: vec![
                Performer {
                    id: "5".into(),
                    name: "Jane Doe".into(),
                    tags: vec![named("30", "Brunette")],
                    ..Performer::default()
                },
                Performer { id: "6".into(), name: "John Roe".into(), ..Performer::default() },
            ],
            tags: vec![named("10", "Outdoor"), named("11", "Ambiguous Scene"), named("12", "Summer")],
            groups: vec![SceneGroup { group: named("40", "Holiday Series") }],
            ..Scene::default()
        }
    }

    #[test]
    fn the_agents_default_collections_are_site_and_studio() {
        assert_eq!(collections(&scene(), &AgentPrefs::default()), ["Site: Sunset", "Studio: Big Network"]);
        let mut s = scene();
        s.studio.as_mut().unwrap().parent_studio = None;
        assert_eq!(collections(&s, &AgentPrefs::default()), ["Site: Sunset"]);
        let prefs = AgentPrefs { site_for_studio: true, ..AgentPrefs::default() };
        assert_eq!(collections(&s, &prefs), ["Site: Sunset", "Studio: Sunset"]);
    }

    #[test]
    fn every_collection_option_on() {
        let prefs = AgentPrefs {
            organized_collection: Some("Organized".into()),
            movie_collection: Some("Movie: ".into()),
            performer_collection: Some("Actor: ".into()),
            rating_collection: true,
            tag_collections: vec!["12".into(), "11".into(), "30".into()],
            append_performer_tags: true,
            ..AgentPrefs::default()
        };
        assert_eq!(
            collections(&scene(), &prefs),
            [
                "Organized",
                "Rating: 8 Stars",
                "Site: Sunset",
                "Studio: Big Network",
                "Movie: Holiday Series",
                "Actor: Jane Doe",
                "Actor: John Roe",
                "Summer",
                "Brunette"
            ]
        );
        let all = AgentPrefs { all_tag_collections: true, tag_collections: vec!["12".into()], ..AgentPrefs::default() };
        assert_eq!(collections(&scene(), &all)[2..], ["Outdoor"]);
    }

    #[test]
    fn genres_leave_out_ignored_and_ambiguous_tags() {
        let prefs = AgentPrefs { ignore_tags: vec!["12".into()], append_performer_tags: true, ..AgentPrefs::default() };
        assert_eq!(genres(&scene(), &prefs), ["Outdoor", "Brunette"]);
        assert_eq!(genres(&scene(), &AgentPrefs::default()), ["Outdoor", "Summer"]);
    }

    #[test]
    fn gates() {
        let mut settings = Settings::default();
        let mut s = scene();
        assert_eq!(gate(&s, &settings), None);
        settings.agent.require_url = true;
        assert!(gate(&s, &settings).unwrap().contains("RequireURL"));
        s.urls = vec!["https://example.com/scene/7".into()];
        settings.agent.require_stash_id = true;
        assert!(gate(&s, &settings).unwrap().contains("RequireStashID"));
        s.stash_ids = vec![StashIdRef { endpoint: "https://stashdb.org/graphql".into(), stash_id: "x".into() }];
        assert_eq!(gate(&s, &settings), None);
        s.organized = false;
        assert!(gate(&s, &settings).unwrap().contains("skipUnorganized"));
    }

    #[test]
    fn formatted_titles() {
        let prefs = AgentPrefs { formatted_title: true, ..AgentPrefs::default() };
        assert_eq!(formatted_title(&scene(), &prefs, "x"), "Jane Doe - Beach Day");
        let keep = AgentPrefs { remove_performer_from_title: false, ..prefs.clone() };
        assert_eq!(formatted_title(&scene(), &keep, "x"), "Jane Doe - Jane Doe - Beach Day");
        let mut alone = scene();
        alone.performers.clear();
        assert_eq!(formatted_title(&alone, &prefs, "x"), "Jane Doe - Beach Day", "no dangling separator");
        let full = AgentPrefs {
            title_format: "{studio} - {performer} - {title} ({date}) [{filename}]".into(),
            ..prefs.clone()
        };
        assert_eq!(formatted_title(&scene(), &full, "x"), "Sunset - Jane Doe - Beach Day (2021-06-01) [beach.day]");
        let mut bare = alone.clone();
        bare.studio = None;
        bare.date = None;
        assert_eq!(formatted_title(&bare, &full, "x"), "Jane Doe - Beach Day [beach.day]");
        // The last performer is checked like the others (the agent skipped it).
        let mut s = scene();
        s.title = Some("Beach Day".into());
        s.performers.swap(0, 1);
        s.performers[1].tags = vec![named("9", "Skip")];
        s.performers[0].tags = vec![named("9", "Skip")];
        let ignore = AgentPrefs { ignore_tags: vec!["9".into()], ..prefs.clone() };
        assert_eq!(formatted_title(&s, &ignore, "x"), "Beach Day");
        let mut untitled = scene();
        untitled.title = None;
        assert_eq!(formatted_title(&untitled, &prefs, "beach.day"), "beach.day");
    }

    #[test]
    fn ratings_on_plexs_scale() {
        assert_eq!(ten_point(Some(85)).as_deref(), Some("8.5"));
        assert_eq!(ten_point(Some(80)).as_deref(), Some("8"));
        assert_eq!(ten_point(Some(5)).as_deref(), Some("0.5"));
        assert_eq!(ten_point(None), None);
        assert_eq!(rating_stars(&scene()), Some(8));
    }

    #[test]
    fn managed_collections_leave_a_persons_own() {
        let prefs = AgentPrefs { rating_collection: true, ..AgentPrefs::default() };
        let m = Managed::new(&scene(), &prefs, Some(vec!["Summer".into()]), true);
        for ours in ["Site: Other", "Studio: Old", "Rating: 3 Stars", "summer"] {
            assert!(m.owns(ours), "{ours}");
        }
        for theirs in ["Favourites", "Rating: great", "Sunset"] {
            assert!(!m.owns(theirs), "{theirs}");
        }
        // Written by a version that recorded no names: its bare studio names.
        let earlier = Managed::new(&scene(), &prefs, None, true);
        assert!(earlier.owns("Sunset") && earlier.owns("Big Network") && !earlier.owns("Favourites"));
        assert!(!Managed::new(&scene(), &prefs, None, false).owns("Sunset"));
    }
}
