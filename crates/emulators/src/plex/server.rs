//! HTTP side of the Plex emulator: accept loop (so the port can really
//! close), fault and auth middleware, request log, and the handlers.

use std::net::SocketAddr;
use std::ops::Bound;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use hyper_util::rt::TokioIo;
use rand::RngExt;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::render::Node;
use super::state::{in_folder, Image, Item, PlexState};
use super::{views, FaultConfig, RequestRecord, Restriction, Shared, TokenUse};
use crate::table::{Listing, Order};

type Shr = State<Arc<Shared>>;

/// Serves until aborted; closes the listener and cuts open connections
/// while the emulator is "down", and rebinds the same port when it is up.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let addr = listener.local_addr().expect("bound listener has an address");
    let app = router(Arc::clone(&shared));
    let mut up = shared.up.subscribe();
    // A change made before this task first ran (a `down_for` right after
    // start) is not a "change" to a fresh receiver: start from its value.
    up.mark_changed();
    let mut listener = Some(listener);
    let mut conns = JoinSet::new();
    loop {
        match &listener {
            Some(l) => {
                tokio::select! {
                    accepted = l.accept() => {
                        if let Ok((stream, _)) = accepted {
                            conns.spawn(serve_connection(stream, app.clone()));
                        }
                    }
                    changed = up.changed() => {
                        if changed.is_err() { return; }
                        if !*up.borrow_and_update() {
                            listener = None;
                            conns.abort_all();
                            shared.listening.send_replace(false);
                        }
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
            None => {
                if up.changed().await.is_err() {
                    return;
                }
                if *up.borrow_and_update() {
                    listener = Some(rebind(addr).await);
                    shared.listening.send_replace(true);
                }
            }
        }
    }
}

async fn rebind(addr: SocketAddr) -> TcpListener {
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn serve_connection(stream: tokio::net::TcpStream, app: Router) {
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let app = app.clone();
        async move { tower::ServiceExt::oneshot(app, req.map(Body::new)).await }
    });
    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
}

fn router(shared: Arc<Shared>) -> Router {
    let admin = Router::new()
        .route("/faults", get(admin_get_faults).post(admin_set_faults))
        .route("/down", post(admin_down))
        .route("/maintenance", post(admin_maintenance))
        .route("/requests", get(admin_requests).delete(admin_clear_requests))
        .route("/files", post(admin_add_file))
        .route("/providers", post(admin_add_provider))
        .route("/users", post(admin_add_user));
    Router::new()
        // Plex's own `/:/rate` is a literal colon, not a capture.
        .without_v07_checks()
        .route("/", get(root))
        .route("/identity", get(identity))
        .route("/library", get(library_root))
        .route("/library/sections", get(sections))
        .route("/library/sections/{key}/all", get(section_all).put(section_edit))
        .route("/library/sections/{key}/refresh", get(section_scan).put(section_scan).post(section_scan))
        .route("/library/metadata/{rk}", get(metadata).put(metadata_edit))
        .route("/library/metadata/{rk}/refresh", put(item_refresh).post(item_refresh))
        .route("/library/metadata/{rk}/matches", get(item_matches))
        .route("/library/metadata/{rk}/match", put(item_fix_match))
        .route("/library/metadata/{rk}/posters", get(list_posters).post(upload_poster).put(upload_poster))
        .route("/library/metadata/{rk}/arts", post(upload_art).put(upload_art))
        .route("/library/metadata/{rk}/thumb/{ts}", get(get_poster))
        .route("/library/metadata/{rk}/art/{ts}", get(get_art))
        .route("/hubs/search", get(hub_search))
        .route("/:/rate", put(rate).get(rate))
        .route("/:/plugins/{id}/prefs", get(agent_prefs))
        .nest("/_emulator", admin)
        .fallback(|| async { html(StatusCode::NOT_FOUND, "Not Found") })
        .layer(middleware::from_fn_with_state(Arc::clone(&shared), fault_layer))
        .with_state(shared)
}

fn html(status: StatusCode, reason: &str) -> Response {
    (status, [(header::CONTENT_TYPE, "text/html")], views::html_error(status.as_u16(), reason)).into_response()
}

fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()).into_owned().collect()
}

fn wants_json(headers: &HeaderMap) -> bool {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("application/json"))
}

/// Answers `node` as XML, or JSON when the client asked for it.
fn reply(headers: &HeaderMap, node: &Node) -> Response {
    if wants_json(headers) {
        Json(node.to_json()).into_response()
    } else {
        ([(header::CONTENT_TYPE, "text/xml;charset=utf-8")], node.to_xml()).into_response()
    }
}

