//! The part of Stash's GraphQL schema PlexSync and common plugin clients
//! use, with Stash's names (snake_case fields, `Time`/`Int64`/`Map` scalars).
//! A real GraphQL engine validates queries, so a malformed query fails here
//! as it would on Stash.

use std::ops::Bound;
use std::sync::Arc;

use async_graphql::{
    Context, EmptySubscription, Enum, InputObject, MaybeUndefined, Object, Result, Scalar, ScalarType, Schema,
    SimpleObject, Value as GqlValue, ID,
};
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::state::{MutationRecord, ObjectKind, StashPerformer, StashScene, StashState, StashTag, Zone};
use super::{fire_hooks, RequestAuth, Shared};
use crate::table::{Listing, Order, Row, Table};

pub type StashSchema = Schema<QueryRoot, MutationRoot, EmptySubscription>;

pub(crate) fn build(shared: Arc<Shared>) -> StashSchema {
    Schema::build(QueryRoot, MutationRoot, EmptySubscription).data(shared).finish()
}

/// The emulator's schema as SDL, to compare with Stash's.
pub fn sdl() -> String {
    Schema::build(QueryRoot, MutationRoot, EmptySubscription).finish().sdl()
}

// ---- scalars ----

/// Stash's `Time` scalar: answered as the stored RFC 3339 text, which
/// carries the server's offset at the time of the write.
pub struct Time(pub String);

#[Scalar(name = "Time")]
impl ScalarType for Time {
    fn parse(value: GqlValue) -> async_graphql::InputValueResult<Self> {
        match &value {
            GqlValue::String(s) if DateTime::parse_from_rfc3339(s).is_ok() => Ok(Time(s.clone())),
            GqlValue::String(_) => Err("invalid time".into()),
            _ => Err(async_graphql::InputValueError::expected_type(value)),
        }
    }
    fn to_value(&self) -> GqlValue {
        GqlValue::String(self.0.clone())
    }
}

/// Stash's `Int64` scalar (file sizes).
pub struct Int64(pub i64);

#[Scalar(name = "Int64")]
impl ScalarType for Int64 {
    fn parse(value: GqlValue) -> async_graphql::InputValueResult<Self> {
        match &value {
            GqlValue::Number(n) => Ok(Int64(n.as_i64().ok_or("not an integer")?)),
            _ => Err(async_graphql::InputValueError::expected_type(value)),
        }
    }
    fn to_value(&self) -> GqlValue {
        GqlValue::from(self.0)
    }
}

/// Stash's `PluginConfigMap` scalar: plugin id → settings object.
pub struct PluginConfigMap(pub Value);

#[Scalar(name = "PluginConfigMap")]
impl ScalarType for PluginConfigMap {
    fn parse(value: GqlValue) -> async_graphql::InputValueResult<Self> {
        Ok(PluginConfigMap(value.into_json()?))
    }
    fn to_value(&self) -> GqlValue {
        GqlValue::from_json(self.0.clone()).unwrap_or(GqlValue::Null)
    }
}

/// Stash's `Map` and `Any` scalars: any JSON value, passed through.
macro_rules! json_scalar {
    ($name:ident, $gql:literal) => {
        pub struct $name(pub Value);

        #[Scalar(name = $gql)]
        impl ScalarType for $name {
            fn parse(value: GqlValue) -> async_graphql::InputValueResult<Self> {
                Ok($name(value.into_json()?))
            }
            fn to_value(&self) -> GqlValue {
                GqlValue::from_json(self.0.clone()).unwrap_or(GqlValue::Null)
            }
        }
    };
}
json_scalar!(Map, "Map");
json_scalar!(Any, "Any");

// ---- output types ----

#[derive(SimpleObject)]
#[graphql(rename_fields = "snake_case")]
pub struct Fingerprint {
    #[graphql(name = "type")]
    pub kind: String,
    pub value: String,
}

#[derive(SimpleObject)]
#[graphql(rename_fields = "snake_case")]
pub struct VideoFile {
    pub id: ID,
    pub path: String,
    pub basename: String,
    pub size: Int64,
    pub duration: f64,
    pub width: i32,
    pub height: i32,
    pub video_codec: String,
    pub audio_codec: String,
    pub format: String,
    pub fingerprints: Vec<Fingerprint>,
    pub created_at: Time,
    pub updated_at: Time,
}

#[derive(SimpleObject)]
#[graphql(rename_fields = "snake_case")]
pub struct ScenePathsType {
    pub screenshot: Option<String>,
    pub preview: Option<String>,
    pub stream: Option<String>,
}

#[derive(SimpleObject)]
#[graphql(rename_fields = "snake_case")]
pub struct Studio {
    pub id: ID,
    pub name: String,
    pub parent_studio: Option<Box<Studio>>,
    pub image_path: Option<String>,
    pub updated_at: Time,
}

#[derive(SimpleObject)]
#[graphql(rename_fields = "snake_case")]
pub struct Performer {
    pub id: ID,
    pub name: String,
    pub disambiguation: Option<String>,
    pub image_path: Option<String>,
    pub tags: Vec<Tag>,
    pub updated_at: Time,
}

#[derive(SimpleObject)]
#[graphql(rename_fields = "snake_case")]
pub struct Gallery {
    pub id: ID,
    pub title: Option<String>,
}

#[derive(SimpleObject)]
#[graphql(rename_fields = "snake_case")]
pub struct ImageFile {
    pub id: ID,
    pub path: String,
    pub basename: String,
    pub width: i32,
    pub height: i32,
}

/// Stash's `VisualFile`: an image's file is a picture or a clip.
#[derive(async_graphql::Union)]
pub enum VisualFile {
    VideoFile(VideoFile),
    ImageFile(ImageFile),
}

#[derive(SimpleObject)]
#[graphql(rename_fields = "snake_case")]
pub struct ImagePathsType {
    pub thumbnail: Option<String>,
    pub image: Option<String>,
}

#[derive(SimpleObject)]
#[graphql(rename_fields = "snake_case")]
pub struct Image {
    pub id: ID,
    pub title: Option<String>,
    pub paths: ImagePathsType,
    pub visual_files: Vec<VisualFile>,
}

#[derive(SimpleObject)]
#[graphql(rename_fields = "snake_case")]
pub struct FindImagesResultType {
    pub count: i32,
    pub images: Vec<Image>,
}

/// The part of `ImageFilterType` this emulator knows: the galleries.
#[derive(InputObject, Default)]
#[graphql(rename_fields = "snake_case", name = "ImageFilterType")]
pub struct ImageFilterType {
    pub galleries: Option<MultiCriterionInput>,
}

#[derive(SimpleObject)]
#[graphql(rename_fields = "snake_case")]
pub struct Group {
    pub id: ID,
    pub name: String,
}

#[derive(SimpleObject)]
#[graphql(rename_fields = "snake_case")]
pub struct SceneGroup {
    pub group: Group,
    pub scene_index: Option<i32>,
}

#[derive(SimpleObject)]
#[graphql(rename_fields = "snake_case")]
pub struct Tag {
    pub id: ID,
    pub name: String,
    pub updated_at: Time,
}

#[derive(SimpleObject)]
#[graphql(rename_fields = "snake_case", name = "StashID")]
pub struct StashId {
    pub endpoint: String,
    pub stash_id: String,
}

#[derive(SimpleObject)]
#[graphql(rename_fields = "snake_case")]
pub struct Scene {
    pub id: ID,
    pub title: Option<String>,
    pub code: Option<String>,
    pub details: Option<String>,
    pub director: Option<String>,
    /// Before Stash 0.25 the only URL field; now the first of `urls`.
    #[graphql(deprecation = "Use urls")]
    pub url: Option<String>,
    pub urls: Vec<String>,
    pub date: Option<String>,
    #[graphql(name = "rating100")]
    pub rating100: Option<i32>,
    pub organized: bool,
    pub interactive: bool,
    pub created_at: Time,
    pub updated_at: Time,
    pub files: Vec<VideoFile>,
    pub paths: ScenePathsType,
    pub studio: Option<Studio>,
    pub performers: Vec<Performer>,
    pub tags: Vec<Tag>,
    pub groups: Vec<SceneGroup>,
    pub galleries: Vec<Gallery>,
    pub stash_ids: Vec<StashId>,
}

