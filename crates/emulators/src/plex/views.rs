//! Plex response shapes, built as [`Node`] trees from the emulator's state.

use super::render::Node;
use super::state::{Image, Item, PlexState, Section, TagKind};

pub(crate) const LIBRARY_IDENTIFIER: &str = "com.plexapp.plugins.library";

pub fn identity(state: &PlexState) -> Node {
    Node::new("MediaContainer")
        .attr("size", 0usize)
        .attr("claimed", true)
        .attr("machineIdentifier", &state.machine_identifier)
        .attr("version", &state.version)
}

pub fn root(state: &PlexState) -> Node {
    let dirs = [("butler", "butler"), ("library", "library"), ("hubs", "hubs"), ("system", "system")];
    Node::new("MediaContainer")
        .attr("size", dirs.len())
        .attr("allowCameraUpload", false)
        .attr("allowSync", true)
        .attr("claimed", true)
        .attr("friendlyName", &state.friendly_name)
        .attr("machineIdentifier", &state.machine_identifier)
        .attr("myPlex", true)
        .attr("myPlexSigninState", "ok")
        .attr("myPlexUsername", "emulator@example.com")
        .attr("platform", "Linux")
        .attr("platformVersion", "6.1")
        .attr("transcoderActiveVideoSessions", 0usize)
        .attr("updatedAt", super::state::unix_now())
        .attr("version", &state.version)
        .children(
            dirs.iter().map(|(key, title)| {
                Node::new("Directory").attr("count", 1usize).attr("key", *key).attr("title", *title)
            }),
        )
}

pub fn library_root() -> Node {
    Node::new("MediaContainer")
        .attr("size", 3usize)
        .attr("allowSync", false)
        .attr("art", "/:/resources/library-art.png")
        .attr("content", "")
        .attr("identifier", LIBRARY_IDENTIFIER)
        .attr("mediaTagPrefix", "/system/bundle/media/flags/")
        .attr("title1", "Plex Library")
        .children(
            [
                ("sections", "Library Sections"),
                ("recentlyAdded", "Recently Added Content"),
                ("onDeck", "On Deck Content"),
            ]
            .iter()
            .map(|(key, title)| Node::new("Directory").attr("key", *key).attr("title", *title)),
        )
}

fn section_node(s: &Section) -> Node {
    Node::new("Directory")
        .attr("allowSync", true)
        .attr("art", "/:/resources/movie-fanart.jpg")
        .attr("composite", format!("/library/sections/{}/composite/{}", s.key, s.updated_at))
        .attr("filters", true)
        .attr("refreshing", s.scanning_until.is_some_and(|t| t > std::time::Instant::now()))
        .attr("thumb", "/:/resources/movie.png")
        .attr("key", s.key.to_string())
        .attr("type", &s.kind)
        .attr("title", &s.title)
        .attr("agent", &s.agent)
        .attr("scanner", &s.scanner)
        .attr("language", "en-US")
        .attr("uuid", &s.uuid)
        .attr("updatedAt", s.updated_at)
        .attr("createdAt", s.updated_at)
        .attr("scannedAt", s.scanned_at)
        .attr("content", true)
        .attr("directory", true)
        .attr("contentChangedAt", s.updated_at)
        .attr("hidden", 0i64)
        .children(
            s.locations.iter().enumerate().map(|(i, path)| Node::new("Location").attr("id", i + 1).attr("path", path)),
        )
}

/// `GET /library/metadata/{rk}/posters`: the poster candidates — the
/// extracted frame (`media://`), the agent's, every upload
/// (`upload://posters/<key>`) — the one shown `selected`.
pub fn posters(item: &Item) -> Node {
    let mut candidates: Vec<(String, bool)> = Vec::new();
    let selected = |image: &Image| item.poster.as_ref() == Some(image);
    candidates.push((format!("media://{}/frame.jpg", item.rating_key), selected(&Image::Frame)));
    if item.agent_matched {
        let url = format!("https://metadata-static.plex.tv/p/{}/poster.jpg", item.rating_key);
        candidates.push((url.clone(), selected(&Image::Url(url))));
    }
    let current = match &item.poster {
        Some(Image::Upload(bytes)) => Some(super::state::content_key(bytes)),
        _ => None,
    };
    for key in &item.uploads {
        candidates.push((format!("upload://posters/{key}"), current.as_ref() == Some(key)));
    }
    Node::new("MediaContainer").attr("size", candidates.len()).children(candidates.into_iter().map(|(key, sel)| {
        Node::named("Photo", "Metadata")
            .attr("key", key.clone())
            .attr("ratingKey", key.clone())
            .attr("thumb", key)
            .attr("selected", sel)
    }))
}