/// Faults, auth and the request log, in the order a real outage shows them.
async fn fault_layer(State(shared): Shr, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    if path.starts_with("/_emulator/") {
        return next.run(req).await;
    }
    let mut query = query_pairs(req.uri().query());
    let header_token = req.headers().get("X-Plex-Token").and_then(|v| v.to_str().ok()).map(str::to_string);
    let query_token = query.iter().find(|(k, _)| k == "X-Plex-Token").map(|(_, v)| v.clone());
    query.retain(|(k, _)| k != "X-Plex-Token");
    let token_use = match (&header_token, &query_token) {
        (Some(_), _) => TokenUse::Header,
        (None, Some(_)) => TokenUse::Query,
        _ => TokenUse::None,
    };
    let mut record = RequestRecord {
        method: req.method().to_string(),
        path: path.clone(),
        query,
        status: 0,
        json: wants_json(req.headers()),
        token: token_use,
        fault: None,
    };

    let config = shared.faults.lock().config.clone();
    if let Some((fault, response)) = in_front_of_plex(&config, &req) {
        record.fault = Some(fault.into());
        record.status = response.status().as_u16();
        shared.log.lock().push(record);
        return response;
    }
    // Held until the answer is built: requests beyond capacity queue here.
    let _slot = match config.capacity {
        0 => None,
        n => Some(shared.slot(n).await),
    };
    let _counted = super::InFlight::enter(&shared);
    if config.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(config.latency_ms)).await;
    }
    while shared.faults.lock().config.hang {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shared.state.lock().materialize_due(Instant::now());

    let (fault_response, drop_body) = decide_fault(&shared, &config);
    let response = if let Some((fault, response)) = fault_response {
        record.fault = Some(fault.to_string());
        response
    } else if let Some(restriction) = managed_user(&shared, &config, header_token.as_ref().or(query_token.as_ref())) {
        if req.method() != axum::http::Method::GET || path.ends_with("/refresh") || path.starts_with("/:/") {
            html(StatusCode::FORBIDDEN, "Forbidden")
        } else {
            let mut req = req;
            req.extensions_mut().insert(restriction);
            next.run(req).await
        }
    } else if path != "/identity" && !token_ok(&shared, &config, header_token.or(query_token)) {
        html(StatusCode::UNAUTHORIZED, "Unauthorized")
    } else if refused_to_a_shared_user(&config, req.method(), &path) {
        html(StatusCode::FORBIDDEN, "Forbidden")
    } else {
        let response = untidy(&config, next.run(req).await).await;
        if drop_body {
            record.fault = Some("dropped".into());
            truncate(response).await
        } else {
            response
        }
    };
    record.status = response.status().as_u16();
    if !shared.record_queries.load(std::sync::atomic::Ordering::Relaxed) {
        record.query = Vec::new();
    }
    shared.log.lock().push(record);
    response
}

/// What a proxy in front of Plex answers itself: its login page, or `414`
/// for a request line over its limit.
fn in_front_of_plex(config: &FaultConfig, req: &Request) -> Option<(&'static str, Response)> {
    if config.login_page {
        let page = "<!DOCTYPE html><html><head><title>Sign in</title></head><body><form method=\"post\" \
                    action=\"/login\"><input name=\"username\"><input name=\"password\" type=\"password\">\
                    </form></body></html>";
        let headers = [(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::SERVER, "nginx")];
        return Some(("login_page", (StatusCode::OK, headers, page).into_response()));
    }
    // `GET /path?query HTTP/1.1`, as the proxy reads it.
    let line = req.method().as_str().len() + 1 + req.uri().to_string().len() + " HTTP/1.1".len();
    if config.max_request_line > 0 && line > config.max_request_line {
        return Some(("request_line", html(StatusCode::URI_TOO_LONG, "Request-URI Too Large")));
    }
    None
}

/// With a shared user's token, Plex lists but refuses every change: edits,
/// uploads, refreshes and scans (a scan is a `GET` of `…/refresh`).
fn refused_to_a_shared_user(config: &FaultConfig, method: &axum::http::Method, path: &str) -> bool {
    config.read_only_token && (method != axum::http::Method::GET || path.ends_with("/refresh"))
}

