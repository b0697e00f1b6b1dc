//! Stash GraphQL client: scenes (one, paged, changed since), plugin
//! settings, scene mutations, and image downloads from Stash's own origin.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, FixedOffset, SecondsFormat, Utc};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use url::Url;

use crate::config::HttpOptions;
use crate::error::{Error, ErrorClass, Server};
use crate::ids::SceneId;
use crate::secret::Secret;

/// How we authenticate to Stash.
#[derive(Clone, Debug, Default)]
pub struct StashCredentials {
    pub api_key: Option<Secret>,
    pub session_cookie: Option<Secret>,
}

/// Clones share credentials: a refreshed cookie (Stash answers every
/// authenticated request with one), an adopted API key or a newer cookie a
/// hook brought serve every clone at once.
#[derive(Clone)]
pub struct StashClient {
    http: reqwest::Client,
    endpoint: Url,
    origin: Url,
    credentials: Arc<Mutex<StashCredentials>>,
}

/// What to do when Stash no longer accepts us: plugins get only a session
/// cookie, which expires after Stash's `max_session_age` (1 hour unless
/// changed), and an API key is what outlives it.
pub(crate) const SESSION_EXPIRED_FIX: &str =
    "Stash refused PlexSync's login session (a plugin's session expires after \
Stash's max session age, one hour by default) and Stash has no API key PlexSync could use instead: generate one in \
Stash under Settings → Security → API Key (PlexSync reads it itself), or set stashApiKey for the CLI. Nothing is lost: \
the queue waits, and the next Stash event or task brings a fresh session";

/// Stash's session cookie name (pkg/session).
pub(crate) const SESSION_COOKIE: &str = "session";

/// Every GraphQL document PlexSync sends, in one place so a test can
/// validate each against Stash's real schema.
pub mod queries {
    pub(crate) const API_KEY: &str = "query ApiKey { configuration { general { apiKey } } }";
    pub(crate) const CONFIG_PATH: &str = "query ConfigPath { configuration { general { configFilePath } } }";
    pub(crate) const CONFIG: &str = "query Config($ids: [ID!]) { configuration { plugins(include: $ids) } }";
    pub(crate) const UPDATE: &str = "mutation Update($input: SceneUpdateInput!) { sceneUpdate(input: $input) { id } }";
    pub(crate) const BULK: &str =
        "mutation Bulk($input: BulkSceneUpdateInput!) { bulkSceneUpdate(input: $input) { id } }";
    pub(crate) const CONFIGURE: &str =
        "mutation Configure($id: ID!, $input: Map!) { configurePlugin(plugin_id: $id, input: $input) }";
    pub(crate) const GALLERY_IMAGES: &str = "query GalleryImages($f: FindFilterType, $if: ImageFilterType) { findImages(filter: $f, image_filter: $if) { count images { id paths { image } visual_files { ... on ImageFile { width height } } } } }";
    pub(crate) const ADD_URL: &str =
        "mutation AddUrl($input: BulkSceneUpdateInput!) { bulkSceneUpdate(input: $input) { id updated_at } }";
    pub(crate) const NEWEST: &str =
        "query Newest($f: FindFilterType) { findScenes(filter: $f) { scenes { updated_at } } }";

    pub(crate) fn scene() -> String {
        format!("query Scene($id: ID!) {{ findScene(id: $id) {{ ...SceneData }} }} {}", super::SCENE_FRAGMENT)
    }

    pub(crate) fn scenes_by_id() -> String {
        format!(
            "query Scenes($ids: [ID!], $f: FindFilterType) {{ findScenes(ids: $ids, filter: $f) {{ count scenes {{ ...SceneData }} }} }} {}",
            super::SCENE_FRAGMENT
        )
    }

    pub(crate) fn scenes_page() -> String {
        format!(
            "query Changed($f: FindFilterType, $sf: SceneFilterType) {{ findScenes(filter: $f, scene_filter: $sf) {{ count scenes {{ ...SceneData }} }} }} {}",
            super::SCENE_FRAGMENT
        )
    }

    /// A `findScenes` listing of `fields` per scene.
    pub(crate) fn rows(fields: &str) -> String {
        format!(
            "query Rows($f: FindFilterType, $sf: SceneFilterType) {{ findScenes(filter: $f, scene_filter: $sf) {{ count scenes {{ {fields} }} }} }}"
        )
    }

    /// Row listings PlexSync uses (see `StashClient`).
    pub(crate) const ROW_FIELDS: [&str; 5] = [
        "id",
        "files { path basename size duration }",
        "id updated_at",
        "id files { path basename size duration }",
        "id title date organized updated_at files { path basename size duration }",
    ];