#[derive(SimpleObject)]
#[graphql(rename_fields = "snake_case")]
pub struct FindScenesResultType {
    pub count: i32,
    pub duration: f64,
    pub filesize: f64,
    pub scenes: Vec<Scene>,
}

#[derive(SimpleObject)]
pub struct FindPerformersResultType {
    pub count: i32,
    pub performers: Vec<Performer>,
}

#[derive(SimpleObject)]
pub struct FindStudiosResultType {
    pub count: i32,
    pub studios: Vec<Studio>,
}

#[derive(SimpleObject)]
pub struct FindTagsResultType {
    pub count: i32,
    pub tags: Vec<Tag>,
}

/// The part of `PerformerFilterType`, `StudioFilterType` and
/// `TagFilterType` this emulator knows: changes since a time.
#[derive(InputObject, Default)]
#[graphql(rename_fields = "snake_case", name = "PerformerFilterType")]
pub struct PerformerFilterType {
    pub updated_at: Option<TimestampCriterionInput>,
}

#[derive(InputObject, Default)]
#[graphql(rename_fields = "snake_case", name = "StudioFilterType")]
pub struct StudioFilterType {
    pub updated_at: Option<TimestampCriterionInput>,
}

#[derive(InputObject, Default)]
#[graphql(rename_fields = "snake_case", name = "TagFilterType")]
pub struct TagFilterType {
    pub updated_at: Option<TimestampCriterionInput>,
}

#[derive(SimpleObject)]
#[graphql(rename_fields = "snake_case")]
pub struct Version {
    pub version: Option<String>,
    pub hash: String,
    pub build_time: String,
}

#[derive(SimpleObject)]
#[graphql(rename_fields = "camelCase")]
pub struct ConfigGeneralResult {
    pub api_key: String,
    pub database_path: String,
    /// `<config folder>/config.yml`: the folder is `server_connection.Dir`.
    pub config_file_path: String,
}

pub struct ConfigResult {
    general: ConfigGeneralResult,
    plugins: Value,
}

#[Object]
impl ConfigResult {
    async fn general(&self) -> &ConfigGeneralResult {
        &self.general
    }

    /// Settings of each plugin, optionally only those named in `include`.
    async fn plugins(&self, include: Option<Vec<ID>>) -> PluginConfigMap {
        let mut map = self.plugins.as_object().cloned().unwrap_or_default();
        if let Some(include) = include {
            map.retain(|k, _| include.iter().any(|id| id.as_str() == k));
        }
        PluginConfigMap(Value::Object(map))
    }
}

// ---- input types ----

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
pub enum SortDirectionEnum {
    Asc,
    Desc,
}

#[derive(Enum, Copy, Clone, Debug, Eq, PartialEq)]
pub enum CriterionModifier {
    Equals,
    NotEquals,
    GreaterThan,
    LessThan,
    IsNull,
    NotNull,
    IncludesAll,
    Includes,
    Excludes,
    MatchesRegex,
    NotMatchesRegex,
    Between,
    NotBetween,
}

#[derive(InputObject, Default)]
#[graphql(rename_fields = "snake_case")]
pub struct FindFilterType {
    pub q: Option<String>,
    pub page: Option<i32>,
    /// `-1` returns every result.
    pub per_page: Option<i32>,
    pub sort: Option<String>,
    pub direction: Option<SortDirectionEnum>,
}

#[derive(InputObject)]
#[graphql(rename_fields = "snake_case")]
pub struct StringCriterionInput {
    pub value: String,
    pub modifier: CriterionModifier,
}

#[derive(InputObject)]
#[graphql(rename_fields = "snake_case")]
pub struct TimestampCriterionInput {
    pub value: String,
    #[graphql(name = "value2")]
    pub value2: Option<String>,
    pub modifier: CriterionModifier,
}

#[derive(InputObject, Default)]
#[graphql(rename_fields = "snake_case")]
pub struct SceneFilterType {
    pub title: Option<StringCriterionInput>,
    pub path: Option<StringCriterionInput>,
    pub organized: Option<bool>,
    pub updated_at: Option<TimestampCriterionInput>,
    pub created_at: Option<TimestampCriterionInput>,
    pub performers: Option<MultiCriterionInput>,
    pub studios: Option<HierarchicalMultiCriterionInput>,
    pub tags: Option<HierarchicalMultiCriterionInput>,
}

#[derive(InputObject)]
#[graphql(rename_fields = "snake_case")]
pub struct MultiCriterionInput {
    pub value: Option<Vec<ID>>,
    pub modifier: CriterionModifier,
}

/// `depth` counts child levels to include (-1: all); this emulator's tags
/// have no children, its studios do.
#[derive(InputObject)]
#[graphql(rename_fields = "snake_case")]
pub struct HierarchicalMultiCriterionInput {
    pub value: Option<Vec<ID>>,
    pub modifier: CriterionModifier,
    pub depth: Option<i32>,
}

#[derive(InputObject)]
#[graphql(rename_fields = "snake_case", name = "StashIDInput")]
pub struct StashIdInput {
    pub endpoint: String,
    pub stash_id: String,
}

#[derive(InputObject)]
#[graphql(rename_fields = "snake_case")]
pub struct SceneUpdateInput {
    #[graphql(name = "clientMutationId")]
    pub client_mutation_id: Option<String>,
    pub id: ID,
    pub title: MaybeUndefined<String>,
    pub code: MaybeUndefined<String>,
    pub details: MaybeUndefined<String>,
    pub director: MaybeUndefined<String>,
    pub url: MaybeUndefined<String>,
    pub urls: MaybeUndefined<Vec<String>>,
    pub date: MaybeUndefined<String>,
    #[graphql(name = "rating100")]
    pub rating100: MaybeUndefined<i32>,
    pub organized: Option<bool>,
    pub studio_id: MaybeUndefined<ID>,
    pub performer_ids: MaybeUndefined<Vec<ID>>,
    pub tag_ids: MaybeUndefined<Vec<ID>>,
    pub stash_ids: MaybeUndefined<Vec<StashIdInput>>,
    /// A `data:` URL (base64) of the new cover.
    pub cover_image: Option<String>,
}

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
pub enum BulkUpdateIdMode {
    Set,
    Add,
    Remove,
}

#[derive(InputObject)]
#[graphql(rename_fields = "snake_case")]
pub struct BulkUpdateIds {
    pub ids: Option<Vec<ID>>,
    pub mode: BulkUpdateIdMode,
}

#[derive(InputObject)]
#[graphql(rename_fields = "snake_case")]
pub struct BulkUpdateStrings {
    pub values: Option<Vec<String>>,
    pub mode: BulkUpdateIdMode,
}

#[derive(InputObject)]
#[graphql(rename_fields = "snake_case")]
pub struct BulkSceneUpdateInput {
    #[graphql(name = "clientMutationId")]
    pub client_mutation_id: Option<String>,
    pub ids: Option<Vec<ID>>,
    pub title: Option<String>,
    pub code: Option<String>,
    pub details: Option<String>,
    pub director: Option<String>,
    pub urls: Option<BulkUpdateStrings>,
    pub date: Option<String>,
    #[graphql(name = "rating100")]
    pub rating100: Option<i32>,
    pub organized: Option<bool>,
    pub studio_id: Option<ID>,
    pub performer_ids: Option<BulkUpdateIds>,
    pub tag_ids: Option<BulkUpdateIds>,
}

// ---- resolvers ----

fn shared<'a>(ctx: &'a Context<'_>) -> &'a Arc<Shared> {
    ctx.data_unchecked::<Arc<Shared>>()
}

fn parse_id(id: &ID, what: &str) -> Result<u64> {
    id.parse::<u64>().map_err(|_| format!("invalid {what} id {:?}", id.as_str()).into())
}

/// pkg/sqlite's `getTimestampWhereClause`: the stored text compared with
/// the text sent, as SQL compares strings (bytewise). Nothing is parsed, so
/// a value in another offset or format compares as text, exactly as in
/// Stash. A missing `value2` is "tomorrow" in the server's zone.
fn time_matches(at: &str, c: &TimestampCriterionInput, zone: &Zone) -> Result<bool> {
    let value = c.value.as_str();
    let upper = upper_time(c, zone);
    let upper = upper.as_str();
    Ok(match c.modifier {
        CriterionModifier::Equals => at == value,
        CriterionModifier::NotEquals => at != value,
        CriterionModifier::GreaterThan => at > value,
        CriterionModifier::LessThan => at < value,
        CriterionModifier::Between => at >= value && at <= upper,
        CriterionModifier::NotBetween => at < value || at > upper,
        CriterionModifier::IsNull => false,
        CriterionModifier::NotNull => true,
        _ => return Err("unsupported date modifier type".into()),
    })
}