/// JSON answers made as untidy as real servers' are, when asked.
async fn untidy(config: &FaultConfig, response: Response) -> Response {
    let json =
        response.headers().get(header::CONTENT_TYPE).is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
    if !json || !(config.broken_utf8 || config.locked_as_number) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let mut bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default().to_vec();
    if config.locked_as_number {
        bytes = String::from_utf8_lossy(&bytes).replace("\"locked\":true", "\"locked\":1").into_bytes();
    }
    if config.broken_utf8 {
        // The first two bytes of a three-byte character ("…"), cut.
        if let Some(at) = find(&bytes, b"\"title\":\"") {
            let at = at + b"\"title\":\"".len();
            bytes.splice(at..at, [0xE2, 0x80]);
        }
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(bytes))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The restriction of a managed user's token.
fn managed_user(shared: &Shared, config: &FaultConfig, token: Option<&String>) -> Option<Restriction> {
    if config.token_revoked {
        return None;
    }
    shared.managed.lock().get(token?).cloned()
}

fn token_ok(shared: &Shared, config: &FaultConfig, token: Option<String>) -> bool {
    !config.token_revoked && token.is_some_and(|t| t == shared.token)
}

/// Picks the fault, if any, that answers this request instead of the
/// handler, and whether the handler's answer is to be cut off.
fn decide_fault(shared: &Shared, config: &FaultConfig) -> (Option<(&'static str, Response)>, bool) {
    let mut faults = shared.faults.lock();
    if faults.maintenance_until.is_some_and(|until| Instant::now() < until) {
        let resp = (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/xml;charset=utf-8")],
            views::MAINTENANCE_XML,
        )
            .into_response();
        return (Some(("maintenance", resp)), false);
    }
    if faults.config.throttle_next > 0 {
        faults.config.throttle_next -= 1;
        let mut resp = html(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests");
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(config.retry_after_secs));
        return (Some(("throttled", resp)), false);
    }
    if config.error_rate > 0.0 && faults.rng.random_bool(config.error_rate.min(1.0)) {
        let status = [StatusCode::INTERNAL_SERVER_ERROR, StatusCode::BAD_GATEWAY, StatusCode::SERVICE_UNAVAILABLE]
            [faults.rng.random_range(0..3)];
        let reason = status.canonical_reason().unwrap_or("Error");
        return (Some(("random_5xx", html(status, reason))), false);
    }
    let drop = if faults.config.drop_next > 0 {
        faults.config.drop_next -= 1;
        true
    } else {
        config.drop_rate > 0.0 && faults.rng.random_bool(config.drop_rate.min(1.0))
    };
    (None, drop)
}

/// Sends the headers and half the body, then cuts the connection.
async fn truncate(response: Response) -> Response {
    let (mut parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
    let full = bytes.len().max(1);
    let half = bytes.slice(0..bytes.len() / 2);
    parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(full));
    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(half),
        Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection dropped by fault injection")),
    ];
    Response::from_parts(parts, Body::from_stream(futures_util::stream::iter(chunks)))
}

async fn identity(State(s): Shr, headers: HeaderMap) -> Response {
    reply(&headers, &views::identity(&s.state.lock()))
}

async fn root(State(s): Shr, headers: HeaderMap) -> Response {
    reply(&headers, &views::root(&s.state.lock()))
}

async fn library_root(headers: HeaderMap) -> Response {
    reply(&headers, &views::library_root())
}

async fn sections(State(s): Shr, headers: HeaderMap) -> Response {
    reply(&headers, &views::sections(&s.state.lock()))
}

/// Paging from headers or query parameters, as Plex accepts both.
fn paging(headers: &HeaderMap, query: &[(String, String)]) -> (usize, Option<usize>) {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| query.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
            .and_then(|v| v.trim().parse::<usize>().ok())
    };
    (get("X-Plex-Container-Start").unwrap_or(0), get("X-Plex-Container-Size"))
}

/// The listing filters Plex supports that we use (see [`matches_filters`]).
const FILTERS: &[&str] = &["title", "file", "addedAt>>", "updatedAt>>", "addedAt<<", "updatedAt<<"];

/// Whether `item` passes the listing filters Plex supports that we use:
/// `title=` (contains, any case), `file=` (folder of the path),
/// `addedAt>>=`/`updatedAt>>=` (after) and `<<=` (before).
fn matches_filters(item: &Item, query: &[(String, String)]) -> bool {
    query.iter().all(|(key, value)| match key.as_str() {
        "title" => item.field("title").unwrap_or("").to_lowercase().contains(&value.to_lowercase()),
        "file" => {
            let folder = value.rsplit_once(['/', '\\']).map_or(value.as_str(), |(dir, _)| dir);
            item.files().any(|p| in_folder(&p.file, folder))
        }
        "addedAt>>" | "updatedAt>>" | "addedAt<<" | "updatedAt<<" => {
            let at = if key.starts_with("added") { item.added_at } else { item.updated_at };
            let Ok(bound) = value.parse::<i64>() else { return false };
            if key.ends_with(">>") {
                at > bound
            } else {
                at < bound
            }
        }
        _ => true,
    })
}

/// The field and direction of a `sort=` (`addedAt:desc`); by title when none.
fn sort_field(sort: Option<&str>) -> (&str, bool) {
    match sort {
        Some(s) => s.split_once(':').map_or((s, false), |(f, dir)| (f, dir == "desc")),
        None => ("titleSort", false),
    }
}