    /// Performers, studios and tags changed since a time (their own
    /// `updated_at`; a rename moves no scene's).
    pub(crate) const OBJECTS_CHANGED: &str = "query ObjectsChanged($f: FindFilterType, $pf: PerformerFilterType, $sf: StudioFilterType, $tf: TagFilterType) {
  findPerformers(filter: $f, performer_filter: $pf) { performers { id updated_at } }
  findStudios(filter: $f, studio_filter: $sf) { studios { id updated_at } }
  findTags(filter: $f, tag_filter: $tf) { tags { id updated_at } }
}";

    /// Every document, named, for the schema test.
    pub fn all() -> Vec<(&'static str, String)> {
        let mut docs = vec![
            ("ApiKey", API_KEY.to_string()),
            ("ConfigPath", CONFIG_PATH.to_string()),
            ("Config", CONFIG.to_string()),
            ("Update", UPDATE.to_string()),
            ("Bulk", BULK.to_string()),
            ("AddUrl", ADD_URL.to_string()),
            ("Configure", CONFIGURE.to_string()),
            ("GalleryImages", GALLERY_IMAGES.to_string()),
            ("Newest", NEWEST.to_string()),
            ("Scene", scene()),
            ("Changed", scenes_page()),
            ("ObjectsChanged", OBJECTS_CHANGED.to_string()),
        ];
        docs.extend(ROW_FIELDS.iter().map(|f| ("Rows", rows(f))));
        docs
    }
}

/// Stash (gqlgen) answers 422 to a document its schema refuses: a Stash
/// whose schema changed under us. Retrying cannot help; say what it said.
async fn refused_document(what: &str, response: reqwest::Response) -> Error {
    let said = response
        .json::<GraphQlResponse<Value>>()
        .await
        .ok()
        .and_then(|b| b.errors.into_iter().next())
        .map_or_else(|| "no reason given".to_string(), |e| e.message);
    Error::new(
        ErrorClass::Bug,
        format!("{what}: Stash refused PlexSync's query ({said}); this Stash version's API differs from the one PlexSync knows, please report it"),
    )
}