/// The upper end of a `BETWEEN` time criterion.
fn upper_time(c: &TimestampCriterionInput, zone: &Zone) -> String {
    c.value2.clone().unwrap_or_else(|| zone.format(Utc::now() + chrono::Duration::days(1)))
}

/// The listing of a table's index that answers a find in `order` (last
/// first when `desc`) narrowed by the `updated_at` criterion `since`: each
/// modifier [`time_matches`] applies as one comparison of the stored text is
/// a range of it. `None` for the others (the caller filters).
fn updated_listing(
    order: Order,
    desc: bool,
    since: Option<&TimestampCriterionInput>,
    zone: &Zone,
) -> Option<Listing<String>> {
    let mut listing = Listing::all(order, desc);
    let Some(c) = since else { return Some(listing) };
    let value = || c.value.clone();
    (listing.from, listing.to) = match c.modifier {
        CriterionModifier::GreaterThan => (Bound::Excluded(value()), Bound::Unbounded),
        CriterionModifier::LessThan => (Bound::Unbounded, Bound::Excluded(value())),
        CriterionModifier::Equals => (Bound::Included(value()), Bound::Included(value())),
        CriterionModifier::Between => (Bound::Included(value()), Bound::Included(upper_time(c, zone))),
        CriterionModifier::NotNull => (Bound::Unbounded, Bound::Unbounded),
        _ => return None,
    };
    Some(listing)
}

/// `page` and `per_page` as an offset and a limit (`None`: every row).
/// A count as GraphQL's `Int` (32 bits, as Stash's schema types counts).
fn graphql_int(count: usize) -> i32 {
    i32::try_from(count).unwrap_or(i32::MAX)
}

fn offset_limit(filter: &FindFilterType) -> (usize, Option<usize>) {
    let per_page = filter.per_page.unwrap_or(25);
    let page = usize::try_from(filter.page.unwrap_or(1).max(1)).unwrap_or(1);
    match usize::try_from(per_page) {
        Ok(per_page) => ((page - 1) * per_page, Some(per_page)),
        Err(_) => (0, None),
    }
}

/// Stash's string criteria: `INCLUDES` matches any of the words (or a
/// quoted phrase), case-insensitively; `EQUALS` the whole value.
fn string_matches(s: &str, c: &StringCriterionInput) -> Result<bool> {
    let hay = s.to_lowercase();
    let value = c.value.to_lowercase();
    let includes = || {
        if let Some(phrase) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
            hay.contains(phrase)
        } else {
            value.split_whitespace().any(|w| hay.contains(w))
        }
    };
    Ok(match c.modifier {
        CriterionModifier::Equals => hay == value,
        CriterionModifier::NotEquals => hay != value,
        CriterionModifier::Includes => includes(),
        CriterionModifier::Excludes => !includes(),
        CriterionModifier::IsNull => s.is_empty(),
        CriterionModifier::NotNull => !s.is_empty(),
        _ => return Err("unsupported string modifier".into()),
    })
}