/// The listing of the items' index that answers a listing of `section`
/// sorted by `addedAt` and filtered, if at all, by `addedAt` alone (what
/// PlexSync pages with). `None` for the others (the caller filters and
/// sorts).
fn added_listing(section: u32, sort: Option<&str>, query: &[(String, String)]) -> Option<Listing<(u32, i64)>> {
    let (field, desc) = sort_field(sort);
    if field != "addedAt" {
        return None;
    }
    let (mut after, mut before) = (None::<i64>, None::<i64>);
    for (key, value) in query.iter().filter(|(k, _)| FILTERS.contains(&k.as_str())) {
        let slot = match key.as_str() {
            "addedAt>>" => &mut after,
            "addedAt<<" => &mut before,
            _ => return None,
        };
        // One that is no number matches nothing: the filtering path says so.
        let bound = value.parse::<i64>().ok()?;
        // Several bounds of a side all apply: the tightest one counts.
        let tighter =
            if key == "addedAt>>" { bound.max(slot.unwrap_or(i64::MIN)) } else { bound.min(slot.unwrap_or(i64::MAX)) };
        *slot = Some(tighter);
    }
    Some(Listing {
        order: Order::Key,
        desc,
        from: after.map_or(Bound::Included((section, i64::MIN)), |a| Bound::Excluded((section, a))),
        to: before.map_or(Bound::Included((section, i64::MAX)), |b| Bound::Excluded((section, b))),
    })
}

fn sort_items(items: &mut [&Item], sort: Option<&str>) {
    let (field, desc) = sort_field(sort);
    match field {
        "addedAt" => items.sort_by_key(|i| (i.added_at, i.rating_key)),
        "updatedAt" => items.sort_by_key(|i| (i.updated_at, i.rating_key)),
        "id" | "ratingKey" => items.sort_by_key(|i| i.rating_key),
        _ => items.sort_by_cached_key(|i| {
            let title = i.field("titleSort").or(i.field("title")).unwrap_or("").to_lowercase();
            (title, i.rating_key)
        }),
    }
    if desc {
        items.reverse();
    }
}

async fn section_all(
    State(s): Shr,
    Path(key): Path<u32>,
    RawQuery(raw): RawQuery,
    restriction: Option<Extension<Restriction>>,
    headers: HeaderMap,
) -> Response {
    let query = query_pairs(raw.as_deref());
    let mut state = s.state.lock();
    if let Some(Extension(r)) = restriction {
        // A managed user's listing: what the restriction shows, unpaged.
        let Some(section) = state.section(key).cloned() else {
            return html(StatusCode::NOT_FOUND, "Not Found");
        };
        let shown: Vec<Node> = state
            .items
            .values()
            .filter(|i| i.section == key && r.shows(i))
            .map(|i| views::item(&state, i, false))
            .collect();
        let total = shown.len();
        return reply(&headers, &views::section_container(&section, shown, 0, total));
    }
    let Some(section) = state.section(key).cloned() else {
        return html(StatusCode::NOT_FOUND, "Not Found");
    };
    let wanted_type = query.iter().find(|(k, _)| k == "type").map(|(_, v)| v.as_str());
    if wanted_type.is_some_and(|t| t != "1") {
        let node = views::section_container(&section, Vec::new(), 0, 0);
        return paged(reply(&headers, &node), 0, 0);
    }
    let sort = query.iter().find(|(k, _)| k == "sort").map(|(_, v)| v.as_str());
    let (start, size) = paging(&headers, &query);
    let (total, page) = match added_listing(key, sort, &query) {
        Some(listing) => state.items.page(&listing, start, size),
        None => filtered_page(&state, key, sort, &query, start, size),
    };
    let page = page.iter().map(|rk| views::item(&state, &state.items[rk], false));
    let node = views::section_container(&section, page.collect(), start, total);
    paged(reply(&headers, &node), start, total)
}

/// A page of a section's listing, filtered and sorted one item at a time:
/// the listings the items' index does not answer. The total and the page's
/// ratingKeys.
fn filtered_page(
    state: &PlexState,
    section: u32,
    sort: Option<&str>,
    query: &[(String, String)],
    start: usize,
    size: Option<usize>,
) -> (usize, Vec<u64>) {
    let mut items: Vec<&Item> =
        state.items.values().filter(|i| i.section == section && matches_filters(i, query)).collect();
    sort_items(&mut items, sort);
    let page = items.iter().skip(start).take(size.unwrap_or(usize::MAX)).map(|i| i.rating_key).collect();
    (items.len(), page)
}

fn paged(mut response: Response, start: usize, total: usize) -> Response {
    let h = response.headers_mut();
    h.insert("X-Plex-Container-Start", HeaderValue::from(start));
    h.insert("X-Plex-Container-Total-Size", HeaderValue::from(total));
    response
}

