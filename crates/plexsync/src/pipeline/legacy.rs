//! The old plugin's Stash-side behaviours, kept behind their old settings:
//! `cleanTitles` and `tagStashIDs`. Both are idempotent, so the hook our
//! own Stash write fires leads to one more delivery that changes nothing.

use crate::clients::stash::Scene;
use crate::config::StashIdTags;

/// The link StashPlexAgent's `AddPlexURL` left on a scene, before the
/// item's ratingKey: the old plugin found items only through it.
pub(crate) const PLEX_URL_PREFIX: &str = "plex/library/metadata/";

/// Whether a scene update's input is only `AddPlexURL`'s own write: Plex
/// links added to scenes' URLs (`bulkSceneUpdate`, mode `ADD`) and nothing
/// else. Stash fires an update hook for it that carries nothing to deliver.
pub(crate) fn only_plex_urls_added(input: &serde_json::Value) -> bool {
    let Some(fields) = input.as_object() else { return false };
    let urls = &input["urls"];
    let values = urls["values"].as_array().map(Vec::as_slice).unwrap_or_default();
    fields.keys().all(|k| matches!(k.as_str(), "ids" | "urls" | "clientMutationId"))
        && urls["mode"] == "ADD"
        && !values.is_empty()
        && values.iter().all(|v| {
            v.as_str()
                .and_then(|u| u.strip_prefix(PLEX_URL_PREFIX))
                .is_some_and(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()))
        })
}

/// Trailing words the old plugin dropped (file types and a quality marker).
const TRAILING_WORDS: &[&str] = &[" Wmv", " Mp4", " Mov", " Qt", " HD"];

/// The old `cleanTitles` rewrite, step by step as the old plugin did it:
/// ASCII transliteration; leading spaces, `@` and `'` removed; trailing
/// spaces removed; leading `!`, then `?`, then `*` runs removed; `The "`,
/// `The '`, `A "`, `A '` lose the quote; one trailing file-type word
/// dropped; one leading non-alphanumeric character and then one leading
/// space dropped. An empty result becomes `ZZZ Invalid Title`.
pub(crate) fn clean_title(title: &str) -> String {
    let mut t = deunicode::deunicode(title);
    t = t.trim_start_matches([' ', '\u{a0}', '@', '\'']).trim_end_matches(' ').to_string();
    for junk in ['!', '?', '*'] {
        t = t.trim_start_matches(junk).to_string();
    }
    for (prefix, keep) in [("The \"", "The "), ("The '", "The "), ("A \"", "A "), ("A '", "A ")] {
        if let Some(rest) = t.strip_prefix(prefix) {
            t = format!("{keep}{rest}");
            break;
        }
    }
    if let Some(rest) = TRAILING_WORDS.iter().find_map(|w| t.strip_suffix(w)) {
        t = rest.to_string();
    }
    if t.chars().next().is_some_and(|c| !c.is_ascii_alphanumeric()) {
        t.remove(0);
    }
    if t.starts_with(' ') {
        t.remove(0);
    }
    if t.is_empty() {
        "ZZZ Invalid Title".into()
    } else {
        t
    }
}

/// The old `tagStashIDs` behaviour: the tag ids to add to `scene` for its
/// stash-box endpoints (or the "empty" tag when it has none); only ids the
/// scene lacks are returned.
pub(crate) fn stash_id_tags(scene: &Scene, tags: &StashIdTags) -> Vec<String> {
    let mut wanted: Vec<String> = Vec::new();
    if scene.stash_ids.is_empty() {
        wanted.extend(tags.empty.clone());
    }
    for sid in &scene.stash_ids {
        for (host, id) in &tags.by_endpoint {
            if sid.endpoint.contains(host) && !wanted.contains(id) {
                wanted.push(id.clone());
            }
        }
    }
    wanted.retain(|id| !scene.tags.iter().any(|t| &t.id == id));
    wanted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plex_url_write_is_told_from_a_persons_edit() {
        let ours = serde_json::json!({"ids": ["7"], "urls": {"values": ["plex/library/metadata/12"], "mode": "ADD"}});
        assert!(only_plex_urls_added(&ours));
        for theirs in [
            serde_json::json!({"ids": ["7"], "urls": {"values": ["https://example.com"], "mode": "ADD"}}),
            serde_json::json!({"ids": ["7"], "urls": {"values": ["plex/library/metadata/12"], "mode": "SET"}}),
            serde_json::json!({"ids": ["7"], "title": "x", "urls": {"values": ["plex/library/metadata/12"], "mode": "ADD"}}),
            serde_json::json!({"id": "7", "urls": ["plex/library/metadata/12"]}),
            serde_json::Value::Null,
        ] {
            assert!(!only_plex_urls_added(&theirs), "{theirs}");
        }
    }
    use crate::clients::stash::{Named, StashIdRef};

    #[test]
    fn clean_title_cases_of_the_old_plugin() {
        assert_eq!(clean_title("Café Crème"), "Cafe Creme");
        assert_eq!(clean_title("  @!'Hello"), "Hello");
        assert_eq!(clean_title("The \"Best\" Day"), "The Best\" Day");
        assert_eq!(clean_title("A 'Walk'"), "A Walk'");
        assert_eq!(clean_title("My Scene Mp4"), "My Scene");
        assert_eq!(clean_title("Holiday HD"), "Holiday");
        assert_eq!(clean_title("- Dash"), "Dash");
        assert_eq!(clean_title("!?*Star"), "Star");
        assert_eq!(clean_title("???"), "ZZZ Invalid Title");
        assert_eq!(clean_title("東京"), "Dong Jing");
        // Idempotent: cleaning a clean title changes nothing.
        for t in ["Cafe Creme", "Hello", "My Scene", "ZZZ Invalid Title"] {
            assert_eq!(clean_title(t), t);
        }
    }

    #[test]
    fn stash_id_tags_by_endpoint() {
        let tags = StashIdTags {
            empty: Some("9".into()),
            by_endpoint: vec![("stashdb.org", "1".into()), ("theporndb.net", "2".into())],
        };
        let mut scene = Scene::default();
        assert_eq!(stash_id_tags(&scene, &tags), ["9"]);
        scene.stash_ids.push(StashIdRef { endpoint: "https://stashdb.org/graphql".into(), stash_id: "x".into() });
        assert_eq!(stash_id_tags(&scene, &tags), ["1"]);
        scene.tags.push(Named { id: "1".into(), name: "StashDB".into() });
        assert!(stash_id_tags(&scene, &tags).is_empty(), "already tagged");
    }
}
