//! Property tests (proptest; case counts below): the sanitizer, the stdin
//! parser and the Plex response parser never panic on any input, and any
//! string survives an edit to the Plex emulator unchanged apart from the
//! documented sanitizing.

use std::sync::OnceLock;

use emulators::{PlexEmulator, PlexState};
use plexsync::clients::plex::PlexClient;
use plexsync::faces::protocol::parse_input;
use plexsync::pipeline::sanitize::{self, MULTI_LINE_MAX, ONE_LINE_MAX};
use plexsync::secret::Secret;
use proptest::prelude::*;
use unicode_normalization::UnicodeNormalization;

/// Any JSON value, nested a few levels.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(serde_json::Value::from),
        ".*".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        ".*".boxed(),
                        Just("MediaContainer".to_string()).boxed(),
                        Just("Metadata".to_string()).boxed(),
                        Just("Media".to_string()).boxed(),
                        Just("Part".to_string()).boxed(),
                        Just("ratingKey".to_string()).boxed(),
                        Just("server_connection".to_string()).boxed(),
                        Just("args".to_string()).boxed(),
                        Just("hookContext".to_string()).boxed()
                    ],
                    inner
                ),
                0..6
            )
            .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn one_line_is_clean_bounded_nfc_and_idempotent(raw in ".*") {
        let clean = sanitize::one_line(&raw, ONE_LINE_MAX).value;
        prop_assert!(clean.chars().count() <= ONE_LINE_MAX);
        prop_assert!(!clean.chars().any(|c| c.is_control()));
        prop_assert!(!clean.contains("  ") && clean.trim() == clean);
        prop_assert_eq!(clean.nfc().collect::<String>(), clean.clone());
        prop_assert_eq!(sanitize::one_line(&clean, ONE_LINE_MAX).value, clean);
    }

    #[test]
    fn multi_line_keeps_only_newlines_and_tabs(raw in "(.|\n|\r|\t){0,300}") {
        let clean = sanitize::multi_line(&raw, MULTI_LINE_MAX).value;
        prop_assert!(!clean.chars().any(|c| c.is_control() && c != '\n' && c != '\t'));
        prop_assert_eq!(sanitize::multi_line(&clean, MULTI_LINE_MAX).value, clean);
    }

    #[test]
    fn dates_and_lists_never_panic(raw in ".{0,20}", names in prop::collection::vec(".*", 0..150)) {
        if let Ok(d) = sanitize::date(&raw) {
            prop_assert!((1800..=2200).contains(&d.year));
        }
        let list = sanitize::name_list(names.iter().map(String::as_str), 100).value;
        prop_assert!(list.len() <= 100);
        let lower: std::collections::HashSet<String> = list.iter().map(|n| n.to_lowercase()).collect();
        prop_assert_eq!(lower.len(), list.len());
        prop_assert!(list.iter().all(|n| !n.is_empty()));
    }

    #[test]
    fn stdin_parser_never_panics_on_text(raw in ".*") {
        let _ = parse_input(&raw);
    }

    #[test]
    fn stdin_parser_never_panics_on_json(value in json_value()) {
        let _ = parse_input(&value.to_string());
    }

    #[test]
    fn plex_parser_never_panics(value in json_value(), raw in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = plexsync::clients::plex::parse_listing(value.to_string().as_bytes());
        let _ = plexsync::clients::plex::parse_listing(&raw);
        let wrapped = serde_json::json!({"MediaContainer": value});
        let _ = plexsync::clients::plex::parse_listing(wrapped.to_string().as_bytes());
    }
}

struct Live {
    rt: tokio::runtime::Runtime,
    plex: PlexEmulator,
    client: PlexClient,
    rk: String,
}

fn live() -> &'static Live {
    static LIVE: OnceLock<Live> = OnceLock::new();
    LIVE.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let mut state = PlexState::new("/m");
        let rk = state.add_item(1, &[("/m/a.mp4".into(), 1, 1_000)]).to_string();
        let plex = rt.block_on(PlexEmulator::start(state, "prop-token")).unwrap();
        let client = PlexClient::new(plex.url(), Secret::new("prop-token"), &Default::default()).unwrap();
        Live { rt, plex, client, rk }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Any string — `&`, `=`, `%`, `#`, `[`, `+`, newlines, NUL, any Unicode —
    /// reaches Plex exactly as the sanitizer left it, as a title and as a tag.
    #[test]
    fn any_string_round_trips_through_a_plex_edit(raw in "(.|[&=%#\\[\\]+\n\u{0}])*") {
        let l = live();
        let title = sanitize::one_line(&raw, ONE_LINE_MAX).value;
        let tag = if title.is_empty() { "x".to_string() } else { title.clone() };
        let params = vec![
            ("title.value".to_string(), title.clone()),
            ("genre[0].tag.tag".to_string(), tag.clone()),
        ];
        let key = plexsync::clients::plex::RatingKey::parse(&l.rk).unwrap();
        l.rt.block_on(l.client.edit("1", &key, &params)).unwrap();
        let item = l.rt.block_on(l.client.item(&l.rk)).unwrap().unwrap();
        let stored_title = l.plex.item(l.rk.parse().unwrap()).unwrap().field("title").map(str::to_string);
        if title.is_empty() {
            // An empty value clears the field.
            prop_assert_eq!(stored_title, None);
        } else {
            prop_assert_eq!(item.title.as_deref(), Some(title.as_str()));
        }
        prop_assert_eq!(item.genres[0].tag.as_str(), tag.as_str());
    }
}