fn apply_edit(s: &Shared, section: Option<u32>, ids: &[u64], raw: Option<&str>) -> Response {
    let mut state = s.state.lock();
    for id in ids {
        match state.items.get(id) {
            Some(item) if section.is_none_or(|sec| sec == item.section) => {}
            _ => return html(StatusCode::NOT_FOUND, "Not Found"),
        }
    }
    match state.apply_edit(ids, &query_pairs(raw)) {
        Ok(()) => StatusCode::OK.into_response(),
        Err(_) => html(StatusCode::BAD_REQUEST, "Bad Request"),
    }
}

/// `PUT /library/sections/{key}/all`: edits the items `id` lists, and with
/// no `id` (or an empty one) every item of the section that passes the
/// listing filters — the spec's own example renames a whole section.
async fn section_edit(State(s): Shr, Path(key): Path<u32>, RawQuery(raw): RawQuery) -> Response {
    let query = query_pairs(raw.as_deref());
    let ids = query.iter().find(|(k, _)| k == "id").map(|(_, v)| v.trim()).filter(|v| !v.is_empty());
    let ids: Result<Vec<u64>, _> = match ids {
        Some(ids) => ids.split(',').map(|id| id.trim().parse()).collect(),
        None => {
            let state = s.state.lock();
            if state.section(key).is_none() {
                return html(StatusCode::NOT_FOUND, "Not Found");
            }
            Ok(state
                .items
                .values()
                .filter(|i| i.section == key && matches_filters(i, &query))
                .map(|i| i.rating_key)
                .collect())
        }
    };
    match ids {
        Ok(ids) => apply_edit(&s, Some(key), &ids, raw.as_deref()),
        Err(_) => html(StatusCode::BAD_REQUEST, "Bad Request"),
    }
}

async fn metadata_edit(State(s): Shr, Path(rk): Path<String>, RawQuery(raw): RawQuery) -> Response {
    match rk.parse::<u64>() {
        Ok(rk) => apply_edit(&s, None, &[rk], raw.as_deref()),
        Err(_) => html(StatusCode::NOT_FOUND, "Not Found"),
    }
}

async fn metadata(
    State(s): Shr,
    Path(rk): Path<String>,
    restriction: Option<Extension<Restriction>>,
    headers: HeaderMap,
) -> Response {
    let state = s.state.lock();
    let shown = |i: &&Item| restriction.as_ref().is_none_or(|Extension(r)| r.shows(i));
    // Several keys (`k1,k2,…`, as python-plexapi's fetchItems sends):
    // the items found, in the order asked, a missing one simply absent.
    if rk.contains(',') {
        let found: Vec<&Item> = rk
            .split(',')
            .filter_map(|k| k.parse::<u64>().ok())
            .filter_map(|k| state.items.get(&k))
            .filter(shown)
            .collect();
        return reply(&headers, &views::metadata_list(&state, &found));
    }
    match rk.parse::<u64>().ok().and_then(|rk| state.items.get(&rk)).filter(shown) {
        Some(item) => reply(&headers, &views::metadata_container(&state, item)),
        None => html(StatusCode::NOT_FOUND, "Not Found"),
    }
}

async fn section_scan(State(s): Shr, Path(key): Path<u32>, RawQuery(raw): RawQuery) -> Response {
    let query = query_pairs(raw.as_deref());
    let folder = query.iter().find(|(k, _)| k == "path").map(|(_, v)| v.clone());
    let mut state = s.state.lock();
    if state.section(key).is_none() {
        return html(StatusCode::NOT_FOUND, "Not Found");
    }
    state.request_scan(key, folder.as_deref());
    StatusCode::OK.into_response()
}

fn with_item(s: &Shared, rk: &str, f: impl FnOnce(&mut Item)) -> Response {
    let mut state = s.state.lock();
    let Some(mut item) = rk.parse::<u64>().ok().and_then(|rk| state.items.get_mut(&rk)) else {
        return html(StatusCode::NOT_FOUND, "Not Found");
    };
    f(&mut item);
    item.updated_at = super::state::unix_now().max(item.updated_at);
    StatusCode::OK.into_response()
}

/// "Refresh metadata": an item of a provider's section asks it again.
async fn item_refresh(State(s): Shr, Path(rk): Path<String>) -> Response {
    let provider_section = {
        let state = s.state.lock();
        let section = rk.parse::<u64>().ok().and_then(|rk| state.items.get(&rk)).map(|i| i.section);
        section.is_some_and(|section| state.provider_of(section).is_some())
    };
    with_item(&s, &rk, |item| {
        item.refreshes += 1;
        if provider_section {
            item.pull = Some(super::state::Pull::Refresh);
        }
    })
}

