//! A Plex library as the legacy agent StashPlexAgent left it, at its default
//! preferences (Darklyter/StashPlexAgent.bundle, `Contents/Code/__init__.py`
//! `update()`, `Contents/DefaultPrefs.json`): what a person switching to
//! PlexSync has in Plex. Its defects are kept, since they are what that
//! library holds: summaries without newlines, no date (its date parser call
//! always failed), the critic rating rounded down (Python 2 divided
//! integers), no background. Nothing it wrote is locked.

use crate::plex::state::{Image, Tag};
use crate::plex::{PlexState, TagKind};
use crate::stash::StashState;

/// The agent's identifier, the scheme of the guids of the items it matched.
pub const AGENT_ID: &str = "com.plexapp.agents.stashplexagent";

/// Makes the scenes with even ids hold nothing the agent got wrong (no
/// date, one-line details, whole-star ratings): for them its item is what
/// PlexSync writes. Returns their ids.
pub fn agreeing_half(stash: &mut StashState) -> Vec<u64> {
    let ids: Vec<u64> = stash.scenes.keys().copied().filter(|id| id % 2 == 0).collect();
    for id in &ids {
        stash.update_scene(*id, |sc| {
            sc.date = None;
            sc.details = sc.details.as_ref().map(|d| d.replace('\n', " "));
            sc.rating100 = sc.rating100.map(|r| r / 10 * 10);
        });
    }
    ids
}

/// Writes what the agent wrote into every Plex item holding a Stash
/// scene's file (`stash_prefix` → `plex_prefix`); returns how many.
pub fn write_library(plex: &mut PlexState, stash: &StashState, stash_prefix: &str, plex_prefix: &str) -> usize {
    let mut written = 0;
    for scene in stash.scenes.values() {
        let Some(path) = scene.files.first().map(|f| f.path.replacen(stash_prefix, plex_prefix, 1)) else { continue };
        let Some(rk) = plex.items.values().find(|i| i.files().any(|p| p.file == path)).map(|i| i.rating_key) else {
            continue;
        };
        let studio = scene.studio.and_then(|id| stash.studios.get(&id));
        let parent = studio.and_then(|s| s.parent).and_then(|id| stash.studios.get(&id));
        let genres: Vec<String> = scene
            .tags
            .iter()
            .filter_map(|id| stash.tags.get(id))
            .map(|t| t.name.clone())
            .filter(|n| !n.to_lowercase().contains("ambiguous"))
            .collect();
        let actors: Vec<String> =
            scene.performers.iter().filter_map(|id| stash.performers.get(id)).map(|p| p.name.clone()).collect();
        let mut collections = Vec::new();
        collections.extend(studio.map(|s| format!("Site: {}", s.name)));
        collections.extend(parent.map(|p| format!("Studio: {}", p.name)));
        let tags: Vec<(TagKind, Vec<String>)> =
            vec![(TagKind::Genre, genres), (TagKind::Actor, actors), (TagKind::Collection, collections)];
        let tags: Vec<(TagKind, Vec<Tag>)> = tags
            .into_iter()
            .map(|(kind, names)| {
                let list = names
                    .into_iter()
                    .map(|name| Tag { id: plex.tag_id(kind, &name), tag: name, role: None, thumb: None })
                    .collect();
                (kind, list)
            })
            .collect();
        let mut item = plex.items.get_mut(&rk).expect("found above");
        item.guid = format!("{AGENT_ID}://{}?lang=en", scene.id);
        item.agent_matched = true;
        item.fields.clear();
        item.locked.clear();
        let mut set = |name: &str, value: Option<String>| {
            if let Some(v) = value.filter(|v| !v.is_empty()) {
                item.fields.insert(name.into(), v);
            }
        };
        set("title", scene.title.clone());
        set("studio", studio.map(|s| s.name.clone()));
        set("rating", scene.rating100.map(|r| format!("{}", r / 10)));
        set("summary", scene.details.as_ref().map(|d| d.replace('\n', " ").replace(['\r', '\t'], "")));
        set("contentRating", Some("XXX".into()));
        item.tags.clear();
        item.tags.extend(tags);
        // Plex keeps the bytes the agent downloaded.
        item.poster = scene.cover.clone().map(Image::Upload);
        written += 1;
    }
    written
}