/// The performer, studio and tag criteria (INCLUDES, INCLUDES_ALL, EXCLUDES).
fn shows_objects(state: &StashState, scene: &StashScene, f: &SceneFilterType) -> Result<bool> {
    if let Some(c) = &f.performers {
        if !ids_match(&scene.performers, c.value.as_deref(), c.modifier, "performer")? {
            return Ok(false);
        }
    }
    if let Some(c) = &f.tags {
        if !ids_match(&scene.tags, c.value.as_deref(), c.modifier, "tag")? {
            return Ok(false);
        }
    }
    if let Some(c) = &f.studios {
        let wanted = ids_of(c.value.as_deref().unwrap_or(&[]), "studio")?;
        let depth = c.depth.unwrap_or(0);
        let within = |studio: u64| wanted.iter().any(|w| studio_within(state, studio, *w, depth));
        let has = scene.studio.is_some_and(within);
        let ok = match c.modifier {
            CriterionModifier::Includes | CriterionModifier::IncludesAll => has,
            CriterionModifier::Excludes => !has,
            other => return Err(format!("studios: modifier {other:?} is not supported here").into()),
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

fn ids_match(have: &[u64], value: Option<&[ID]>, modifier: CriterionModifier, what: &str) -> Result<bool> {
    let wanted = ids_of(value.unwrap_or(&[]), what)?;
    Ok(match modifier {
        CriterionModifier::Includes => wanted.iter().any(|w| have.contains(w)),
        CriterionModifier::IncludesAll => wanted.iter().all(|w| have.contains(w)),
        CriterionModifier::Excludes => !wanted.iter().any(|w| have.contains(w)),
        other => return Err(format!("{what}s: modifier {other:?} is not supported here").into()),
    })
}

/// Whether `studio` is `ancestor` or below it within `depth` levels (-1: any).
fn studio_within(state: &StashState, studio: u64, ancestor: u64, depth: i32) -> bool {
    let mut current = Some(studio);
    let mut level = 0;
    while let Some(id) = current {
        if id == ancestor {
            return true;
        }
        if depth >= 0 && level >= depth {
            return false;
        }
        current = state.studios.get(&id).and_then(|s| s.parent);
        level += 1;
        if level > 32 {
            return false;
        }
    }
    false
}

fn scene_matches(scene: &StashScene, f: &SceneFilterType, zone: &Zone) -> Result<bool> {
    if let Some(c) = &f.title {
        if !string_matches(scene.title.as_deref().unwrap_or(""), c)? {
            return Ok(false);
        }
    }
    if let Some(c) = &f.path {
        let mut any = false;
        for file in &scene.files {
            any |= string_matches(&file.path, c)?;
        }
        if !any {
            return Ok(false);
        }
    }
    if f.organized.is_some_and(|o| o != scene.organized) {
        return Ok(false);
    }
    if let Some(c) = &f.updated_at {
        if !time_matches(&scene.updated_at, c, zone)? {
            return Ok(false);
        }
    }
    if let Some(c) = &f.created_at {
        if !time_matches(&scene.created_at, c, zone)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Unix seconds of a stored time (the screenshot URL's `?t=`).
fn unix_secs(stored: &str) -> i64 {
    DateTime::parse_from_rfc3339(stored).map(|t| t.timestamp()).unwrap_or(0)
}

fn studio_view(state: &StashState, id: u64, base: &url::Url, depth: u8) -> Option<Studio> {
    let s = state.studios.get(&id)?;
    Some(Studio {
        id: ID(s.id.to_string()),
        name: s.name.clone(),
        parent_studio: s
            .parent
            .filter(|_| depth < 4)
            .and_then(|p| studio_view(state, p, base, depth + 1))
            .map(Box::new),
        image_path: Some(base.join(&format!("studio/{id}/image")).expect("relative path joins").to_string()),
        updated_at: Time(s.updated_at.clone()),
    })
}

fn performer_view(state: &StashState, p: &StashPerformer, base: &url::Url) -> Performer {
    Performer {
        tags: p.tags.iter().filter_map(|id| state.tags.get(id)).map(tag_view).collect(),
        id: ID(p.id.to_string()),
        name: p.name.clone(),
        disambiguation: p.disambiguation.clone(),
        // internal/api/urlbuilders `GetPerformerImageURL`.
        image_path: Some({
            let default = if p.image.is_none() { "&default=true" } else { "" };
            let path = format!("performer/{}/image?t={}{default}", p.id, unix_secs(&p.updated_at));
            base.join(&path).expect("relative path joins").to_string()
        }),
        updated_at: Time(p.updated_at.clone()),
    }
}

fn image_view(i: &super::state::StashImage, base: &url::Url) -> Image {
    let url = |kind: &str| Some(base.join(&format!("image/{}/{kind}", i.id)).expect("relative path joins").to_string());
    let basename = i.path.rsplit('/').next().unwrap_or(&i.path).to_string();
    Image {
        id: ID(i.id.to_string()),
        title: None,
        paths: ImagePathsType { thumbnail: url("thumbnail"), image: url("image") },
        visual_files: vec![VisualFile::ImageFile(ImageFile {
            id: ID(i.id.to_string()),
            path: i.path.clone(),
            basename,
            width: i32::try_from(i.width).unwrap_or(i32::MAX),
            height: i32::try_from(i.height).unwrap_or(i32::MAX),
        })],
    }
}

fn tag_view(t: &StashTag) -> Tag {
    Tag { id: ID(t.id.to_string()), name: t.name.clone(), updated_at: Time(t.updated_at.clone()) }
}

/// The GraphQL view of a scene; image paths point at this server.
pub fn scene_view(state: &StashState, scene: &StashScene, base: &url::Url) -> Scene {
    let url_for = |path: String| Some(base.join(&path).expect("relative path joins").to_string());
    Scene {
        id: ID(scene.id.to_string()),
        title: scene.title.clone(),
        code: scene.code.clone(),
        details: scene.details.clone(),
        director: scene.director.clone(),
        url: scene.urls.first().cloned(),
        urls: scene.urls.clone(),
        date: scene.date.clone(),
        rating100: scene.rating100,
        organized: scene.organized,
        interactive: false,
        created_at: Time(scene.created_at.clone()),
        updated_at: Time(scene.updated_at.clone()),
        files: scene
            .files
            .iter()
            .map(|f| VideoFile {
                id: ID(f.id.to_string()),
                path: f.path.clone(),
                basename: f.basename().to_string(),
                size: Int64(i64::try_from(f.size).unwrap_or(i64::MAX)),
                duration: f.duration,
                width: 1920,
                height: 1080,
                video_codec: "h264".into(),
                audio_codec: "aac".into(),
                format: f.path.rsplit_once('.').map(|(_, e)| e.to_lowercase()).unwrap_or_default(),
                fingerprints: f
                    .fingerprints
                    .iter()
                    .map(|(k, v)| Fingerprint { kind: k.clone(), value: v.clone() })
                    .collect(),
                created_at: Time(scene.created_at.clone()),
                updated_at: Time(scene.created_at.clone()),
            })
            .collect(),
        paths: ScenePathsType {
            screenshot: url_for(format!("scene/{}/screenshot?t={}", scene.id, unix_secs(&scene.updated_at))),
            preview: url_for(format!("scene/{}/preview", scene.id)),
            stream: url_for(format!("scene/{}/stream", scene.id)),
        },
        studio: scene.studio.and_then(|id| studio_view(state, id, base, 0)),
        performers: scene
            .performers
            .iter()
            .filter_map(|id| state.performers.get(id))
            .map(|p| performer_view(state, p, base))
            .collect(),
        tags: scene.tags.iter().filter_map(|id| state.tags.get(id)).map(tag_view).collect(),
        groups: scene
            .groups
            .iter()
            .filter_map(|id| state.groups.get(id))
            .map(|g| SceneGroup { group: Group { id: ID(g.id.to_string()), name: g.name.clone() }, scene_index: None })
            .collect(),
        galleries: scene
            .galleries
            .iter()
            .filter_map(|id| state.galleries.get(id))
            .map(|g| Gallery { id: ID(g.id.to_string()), title: Some(g.title.clone()) })
            .collect(),
        stash_ids: scene.stash_ids.iter().map(|(e, s)| StashId { endpoint: e.clone(), stash_id: s.clone() }).collect(),
    }
}

fn sort_scenes(scenes: &mut [&StashScene], filter: &FindFilterType) -> Result<()> {
    match filter.sort.as_deref().unwrap_or("id") {
        "id" => scenes.sort_by_key(|s| s.id),
        // Text order, as SQLite sorts the stored strings (and the index of
        // `StashState::scenes` keeps them).
        "updated_at" => scenes.sort_by(|a, b| (&a.updated_at, a.id).cmp(&(&b.updated_at, b.id))),
        "created_at" => scenes.sort_by(|a, b| (&a.created_at, a.id).cmp(&(&b.created_at, b.id))),
        "title" => scenes.sort_by_cached_key(|s| (s.title.clone().unwrap_or_default().to_lowercase(), s.id)),
        "date" => scenes.sort_by(|a, b| (&a.date, a.id).cmp(&(&b.date, b.id))),
        "path" => scenes
            .sort_by(|a, b| (a.files.first().map(|f| &f.path), a.id).cmp(&(b.files.first().map(|f| &f.path), b.id))),
        other => return Err(format!("unsupported sort {other:?}").into()),
    }
    if filter.direction == Some(SortDirectionEnum::Desc) {
        scenes.reverse();
    }
    Ok(())
}

/// Filters objects by `updated_at` (as text, like scenes), sorts them by it
/// when asked (by id otherwise), and cuts the page; returns the total count
/// and the ids of the page. From the table's index when the criterion is a
/// range of it.
fn object_page<T: Row<Key = String>>(
    table: &mut Table<T>,
    updated_at: fn(&T) -> &str,
    since: Option<&TimestampCriterionInput>,
    filter: &FindFilterType,
    zone: &Zone,
) -> Result<(i32, Vec<u64>)> {
    let order = if filter.sort.as_deref() == Some("updated_at") { Order::Key } else { Order::Id };
    match updated_listing(order, filter.direction == Some(SortDirectionEnum::Desc), since, zone) {
        Some(listing) => {
            let (offset, limit) = offset_limit(filter);
            let (count, ids) = table.page(&listing, offset, limit);
            Ok((graphql_int(count), ids))
        }
        None => filtered_objects(table, updated_at, since, filter, zone),
    }
}

/// [`object_page`] one object at a time: for the criteria that are no
/// range of the index.
fn filtered_objects<T: Row>(
    table: &Table<T>,
    updated_at: fn(&T) -> &str,
    since: Option<&TimestampCriterionInput>,
    filter: &FindFilterType,
    zone: &Zone,
) -> Result<(i32, Vec<u64>)> {
    let mut found = Vec::new();
    for (id, object) in table.iter() {
        let at = updated_at(object);
        if since.map(|c| time_matches(at, c, zone)).transpose()?.unwrap_or(true) {
            found.push((at, *id));
        }
    }
    if filter.sort.as_deref() == Some("updated_at") {
        found.sort_by(|a, b| a.0.cmp(b.0));
    }
    if filter.direction == Some(SortDirectionEnum::Desc) {
        found.reverse();
    }
    let count = graphql_int(found.len());
    let (offset, limit) = offset_limit(filter);
    let ids = found.into_iter().map(|(_, id)| id).skip(offset).take(limit.unwrap_or(usize::MAX)).collect();
    Ok((count, ids))
}

/// The scenes a find names, filtered and sorted one by one: the finds the
/// index of `StashState::scenes` does not answer.
fn filtered_scenes<'a>(
    state: &'a StashState,
    wanted: Option<&[u64]>,
    filter: &FindFilterType,
    scene_filter: &SceneFilterType,
) -> Result<Vec<&'a StashScene>> {
    let mut found = Vec::new();
    // Ids are looked up, in id order, as Stash's `id IN (…)` uses its
    // primary key: a walk of every scene for each claimed batch made a
    // million-scene run spend most of its time here.
    let candidates: Box<dyn Iterator<Item = &StashScene>> = match wanted {
        Some(wanted) => {
            let mut ids = wanted.to_vec();
            ids.sort_unstable();
            ids.dedup();
            Box::new(ids.into_iter().filter_map(|id| state.scenes.get(&id)))
        }
        None => Box::new(state.scenes.values()),
    };
    for scene in candidates {
        let q_ok = filter.q.as_deref().filter(|q| !q.is_empty()).is_none_or(|q| {
            let q = q.to_lowercase();
            scene.title.as_deref().unwrap_or("").to_lowercase().contains(&q)
                || scene.files.iter().any(|f| f.path.to_lowercase().contains(&q))
        });
        if q_ok && scene_matches(scene, scene_filter, &state.zone)? && shows_objects(state, scene, scene_filter)? {
            found.push(scene);
        }
    }
    sort_scenes(&mut found, filter)?;
    Ok(found)
}

/// The listing of the scenes' index that answers a find, if one does: no
/// ids, no `q`, no criterion but `updated_at`, sorted by id or `updated_at`.
fn scene_listing(
    wanted: Option<&[u64]>,
    filter: &FindFilterType,
    scene_filter: &SceneFilterType,
    zone: &Zone,
) -> Option<Listing<String>> {
    let SceneFilterType { title, path, organized, updated_at, created_at, performers, studios, tags } = scene_filter;
    let only_updated_at = title.is_none()
        && path.is_none()
        && organized.is_none()
        && created_at.is_none()
        && performers.is_none()
        && studios.is_none()
        && tags.is_none();
    if wanted.is_some() || filter.q.as_deref().is_some_and(|q| !q.is_empty()) || !only_updated_at {
        return None;
    }
    let order = match filter.sort.as_deref().unwrap_or("id") {
        "id" => Order::Id,
        "updated_at" => Order::Key,
        _ => return None,
    };
    updated_listing(order, filter.direction == Some(SortDirectionEnum::Desc), updated_at.as_ref(), zone)
}

/// The total duration and size of the files of `scenes`, each summed in
/// their order (as `Iterator::sum` does, to the bit).
fn sums<'a>(scenes: impl Iterator<Item = &'a StashScene> + Clone) -> (f64, f64) {
    let files = scenes.flat_map(|s| &s.files);
    (files.clone().map(|f| f.duration).sum(), files.map(|f| f.size as f64).sum())
}

pub struct QueryRoot;

#[Object(rename_args = "snake_case")]
impl QueryRoot {
    async fn find_scene(&self, ctx: &Context<'_>, id: Option<ID>) -> Result<Option<Scene>> {
        let sh = shared(ctx);
        let Some(id) = id else { return Ok(None) };
        let id = parse_id(&id, "scene")?;
        let state = sh.state.lock();
        Ok(state.scenes.get(&id).map(|s| scene_view(&state, s, &sh.base_url)))
    }

    async fn find_scenes(
        &self,
        ctx: &Context<'_>,
        scene_filter: Option<SceneFilterType>,
        scene_ids: Option<Vec<i32>>,
        ids: Option<Vec<ID>>,
        filter: Option<FindFilterType>,
    ) -> Result<FindScenesResultType> {
        let sh = shared(ctx);
        let filter = filter.unwrap_or_default();
        let scene_filter = scene_filter.unwrap_or_default();
        let wanted: Option<Vec<u64>> = match (scene_ids, ids) {
            (Some(a), _) => Some(a.into_iter().filter_map(|i| u64::try_from(i).ok()).collect()),
            (None, Some(b)) => Some(b.iter().map(|i| parse_id(i, "scene")).collect::<Result<_>>()?),
            (None, None) => None,
        };
        // Both sums cost a walk of every scene found: only when asked for.
        let with_sums = ["duration", "filesize"].into_iter().any(|f| ctx.look_ahead().field(f).exists());
        let (offset, limit) = offset_limit(&filter);
        let mut state = sh.state.lock();
        let (count, ids, (duration, filesize)) =
            match scene_listing(wanted.as_deref(), &filter, &scene_filter, &state.zone) {
                Some(listing) => {
                    let (count, ids) = state.scenes.page(&listing, offset, limit);
                    let totals = if with_sums {
                        let (_, all) = state.scenes.page(&listing, 0, None);
                        sums(all.iter().map(|id| &state.scenes[id]))
                    } else {
                        Default::default()
                    };
                    (count, ids, totals)
                }
                None => {
                    let found = filtered_scenes(&state, wanted.as_deref(), &filter, &scene_filter)?;
                    let totals = if with_sums { sums(found.iter().copied()) } else { Default::default() };
                    let ids = found.iter().skip(offset).take(limit.unwrap_or(usize::MAX)).map(|s| s.id).collect();
                    (found.len(), ids, totals)
                }
            };
        Ok(FindScenesResultType {
            count: graphql_int(count),
            duration,
            filesize,
            scenes: ids.iter().map(|id| scene_view(&state, &state.scenes[id], &sh.base_url)).collect(),
        })
    }

    /// Images of the galleries `image_filter` names (`INCLUDES`), in id
    /// order, paged.
    async fn find_images(
        &self,
        ctx: &Context<'_>,
        image_filter: Option<ImageFilterType>,
        filter: Option<FindFilterType>,
    ) -> Result<FindImagesResultType> {
        let sh = shared(ctx);
        let state = sh.state.lock();
        let wanted = match image_filter.and_then(|f| f.galleries) {
            Some(c) if c.modifier == CriterionModifier::Includes => {
                Some(ids_of(c.value.as_deref().unwrap_or(&[]), "gallery")?)
            }
            Some(_) => return Err("this emulator filters images by galleries with INCLUDES only".into()),
            None => None,
        };
        let mut ids: Vec<u64> = match wanted {
            Some(galleries) => {
                galleries.iter().filter_map(|g| state.galleries.get(g)).flat_map(|g| g.images.clone()).collect()
            }
            None => state.images.keys().copied().collect(),
        };
        ids.sort_unstable();
        ids.dedup();
        let (offset, limit) = offset_limit(&filter.unwrap_or_default());
        let count = ids.len();
        let images = ids
            .into_iter()
            .skip(offset)
            .take(limit.unwrap_or(usize::MAX))
            .filter_map(|id| state.images.get(&id))
            .map(|i| image_view(i, &sh.base_url))
            .collect();
        Ok(FindImagesResultType { count: i32::try_from(count).unwrap_or(i32::MAX), images })
    }

    async fn find_performers(
        &self,
        ctx: &Context<'_>,
        performer_filter: Option<PerformerFilterType>,
        filter: Option<FindFilterType>,
    ) -> Result<FindPerformersResultType> {
        let sh = shared(ctx);
        let state = &mut *sh.state.lock();
        let since = performer_filter.and_then(|f| f.updated_at);
        let filter = filter.unwrap_or_default();
        let (count, ids) = object_page(&mut state.performers, |p| &p.updated_at, since.as_ref(), &filter, &state.zone)?;
        let performers = ids.iter().map(|id| performer_view(state, &state.performers[id], &sh.base_url)).collect();
        Ok(FindPerformersResultType { count, performers })
    }

    async fn find_studios(
        &self,
        ctx: &Context<'_>,
        studio_filter: Option<StudioFilterType>,
        filter: Option<FindFilterType>,
    ) -> Result<FindStudiosResultType> {
        let sh = shared(ctx);
        let state = &mut *sh.state.lock();
        let since = studio_filter.and_then(|f| f.updated_at);
        let filter = filter.unwrap_or_default();
        let (count, ids) = object_page(&mut state.studios, |s| &s.updated_at, since.as_ref(), &filter, &state.zone)?;
        let studios = ids.iter().filter_map(|id| studio_view(state, *id, &sh.base_url, 0)).collect();
        Ok(FindStudiosResultType { count, studios })
    }

    async fn find_tags(
        &self,
        ctx: &Context<'_>,
        tag_filter: Option<TagFilterType>,
        filter: Option<FindFilterType>,
    ) -> Result<FindTagsResultType> {
        let sh = shared(ctx);
        let state = &mut *sh.state.lock();
        let since = tag_filter.and_then(|f| f.updated_at);
        let filter = filter.unwrap_or_default();
        let (count, ids) = object_page(&mut state.tags, |t| &t.updated_at, since.as_ref(), &filter, &state.zone)?;
        Ok(FindTagsResultType { count, tags: ids.iter().map(|id| tag_view(&state.tags[id])).collect() })
    }

    async fn configuration(&self, ctx: &Context<'_>) -> ConfigResult {
        let sh = shared(ctx);
        let state = sh.state.lock();
        ConfigResult {
            general: ConfigGeneralResult {
                api_key: sh.auth.api_key.clone().unwrap_or_default(),
                database_path: "/root/.stash/stash-go.sqlite".into(),
                config_file_path: sh.config_dir.lock().join("config.yml").display().to_string(),
            },
            plugins: Value::Object(state.plugins.clone()),
        }
    }

    /// The loaded plugins and where their UI files are
    /// (internal/api/resolver_model_plugin.go): the manifest's remote
    /// files, then Stash's own address for its local ones. Stash's UI loads
    /// plugin scripts from these (PluginsLoader).
    async fn plugins(&self, ctx: &Context<'_>) -> Option<Vec<PluginView>> {
        let sh = shared(ctx);
        let plugins = sh.plugins.lock();
        Some(plugins.iter().map(|p| plugin_view(p, &sh.base_url)).collect())
    }

    async fn version(&self) -> Version {
        Version { version: Some("v0.28.1".into()), hash: "emulator".into(), build_time: "2026-01-01 00:00:00".into() }
    }
}

#[derive(SimpleObject)]
#[graphql(name = "PluginPaths")]
pub struct PluginPathsView {
    javascript: Option<Vec<String>>,
    css: Option<Vec<String>>,
}

#[derive(SimpleObject)]
#[graphql(name = "Plugin")]
pub struct PluginView {
    id: ID,
    name: String,
    enabled: bool,
    requires: Option<Vec<ID>>,
    paths: PluginPathsView,
}

fn plugin_view(plugin: &crate::plugin::Plugin, base: &url::Url) -> PluginView {
    let ui = &plugin.manifest.ui;
    let paths = |files: &[String], kind: &str| {
        if files.is_empty() {
            return None;
        }
        let remote = |f: &&String| crate::plugin::is_remote_file(f);
        let mut list: Vec<String> = files.iter().filter(remote).cloned().collect();
        if files.iter().any(|f| !remote(&f)) {
            list.push(base.join(&format!("plugin/{}/{kind}", plugin.id)).map(String::from).unwrap_or_default());
        }
        Some(list)
    };
    PluginView {
        id: ID(plugin.id.clone()),
        name: plugin.manifest.name.clone(),
        enabled: true,
        requires: Some(ui.requires.iter().cloned().map(ID).collect()),
        paths: PluginPathsView { javascript: paths(&ui.javascript, "javascript"), css: paths(&ui.css, "css") },
    }
}

/// Names of the input fields a client set, as Stash passes them to hooks
/// in `inputFields`.
fn input_fields(ctx: &Context<'_>) -> (Vec<String>, Value) {
    let raw = ctx
        .field()
        .arguments()
        .ok()
        .and_then(|args| args.into_iter().find(|(name, _)| name.as_str() == "input"))
        .and_then(|(_, v)| v.into_json().ok())
        .unwrap_or(Value::Null);
    let fields = raw.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
    (fields, raw)
}

fn ids_of(list: &[ID], what: &str) -> Result<Vec<u64>> {
    list.iter().map(|i| parse_id(i, what)).collect()
}

fn apply_bulk_ids(current: &mut Vec<u64>, ids: &[u64], mode: BulkUpdateIdMode) {
    let ids = ids.to_vec();
    match mode {
        BulkUpdateIdMode::Set => *current = ids,
        BulkUpdateIdMode::Add => {
            for id in ids {
                if !current.contains(&id) {
                    current.push(id);
                }
            }
        }
        BulkUpdateIdMode::Remove => current.retain(|c| !ids.contains(c)),
    }
}

fn check_refs(state: &StashState, performers: &[u64], tags: &[u64], studio: Option<u64>) -> Result<()> {
    if let Some(p) = performers.iter().find(|p| !state.performers.contains_key(p)) {
        return Err(format!("performer {p} not found").into());
    }
    if let Some(t) = tags.iter().find(|t| !state.tags.contains_key(t)) {
        return Err(format!("tag {t} not found").into());
    }
    if let Some(s) = studio.filter(|s| !state.studios.contains_key(s)) {
        return Err(format!("studio {s} not found").into());
    }
    Ok(())
}

fn set_opt<T: Clone>(target: &mut Option<T>, value: &MaybeUndefined<T>) {
    match value {
        MaybeUndefined::Undefined => {}
        MaybeUndefined::Null => *target = None,
        MaybeUndefined::Value(v) => *target = Some(v.clone()),
    }
}

#[derive(InputObject)]
#[graphql(rename_fields = "snake_case")]
pub struct SceneDestroyInput {
    pub id: ID,
    pub delete_file: Option<bool>,
    pub delete_generated: Option<bool>,
}

#[derive(InputObject)]
#[graphql(rename_fields = "snake_case")]
pub struct PerformerUpdateInput {
    pub id: ID,
    pub name: Option<String>,
    /// A `data:` URL (base64) or nothing; null removes the photo.
    pub image: MaybeUndefined<String>,
}

/// `PerformerDestroyInput`, `StudioDestroyInput`, `TagDestroyInput`.
#[derive(InputObject)]
#[graphql(name = "PerformerDestroyInput")]
pub struct PerformerDestroyInput {
    pub id: ID,
}

#[derive(InputObject)]
#[graphql(name = "StudioDestroyInput")]
pub struct StudioDestroyInput {
    pub id: ID,
}

#[derive(InputObject)]
#[graphql(name = "TagDestroyInput")]
pub struct TagDestroyInput {
    pub id: ID,
}

#[derive(InputObject)]
pub struct TagsMergeInput {
    pub source: Vec<ID>,
    pub destination: ID,
}

/// The bytes of a `data:<type>;base64,<data>` URL (what Stash's UI sends
/// for an uploaded image).
fn data_url(value: &str, field: &str) -> Result<Vec<u8>> {
    use base64::Engine;
    let data = value
        .strip_prefix("data:")
        .and_then(|v| v.split_once(";base64,"))
        .map(|(_, d)| d)
        .ok_or_else(|| format!("{field}: only data: URLs are supported by this emulator"))?;
    base64::engine::general_purpose::STANDARD.decode(data).map_err(|e| format!("{field}: {e}").into())
}

#[derive(InputObject)]
#[graphql(rename_fields = "snake_case")]
pub struct StudioUpdateInput {
    pub id: ID,
    pub name: Option<String>,
    pub parent_id: Option<ID>,
}

#[derive(InputObject)]
#[graphql(rename_fields = "snake_case")]
pub struct TagUpdateInput {
    pub id: ID,
    pub name: Option<String>,
}

/// Applies an object update (the name, when given), bumps the object's own
/// `updated_at` and fires `<Kind>.Update.Post` after releasing the lock.
async fn update_object(ctx: &Context<'_>, kind: ObjectKind, id: u64, name: Option<&str>) -> Result<()> {
    let sh = shared(ctx);
    let (fields, raw) = input_fields(ctx);
    if !sh.state.lock().update_object(kind, id, name) {
        return Err(format!("{} with id {id} not found", kind.hook_prefix().to_lowercase()).into());
    }
    let hook = format!("{}.Update.Post", kind.hook_prefix());
    fire_hooks(sh, request_auth(ctx), &hook, id, raw, &fields).await;
    Ok(())
}

/// Deletes an object and fires `<Kind>.Destroy.Post` with the input.
async fn destroy_object(ctx: &Context<'_>, kind: ObjectKind, id: &ID) -> Result<bool> {
    let sh = shared(ctx);
    let (fields, raw) = input_fields(ctx);
    let what = kind.hook_prefix().to_lowercase();
    let id = parse_id(id, &what)?;
    if !sh.state.lock().destroy_object(kind, id) {
        return Err(format!("{what} with id {id} not found").into());
    }
    fire_hooks(sh, request_auth(ctx), &format!("{}.Destroy.Post", kind.hook_prefix()), id, raw, &fields).await;
    Ok(true)
}

/// Who sent the request (set by the auth layer).
fn request_auth<'a>(ctx: &'a Context<'_>) -> &'a RequestAuth {
    static NOBODY: std::sync::OnceLock<RequestAuth> = std::sync::OnceLock::new();
    ctx.data_opt::<RequestAuth>().unwrap_or_else(|| NOBODY.get_or_init(RequestAuth::default))
}

pub struct MutationRoot;

#[Object(rename_args = "snake_case")]
impl MutationRoot {
    async fn scene_update(&self, ctx: &Context<'_>, input: SceneUpdateInput) -> Result<Option<Scene>> {
        let sh = shared(ctx);
        let (fields, raw) = input_fields(ctx);
        let id = parse_id(&input.id, "scene")?;
        let performers = input.performer_ids.value().map(|p| ids_of(p, "performer")).transpose()?;
        let tags = input.tag_ids.value().map(|t| ids_of(t, "tag")).transpose()?;
        let studio = input.studio_id.value().map(|s| parse_id(s, "studio")).transpose()?;
        let cover = input.cover_image.as_deref().map(|c| data_url(c, "cover_image")).transpose()?;
        {
            let mut state = sh.state.lock();
            if !state.scenes.contains_key(&id) {
                return Err(format!("scene with id {id} not found").into());
            }
            check_refs(&state, performers.as_deref().unwrap_or(&[]), tags.as_deref().unwrap_or(&[]), studio)?;
            state.update_scene(id, |s| {
                set_opt(&mut s.title, &input.title);
                set_opt(&mut s.code, &input.code);
                set_opt(&mut s.details, &input.details);
                set_opt(&mut s.director, &input.director);
                set_opt(&mut s.date, &input.date);
                set_opt(&mut s.rating100, &input.rating100);
                match (&input.urls, &input.url) {
                    (MaybeUndefined::Value(urls), _) => s.urls = urls.clone(),
                    (MaybeUndefined::Null, _) => s.urls.clear(),
                    (_, MaybeUndefined::Value(url)) => s.urls = vec![url.clone()],
                    (_, MaybeUndefined::Null) => s.urls.clear(),
                    _ => {}
                }
                if let Some(o) = input.organized {
                    s.organized = o;
                }
                if !input.studio_id.is_undefined() {
                    s.studio = studio;
                }
                if let Some(p) = performers {
                    s.performers = p;
                }
                if let Some(t) = tags {
                    s.tags = t;
                }
                if let Some(ids) = input.stash_ids.value() {
                    s.stash_ids = ids.iter().map(|i| (i.endpoint.clone(), i.stash_id.clone())).collect();
                }
                if cover.is_some() {
                    s.cover = cover;
                }
            });
            state.mutations.push(MutationRecord {
                operation: "sceneUpdate".into(),
                scene_ids: vec![id],
                input_fields: fields.clone(),
                input: raw.clone(),
            });
        }
        fire_hooks(sh, request_auth(ctx), "Scene.Update.Post", id, raw, &fields).await;
        let state = sh.state.lock();
        Ok(state.scenes.get(&id).map(|s| scene_view(&state, s, &sh.base_url)))
    }

    async fn bulk_scene_update(&self, ctx: &Context<'_>, input: BulkSceneUpdateInput) -> Result<Option<Vec<Scene>>> {
        let sh = shared(ctx);
        let (fields, raw) = input_fields(ctx);
        let ids = ids_of(input.ids.as_deref().unwrap_or(&[]), "scene")?;
        let studio = input.studio_id.as_ref().map(|s| parse_id(s, "studio")).transpose()?;
        {
            let mut state = sh.state.lock();
            if let Some(missing) = ids.iter().find(|id| !state.scenes.contains_key(id)) {
                return Err(format!("scene with id {missing} not found").into());
            }
            let new_tags =
                input.tag_ids.as_ref().map(|t| ids_of(t.ids.as_deref().unwrap_or(&[]), "tag")).transpose()?;
            let new_performers = input
                .performer_ids
                .as_ref()
                .map(|p| ids_of(p.ids.as_deref().unwrap_or(&[]), "performer"))
                .transpose()?;
            check_refs(&state, new_performers.as_deref().unwrap_or(&[]), new_tags.as_deref().unwrap_or(&[]), studio)?;
            for id in &ids {
                state.update_scene(*id, |s| {
                    if let Some(v) = &input.title {
                        s.title = Some(v.clone());
                    }
                    if let Some(v) = &input.code {
                        s.code = Some(v.clone());
                    }
                    if let Some(v) = &input.details {
                        s.details = Some(v.clone());
                    }
                    if let Some(v) = &input.director {
                        s.director = Some(v.clone());
                    }
                    if let Some(v) = &input.date {
                        s.date = Some(v.clone());
                    }
                    if let Some(v) = input.rating100 {
                        s.rating100 = Some(v);
                    }
                    if let Some(o) = input.organized {
                        s.organized = o;
                    }
                    if studio.is_some() {
                        s.studio = studio;
                    }
                    if let Some(u) = &input.urls {
                        let values = u.values.clone().unwrap_or_default();
                        match u.mode {
                            BulkUpdateIdMode::Set => s.urls = values,
                            BulkUpdateIdMode::Add => {
                                for v in values {
                                    if !s.urls.contains(&v) {
                                        s.urls.push(v);
                                    }
                                }
                            }
                            BulkUpdateIdMode::Remove => s.urls.retain(|x| !values.contains(x)),
                        }
                    }
                    if let (Some(t), Some(ids)) = (&input.tag_ids, &new_tags) {
                        apply_bulk_ids(&mut s.tags, ids, t.mode);
                    }
                    if let (Some(p), Some(ids)) = (&input.performer_ids, &new_performers) {
                        apply_bulk_ids(&mut s.performers, ids, p.mode);
                    }
                });
            }
            state.mutations.push(MutationRecord {
                operation: "bulkSceneUpdate".into(),
                scene_ids: ids.clone(),
                input_fields: fields.clone(),
                input: raw.clone(),
            });
        }
        // One scene after another, each hook awaited, the answer after the last.
        for id in &ids {
            fire_hooks(sh, request_auth(ctx), "Scene.Update.Post", *id, raw.clone(), &fields).await;
        }
        let state = sh.state.lock();
        Ok(Some(
            ids.iter().filter_map(|id| state.scenes.get(id)).map(|s| scene_view(&state, s, &sh.base_url)).collect(),
        ))
    }

    /// Renames a performer: its own `updated_at` moves, no scene's does,
    /// and only `Performer.Update.Post` fires.
    async fn performer_update(&self, ctx: &Context<'_>, input: PerformerUpdateInput) -> Result<Option<Performer>> {
        let id = parse_id(&input.id, "performer")?;
        let image = input.image.value().map(|i| data_url(i, "image")).transpose()?;
        if !input.image.is_undefined() {
            if let Some(mut p) = shared(ctx).state.lock().performers.get_mut(&id) {
                p.image = image;
            }
        }
        update_object(ctx, ObjectKind::Performer, id, input.name.as_deref()).await?;
        let sh = shared(ctx);
        let state = sh.state.lock();
        Ok(state.performers.get(&id).map(|p| performer_view(&state, p, &sh.base_url)))
    }

    async fn studio_update(&self, ctx: &Context<'_>, input: StudioUpdateInput) -> Result<Option<Studio>> {
        let id = parse_id(&input.id, "studio")?;
        let parent = input.parent_id.as_ref().map(|p| parse_id(p, "studio")).transpose()?;
        if let Some(parent) = parent {
            let sh = shared(ctx);
            let mut state = sh.state.lock();
            if !state.studios.contains_key(&parent) {
                return Err(format!("studio with id {parent} not found").into());
            }
            if let Some(mut studio) = state.studios.get_mut(&id) {
                studio.parent = Some(parent);
            };
        }
        update_object(ctx, ObjectKind::Studio, id, input.name.as_deref()).await?;
        let sh = shared(ctx);
        let state = sh.state.lock();
        Ok(studio_view(&state, id, &sh.base_url, 0))
    }

    async fn tag_update(&self, ctx: &Context<'_>, input: TagUpdateInput) -> Result<Option<Tag>> {
        let id = parse_id(&input.id, "tag")?;
        update_object(ctx, ObjectKind::Tag, id, input.name.as_deref()).await?;
        let state = shared(ctx).state.lock();
        Ok(state.tags.get(&id).map(tag_view))
    }

    /// Deletes a performer: gone from its scenes, whose `updated_at` stays;
    /// `Performer.Destroy.Post` fires.
    async fn performer_destroy(&self, ctx: &Context<'_>, input: PerformerDestroyInput) -> Result<bool> {
        destroy_object(ctx, ObjectKind::Performer, &input.id).await
    }

    async fn studio_destroy(&self, ctx: &Context<'_>, input: StudioDestroyInput) -> Result<bool> {
        destroy_object(ctx, ObjectKind::Studio, &input.id).await
    }

    async fn tag_destroy(&self, ctx: &Context<'_>, input: TagDestroyInput) -> Result<bool> {
        destroy_object(ctx, ObjectKind::Tag, &input.id).await
    }

    /// Merges tags into the destination; one `Tag.Merge.Post` for the
    /// destination with the whole input, no hook for the sources.
    async fn tags_merge(&self, ctx: &Context<'_>, input: TagsMergeInput) -> Result<Option<Tag>> {
        let sh = shared(ctx);
        let (fields, raw) = input_fields(ctx);
        let sources = ids_of(&input.source, "tag")?;
        let destination = parse_id(&input.destination, "tag")?;
        if sources.is_empty() {
            return Ok(None);
        }
        sh.state.lock().merge_tags(&sources, destination)?;
        fire_hooks(sh, request_auth(ctx), "Tag.Merge.Post", destination, raw, &fields).await;
        let state = sh.state.lock();
        Ok(state.tags.get(&destination).map(tag_view))
    }

    /// internal/api `ConfigurePlugin`: the plugin's settings replaced by
    /// `input` whole (Stash's `SetPluginConfiguration`), answered back.
    async fn configure_plugin(&self, ctx: &Context<'_>, plugin_id: ID, input: Map) -> Result<Map> {
        let sh = shared(ctx);
        if !input.0.is_object() {
            return Err("input must be a map".into());
        }
        sh.state.lock().plugins.insert(plugin_id.to_string(), input.0.clone());
        Ok(input)
    }

    /// pkg/plugin `RunPlugin`: runs the plugin now, as the person asking,
    /// and answers its `output`; its `error` (or a failed exit) is the
    /// GraphQL error. An unknown plugin id gets Stash's panic message.
    async fn run_plugin_operation(&self, ctx: &Context<'_>, plugin_id: ID, args: Option<Map>) -> Result<Option<Any>> {
        let sh = shared(ctx);
        // Stash dereferences the missing plugin and its recover handler
        // answers the panic (pkg/plugin/plugins.go, internal/api/server.go).
        let unknown = "Internal system error. Error <runtime error: invalid memory address or nil pointer dereference>";
        let plugin = sh.plugin(plugin_id.as_str()).ok_or(unknown)?;
        let args = args.map(|a| a.0).filter(Value::is_object).unwrap_or_else(|| Value::Object(Default::default()));
        let run = super::run_operation(sh, &plugin, None, request_auth(ctx), args).await?;
        if let Some(error) = run.error {
            return Err(error.into());
        }
        if !run.status.success() {
            return Err(format!("exit status {}", run.status.code().unwrap_or(-1)).into());
        }
        Ok(run.output.map(Any))
    }

    async fn scene_destroy(&self, ctx: &Context<'_>, input: SceneDestroyInput) -> Result<bool> {
        let sh = shared(ctx);
        let id = parse_id(&input.id, "scene")?;
        let scene = sh.state.lock().scenes.remove(&id).ok_or_else(|| format!("scene with id {id} not found"))?;
        fire_hooks(sh, request_auth(ctx), "Scene.Destroy.Post", id, super::destroy_input(&scene), &[]).await;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::fixtures::Library;

    fn since(modifier: CriterionModifier, value: String, value2: Option<String>) -> TimestampCriterionInput {
        TimestampCriterionInput { value, value2, modifier }
    }

    /// Stored texts to edit to and compare with: ties, other offsets, and
    /// texts between them.
    fn some_time(state: &StashState, rng: &mut ChaCha8Rng) -> String {
        match rng.random_range(0..4) {
            0 => state.scenes.values().nth(rng.random_range(0..state.scenes.len())).unwrap().updated_at.clone(),
            1 => ["2026-01-01T00:00:00Z", "2026-01-01T00:00:00-05:00", "2026-01-01T05:00:00Z", "2"]
                [rng.random_range(0..4)]
            .to_string(),
            _ => Zone::fixed(rng.random_range(-10..10) * 1800)
                .format(Utc::now() - chrono::Duration::minutes(rng.random_range(0..2000))),
        }
    }

    fn random_edit(state: &mut StashState, rng: &mut ChaCha8Rng) {
        let ids: Vec<u64> = state.scenes.keys().copied().collect();
        let id = ids[rng.random_range(0..ids.len())];
        match rng.random_range(0..10) {
            0..4 => {
                state.update_scene(id, |s| s.organized = !s.organized);
            }
            4..7 => {
                let at = some_time(state, rng);
                state.scenes.get_mut(&id).unwrap().updated_at = at;
            }
            7 => {
                state.scenes.remove(&id);
            }
            8 => {
                state.add_scene(&[(format!("/new/{id}.mp4"), 1, 1.0)]);
            }
            _ => {
                if let Some(tag) = state.tags.keys().next().copied() {
                    state.destroy_object(ObjectKind::Tag, tag);
                }
            }
        }
    }

    #[test]
    fn indexed_finds_answer_what_filtering_and_sorting_every_scene_does() {
        for seed in 0..6 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut state = StashState::from_library(&Library::sample(300, seed));
            for step in 0..400 {
                random_edit(&mut state, &mut rng);
                let criterion = match rng.random_range(0..7) {
                    0 => None,
                    1 => Some(since(CriterionModifier::LessThan, some_time(&state, &mut rng), None)),
                    2 => Some(since(CriterionModifier::Equals, some_time(&state, &mut rng), None)),
                    3 => Some(since(
                        CriterionModifier::Between,
                        some_time(&state, &mut rng),
                        Some(some_time(&state, &mut rng)),
                    )),
                    4 => Some(since(CriterionModifier::NotNull, String::new(), None)),
                    _ => Some(since(CriterionModifier::GreaterThan, some_time(&state, &mut rng), None)),
                };
                let scene_filter = SceneFilterType { updated_at: criterion, ..Default::default() };
                let mut filter = FindFilterType {
                    sort: [None, Some("id"), Some("updated_at")][rng.random_range(0..3)].map(String::from),
                    direction: [None, Some(SortDirectionEnum::Asc), Some(SortDirectionEnum::Desc)]
                        [rng.random_range(0..3)],
                    per_page: [None, Some(1), Some(7), Some(100), Some(-1), Some(0)][rng.random_range(0..6)],
                    ..Default::default()
                };
                // Page through it, with writes between the pages.
                for page in 1..=rng.random_range(1..6) {
                    filter.page = Some(page);
                    let listing = scene_listing(None, &filter, &scene_filter, &state.zone).expect("indexed");
                    let (offset, limit) = offset_limit(&filter);
                    let indexed = state.scenes.page(&listing, offset, limit);
                    let found = filtered_scenes(&state, None, &filter, &scene_filter).unwrap();
                    let ids = found.iter().skip(offset).take(limit.unwrap_or(usize::MAX)).map(|s| s.id).collect();
                    assert_eq!(indexed, (found.len(), ids), "seed {seed} step {step} page {page}");
                    if rng.random_bool(0.3) {
                        random_edit(&mut state, &mut rng);
                    }
                }
                // Performers, by the same criterion.
                let performers: Vec<u64> = state.performers.keys().copied().collect();
                for _ in 0..3 {
                    let id = performers[rng.random_range(0..performers.len())];
                    let at = some_time(&state, &mut rng);
                    state.performers.get_mut(&id).unwrap().updated_at = at;
                }
                let c = scene_filter.updated_at.as_ref();
                let at: fn(&StashPerformer) -> &str = |p| &p.updated_at;
                let indexed = object_page(&mut state.performers, at, c, &filter, &state.zone).unwrap();
                assert_eq!(indexed, filtered_objects(&state.performers, at, c, &filter, &state.zone).unwrap());
            }
        }
    }

    #[test]
    fn the_finds_plexsync_sends_are_answered_from_the_index_page_by_page() {
        let mut state = StashState::from_library(&Library::sample(5_000, 1));
        let middle = state.scenes.values().nth(2_500).unwrap().updated_at.clone();
        let changed = SceneFilterType {
            updated_at: Some(since(CriterionModifier::GreaterThan, middle, None)),
            ..Default::default()
        };
        let by_update = |page, per_page, direction| FindFilterType {
            page: Some(page),
            per_page: Some(per_page),
            sort: Some("updated_at".into()),
            direction: Some(direction),
            ..Default::default()
        };
        for scene_filter in [SceneFilterType::default(), changed] {
            let before = state.scenes.rows_visited();
            let mut seen = 0;
            for page in 1.. {
                let filter = by_update(page, 500, SortDirectionEnum::Asc);
                let listing = scene_listing(None, &filter, &scene_filter, &state.zone).expect("indexed");
                let (offset, limit) = offset_limit(&filter);
                let (count, ids) = state.scenes.page(&listing, offset, limit);
                seen += ids.len();
                if seen >= count {
                    break;
                }
                state.update_scene(ids[0], |s| s.organized = !s.organized);
            }
            let visited = state.scenes.rows_visited() - before;
            assert!(visited < 3 * seen as u64 + 10, "{visited} rows visited for {seen}");
        }
        let newest = by_update(1, 1, SortDirectionEnum::Desc);
        let listing = scene_listing(None, &newest, &SceneFilterType::default(), &state.zone).expect("indexed");
        let before = state.scenes.rows_visited();
        state.scenes.page(&listing, 0, Some(1));
        assert_eq!(state.scenes.rows_visited() - before, 1);
    }
}