/// Fix Match's search (`?manual=1&title=…&year=…`): the section's
/// provider asked with `manual=1`; its candidates as `SearchResult`s.
async fn item_matches(State(s): Shr, Path(rk): Path<String>, RawQuery(raw): RawQuery) -> Response {
    let query = query_pairs(raw.as_deref());
    let get = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let Some(rk) = rk.parse::<u64>().ok() else { return html(StatusCode::NOT_FOUND, "Not Found") };
    let year = get("year").and_then(|y| y.parse().ok());
    match super::agent::search(&s, rk, get("title"), year).await {
        Ok(results) => Json(serde_json::json!({"MediaContainer": {"size": results.len(), "SearchResult": results}}))
            .into_response(),
        Err(e) => html(StatusCode::BAD_REQUEST, &e),
    }
}

/// Fix Match's choice (`?guid=…`): the item reads that guid's metadata.
async fn item_fix_match(State(s): Shr, Path(rk): Path<String>, RawQuery(raw): RawQuery) -> Response {
    let Some(guid) = query_pairs(raw.as_deref()).into_iter().find(|(k, _)| k == "guid").map(|(_, v)| v) else {
        return html(StatusCode::BAD_REQUEST, "Bad Request");
    };
    with_item(&s, &rk, |item| item.pull = Some(super::state::Pull::Fix(guid)))
}

/// A poster or background from `?url=` (Plex fetches it) or from the body.
fn image_from(raw: Option<&str>, body: Bytes) -> Option<Image> {
    let url = query_pairs(raw).into_iter().find(|(k, _)| k == "url").map(|(_, v)| v);
    match url {
        Some(url) if !url.is_empty() => Some(Image::Url(url)),
        _ if !body.is_empty() => Some(Image::Upload(body.to_vec())),
        _ => None,
    }
}

/// What Plex makes of an image sent to it: a URL on the LAN goes through
/// its cloud (refused and written down); bytes it cannot decode, or that
/// are labelled as another type, are taken and show nothing (written down).
fn check_image(s: &Shared, rk: &str, image: &Image, headers: &HeaderMap) {
    let mut state = s.state.lock();
    match image {
        Image::Url(url) => {
            state.through_cloud(url);
        }
        Image::Upload(bytes) => {
            let said = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
            let actual = super::state::image_type(bytes);
            if actual.is_none() || (!said.is_empty() && Some(said) != actual) {
                state.agent_log.push(format!("item {rk}: an uploaded image Plex cannot decode ({said:?})"));
            }
        }
        Image::Frame => {}
    }
}

/// An upload request: its image (a `url` or the body), checked as Plex
/// would take it (see [`check_image`]), handed to `place` on the item.
fn upload(
    s: &Shared,
    rk: &str,
    raw: Option<&str>,
    headers: &HeaderMap,
    body: Bytes,
    place: impl FnOnce(&mut Item, Image),
) -> Response {
    let Some(image) = image_from(raw, body) else { return html(StatusCode::BAD_REQUEST, "Bad Request") };
    check_image(s, rk, &image, headers);
    with_item(s, rk, |item| place(item, image))
}

async fn upload_poster(
    State(s): Shr,
    Path(rk): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    upload(&s, &rk, raw.as_deref(), &headers, body, |item, image| {
        // An upload joins the candidates (once per content) and is selected.
        if let Image::Upload(bytes) = &image {
            let key = super::state::content_key(bytes);
            if !item.uploads.contains(&key) {
                item.uploads.push(key);
            }
        }
        item.poster = Some(image)
    })
}

async fn list_posters(State(s): Shr, Path(rk): Path<String>, headers: HeaderMap) -> Response {
    let state = s.state.lock();
    match rk.parse::<u64>().ok().and_then(|rk| state.items.get(&rk)) {
        Some(item) => reply(&headers, &views::posters(item)),
        None => html(StatusCode::NOT_FOUND, "Not Found"),
    }
}

async fn upload_art(
    State(s): Shr,
    Path(rk): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    upload(&s, &rk, raw.as_deref(), &headers, body, |item, image| item.art = Some(image))
}

fn serve_image(s: &Shared, rk: &str, pick: impl Fn(&Item) -> Option<&Image>) -> Response {
    let state = s.state.lock();
    let image = rk.parse::<u64>().ok().and_then(|rk| state.items.get(&rk)).and_then(pick);
    match image {
        Some(Image::Upload(bytes)) => ([(header::CONTENT_TYPE, "image/jpeg")], bytes.clone()).into_response(),
        // The emulator does not fetch URLs; it shows where the image came from.
        Some(Image::Url(url)) => (StatusCode::FOUND, [(header::LOCATION, url.clone())]).into_response(),
        // A frame of the video: any JPEG stands for it.
        Some(Image::Frame) => {
            ([(header::CONTENT_TYPE, "image/jpeg")], b"\xFF\xD8\xFF\xE0frame".to_vec()).into_response()
        }
        None => html(StatusCode::NOT_FOUND, "Not Found"),
    }
}

async fn get_poster(State(s): Shr, Path((rk, _ts)): Path<(String, String)>) -> Response {
    serve_image(&s, &rk, |i| i.poster.as_ref())
}