/// The fields of a scene PlexSync reads (Stash's GraphQL `Scene` type, `third_party/stash-schema`).
pub(crate) const SCENE_FRAGMENT: &str = "fragment SceneData on Scene {
  id title code details director urls date rating100 organized created_at updated_at
  files { path basename size duration fingerprints { type value } }
  paths { screenshot }
  studio { id name parent_studio { id name } }
  performers { id name disambiguation image_path tags { id name } }
  tags { id name }
  groups { group { id name } }
  galleries { id }
  stash_ids { endpoint stash_id }
}";

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct SceneFile {
    pub path: String,
    pub basename: String,
    pub size: u64,
    pub duration: f64,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct Named {
    pub id: String,
    pub name: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct ParentStudio {
    pub id: String,
    pub name: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct Studio {
    pub id: String,
    pub name: String,
    pub parent_studio: Option<ParentStudio>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct Performer {
    pub id: String,
    pub name: String,
    pub disambiguation: Option<String>,
    pub image_path: Option<String>,
    pub tags: Vec<Named>,
}

/// A group (Stash's former "movie") the scene belongs to.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct SceneGroup {
    pub group: Named,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct StashIdRef {
    pub endpoint: String,
    pub stash_id: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct ScenePaths {
    pub screenshot: Option<String>,
}

/// A scene as read at delivery time.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct Scene {
    pub id: String,
    pub title: Option<String>,
    pub code: Option<String>,
    pub details: Option<String>,
    pub director: Option<String>,
    pub urls: Vec<String>,
    pub date: Option<String>,
    pub rating100: Option<i64>,
    pub organized: bool,
    pub created_at: String,
    pub updated_at: String,
    pub files: Vec<SceneFile>,
    pub paths: ScenePaths,
    pub studio: Option<Studio>,
    pub performers: Vec<Performer>,
    pub tags: Vec<Named>,
    pub groups: Vec<SceneGroup>,
    pub galleries: Vec<GalleryRef>,
    pub stash_ids: Vec<StashIdRef>,
}

/// A gallery attached to a scene.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct GalleryRef {
    pub id: String,
}

/// An image of a scene's galleries: its id, where Stash serves it, and
/// its size (for portrait or landscape).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct GalleryImage {
    pub id: String,
    pub paths: GalleryImagePaths,
    pub visual_files: Vec<VisualFile>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct GalleryImagePaths {
    pub image: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct VisualFile {
    pub width: u32,
    pub height: u32,
}

impl GalleryImage {
    /// Taller than wide (its first file's size).
    pub(crate) fn portrait(&self) -> bool {
        self.visual_files.first().is_some_and(|f| f.height > f.width)
    }
}

#[derive(Deserialize)]
struct GraphQlResponse<T> {
    data: Option<T>,
    #[serde(default)]
    errors: Vec<GraphQlError>,
}

#[derive(Deserialize)]
struct GraphQlError {
    message: String,
}

/// One page of `findScenes`.
#[derive(Debug, Default, Deserialize)]
pub struct ScenePage {
    pub count: usize,
    pub scenes: Vec<Scene>,
}

/// `findScenes { count scenes { … } }` with rows of type `T`.
#[derive(Deserialize)]
struct Rows<T> {
    #[serde(rename = "findScenes")]
    page: RowPage<T>,
}

#[derive(Deserialize)]
struct RowPage<T> {
    count: usize,
    scenes: Vec<T>,
}

impl StashClient {
    /// `base` is Stash's URL (`http://localhost:9999`); GraphQL lives at `/graphql`.
    pub fn new(base: &Url, credentials: StashCredentials, options: &HttpOptions) -> Result<Self, Error> {
        if !matches!(base.scheme(), "http" | "https") || base.host().is_none() {
            return Err(Error::new(ErrorClass::Config, format!("Stash URL must be http(s) with a host, got {base}")));
        }
        let origin = base.join("/").expect("root joins");
        let endpoint = origin.join("graphql").expect("relative path joins");
        Ok(Self {
            http: crate::clients::http::client(options)?,
            endpoint,
            origin,
            credentials: Arc::new(Mutex::new(credentials)),
        })
    }

    fn creds(&self) -> std::sync::MutexGuard<'_, StashCredentials> {
        self.credentials.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The API key, when Stash has one, authenticates; the cookie also
    /// carries Stash's list of visited plugin hooks, so both are sent.
    fn authed(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        let creds = self.creds().clone();
        let mut b = builder;
        if let Some(key) = &creds.api_key {
            b = b.header("ApiKey", key.expose());
        }
        if let Some(cookie) = &creds.session_cookie {
            b = b.header(reqwest::header::COOKIE, format!("{SESSION_COOKIE}={}", cookie.expose()));
        }
        b
    }

    /// Keeps the cookie Stash refreshed in its answer.
    fn follow_set_cookie(&self, response: &reqwest::Response) {
        let fresh = response
            .headers()
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.split(';').next()?.trim().split_once('='))
            .find(|(name, value)| *name == SESSION_COOKIE && !value.is_empty())
            .map(|(_, value)| Secret::new(value));
        if let Some(cookie) = fresh {
            let mut creds = self.creds();
            if creds.session_cookie.is_some() {
                creds.session_cookie = Some(cookie);
            }
        }
    }

    /// The session cookie in use now (the newest Stash handed us).
    pub(crate) fn session_cookie(&self) -> Option<Secret> {
        self.creds().session_cookie.clone()
    }

    /// Uses `cookie` from now on, e.g. a newer one a hook brought.
    pub(crate) fn set_session_cookie(&self, cookie: Secret) {
        self.creds().session_cookie = Some(cookie);
    }

    pub(crate) fn has_api_key(&self) -> bool {
        self.creds().api_key.is_some()
    }

    /// While the session is valid, reads Stash's API key
    /// (`configuration.general.apiKey`) and uses it from then on, so
    /// delivery goes on after the session expires. Returns whether a key
    /// is in use; a Stash without one (or without a login) answers empty.
    pub(crate) async fn adopt_api_key(&self) -> Result<bool, Error> {
        if self.has_api_key() || self.session_cookie().is_none() {
            return Ok(self.has_api_key());
        }
        #[derive(Deserialize)]
        struct General {
            #[serde(rename = "apiKey", default)]
            api_key: String,
        }
        #[derive(Deserialize)]
        struct Config {
            general: General,
        }
        #[derive(Deserialize)]
        struct Data {
            configuration: Config,
        }
        let data: Data = self.query("read the API key", queries::API_KEY, json!({})).await?;
        if data.configuration.general.api_key.is_empty() {
            return Ok(false);
        }
        self.creds().api_key = Some(Secret::new(&data.configuration.general.api_key));
        Ok(true)
    }

    /// Stash's config folder as Stash sees it (the folder of
    /// `configFilePath`, which is where the plugin keeps its data).
    pub(crate) async fn config_folder(&self) -> Result<Option<std::path::PathBuf>, Error> {
        let data: Value = self.query("read Stash's config path", queries::CONFIG_PATH, json!({})).await?;
        let path = data["configuration"]["general"]["configFilePath"].as_str().unwrap_or("");
        Ok(std::path::Path::new(path).parent().filter(|p| !p.as_os_str().is_empty()).map(|p| p.to_path_buf()))
    }

    /// Runs a GraphQL operation; GraphQL errors are `StashUnavailable`
    /// (retried) unless they say a scene is missing.
    pub async fn query<T: DeserializeOwned>(&self, what: &str, query: &str, variables: Value) -> Result<T, Error> {
        let request = self.authed(self.http.post(self.endpoint.clone())).json(&json!({
            "query": query,
            "variables": variables,
        }));
        let sent = crate::metrics::timed("stash", request.send()).await;
        let response = sent.map_err(|e| Error::transport(Server::Stash, what, e))?;
        self.follow_set_cookie(&response);
        let status = response.status();
        if status.as_u16() == 401 && !self.has_api_key() && self.session_cookie().is_some() {
            return Err(Error::new(ErrorClass::Auth, format!("{what}: {SESSION_EXPIRED_FIX}")));
        }
        if status.as_u16() == 422 {
            return Err(refused_document(what, response).await);
        }
        if !status.is_success() {
            return Err(Error::status(Server::Stash, what, status.as_u16(), None));
        }
        let body: GraphQlResponse<T> = response
            .json()
            .await
            .map_err(|e| Error::new(ErrorClass::StashUnavailable, format!("{what}: unreadable Stash answer ({e})")))?;
        if let Some(err) = body.errors.first() {
            return Err(Error::new(ErrorClass::StashUnavailable, format!("{what}: Stash said: {}", err.message)));
        }
        body.data.ok_or_else(|| Error::new(ErrorClass::StashUnavailable, format!("{what}: Stash sent no data")))
    }

    /// The scene, or `None` when it no longer exists.
    pub(crate) async fn find_scene(&self, id: &str) -> Result<Option<Scene>, Error> {
        #[derive(Deserialize)]
        struct Data {
            #[serde(rename = "findScene")]
            scene: Option<Scene>,
        }
        let data: Data = self.query("read scene", &queries::scene(), json!({"id": id})).await?;
        Ok(data.scene)
    }

    /// The scenes `ids` that exist, in one request (a worker's claimed
    /// batch: Stash pays one query for it, not one per scene).
    pub(crate) async fn find_scenes(&self, ids: &[&str]) -> Result<Vec<Scene>, Error> {
        #[derive(Deserialize)]
        struct Data {
            #[serde(rename = "findScenes")]
            page: ScenePage,
        }
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let vars = json!({"ids": ids, "f": {"per_page": -1}});
        let data: Data = self.query("read scenes", &queries::scenes_by_id(), vars).await?;
        Ok(data.page.scenes)
    }

    /// One page (1-based) of scenes sorted by `updated_at`; with `since`, a
    /// superset of those updated after it (Stash compares times as text, so
    /// the caller checks each scene's `updated_at` itself, see
    /// [`updated_after`]).
    pub async fn scenes_page(
        &self,
        page: usize,
        per_page: usize,
        since: Option<DateTime<Utc>>,
    ) -> Result<ScenePage, Error> {
        let filter = since.map(|t| updated_since(&superset_cursor(t)));
        #[derive(Deserialize)]
        struct Data {
            #[serde(rename = "findScenes")]
            page: ScenePage,
        }
        let vars = page_vars(page, per_page, filter.as_ref());
        let data: Data = self.query("list scenes", &queries::scenes_page(), vars).await?;
        Ok(data.page)
    }

    /// Every row of a `findScenes` query (`$f`, `$sf` variables) whose scene
    /// fields are `fields`, oldest update first, page by page; `filter` is
    /// the `SceneFilterType`.
    async fn all_rows<T: DeserializeOwned + Send>(
        &self,
        what: &str,
        fields: &str,
        filter: Option<Value>,
        progress: &mut (dyn FnMut(usize, usize) + Send),
    ) -> Result<Vec<T>, Error> {
        let mut rows = Vec::new();
        self.each_page(what, fields, filter, |page, taken, total| {
            rows.extend(page);
            progress(taken, total);
            Ok(())
        })
        .await?;
        Ok(rows)
    }

    /// Hands the rows of a paged scene query to `on_page` a page at a time,
    /// with the rows taken so far and the total, so a caller need not hold
    /// a whole library.
    async fn each_page<T: DeserializeOwned>(
        &self,
        what: &str,
        fields: &str,
        filter: Option<Value>,
        mut on_page: impl FnMut(Vec<T>, usize, usize) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let q = queries::rows(fields);
        let mut taken = 0;
        for page in 1.. {
            let data: Rows<T> = self.query(what, &q, page_vars(page, 1000, filter.as_ref())).await?;
            let got = data.page.scenes.len();
            taken += got;
            on_page(data.page.scenes, taken, data.page.count)?;
            if got == 0 || taken >= data.page.count {
                break;
            }
        }
        Ok(())
    }

    /// Hands the ids of every scene to `page` a page at a time, with
    /// progress: a million ids are never held at once.
    pub(crate) async fn each_scene_id_page(
        &self,
        progress: &mut (dyn FnMut(usize, usize) + Send),
        mut page: impl FnMut(Vec<SceneId>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        #[derive(Deserialize)]
        struct Row {
            id: String,
        }
        self.each_page("list scene ids", queries::ROW_FIELDS[0], None, |rows: Vec<Row>, taken, total| {
            page(scene_ids(rows.into_iter().map(|r| r.id)))?;
            progress(taken, total);
            Ok(())
        })
        .await
    }

    /// Ids of every scene (updated after `since`, when given), paged.
    pub(crate) async fn scene_ids(
        &self,
        since: Option<DateTime<Utc>>,
        mut progress: impl FnMut(usize, usize) + Send,
    ) -> Result<Vec<SceneId>, Error> {
        let Some(since) = since else {
            return self.ids_where("list scene ids", None, &mut progress).await;
        };
        let rows = self.changed_since(&superset_cursor(since)).await?;
        Ok(scene_ids(rows.into_iter().filter(|(_, at)| updated_after(at, since)).map(|(id, _)| id)))
    }

    /// Ids of every scene that shows `object` (a performer, a studio or one
    /// of its children, a tag), paged.
    pub(crate) async fn scenes_showing(&self, object: &Related) -> Result<Vec<SceneId>, Error> {
        let (key, depth) = match object.kind {
            RelatedKind::Performer => ("performers", None),
            RelatedKind::Studio => ("studios", Some(-1)),
            RelatedKind::Tag => ("tags", Some(0)),
        };
        let mut criterion = json!({"value": [object.id], "modifier": "INCLUDES"});
        if let Some(depth) = depth {
            criterion["depth"] = json!(depth);
        }
        let filter = json!({ key: criterion });
        let what = format!("list scenes showing {} {}", object.kind.name(), object.id);
        self.ids_where(&what, Some(filter), &mut |_, _| {}).await
    }

    /// Ids of the scenes `filter` (a `SceneFilterType`) selects, paged.
    async fn ids_where(
        &self,
        what: &str,
        filter: Option<Value>,
        progress: &mut (dyn FnMut(usize, usize) + Send),
    ) -> Result<Vec<SceneId>, Error> {
        #[derive(Deserialize)]
        struct Row {
            id: String,
        }
        let rows: Vec<Row> = self.all_rows(what, queries::ROW_FIELDS[0], filter, progress).await?;
        Ok(scene_ids(rows.into_iter().map(|r| r.id)))
    }

    /// Hands every file of every scene to `file` (path, size), a page
    /// at a time.
    pub(crate) async fn each_file(
        &self,
        file: &mut (dyn FnMut(&str, u64) -> Result<(), Error> + Send),
    ) -> Result<(), Error> {
        #[derive(Deserialize)]
        struct Row {
            files: Vec<SceneFile>,
        }
        self.each_page("list scene files", queries::ROW_FIELDS[1], None, |rows: Vec<Row>, _, _| {
            rows.iter().flat_map(|r| &r.files).try_for_each(|f| file(&f.path, f.size))
        })
        .await
    }

    /// Scenes with a file whose path contains the file name `name` (a
    /// phrase: Stash would split unquoted words), with their files.
    pub(crate) async fn scenes_with_file_named(&self, name: &str) -> Result<Vec<(String, Vec<SceneFile>)>, Error> {
        #[derive(Deserialize)]
        struct Row {
            id: String,
            files: Vec<SceneFile>,
        }
        let filter = json!({"path": {"value": format!("\"{name}\""), "modifier": "INCLUDES"}});
        let what = "list scenes by file name";
        let rows: Vec<Row> = self.all_rows(what, queries::ROW_FIELDS[3], Some(filter), &mut |_, _| {}).await?;
        Ok(rows.into_iter().map(|r| (r.id, r.files)).collect())
    }

    /// Every scene's id, title, date, `updated_at` and files (of those whose
    /// stored `updated_at` text is after `since`, when given), paged: what
    /// the metadata provider's index of Stash's files holds.
    pub(crate) async fn file_rows(
        &self,
        since: Option<&str>,
        progress: &mut (dyn FnMut(usize, usize) + Send),
    ) -> Result<Vec<FileRow>, Error> {
        let what = "list scenes and their files";
        self.all_rows(what, queries::ROW_FIELDS[4], since.map(updated_since), progress).await
    }

    /// (id, updated_at) of scenes whose stored `updated_at` text is greater
    /// than the text `since`, in Stash's text order.
    pub(crate) async fn changed_since(&self, since: &str) -> Result<Vec<(String, String)>, Error> {
        #[derive(Deserialize)]
        struct Row {
            id: String,
            updated_at: String,
        }
        let rows: Vec<Row> = self
            .all_rows("find changed scenes", queries::ROW_FIELDS[2], Some(updated_since(since)), &mut |_, _| {})
            .await?;
        Ok(rows.into_iter().map(|r| (r.id, r.updated_at)).collect())
    }

    /// How many scenes' stored `updated_at` text is greater than `since`,
    /// and the greatest such text: one row, so a look at an unchanged
    /// library costs one small answer whatever the size of its window.
    pub(crate) async fn probe_since(&self, since: &str) -> Result<(usize, Option<String>), Error> {
        #[derive(Deserialize)]
        struct Row {
            updated_at: String,
        }
        let vars = json!({"f": {"page": 1, "per_page": 1, "sort": "updated_at", "direction": "DESC"}, "sf": updated_since(since)});
        let data: Rows<Row> = self.query("count changed scenes", &queries::rows(queries::ROW_FIELDS[2]), vars).await?;
        Ok((data.page.count, data.page.scenes.into_iter().next().map(|r| r.updated_at)))
    }

    /// Performers, studios and tags whose stored `updated_at` text is after
    /// `since`: (kind, id, updated_at). Few rows (edits of objects are
    /// rare), so one unpaged request.
    pub(crate) async fn objects_changed_since(&self, since: &str) -> Result<Vec<(RelatedKind, String, String)>, Error> {
        #[derive(Deserialize)]
        struct Row {
            id: String,
            updated_at: String,
        }
        #[derive(Deserialize)]
        struct Performers {
            performers: Vec<Row>,
        }
        #[derive(Deserialize)]
        struct Studios {
            studios: Vec<Row>,
        }
        #[derive(Deserialize)]
        struct Tags {
            tags: Vec<Row>,
        }
        #[derive(Deserialize)]
        struct Data {
            #[serde(rename = "findPerformers")]
            performers: Performers,
            #[serde(rename = "findStudios")]
            studios: Studios,
            #[serde(rename = "findTags")]
            tags: Tags,
        }
        let since = updated_since(since);
        let vars = json!({"f": {"per_page": -1, "sort": "updated_at", "direction": "ASC"}, "pf": since, "sf": since, "tf": since});
        let data: Data =
            self.query("find changed performers, studios and tags", queries::OBJECTS_CHANGED, vars).await?;
        let tagged = |kind: RelatedKind, rows: Vec<Row>| rows.into_iter().map(move |r| (kind, r.id, r.updated_at));
        Ok(tagged(RelatedKind::Performer, data.performers.performers)
            .chain(tagged(RelatedKind::Studio, data.studios.studios))
            .chain(tagged(RelatedKind::Tag, data.tags.tags))
            .collect())
    }

    /// The latest `updated_at` of any scene (Stash's clock, not ours).
    pub(crate) async fn newest_update(&self) -> Result<Option<String>, Error> {
        #[derive(Deserialize)]
        struct Row {
            updated_at: String,
        }
        #[derive(Deserialize)]
        struct Page {
            scenes: Vec<Row>,
        }
        #[derive(Deserialize)]
        struct Data {
            #[serde(rename = "findScenes")]
            page: Page,
        }
        let vars = json!({"f": {"per_page": 1, "sort": "updated_at", "direction": "DESC"}});
        let data: Data = self.query("find newest change", queries::NEWEST, vars).await?;
        Ok(data.page.scenes.into_iter().next().map(|r| r.updated_at))
    }

    /// `configuration.plugins[plugin_id]`: the plugin's settings in Stash.
    pub(crate) async fn plugin_settings(&self, plugin_id: &str) -> Result<Map<String, Value>, Error> {
        #[derive(Deserialize)]
        struct Config {
            plugins: Map<String, Value>,
        }
        #[derive(Deserialize)]
        struct Data {
            configuration: Config,
        }
        let data: Data = self.query("read plugin settings", queries::CONFIG, json!({"ids": [plugin_id]})).await?;
        Ok(data.configuration.plugins.get(plugin_id).and_then(Value::as_object).cloned().unwrap_or_default())
    }

    /// The first `max` images of the galleries `ids`, in one request, and
    /// how many they hold in all.
    pub(crate) async fn gallery_images(&self, ids: &[String], max: usize) -> Result<(Vec<GalleryImage>, usize), Error> {
        #[derive(Deserialize)]
        struct Page {
            count: usize,
            images: Vec<GalleryImage>,
        }
        #[derive(Deserialize)]
        struct Data {
            #[serde(rename = "findImages")]
            page: Page,
        }
        let vars =
            json!({"f": {"page": 1, "per_page": max}, "if": {"galleries": {"value": ids, "modifier": "INCLUDES"}}});
        let data: Data = self.query("list gallery images", queries::GALLERY_IMAGES, vars).await?;
        Ok((data.page.images, data.page.count))
    }

    /// Replaces the plugin's settings in Stash with `settings` (Stash's
    /// `configurePlugin` sets the whole map: pass every setting to keep).
    pub(crate) async fn configure_plugin(&self, plugin_id: &str, settings: &Map<String, Value>) -> Result<(), Error> {
        let vars = json!({"id": plugin_id, "input": settings});
        let _: Value = self.query("write plugin settings", queries::CONFIGURE, vars).await?;
        Ok(())
    }

    /// `sceneUpdate` with the given input fields (plus `id`).
    pub(crate) async fn update_scene(&self, id: &str, fields: Map<String, Value>) -> Result<(), Error> {
        let mut input = fields;
        input.insert("id".into(), Value::String(id.to_string()));
        let _: Value = self.query("update scene", queries::UPDATE, json!({"input": input})).await?;
        Ok(())
    }

    /// Adds tags to a scene without touching its other tags (`bulkSceneUpdate`
    /// in `ADD` mode, as the old plugin did).
    pub(crate) async fn add_tags(&self, id: &str, tag_ids: &[String]) -> Result<(), Error> {
        let input = json!({"ids": [id], "tag_ids": {"ids": tag_ids, "mode": "ADD"}});
        let _: Value = self.query("add tags", queries::BULK, json!({"input": input})).await?;
        Ok(())
    }

    /// Adds `url` to a scene's URLs without touching the others
    /// (`bulkSceneUpdate` in `ADD` mode, as StashPlexAgent did); returns
    /// the scene's new `updated_at`.
    pub(crate) async fn add_url(&self, id: &str, url: &str) -> Result<String, Error> {
        #[derive(Deserialize)]
        struct Row {
            updated_at: String,
        }
        #[derive(Deserialize)]
        struct Data {
            #[serde(rename = "bulkSceneUpdate")]
            scenes: Option<Vec<Row>>,
        }
        let input = json!({"ids": [id], "urls": {"values": [url], "mode": "ADD"}});
        let data: Data = self.query("add the Plex URL", queries::ADD_URL, json!({"input": input})).await?;
        Ok(data.scenes.unwrap_or_default().into_iter().next().map(|r| r.updated_at).unwrap_or_default())
    }

    /// `url`'s path and query on Stash's own origin. Set, not joined: a
    /// path such as `//host/x` must not name another host.
    fn image_url(&self, url: &str) -> Result<Url, Error> {
        let given = Url::parse(url).map_err(|e| Error::new(ErrorClass::BadData, format!("image URL {url:?}: {e}")))?;
        let mut url = self.origin.clone();
        url.set_path(given.path());
        url.set_query(given.query());
        Ok(url)
    }

    /// Downloads an image from Stash, at most `max_bytes`, images only.
    /// Only the URL's path and query are used, on the configured Stash
    /// origin: Stash may name itself by another host (an external URL, a
    /// proxy), and our credentials must never go anywhere but Stash.
    /// Fetches an image from Stash; with the `ETag` of the copy we have, a
    /// `304` answers that it is unchanged without sending it again.
    pub async fn image(&self, url: &str, max_bytes: usize, etag: Option<&str>) -> Result<Image, Error> {
        let url = self.image_url(url)?;
        let mut request = self.authed(self.http.get(url));
        if let Some(etag) = etag {
            request = request.header(reqwest::header::IF_NONE_MATCH, etag);
        }
        let sent = crate::metrics::timed("stash", request.send()).await;
        let response = sent.map_err(|e| Error::transport(Server::Stash, "fetch image", e))?;
        self.follow_set_cookie(&response);
        if response.status() == reqwest::StatusCode::NOT_MODIFIED {
            return Ok(Image::NotModified);
        }
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            // The image went (a performer's photo removed, a gallery image
            // deleted): bad data for this value, not a wrong address.
            return Err(Error::new(ErrorClass::BadData, "fetch image: Stash has no such image (404)"));
        }
        if !response.status().is_success() {
            return Err(Error::status(Server::Stash, "fetch image", response.status().as_u16(), None));
        }
        let header = |name| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let content_type = header(reqwest::header::CONTENT_TYPE).unwrap_or_default();
        let etag = header(reqwest::header::ETAG);
        if content_type.starts_with("image/svg") {
            // Stash's stand-in for a scene without a cover (scene.svg).
            return Ok(Image::Placeholder);
        }
        if !content_type.starts_with("image/") {
            return Err(Error::new(ErrorClass::BadData, format!("image is {content_type:?}, not an image")));
        }
        if response.content_length().is_some_and(|l| usize::try_from(l).map_or(true, |l| l > max_bytes)) {
            return Err(Error::new(ErrorClass::BadData, format!("image larger than {max_bytes} bytes")));
        }
        let bytes = response.bytes().await.map_err(|e| Error::transport(Server::Stash, "fetch image", e))?;
        if bytes.len() > max_bytes {
            return Err(Error::new(ErrorClass::BadData, format!("image larger than {max_bytes} bytes")));
        }
        Ok(Image::Fetched { bytes: bytes.to_vec(), etag })
    }
}

/// A scene as the metadata provider's index of Stash's files reads it.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct FileRow {
    pub id: String,
    pub title: Option<String>,
    pub date: Option<String>,
    pub organized: bool,
    pub updated_at: String,
    pub files: Vec<SceneFile>,
}

/// What a (conditional) image request found.
#[derive(Clone, Debug, PartialEq)]
pub enum Image {
    /// `304 Not Modified`: the image the `ETag` names.
    NotModified,
    /// Stash's stand-in SVG: the scene has no cover yet (a scan's cover is
    /// generated later), so there is nothing to copy.
    Placeholder,
    Fetched {
        bytes: Vec<u8>,
        etag: Option<String>,
    },
}

/// The most western UTC offset in use (Baker Island, UTC−12).
const WESTMOST: i32 = -12 * 3600;

/// `t` as Go's `time.RFC3339` writes it in `offset` (`Z` at zero).
pub(crate) fn format_in(t: DateTime<Utc>, offset: FixedOffset) -> String {
    t.with_timezone(&offset).to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A cursor that compares, as text, below every stored time later than
/// `t`, whatever offset the server wrote it in.
pub(crate) fn superset_cursor(t: DateTime<Utc>) -> String {
    format_in(t, FixedOffset::east_opt(WESTMOST).expect("valid offset"))
}

/// Whether a time Stash returned is later than `since` (compared as
/// instants, whatever offset each carries).
pub(crate) fn updated_after(updated_at: &str, since: DateTime<Utc>) -> bool {
    DateTime::parse_from_rfc3339(updated_at).is_ok_and(|t| t > since)
}

fn page_vars(page: usize, per_page: usize, filter: Option<&Value>) -> Value {
    let mut vars = json!({"f": {"page": page, "per_page": per_page, "sort": "updated_at", "direction": "ASC"}});
    if let Some(filter) = filter {
        vars["sf"] = filter.clone();
    }
    vars
}

/// Scenes whose stored `updated_at` text is after `cursor`.
fn updated_since(cursor: &str) -> Value {
    json!({"updated_at": {"value": cursor, "modifier": "GREATER_THAN"}})
}

/// What a performer, studio or tag hook names: an object whose change
/// shows on every scene that has it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Related {
    pub kind: RelatedKind,
    pub id: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum RelatedKind {
    Performer,
    Studio,
    Tag,
}

impl RelatedKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Performer => "performer",
            Self::Studio => "studio",
            Self::Tag => "tag",
        }
    }
}

