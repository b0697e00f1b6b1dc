//! Plex Media Server client: identity, sections, paged listings, item
//! reads, query-string edits with locks, images, refresh and partial scans.
//!
//! Every request carries the token in the `X-Plex-Token` header (never in
//! the URL) and asks for JSON. Every URL is built with the `url` crate.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use url::Url;

use crate::config::HttpOptions;
use crate::error::{retry_after, Error, ErrorClass, Server};
use crate::secret::Secret;

/// Page size for section listings. python-plexapi asks for 100; 500 keeps
/// a 100 000-item library to 200 requests while a page stays a few hundred
/// kilobytes.
pub(crate) const PAGE_SIZE: usize = 500;

#[derive(Clone)]
pub struct PlexClient {
    http: reqwest::Client,
    base: Url,
    token: Secret,
    /// Answer times, shared by clones: what the delivery concurrency follows.
    rtt: std::sync::Arc<crate::clients::http::RttMeter>,
}

#[derive(Debug, Deserialize)]
struct Envelope<T> {
    #[serde(rename = "MediaContainer")]
    container: T,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct Identity {
    pub machine_identifier: String,
    pub version: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Container {
    #[serde(deserialize_with = "opt_number")]
    size: Option<i64>,
    #[serde(deserialize_with = "opt_number")]
    total_size: Option<i64>,
    /// Items one by one: an item of an unexpected shape is left out with
    /// a warning, never the whole page.
    #[serde(rename = "Metadata", deserialize_with = "lenient_items")]
    metadata: Vec<PlexItem>,
    #[serde(rename = "Directory")]
    directory: Vec<PlexSection>,
    #[serde(rename = "librarySectionID")]
    library_section_id: Option<u32>,
}

#[derive(Clone, Debug, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PlexLocation {
    pub path: String,
}

#[derive(Clone, Debug, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PlexSection {
    #[serde(deserialize_with = "string_or_number")]
    pub key: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub agent: String,
    #[serde(rename = "Location", alias = "locations")]
    pub locations: Vec<PlexLocation>,
    /// Plex is scanning the section now.
    #[serde(deserialize_with = "flag", skip_serializing)]
    pub refreshing: bool,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct PlexPart {
    pub file: String,
    #[serde(deserialize_with = "opt_unsigned")]
    pub size: Option<u64>,
    #[serde(deserialize_with = "opt_unsigned")]
    pub duration: Option<u64>,
    /// Set on a part whose file is gone while its item waits in Plex's
    /// trash: the item holds that path no more.
    #[serde(deserialize_with = "opt_number")]
    pub deleted_at: Option<i64>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct PlexMedia {
    #[serde(rename = "Part")]
    pub parts: Vec<PlexPart>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct PlexTag {
    pub tag: String,
    pub role: Option<String>,
    pub thumb: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct PlexField {
    pub name: String,
    /// A boolean in JSON; `1`/`"1"` are taken too.
    #[serde(deserialize_with = "flag")]
    pub locked: bool,
}

/// A detail read's items, each naming its section (the container's, when
/// the item itself does not).
fn with_sections(container: Container) -> impl Iterator<Item = PlexItem> {
    let section = container.library_section_id;
    container.metadata.into_iter().map(move |mut i| {
        i.library_section_id = i.library_section_id.or(section);
        i
    })
}

/// Items read in one request: keys of up to 20 digits and a comma each
/// keep the request line far under the 7 KB an edit is held to.
const ITEMS_AT_ONCE: usize = 100;

/// A movie item, from a listing (abbreviated tags) or a detail read.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct PlexItem {
    pub rating_key: String,
    /// The agent's id of what the item was matched to
    /// (`<agent scheme>://<id>?lang=…`).
    pub guid: Option<String>,
    pub title: Option<String>,
    pub summary: Option<String>,
    pub studio: Option<String>,
    pub tagline: Option<String>,
    pub content_rating: Option<String>,
    /// The critic rating (0–10).
    #[serde(deserialize_with = "opt_float")]
    pub rating: Option<f64>,
    /// The token's user's own rating (0–10).
    #[serde(deserialize_with = "opt_float")]
    pub user_rating: Option<f64>,
    pub originally_available_at: Option<String>,
    #[serde(deserialize_with = "opt_number")]
    pub year: Option<i64>,
    pub thumb: Option<String>,
    pub art: Option<String>,
    #[serde(deserialize_with = "opt_number")]
    pub added_at: Option<i64>,
    #[serde(deserialize_with = "opt_number")]
    pub updated_at: Option<i64>,
    #[serde(rename = "librarySectionID")]
    pub library_section_id: Option<u32>,
    #[serde(rename = "Media")]
    pub media: Vec<PlexMedia>,
    #[serde(rename = "Genre")]
    pub genres: Vec<PlexTag>,
    #[serde(rename = "Role")]
    pub actors: Vec<PlexTag>,
    #[serde(rename = "Director")]
    pub directors: Vec<PlexTag>,
    #[serde(rename = "Collection")]
    pub collections: Vec<PlexTag>,
    #[serde(rename = "Field")]
    pub fields: Vec<PlexField>,
}

impl PlexItem {
    /// The item's files, leaving out parts in the trash (their file is gone).
    pub(crate) fn files(&self) -> impl Iterator<Item = &PlexPart> {
        self.media.iter().flat_map(|m| m.parts.iter()).filter(|p| p.deleted_at.is_none())
    }

    pub fn is_locked(&self, field: &str) -> bool {
        self.fields.iter().any(|f| f.locked && f.name == field)
    }

    /// The item's tags of `kind` (as an edit names it: `genre`, `actor`,
    /// `director`, `collection`).
    pub(crate) fn tags(&self, kind: &str) -> &[PlexTag] {
        match kind {
            "genre" => &self.genres,
            "actor" => &self.actors,
            "director" => &self.directors,
            "collection" => &self.collections,
            _ => &[],
        }
    }
}

/// One page of a section listing.
#[derive(Debug)]
pub struct Page {
    pub items: Vec<PlexItem>,
    pub total: usize,
}

fn page_of(c: Container) -> Page {
    let total = c.total_size.or(c.size).map_or(c.metadata.len(), crate::units::to_usize);
    let mut items = c.metadata;
    if let Some(id) = c.library_section_id {
        items.iter_mut().for_each(|i| i.library_section_id = i.library_section_id.or(Some(id)));
    }
    Page { items, total }
}

/// Parses a Plex JSON listing (`{"MediaContainer": …}`); an error, never a
/// panic, for anything else.
pub fn parse_listing(body: &[u8]) -> Result<Page, String> {
    let env: Envelope<Container> = parse_json(body)?;
    Ok(page_of(env.container))
}

/// Parses Plex's JSON. Real servers have sent invalid UTF-8 (a multi-byte
/// character cut in a title): such a body is read again with the broken
/// bytes replaced (U+FFFD), so one title never fails a whole listing.
fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    match serde_json::from_slice(body) {
        Ok(value) => Ok(value),
        Err(e) => match std::str::from_utf8(body) {
            Ok(_) => Err(e.to_string()),
            Err(_) => serde_json::from_str(&String::from_utf8_lossy(body)).map_err(|e| e.to_string()),
        },
    }
}

/// What answered instead of Plex's JSON, for the error: the content type,
/// the `Server` header and an HTML page's title.
fn not_plex(what: &str, headers: &reqwest::header::HeaderMap, body: &[u8], parse_error: &str) -> Error {
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let text = String::from_utf8_lossy(&body[..body.len().min(4096)]);
    let lower = text.to_ascii_lowercase();
    let title = lower.find("<title>").and_then(|start| {
        let rest = &text[start + 7..];
        rest.find("</").map(|end| rest[..end].trim().chars().take(80).collect::<String>())
    });
    let page = match (lower.trim_start().starts_with('<'), title) {
        (true, Some(title)) if !title.is_empty() => format!("a web page titled {title:?}"),
        (true, _) if lower.contains("<html") => "a web page".to_string(),
        (true, _) => "XML, not JSON".to_string(),
        _ => format!("something that is not Plex's JSON ({parse_error})"),
    };
    let server = match header(reqwest::header::SERVER) {
        s if s.is_empty() => String::new(),
        s => format!(", from a server calling itself {s:?}"),
    };
    let kind = match header(reqwest::header::CONTENT_TYPE) {
        t if t.is_empty() => String::new(),
        t => format!(" ({t})"),
    };
    Error::new(
        ErrorClass::Config,
        format!(
            "{what}: plexUrl answered 200 with {page}{kind}{server}. Something other than Plex answers there — a \
             reverse proxy's or single sign-on login page? Set plexUrl to Plex itself (http://host:32400) or let \
             PlexSync's requests through to Plex"
        ),
    )
}

/// Reads the answer to a change: a connection cut mid-answer is a failure,
/// not a success, and so is a web page (a proxy's login page answers `200`
/// too, and nothing was changed); Plex answers with an empty body or XML.
async fn done(what: &str, response: reqwest::Response) -> Result<(), Error> {
    let headers = response.headers().clone();
    let body = response.bytes().await.map_err(|e| Error::transport(Server::Plex, what, e))?;
    let start = String::from_utf8_lossy(&body[..body.len().min(512)]).to_ascii_lowercase();
    if start.contains("<html") || start.contains("<!doctype html") {
        return Err(not_plex(what, &headers, &body, "a web page"));
    }
    Ok(())
}

/// Items of a listing one by one, leaving out (with a warning) any that
/// does not read as an item.
fn lenient_items<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<PlexItem>, D::Error> {
    let values = Vec::<serde_json::Value>::deserialize(d)?;
    Ok(values
        .into_iter()
        .filter_map(|v| {
            let key = v.get("ratingKey").map(|k| k.to_string()).unwrap_or_default();
            serde_json::from_value(v)
                .map_err(|e| tracing::warn!("Plex item {key} left out: it does not read as an item ({e})"))
                .ok()
        })
        .collect())
}

fn flag<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Bool(b) => b,
        serde_json::Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0),
        serde_json::Value::String(s) => matches!(s.as_str(), "1" | "true"),
        _ => false,
    })
}