pub fn sections(state: &PlexState) -> Node {
    Node::new("MediaContainer")
        .attr("size", state.sections.len())
        .attr("allowSync", false)
        .attr("title1", "Plex Library")
        .children(state.sections.iter().map(section_node))
}

fn image_path(item: &Item, kind: &str, image: &Option<Image>) -> Option<String> {
    image.as_ref().map(|_| format!("/library/metadata/{}/{kind}/{}", item.rating_key, item.updated_at))
}

/// An item as Plex lists it; `detail` adds what `/library/metadata/{id}`
/// shows: section, full tags with ids and filters, and locked fields.
pub fn item(state: &PlexState, item: &Item, detail: bool) -> Node {
    let f = |name: &str| item.field(name).map(str::to_string);
    let mut node = Node::named("Video", "Metadata")
        .attr("ratingKey", item.rating_key.to_string())
        .attr("key", format!("/library/metadata/{}", item.rating_key))
        .attr("guid", &item.guid)
        .opt_attr("studio", f("studio"))
        .attr("type", "movie")
        .attr("title", f("title").unwrap_or_default())
        .opt_attr("titleSort", f("titleSort"))
        .opt_attr("originalTitle", f("originalTitle"));
    if detail {
        let section = state.section(item.section);
        node = node
            .opt_attr("librarySectionTitle", section.map(|s| s.title.clone()))
            .attr("librarySectionID", i64::from(item.section))
            .attr("librarySectionKey", format!("/library/sections/{}", item.section));
    }
    node = node
        .opt_attr("contentRating", f("contentRating"))
        .opt_attr("rating", f("rating").and_then(|r| r.parse::<f64>().ok()))
        .opt_attr("userRating", item.user_rating)
        .opt_attr("summary", f("summary"))
        .opt_attr("year", f("year").and_then(|y| y.parse::<i64>().ok()))
        .opt_attr("tagline", f("tagline"))
        .opt_attr("thumb", image_path(item, "thumb", &item.poster))
        .opt_attr("art", image_path(item, "art", &item.art))
        .attr("duration", item.duration_ms())
        .opt_attr("originallyAvailableAt", f("originallyAvailableAt"))
        .attr("addedAt", item.added_at)
        .attr("updatedAt", item.updated_at)
        .children(item.media.iter().map(|m| {
            Node::new("Media")
                .attr("id", m.id)
                .attr("duration", m.duration_ms)
                .attr("bitrate", 4_000i64)
                .attr("width", 1920i64)
                .attr("height", 1080i64)
                .attr("aspectRatio", 1.78)
                .attr("audioChannels", 2i64)
                .attr("audioCodec", "aac")
                .attr("videoCodec", "h264")
                .attr("videoResolution", "1080")
                .attr("container", &m.container)
                .attr("videoFrameRate", "24p")
                .children(m.parts.iter().map(|p| {
                    Node::new("Part")
                        .attr("id", p.id)
                        .attr("key", format!("/library/parts/{}/{}/file.{}", p.id, item.added_at, p.container))
                        .attr("duration", p.duration_ms)
                        .attr("file", &p.file)
                        .attr("size", p.size)
                        .attr("container", &p.container)
                        .opt_attr("deletedAt", p.deleted_at)
                }))
        }));
    for kind in TagKind::ALL {
        // Listings show only the first few tags of each kind; the detail
        // read has them all (python-plexapi #409: "search results only show
        // 3 items for each movie even if there are more").
        let shown = if detail { usize::MAX } else { LISTED_TAGS };
        for tag in item.tags.get(&kind).into_iter().flatten().take(shown) {
            let mut t = Node::new(kind.element());
            if detail {
                t = t.attr("id", tag.id).attr("filter", format!("{}={}", kind.param(), tag.id));
            }
            t = t.attr("tag", &tag.tag);
            if detail && kind == TagKind::Actor {
                t = t.opt_attr("role", tag.role.clone()).opt_attr("thumb", tag.thumb.clone());
            }
            node = node.child(t);
        }
    }
    if detail {
        node = node.child(Node::new("Guid").attr("id", item.guid.clone()));
        node = node.children(item.locked.iter().map(|name| Node::new("Field").attr("locked", true).attr("name", name)));
    }
    node
}