/// Scene ids as Stash listed them; one that is no id is left out, said once.
fn scene_ids(ids: impl Iterator<Item = String>) -> Vec<SceneId> {
    let mut bad = 0usize;
    let parsed = ids
        .filter_map(|id| {
            let parsed = SceneId::parse(&id);
            bad += usize::from(parsed.is_none());
            parsed
        })
        .collect();
    if bad > 0 {
        tracing::warn!("Stash listed {bad} scene ids that are not ids (digits); they are left out");
    }
    parsed
}

#[cfg(test)]
mod time_text_tests {
    use super::*;

    #[test]
    fn the_superset_cursor_is_below_every_later_time_in_any_offset_as_text() {
        let t = Utc::now();
        let cursor = superset_cursor(t);
        for offset_h in -12..=14 {
            let later = t + chrono::Duration::seconds(1);
            let text = format_in(later, FixedOffset::east_opt(offset_h * 3600).unwrap());
            assert!(text.as_str() > cursor.as_str(), "{text} vs {cursor}");
        }
    }

    #[test]
    fn cursors_look_like_stash_times() {
        let t = DateTime::parse_from_rfc3339("2026-11-24T10:00:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(format_in(t, FixedOffset::east_opt(0).unwrap()), "2026-11-24T10:00:00Z");
        assert_eq!(format_in(t, FixedOffset::east_opt(-5 * 3600).unwrap()), "2026-11-24T05:00:00-05:00");
        assert_eq!(superset_cursor(t), "2026-11-23T22:00:00-12:00");
    }
}

#[cfg(test)]
mod image_url_tests {
    use super::*;

    #[test]
    fn an_image_is_fetched_from_stashs_own_origin_whatever_its_url_names() {
        let base = Url::parse("http://stash.lan:9999/").unwrap();
        let stash = StashClient::new(&base, StashCredentials::default(), &Default::default()).unwrap();
        for (given, expected) in [
            ("http://stash.example:443/scene/7/screenshot?t=1", "http://stash.lan:9999/scene/7/screenshot?t=1"),
            ("http://stash.lan:9999//evil.example/x.jpg", "http://stash.lan:9999//evil.example/x.jpg"),
            ("http://stash.lan:9999/a/../../performer/3/image", "http://stash.lan:9999/performer/3/image"),
        ] {
            let url = stash.image_url(given).unwrap();
            assert_eq!(url.as_str(), expected);
            assert_eq!(url.host_str(), Some("stash.lan"), "{given}");
        }
        assert_eq!(stash.image_url("/scene/7/screenshot").unwrap_err().class, ErrorClass::BadData);
    }
}