async fn get_art(State(s): Shr, Path((rk, _ts)): Path<(String, String)>) -> Response {
    serve_image(&s, &rk, |i| i.art.as_ref())
}

async fn hub_search(
    State(s): Shr,
    RawQuery(raw): RawQuery,
    restriction: Option<Extension<Restriction>>,
    headers: HeaderMap,
) -> Response {
    let query = query_pairs(raw.as_deref());
    let needle = query.iter().find(|(k, _)| k == "query").map(|(_, v)| v.to_lowercase()).unwrap_or_default();
    let limit = query.iter().find(|(k, _)| k == "limit").and_then(|(_, v)| v.parse().ok()).unwrap_or(10);
    let state = s.state.lock();
    let found = state
        .items
        .values()
        .filter(|i| restriction.as_ref().is_none_or(|Extension(r)| r.shows(i)))
        .filter(|i| !needle.is_empty() && i.field("title").unwrap_or("").to_lowercase().contains(&needle))
        .take(limit)
        .collect();
    reply(&headers, &views::hubs(&state, found))
}

// ---- admin endpoints (no token; for tests and people at a terminal) ----

async fn admin_get_faults(State(s): Shr) -> Json<FaultConfig> {
    Json(s.faults.lock().config.clone())
}

#[derive(Deserialize)]
struct FaultUpdate {
    #[serde(flatten)]
    config: FaultConfig,
    seed: Option<u64>,
}

async fn admin_set_faults(State(s): Shr, Json(update): Json<FaultUpdate>) -> Json<FaultConfig> {
    let mut faults = s.faults.lock();
    faults.config = update.config;
    if let Some(seed) = update.seed {
        faults.reseed(seed);
    }
    Json(faults.config.clone())
}

#[derive(Deserialize)]
struct Seconds {
    secs: f64,
}

async fn admin_down(State(s): Shr, Json(d): Json<Seconds>) -> StatusCode {
    s.down_for(Duration::from_secs_f64(d.secs.max(0.0)));
    StatusCode::ACCEPTED
}

async fn admin_maintenance(State(s): Shr, Json(d): Json<Seconds>) -> StatusCode {
    s.faults.lock().maintenance_until = Some(Instant::now() + Duration::from_secs_f64(d.secs.max(0.0)));
    StatusCode::NO_CONTENT
}

async fn admin_requests(State(s): Shr) -> Json<Vec<RequestRecord>> {
    Json(s.log.lock().clone())
}