/// Tags of one kind a listing shows per item.
const LISTED_TAGS: usize = 3;

/// The container of a section listing page.
pub fn section_container(section: &Section, page: Vec<Node>, offset: usize, total: usize) -> Node {
    Node::new("MediaContainer")
        .attr("size", page.len())
        .attr("totalSize", total)
        .attr("offset", offset)
        .attr("allowSync", true)
        .attr("art", "/:/resources/movie-fanart.jpg")
        .attr("identifier", LIBRARY_IDENTIFIER)
        .attr("librarySectionID", i64::from(section.key))
        .attr("librarySectionTitle", &section.title)
        .attr("librarySectionUUID", &section.uuid)
        .attr("mediaTagPrefix", "/system/bundle/media/flags/")
        .attr("mediaTagVersion", 1_700_000_000i64)
        .attr("thumb", "/:/resources/movie.png")
        .attr("title1", &section.title)
        .attr("title2", "All Movies")
        .attr("viewGroup", "movie")
        .attr("viewMode", 65_592i64)
        .children(page)
}

/// The container of `/library/metadata/{id}`.
pub fn metadata_container(state: &PlexState, it: &Item) -> Node {
    let section = state.section(it.section);
    Node::new("MediaContainer")
        .attr("size", 1usize)
        .attr("allowSync", true)
        .attr("identifier", LIBRARY_IDENTIFIER)
        .attr("librarySectionID", i64::from(it.section))
        .opt_attr("librarySectionTitle", section.map(|s| s.title.clone()))
        .opt_attr("librarySectionUUID", section.map(|s| s.uuid.clone()))
        .attr("mediaTagPrefix", "/system/bundle/media/flags/")
        .attr("mediaTagVersion", 1_700_000_000i64)
        .child(item(state, it, true))
}

/// Several items read at once: each names its own section.
pub fn metadata_list(state: &PlexState, found: &[&Item]) -> Node {
    found.iter().fold(
        Node::new("MediaContainer")
            .attr("size", found.len())
            .attr("allowSync", true)
            .attr("identifier", LIBRARY_IDENTIFIER)
            .attr("mediaTagPrefix", "/system/bundle/media/flags/")
            .attr("mediaTagVersion", 1_700_000_000i64),
        |node, it| node.child(item(state, it, true)),
    )
}

pub fn hubs(state: &PlexState, found: Vec<&Item>) -> Node {
    let hub = Node::new("Hub")
        .attr("title", "Movies")
        .attr("type", "movie")
        .attr("hubIdentifier", "movie")
        .attr("context", "hub.movie")
        .attr("size", found.len())
        .attr("more", false)
        .attr("style", "shelf")
        .children(found.into_iter().map(|i| item(state, i, false)));
    Node::new("MediaContainer").attr("size", 1usize).child(hub)
}

/// Plex's XML answer while it runs database migrations.
pub const MAINTENANCE_XML: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response code=\"503\" title=\"Maintenance\" status=\"Plex Media Server is currently running database migrations.\"/>\n";

/// Plex's HTML error bodies.
pub fn html_error(code: u16, reason: &str) -> String {
    format!("<html><head><title>{reason}</title></head><body><h1>{code} {reason}</h1></body></html>")
}
