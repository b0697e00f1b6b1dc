//! The Plex emulator seen by a plain HTTP client: auth, paging, XML/JSON
//! equivalence, shapes against real Plex responses, edits, images, scans.

use std::collections::BTreeMap;
use std::time::Duration;

use emulators::plex::TagKind;
use emulators::{Library, PlexEmulator, PlexState};
use quick_xml::events::Event;
use reqwest::{Client, Method, StatusCode};
use serde_json::Value;

const TOKEN: &str = "test-token";

async fn start(scenes: usize) -> PlexEmulator {
    PlexEmulator::start(PlexState::from_library(&Library::sample(scenes, 11)), TOKEN).await.unwrap()
}

fn client() -> Client {
    Client::builder().timeout(Duration::from_secs(10)).build().unwrap()
}

fn url(plex: &PlexEmulator, path_and_query: &str) -> String {
    plex.url().join(path_and_query).unwrap().to_string()
}

async fn get_json(plex: &PlexEmulator, path: &str) -> Value {
    let resp = client()
        .get(url(plex, path))
        .header("X-Plex-Token", TOKEN)
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{path}");
    resp.json().await.unwrap()
}

async fn get_xml(plex: &PlexEmulator, path: &str) -> String {
    let resp = client().get(url(plex, path)).header("X-Plex-Token", TOKEN).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{path}");
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/xml"));
    resp.text().await.unwrap()
}

async fn send(plex: &PlexEmulator, method: Method, path: &str) -> StatusCode {
    client().request(method, url(plex, path)).header("X-Plex-Token", TOKEN).send().await.unwrap().status()
}

#[tokio::test]
async fn token_is_required_except_for_identity() {
    let plex = start(10).await;
    let c = client();
    let identity = c.get(url(&plex, "/identity")).send().await.unwrap();
    assert_eq!(identity.status(), StatusCode::OK);
    assert!(identity.text().await.unwrap().contains("machineIdentifier="));

    let denied = c.get(url(&plex, "/library/sections")).send().await.unwrap();
    assert_eq!(denied.status(), StatusCode::UNAUTHORIZED);
    assert!(denied.text().await.unwrap().contains("<h1>401 Unauthorized</h1>"));
    let wrong = c.get(url(&plex, "/library/sections")).header("X-Plex-Token", "nope").send().await.unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);

    let by_query = c.get(url(&plex, &format!("/library/sections?X-Plex-Token={TOKEN}"))).send().await.unwrap();
    assert_eq!(by_query.status(), StatusCode::OK);
    let log = plex.requests();
    assert_eq!(log.last().unwrap().token, emulators::plex::TokenUse::Query);
    assert!(log.iter().all(|r| r.param("X-Plex-Token").is_none()), "token never recorded");
}

#[tokio::test]
async fn paging_covers_every_item_once_and_reports_totals() {
    let plex = start(230).await;
    let total = plex.with_state(|s| s.items.len());
    let mut seen = Vec::new();
    let mut start = 0;
    loop {
        let resp = client()
            .get(url(&plex, "/library/sections/1/all?type=1"))
            .header("X-Plex-Token", TOKEN)
            .header("Accept", "application/json")
            .header("X-Plex-Container-Start", start.to_string())
            .header("X-Plex-Container-Size", "37")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()["X-Plex-Container-Total-Size"], total.to_string().as_str());
        assert_eq!(resp.headers()["X-Plex-Container-Start"], start.to_string().as_str());
        let body: Value = resp.json().await.unwrap();
        let mc = &body["MediaContainer"];
        assert_eq!(mc["totalSize"], total);
        assert_eq!(mc["offset"], start);
        let page = mc["Metadata"].as_array().cloned().unwrap_or_default();
        assert_eq!(mc["size"], page.len());
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 37);
        seen.extend(page.iter().map(|m| m["ratingKey"].as_str().unwrap().to_string()));
        start += 37;
    }
    assert_eq!(seen.len(), total);
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), total, "no item twice");

    // Query parameters work as well as headers; Size=0 gives only the total.
    let only_total =
        get_json(&plex, "/library/sections/1/all?type=1&X-Plex-Container-Start=0&X-Plex-Container-Size=0").await;
    assert_eq!(only_total["MediaContainer"]["size"], 0);
    assert_eq!(only_total["MediaContainer"]["totalSize"], total);
    assert!(only_total["MediaContainer"].get("Metadata").is_none());
}