fn opt_unsigned<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(opt_number(d)?.and_then(|n| u64::try_from(n).ok()))
}

fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    })
}

fn opt_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    })
}

fn opt_float<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    })
}

impl PlexClient {
    /// `base` is the server URL (`http://host:32400`, any path kept as a prefix).
    pub fn new(base: Url, token: Secret, options: &HttpOptions) -> Result<Self, Error> {
        if !matches!(base.scheme(), "http" | "https") || base.host().is_none() {
            return Err(Error::new(
                ErrorClass::Config,
                format!("plexUrl must be an http(s) URL with a host, got {base}"),
            ));
        }
        let mut base = base;
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        Ok(Self { http: crate::clients::http::client(options)?, base, token, rtt: Default::default() })
    }

    /// Plex's answer times since the limiter last looked.
    pub(crate) fn rtt(&self) -> &crate::clients::http::RttMeter {
        &self.rtt
    }

    /// `path` under the base, with `query` encoded by the URL library.
    /// Always this server: set as a path, `//host/x` or `https://host/x`
    /// stays a path here (a join would follow it elsewhere, token and all).
    fn url(&self, path: &str, query: &[(&str, &str)]) -> Url {
        let mut url = self.base.clone();
        url.set_path(&format!("{}{}", self.base.path(), path.trim_start_matches('/')));
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    fn request(&self, method: reqwest::Method, url: Url) -> reqwest::RequestBuilder {
        self.http
            .request(method, url)
            .header("X-Plex-Token", self.token.expose())
            .header("Accept", "application/json")
            .header("X-Plex-Client-Identifier", "plexsync")
            .header("X-Plex-Product", "PlexSync")
            .header("X-Plex-Version", env!("CARGO_PKG_VERSION"))
    }

    /// Sends, retrying once on a fresh connection when a pooled keep-alive
    /// connection turns out to be stale (Plex closes idle ones).
    async fn send(&self, what: &str, build: impl Fn() -> reqwest::RequestBuilder) -> Result<reqwest::Response, Error> {
        let send = async {
            match build().send().await {
                Err(e) if e.is_request() && !e.is_timeout() && !e.is_connect() => build().send().await,
                other => other,
            }
        };
        let started = std::time::Instant::now();
        let response =
            crate::metrics::timed("plex", send).await.map_err(|e| Error::transport(Server::Plex, what, e))?;
        self.rtt.record(started.elapsed());
        let status = response.status();
        if status.is_success() {
            Ok(response)
        } else {
            Err(Error::status(Server::Plex, what, status.as_u16(), retry_after(response.headers())))
        }
    }

    async fn get_json<T: DeserializeOwned>(
        &self,
        what: &str,
        url: Url,
        headers: &[(&str, String)],
    ) -> Result<T, Error> {
        let response = self
            .send(what, || {
                headers.iter().fold(self.request(reqwest::Method::GET, url.clone()), |r, (k, v)| r.header(*k, v))
            })
            .await?;
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(|e| Error::transport(Server::Plex, what, e))?;
        // A body that arrived whole but is not Plex's JSON is not an outage:
        // something else answers at plexUrl, and retrying cannot help.
        parse_json(&body).map_err(|e| not_plex(what, &headers, &body, &e))
    }

    /// `GET /identity`: the cheap health probe (answers without a token).
    pub(crate) async fn identity(&self) -> Result<Identity, Error> {
        let env: Envelope<Identity> = self.get_json("identity", self.url("identity", &[]), &[]).await?;
        Ok(env.container)
    }

    pub(crate) async fn sections(&self) -> Result<Vec<PlexSection>, Error> {
        let env: Envelope<Container> = self.get_json("list libraries", self.url("library/sections", &[]), &[]).await?;
        Ok(env.container.directory)
    }

    /// One page of a movie section, `start`-based, narrowed by `filter`
    /// (Plex listing filters such as `updatedAt>>`).
    pub(crate) async fn section_page(
        &self,
        section: &str,
        filter: &[(&str, &str)],
        start: usize,
        size: usize,
    ) -> Result<Page, Error> {
        // In order of addition: pages stay put while titles are edited (the
        // default order is by title) and new items come last.
        let mut url = self.url(&format!("library/sections/{section}/all"), &[("type", "1"), ("sort", "addedAt")]);
        url.query_pairs_mut().extend_pairs(filter);
        let headers = [("X-Plex-Container-Start", start.to_string()), ("X-Plex-Container-Size", size.to_string())];
        let env: Envelope<Container> = self.get_json("list library items", url, &headers).await?;
        Ok(page_of(env.container))
    }

    /// Every item of a section matching `filter`, handed to `on_page`
    /// page by page with the total, so a large library is never held whole.
    /// Returns the number of pages read.
    pub(crate) async fn for_each_page(
        &self,
        section: &str,
        filter: &[(&str, &str)],
        on_page: &mut (dyn FnMut(Vec<PlexItem>, usize) + Send),
    ) -> Result<usize, Error> {
        let (mut seen, mut pages) = (0, 0);
        loop {
            let page = self.section_page(section, filter, seen, PAGE_SIZE).await?;
            pages += 1;
            let got = page.items.len();
            seen += got;
            on_page(page.items, page.total);
            if got == 0 || seen >= page.total {
                return Ok(pages);
            }
        }
    }

    /// How many movie items a section holds (a page of none: only the total).
    pub(crate) async fn section_total(&self, section: &str) -> Result<usize, Error> {
        Ok(self.section_page(section, &[], 0, 0).await?.total)
    }

    /// Items of a section Plex added after `since` (Unix seconds), with
    /// Plex's `addedAt>>=` filter.
    pub(crate) async fn section_added_since(&self, section: &str, since: i64) -> Result<Vec<PlexItem>, Error> {
        let mut items = Vec::new();
        self.for_each_page(section, &[("addedAt>>", &since.to_string())], &mut |page, _| items.extend(page)).await?;
        Ok(items)
    }

    /// `GET /library/metadata/{ratingKey}`; `None` when Plex has no such item.
    pub async fn item(&self, rating_key: &str) -> Result<Option<PlexItem>, Error> {
        let url = self.url(&format!("library/metadata/{rating_key}"), &[]);
        match self.get_json::<Envelope<Container>>("read item", url, &[]).await {
            Ok(env) => Ok(with_sections(env.container).next()),
            Err(e) if e.class == ErrorClass::NotInPlex => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The items `rating_keys` in as few `GET /library/metadata/{k1},{k2},…`
    /// as a proxy-safe request line allows; a key Plex no longer has is
    /// simply absent from the answer.
    pub(crate) async fn items(&self, rating_keys: &[String]) -> Result<Vec<PlexItem>, Error> {
        let mut found = Vec::with_capacity(rating_keys.len());
        for chunk in rating_keys.chunks(ITEMS_AT_ONCE) {
            let url = self.url(&format!("library/metadata/{}", chunk.join(",")), &[]);
            match self.get_json::<Envelope<Container>>("read items", url, &[]).await {
                Ok(env) => found.extend(with_sections(env.container)),
                Err(e) if e.class == ErrorClass::NotInPlex => {}
                Err(e) => return Err(e),
            }
        }
        Ok(found)
    }

    async fn put(&self, what: &str, url: Url) -> Result<(), Error> {
        let response = self.send(what, || self.request(reqwest::Method::PUT, url.clone())).await?;
        done(what, response).await
    }

    /// Applies one edit (Plex's query-string edit API) to one item of
    /// `section`. The key is a [`RatingKey`]: the same edit without one
    /// changes every item of the section.
    pub async fn edit(&self, section: &str, rating_key: &RatingKey, params: &[(String, String)]) -> Result<(), Error> {
        self.put("edit item", self.edit_url(section, rating_key, params)).await
    }

    fn edit_url(&self, section: &str, rating_key: &RatingKey, params: &[(String, String)]) -> Url {
        let mut url = self.url(&format!("library/sections/{section}/all"), &[("type", "1"), ("id", &rating_key.0)]);
        url.query_pairs_mut().extend_pairs(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        url
    }

    /// The length of the request line (`PUT /path?query HTTP/1.1`) of an
    /// edit, which reverse proxies limit (nginx: 8 KB).
    pub(crate) fn edit_line_len(&self, section: &str, rating_key: &RatingKey, params: &[(String, String)]) -> usize {
        let url = self.edit_url(section, rating_key, params);
        let query = url.query().map_or(0, |q| q.len() + 1);
        "PUT ".len() + url.path().len() + query + " HTTP/1.1".len()
    }

    /// Uploads `bytes` (of the content type `content_type`) as the item's
    /// poster (`posters`) or background (`arts`).
    pub(crate) async fn upload_image(
        &self,
        rating_key: &str,
        kind: ImageKind,
        bytes: Vec<u8>,
        content_type: &str,
    ) -> Result<(), Error> {
        let url = self.url(&format!("library/metadata/{rating_key}/{}", kind.endpoint()), &[]);
        let what = kind.endpoint();
        let response = self
            .send(what, || {
                let request = self.request(reqwest::Method::POST, url.clone());
                request.header(reqwest::header::CONTENT_TYPE, content_type).body(bytes.clone())
            })
            .await?;
        done(what, response).await
    }

    /// A legacy agent's preferences as Plex keeps them (`GET
    /// /:/plugins/<identifier>/prefs`: id → stored text), or `None` when
    /// Plex has no such agent (Plex removes legacy agents in 2026).
    pub(crate) async fn legacy_agent_prefs(
        &self,
        identifier: &str,
    ) -> Result<Option<std::collections::BTreeMap<String, String>>, Error> {
        #[derive(Deserialize)]
        struct Setting {
            id: String,
            #[serde(default)]
            value: serde_json::Value,
        }
        #[derive(Deserialize)]
        struct Prefs {
            #[serde(rename = "Setting", default)]
            settings: Vec<Setting>,
        }
        let url = self.url(&format!("./:/plugins/{identifier}/prefs"), &[]);
        match self.get_json::<Envelope<Prefs>>("read the legacy agent's preferences", url, &[]).await {
            Ok(env) => Ok(Some(
                env.container
                    .settings
                    .into_iter()
                    .map(|s| {
                        let value = match s.value {
                            serde_json::Value::String(v) => v,
                            serde_json::Value::Null => String::new(),
                            other => other.to_string(),
                        };
                        (s.id, value)
                    })
                    .collect(),
            )),
            Err(e) if e.class == ErrorClass::NotInPlex => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The bytes of an image Plex serves at `path` (an item's `thumb` or
    /// `art`), at most `max_bytes`.
    pub(crate) async fn image(&self, path: &str, max_bytes: usize) -> Result<Vec<u8>, Error> {
        // An image Plex names by a full address is not on this server (an
        // agent's source): the token goes to this server only.
        if path.starts_with("//") || Url::parse(path).is_ok() {
            return Err(Error::new(ErrorClass::BadData, format!("Plex's image {path:?} is not on this server")));
        }
        let url = self.url(path, &[]);
        let response = self.send("read image", || self.request(reqwest::Method::GET, url.clone())).await?;
        let bytes = response.bytes().await.map_err(|e| Error::transport(Server::Plex, "read image", e))?;
        if bytes.len() > max_bytes {
            return Err(Error::new(ErrorClass::BadData, format!("Plex's image at {path} is over {max_bytes} bytes")));
        }
        Ok(bytes.to_vec())
    }

    /// The token's user's rating of an item (`PUT /:/rate`, as Plex Web
    /// and python-plexapi send it): 0–10, or `None` to clear it (`-1`).
    pub(crate) async fn rate(&self, rating_key: &RatingKey, rating: Option<&str>) -> Result<(), Error> {
        // "./" keeps ":/rate" a path, never read as a scheme.
        let url = self.url(
            "./:/rate",
            &[
                ("key", &rating_key.0),
                ("identifier", "com.plexapp.plugins.library"),
                ("rating", rating.unwrap_or("-1")),
            ],
        );
        self.put("rate item", url).await
    }

    /// `PUT /library/metadata/{ratingKey}/refresh`: the agent pulls again.
    pub(crate) async fn refresh(&self, rating_key: &str) -> Result<(), Error> {
        self.put("refresh item", self.url(&format!("library/metadata/{rating_key}/refresh"), &[])).await
    }

    /// Scan of one folder of a section, or of the whole section.
    pub(crate) async fn scan_folder(&self, section: &str, folder: Option<&str>) -> Result<(), Error> {
        let path: Vec<(&str, &str)> = folder.map(|f| ("path", f)).into_iter().collect();
        let url = self.url(&format!("library/sections/{section}/refresh"), &path);
        let response = self.send("scan folder", || self.request(reqwest::Method::GET, url.clone())).await?;
        done("scan folder", response).await
    }
}

/// A Plex ratingKey: an item's integer id, never empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RatingKey(String);

impl RatingKey {
    pub fn parse(key: &str) -> Result<Self, Error> {
        if !key.is_empty() && key.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Self(key.to_string()))
        } else {
            Err(Error::new(ErrorClass::Bug, format!("{key:?} is not a Plex ratingKey; nothing written")))
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ImageKind {
    Poster,
    Background,
}

impl ImageKind {
    fn endpoint(self) -> &'static str {
        match self {
            Self::Poster => "posters",
            Self::Background => "arts",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_goes_to_the_configured_server_under_its_path() {
        let base = Url::parse("https://plex.lan:32400/proxied").unwrap();
        let plex = PlexClient::new(base, Secret::new("t"), &Default::default()).unwrap();
        for (path, expected) in [
            ("/library/metadata/1,2", "https://plex.lan:32400/proxied/library/metadata/1,2"),
            ("./:/rate", "https://plex.lan:32400/proxied/:/rate"),
            ("//evil.example/x", "https://plex.lan:32400/proxied/evil.example/x"),
            ("https://evil.example/x", "https://plex.lan:32400/proxied/https://evil.example/x"),
            ("/library/a b?c#d", "https://plex.lan:32400/proxied/library/a%20b%3Fc%23d"),
        ] {
            let url = plex.url(path, &[("k", "v w")]);
            assert_eq!(url.host_str(), Some("plex.lan"), "{path}");
            assert_eq!(url.as_str(), format!("{expected}?k=v+w"), "{path}");
        }
    }
}