async fn admin_clear_requests(State(s): Shr) -> StatusCode {
    s.log.lock().clear();
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct NewFile {
    path: String,
    size: u64,
    #[serde(default)]
    duration_ms: u64,
}

#[derive(Deserialize)]
struct NewProvider {
    url: String,
    /// Make it the agent of this section too.
    section: Option<u32>,
}

async fn admin_add_provider(State(s): Shr, Json(p): Json<NewProvider>) -> Response {
    match super::add_provider(&s, &p.url).await {
        Ok(id) => {
            if let Some(section) = p.section {
                let mut state = s.state.lock();
                if let Some(sec) = state.sections.iter_mut().find(|x| x.key == section) {
                    sec.agent = id.clone();
                }
            }
            Json(serde_json::json!({"identifier": id})).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e).into_response(),
    }
}

#[derive(Deserialize)]
struct NewUser {
    token: String,
    #[serde(flatten)]
    restriction: Restriction,
}

/// A managed user whose token sees only the content ratings it is allowed.
async fn admin_add_user(State(s): Shr, Json(u): Json<NewUser>) -> StatusCode {
    s.managed.lock().insert(u.token, u.restriction);
    StatusCode::CREATED
}

/// A legacy agent's preferences (`GET /:/plugins/<identifier>/prefs`, as
/// python-plexapi's `Agent.settings` reads them): one `Setting` each with
/// its `id` and stored `value`; 404 once the agent is gone.
async fn agent_prefs(State(s): Shr, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let state = s.state.lock();
    let Some(prefs) = state.legacy_agents.get(&id) else {
        return html(StatusCode::NOT_FOUND, "Not Found");
    };
    let settings = prefs.iter().map(|(k, v)| {
        let kind = if matches!(v.as_str(), "true" | "false") { "bool" } else { "text" };
        Node::new("Setting").attr("id", k.as_str()).attr("type", kind).attr("value", v.as_str())
    });
    let node = Node::new("MediaContainer").attr("size", prefs.len()).children(settings);
    reply(&headers, &node)
}

/// The token's user rates an item (`/:/rate?key=&identifier=&rating=`;
/// `-1` clears). Plex Web and python-plexapi send `PUT`, old agents `GET`.
async fn rate(State(s): Shr, RawQuery(raw): RawQuery) -> Response {
    let query = query_pairs(raw.as_deref());
    let param = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    if param("identifier") != Some(views::LIBRARY_IDENTIFIER) {
        return html(StatusCode::BAD_REQUEST, "Bad Request");
    }
    let rating = match param("rating").map(str::parse::<f64>) {
        Some(Ok(-1.0)) => None,
        Some(Ok(r)) if (0.0..=10.0).contains(&r) => Some(r),
        _ => return html(StatusCode::BAD_REQUEST, "Bad Request"),
    };
    with_item(&s, param("key").unwrap_or(""), |item| item.user_rating = rating)
}

async fn admin_add_file(State(s): Shr, Json(f): Json<NewFile>) -> StatusCode {
    s.state.lock().add_disk_file(&f.path, f.size, f.duration_ms, None);
    StatusCode::CREATED
}

#[cfg(test)]
mod tests {
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::fixtures::Library;

    fn random_edit(state: &mut PlexState, rng: &mut ChaCha8Rng) {
        let keys: Vec<u64> = state.items.keys().copied().collect();
        let rk = keys[rng.random_range(0..keys.len())];
        match rng.random_range(0..10) {
            // Ties: a few distinct times.
            0..4 => state.items.get_mut(&rk).unwrap().added_at = 1_700_000_000 + rng.random_range(0..5) * 600,
            4 => state.items.get_mut(&rk).unwrap().section = rng.random_range(1..3),
            5 => {
                state.items.remove(&rk);
            }
            6 => {
                state.add_item(rng.random_range(1..3), &[(format!("/media/library/new/{rk}.mp4"), 1, 1)]);
            }
            7 => {
                let file = state.items[&rk].files().next().map(|p| p.file.clone()).unwrap_or_default();
                state.delete_file(&file, rng.random_bool(0.5));
            }
            _ => {
                let title = [("title.value".to_string(), format!("Edited {rk}"))];
                state.apply_edit(&[rk], &title).unwrap();
            }
        }
    }

    #[test]
    fn indexed_section_pages_are_what_filtering_and_sorting_every_item_gives() {
        for seed in 0..6 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut state = PlexState::from_library(&Library::sample(300, seed));
            let mut second = state.sections[0].clone();
            second.key = 2;
            state.sections.push(second);
            let times: Vec<i64> = state.items.values().map(|i| i.added_at).collect();
            for step in 0..400 {
                random_edit(&mut state, &mut rng);
                let section = rng.random_range(1..3);
                let sort = ["addedAt", "addedAt:asc", "addedAt:desc"][rng.random_range(0..3)];
                let mut query = vec![("type".to_string(), "1".to_string()), ("sort".to_string(), sort.to_string())];
                for _ in 0..rng.random_range(0..3) {
                    let key = ["addedAt>>", "addedAt<<"][rng.random_range(0..2)];
                    let at = times[rng.random_range(0..times.len())] + rng.random_range(-1..2);
                    query.push((key.to_string(), at.to_string()));
                }
                let size = [None, Some(0), Some(1), Some(9), Some(50)][rng.random_range(0..5)];
                for page in 0..rng.random_range(1..5) {
                    let start = page * size.unwrap_or(1);
                    let listing = added_listing(section, Some(sort), &query).expect("indexed");
                    let indexed = state.items.page(&listing, start, size);
                    let filtered = filtered_page(&state, section, Some(sort), &query, start, size);
                    assert_eq!(indexed, filtered, "seed {seed} step {step} {query:?} start {start} size {size:?}");
                    if rng.random_bool(0.3) {
                        random_edit(&mut state, &mut rng);
                    }
                }
            }
        }
    }

    #[test]
    fn the_listings_plexsync_reads_are_answered_from_the_index() {
        let mut state = PlexState::from_library(&Library::sample(5_000, 1));
        let query = |extra: &[(&str, &str)]| {
            let mut q = vec![("type".to_string(), "1".to_string()), ("sort".to_string(), "addedAt".to_string())];
            q.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            q
        };
        let since = state.items.values().nth(2_000).unwrap().added_at.to_string();
        for q in [query(&[]), query(&[("addedAt>>", &since)])] {
            let listing = added_listing(1, Some("addedAt"), &q).expect("indexed");
            let before = state.items.rows_visited();
            let (mut start, mut total) = (0, usize::MAX);
            while start < total {
                let (t, page) = state.items.page(&listing, start, Some(500));
                total = t;
                start += page.len();
                let edit = [("title.value".to_string(), "Edited".to_string())];
                state.apply_edit(&page[..1], &edit).unwrap();
            }
            let visited = state.items.rows_visited() - before;
            assert!(visited <= 2 * total as u64, "{visited} rows visited for {total}");
        }
        assert!(added_listing(1, None, &query(&[])).is_none(), "by title: filtered and sorted");
        assert!(added_listing(1, Some("addedAt"), &query(&[("title", "x")])).is_none());
    }
}