/// A generic element tree, to compare XML with JSON.
#[derive(Debug, PartialEq)]
struct Elem {
    name: String,
    attrs: BTreeMap<String, String>,
    children: Vec<Elem>,
}

fn parse_xml(xml: &str) -> Elem {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut stack: Vec<Elem> = Vec::new();
    let mut root = None;
    let start = |e: &quick_xml::events::BytesStart| Elem {
        name: e.name().as_ref().to_string(),
        attrs: e
            .attributes()
            .map(|a| {
                let a = a.unwrap();
                let value = a.normalized_value(quick_xml::XmlVersion::Implicit1_0).unwrap().into_owned();
                (a.key.as_ref().to_string(), value)
            })
            .collect(),
        children: Vec::new(),
    };
    loop {
        match reader.read_event().unwrap() {
            Event::Start(e) => stack.push(start(&e)),
            Event::Empty(e) => {
                let el = start(&e);
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => root = Some(el),
                }
            }
            Event::End(_) => {
                let el = stack.pop().unwrap();
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => root = Some(el),
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    root.unwrap()
}

/// Converts Plex JSON to the same tree, naming children as XML does.
fn json_to_elem(name: &str, value: &Value) -> Elem {
    let obj = value.as_object().unwrap();
    let mut attrs = BTreeMap::new();
    let mut children = Vec::new();
    for (k, v) in obj {
        match v {
            Value::Array(list) => {
                let child_name = if k == "Metadata" { "Video" } else { k.as_str() };
                children.extend(list.iter().map(|c| json_to_elem(child_name, c)));
            }
            Value::Bool(b) => {
                attrs.insert(k.clone(), if *b { "1" } else { "0" }.to_string());
            }
            Value::String(s) => {
                attrs.insert(k.clone(), s.clone());
            }
            other => {
                attrs.insert(k.clone(), other.to_string());
            }
        }
    }
    Elem { name: name.to_string(), attrs, children }
}

/// Orders children by name (JSON groups them by element) for comparison.
fn canonical(mut e: Elem) -> Elem {
    e.children = e.children.into_iter().map(canonical).collect();
    e.children.sort_by(|a, b| a.name.cmp(&b.name));
    e
}

#[tokio::test]
async fn xml_and_json_carry_the_same_data() {
    let plex = start(40).await;
    let rk = *plex.with_state(|s| s.items.keys().next().copied()).as_ref().unwrap();
    let edit = format!("/library/metadata/{rk}?summary.value=Line%201%0ALine%202%20%26%20%3C%3E&summary.locked=1&genre%5B0%5D.tag.tag=A&actor%5B0%5D.tag.tag=Zo%C3%AB&actor%5B0%5D.tagging.text=Lead");
    assert_eq!(send(&plex, Method::PUT, &edit).await, StatusCode::OK);
    for path in [
        "/",
        "/identity",
        "/library",
        "/library/sections",
        "/library/sections/1/all?type=1",
        &format!("/library/metadata/{rk}"),
        "/hubs/search?query=a",
    ] {
        let xml = canonical(parse_xml(&get_xml(&plex, path).await));
        let json = get_json(&plex, path).await;
        let from_json = canonical(json_to_elem("MediaContainer", &json["MediaContainer"]));
        assert_eq!(xml, from_json, "XML and JSON differ for {path}");
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Every key both documents have at the same place has the same JSON type
/// (floats may be written without a fraction by real Plex, so int≈float).
fn compare_shapes(ours: &Value, real: &Value, path: &str, compared: &mut usize) {
    match (ours, real) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, va) in a {
                if let Some(vb) = b.get(k) {
                    compare_shapes(va, vb, &format!("{path}.{k}"), compared);
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            if let (Some(x), Some(y)) = (a.first(), b.first()) {
                compare_shapes(x, y, &format!("{path}[]"), compared);
            }
        }
        _ => {
            let (ka, kb) = (json_kind(ours), json_kind(real));
            let numeric = matches!((ka, kb), ("int", "float") | ("float", "int"));
            assert!(ka == kb || numeric, "{path}: emulator gives {ka}, real Plex gives {kb}");
            *compared += 1;
        }
    }
}

fn fixture(name: &str) -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../third_party/plex-json/");
    serde_json::from_str(&std::fs::read_to_string(format!("{path}{name}")).unwrap()).unwrap()
}

#[tokio::test]
async fn json_matches_real_plex_responses() {
    let plex = start(20).await;
    let rk = plex.with_state(|s| *s.items.keys().next().unwrap());
    let edit = format!(
        "/library/metadata/{rk}?studio.value=S&summary.value=x&tagline.value=t&year.value=2020&originallyAvailableAt.value=2020-01-02&contentRating.value=R\
         &genre%5B0%5D.tag.tag=G&director%5B0%5D.tag.tag=D&collection%5B0%5D.tag.tag=C&actor%5B0%5D.tag.tag=A&actor%5B0%5D.tagging.text=R&actor%5B0%5D.tag.thumb=http%3A%2F%2Fx%2Fy.jpg"
    );
    assert_eq!(send(&plex, Method::PUT, &edit).await, StatusCode::OK);
    assert_eq!(
        send(&plex, Method::POST, &format!("/library/metadata/{rk}/posters?url=http%3A%2F%2Fx%2Fp.jpg")).await,
        StatusCode::OK
    );

    let listing = get_json(&plex, "/library/sections/1/all?type=1").await;
    let mut compared = 0;
    compare_shapes(&listing, &fixture("movie_library.json"), "", &mut compared);
    let detail = get_json(&plex, &format!("/library/metadata/{rk}")).await;
    compare_shapes(&detail, &fixture("metadata_108.json"), "", &mut compared);
    assert!(compared > 60, "only {compared} fields compared");

    let item = &detail["MediaContainer"]["Metadata"][0];
    for key in [
        "ratingKey",
        "key",
        "guid",
        "type",
        "title",
        "librarySectionID",
        "librarySectionKey",
        "duration",
        "addedAt",
        "updatedAt",
        "Media",
    ] {
        assert!(item.get(key).is_some(), "detail lacks {key}");
    }
    assert_eq!(item["Role"][0]["filter"].as_str().unwrap(), format!("actor={}", item["Role"][0]["id"]));
    assert!(item["Media"][0]["Part"][0]["file"].as_str().unwrap().starts_with("/media/library/"));
}

#[tokio::test]
async fn edits_and_locks_show_on_the_next_get() {
    let plex = start(10).await;
    let rk = plex.with_state(|s| *s.items.keys().next().unwrap());
    let nasty = "Tom & Jerry = #1 100% + more [x] ünï\u{30C6}\nnew line";
    let mut edit = url::Url::parse("http://x/library/sections/1/all").unwrap();
    edit.query_pairs_mut()
        .append_pair("type", "1")
        .append_pair("id", &rk.to_string())
        .append_pair("title.value", nasty)
        .append_pair("title.locked", "1")
        .append_pair("genre[0].tag.tag", "Drama & Co")
        .append_pair("genre[1].tag.tag", "Comedy")
        .append_pair("genre.locked", "1");
    let path = format!("{}?{}", edit.path(), edit.query().unwrap());
    assert_eq!(send(&plex, Method::PUT, &path).await, StatusCode::OK);

    let detail = get_json(&plex, &format!("/library/metadata/{rk}")).await;
    let item = &detail["MediaContainer"]["Metadata"][0];
    assert_eq!(item["title"], nasty);
    let genres: Vec<&str> = item["Genre"].as_array().unwrap().iter().map(|g| g["tag"].as_str().unwrap()).collect();
    assert_eq!(genres, ["Drama & Co", "Comedy"]);
    let locked: Vec<&str> = item["Field"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(locked, ["genre", "title"]);
    assert!(item["Field"][0]["locked"].as_bool().unwrap());
    let xml = get_xml(&plex, &format!("/library/metadata/{rk}")).await;
    assert!(xml.contains("<Field locked=\"1\" name=\"title\"/>"), "{xml}");

    // Removal: comma list of individually encoded names, encoded again.
    let removal = format!("/library/metadata/{rk}?genre%5B%5D.tag.tag-={}", "Drama%2520%2526%2520Co");
    assert_eq!(send(&plex, Method::PUT, &removal).await, StatusCode::OK);
    assert_eq!(plex.item(rk).unwrap().tag_names(TagKind::Genre), ["Comedy"]);
    // Unlock, and clear with an empty value.
    assert_eq!(
        send(&plex, Method::PUT, &format!("/library/metadata/{rk}?title.locked=0&summary.value=")).await,
        StatusCode::OK
    );
    assert!(!plex.item(rk).unwrap().locked.contains("title"));
    // `+` decodes to a space, as Plex does.
    assert_eq!(send(&plex, Method::PUT, &format!("/library/metadata/{rk}?tagline.value=a+b")).await, StatusCode::OK);
    assert_eq!(plex.item(rk).unwrap().field("tagline"), Some("a b"));
}

#[tokio::test]
async fn bad_edits_and_unknown_items_are_refused() {
    let plex = start(5).await;
    let rk = plex.with_state(|s| *s.items.keys().next().unwrap());
    let before = plex.item(rk).unwrap();
    assert_eq!(
        send(
            &plex,
            Method::PUT,
            &format!("/library/metadata/{rk}?title.value=X&originallyAvailableAt.value=0000-00-00")
        )
        .await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        send(&plex, Method::PUT, &format!("/library/metadata/{rk}?year.value=soon")).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(plex.item(rk).unwrap(), before, "refused edit changes nothing");
    assert_eq!(send(&plex, Method::GET, "/library/metadata/999999").await, StatusCode::NOT_FOUND);
    assert_eq!(send(&plex, Method::PUT, "/library/metadata/999999?title.value=x").await, StatusCode::NOT_FOUND);
    assert_eq!(
        send(&plex, Method::PUT, "/library/sections/1/all?type=1&id=999999&title.value=x").await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(send(&plex, Method::GET, "/library/sections/9/all").await, StatusCode::NOT_FOUND);
    // Unknown parameters are ignored.
    assert_eq!(
        send(&plex, Method::GET, "/library/sections/1/all?type=1&includeGuids=1&checkFiles=1").await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn posters_refresh_and_several_ids_in_one_edit() {
    let plex = start(10).await;
    let keys: Vec<u64> = plex.with_state(|s| s.items.keys().take(2).copied().collect());
    let (a, b) = (keys[0], keys[1]);
    assert_eq!(
        send(
            &plex,
            Method::POST,
            &format!("/library/metadata/{a}/posters?url=http%3A%2F%2Fstash%2Fscene%2F1%2Fscreenshot")
        )
        .await,
        StatusCode::OK
    );
    let upload = client()
        .post(url(&plex, &format!("/library/metadata/{a}/arts")))
        .header("X-Plex-Token", TOKEN)
        .body(vec![1u8, 2, 3])
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status(), StatusCode::OK);
    let item = plex.item(a).unwrap();
    assert_eq!(item.poster, Some(emulators::plex::Image::Url("http://stash/scene/1/screenshot".into())));
    assert_eq!(item.art, Some(emulators::plex::Image::Upload(vec![1, 2, 3])));
    let detail = get_json(&plex, &format!("/library/metadata/{a}")).await;
    let art = detail["MediaContainer"]["Metadata"][0]["art"].as_str().unwrap().to_string();
    let bytes =
        client().get(url(&plex, &art)).header("X-Plex-Token", TOKEN).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(&bytes[..], &[1, 2, 3]);

    assert_eq!(send(&plex, Method::PUT, &format!("/library/metadata/{a}/refresh")).await, StatusCode::OK);
    assert_eq!(plex.item(a).unwrap().refreshes, 1);

    assert_eq!(
        send(&plex, Method::PUT, &format!("/library/sections/1/all?type=1&id={a},{b}&studio.value=Both")).await,
        StatusCode::OK
    );
    assert_eq!(plex.item(a).unwrap().field("studio"), Some("Both"));
    assert_eq!(plex.item(b).unwrap().field("studio"), Some("Both"));
}

#[tokio::test]
async fn new_files_appear_after_a_partial_scan_of_their_folder() {
    let plex = start(5).await;
    plex.with_state(|s| s.scan_duration = Duration::from_millis(50));
    let count = || plex.with_state(|s| s.items.len());
    let before = count();
    plex.with_state(|s| {
        s.add_disk_file("/media/library/New/one.mp4", 100, 1000, None);
        s.add_disk_file("/media/library/Other/two.mp4", 100, 1000, None);
    });
    let listed = get_json(&plex, "/library/sections/1/all?type=1&X-Plex-Container-Size=0").await;
    assert_eq!(listed["MediaContainer"]["totalSize"], before, "not visible before a scan");

    assert_eq!(
        send(&plex, Method::GET, "/library/sections/1/refresh?path=%2Fmedia%2Flibrary%2FNew").await,
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(120)).await;
    let listed = get_json(&plex, "/library/sections/1/all?type=1&X-Plex-Container-Size=0").await;
    assert_eq!(listed["MediaContainer"]["totalSize"], before + 1, "scanned folder only");
    assert!(plex.item_by_file("/media/library/New/one.mp4").is_some());
    assert!(plex.item_by_file("/media/library/Other/two.mp4").is_none());
    assert!(plex
        .requests()
        .iter()
        .any(|r| r.path == "/library/sections/1/refresh" && r.param("path") == Some("/media/library/New")));

    // The admin API adds files; with an automatic scan delay they appear alone.
    plex.with_state(|s| s.auto_scan_delay = Some(Duration::from_millis(50)));
    let added = client()
        .post(url(&plex, "/_emulator/files"))
        .json(&serde_json::json!({"path": "/media/library/Auto/three.mp4", "size": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), StatusCode::CREATED);
    tokio::time::sleep(Duration::from_millis(80)).await;
    // (Plex's clock runs at requests: a listing makes the file an item.)
    get_json(&plex, "/library/sections/1/all?type=1").await;
    assert!(plex.item_by_file("/media/library/Auto/three.mp4").is_some());
}

#[tokio::test]
async fn search_and_listing_filters() {
    let plex = start(50).await;
    let rk = plex.with_state(|s| *s.items.keys().nth(3).unwrap());
    assert_eq!(
        send(&plex, Method::PUT, &format!("/library/metadata/{rk}?title.value=Needle%20In%20Haystack")).await,
        StatusCode::OK
    );
    let hubs = get_json(&plex, "/hubs/search?query=needle%20in").await;
    let hub = &hubs["MediaContainer"]["Hub"][0];
    assert_eq!(hub["type"], "movie");
    assert_eq!(hub["Metadata"][0]["ratingKey"], rk.to_string());
    let by_title = get_json(&plex, "/library/sections/1/all?type=1&title=HAYSTACK").await;
    assert_eq!(by_title["MediaContainer"]["size"], 1);

    // updatedAt>>= narrows to items changed after a time (all were just made).
    let future = emulators::plex::state::unix_now() + 3600;
    let none = get_json(&plex, &format!("/library/sections/1/all?type=1&updatedAt%3E%3E={future}")).await;
    assert_eq!(none["MediaContainer"]["size"], 0);
    let all = get_json(&plex, "/library/sections/1/all?type=1&addedAt%3E%3E=0&sort=addedAt:desc").await;
    assert_eq!(all["MediaContainer"]["size"], all["MediaContainer"]["totalSize"]);
}

#[tokio::test]
async fn a_section_edit_without_an_id_edits_every_item_of_the_section() {
    let plex = start(6).await;
    let keys: Vec<u64> = plex.with_state(|s| s.items.keys().copied().collect());
    assert_eq!(send(&plex, Method::PUT, "/library/sections/1/all?type=1&studio.value=Everyone").await, StatusCode::OK);
    for rk in &keys {
        assert_eq!(plex.item(*rk).unwrap().field("studio"), Some("Everyone"), "the spec's own example spreads");
    }
    assert_eq!(send(&plex, Method::PUT, "/library/sections/1/all?type=1&id=&title.value=All").await, StatusCode::OK);
    assert!(keys.iter().all(|rk| plex.item(*rk).unwrap().field("title") == Some("All")), "an empty id too");
}

#[tokio::test]
async fn tag_edits_replace_or_add_as_set() {
    let plex = start(3).await;
    let rk = *plex.with_state(|s| s.items.keys().next().copied()).as_ref().unwrap();
    let edit = |tag: &str| format!("/library/metadata/{rk}?genre%5B0%5D.tag.tag={tag}");
    for (add, want) in [(false, vec!["B"]), (true, vec!["A", "B"])] {
        plex.with_state(|s| {
            s.tag_edits_add = add;
            s.items.get_mut(&rk).unwrap().tags.remove(&TagKind::Genre);
        });
        assert_eq!(send(&plex, Method::PUT, &edit("A")).await, StatusCode::OK);
        assert_eq!(send(&plex, Method::PUT, &edit("B")).await, StatusCode::OK);
        assert_eq!(plex.item(rk).unwrap().tag_names(TagKind::Genre), want, "tag edits add: {add}");
    }
}

#[tokio::test]
async fn items_are_never_empty_and_posters_list_their_candidates() {
    let plex = start(8).await;
    let (plain, matched) = plex.with_state(|s| {
        let plain = s.items.values().find(|i| !i.agent_matched).unwrap().rating_key;
        let matched = s.items.values().find(|i| i.agent_matched).map(|i| i.rating_key);
        (plain, matched)
    });
    let matched = matched.expect("the agent matched some files");
    let agent = plex.item(matched).unwrap();
    assert!(!agent.tag_names(TagKind::Genre).is_empty() && agent.field("summary").is_some());
    assert!(agent.locked.is_empty(), "an agent's values are not locked");
    let listed = get_json(&plex, &format!("/library/metadata/{plain}")).await;
    assert!(listed["MediaContainer"]["Metadata"][0]["thumb"].is_string(), "an extracted frame");

    let frame = posters(&plex, plain).await;
    assert_eq!(frame.len(), 1);
    assert!(frame[0]["key"].as_str().unwrap().starts_with("media://") && frame[0]["selected"] == true);
    let upload = |bytes: &'static [u8]| {
        client()
            .post(url(&plex, &format!("/library/metadata/{plain}/posters")))
            .header("X-Plex-Token", TOKEN)
            .body(bytes)
            .send()
    };
    for bytes in [&b"one"[..], b"one", b"two"] {
        assert_eq!(upload(bytes).await.unwrap().status(), StatusCode::OK);
    }
    let after = posters(&plex, plain).await;
    let keys: Vec<&str> = after.iter().map(|p| p["key"].as_str().unwrap()).collect();
    assert_eq!(
        keys.iter().filter(|k| k.starts_with("upload://posters/")).count(),
        2,
        "same bytes, one poster: {keys:?}"
    );
    let selected: Vec<&str> =
        after.iter().filter(|p| p["selected"] == true).map(|p| p["key"].as_str().unwrap()).collect();
    assert_eq!(selected, [keys[2]], "the last upload is selected");
    assert_eq!(posters(&plex, matched).await.len(), 2, "frame and the agent's poster");
}

async fn posters(plex: &PlexEmulator, rk: u64) -> Vec<Value> {
    let v = get_json(plex, &format!("/library/metadata/{rk}/posters")).await;
    v["MediaContainer"]["Metadata"].as_array().unwrap().clone()
}
