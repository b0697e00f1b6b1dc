//! Stash's plugin package manager (pkg/pkg): a source index lists
//! packages; installing one checks the zip's sha256, deletes the files the
//! installed version's `manifest` lists, extracts the zip with its file
//! modes into `<plugins>/<source folder>/<id>/`, and writes a new
//! `manifest` listing what it extracted. So a test installs PlexSync
//! exactly as a person does from a plugin source.
//!
//! A source is a local index ([`install`]) or, as people add them, an
//! index URL on a static site ([`HttpSource`], served here by [`Site`]):
//! Stash caches the list by the index's `Last-Modified`, resolves a
//! package's `path` against the index URL, and offers an update when the
//! source's `date` is later than the installed one ([`upgradable`]).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, NaiveDateTime, Utc};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The folder Stash installs a source's packages into by default.
pub const DEFAULT_SOURCE_FOLDER: &str = "community";

/// An entry of a source index (`RemotePackage`).
#[derive(Clone, Debug, Deserialize)]
pub struct RemotePackage {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub version: String,
    /// `2006-01-02 15:04:05`, UTC; Stash offers an update when it changes.
    pub date: String,
    pub path: String,
    pub sha256: String,
    #[serde(default)]
    pub requires: Vec<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, serde_json::Value>,
}

/// What Stash writes beside an installed package (`Manifest`).
#[derive(Debug, Deserialize, Serialize)]
pub struct Manifest {
    pub id: String,
    pub name: String,
    pub metadata: BTreeMap<String, serde_json::Value>,
    pub version: String,
    pub date: String,
    pub requires: Vec<String>,
    pub source_repository: String,
    pub files: Vec<String>,
}

/// Reads a source index, checking each date the way Stash parses it.
pub fn read_index(index: &Path) -> anyhow::Result<Vec<RemotePackage>> {
    let text = std::fs::read_to_string(index).with_context(|| format!("reading {}", index.display()))?;
    parse_index(&text)
}

fn parse_index(text: &str) -> anyhow::Result<Vec<RemotePackage>> {
    let packages: Vec<RemotePackage> = serde_norway::from_str(text).context("parsing the source index")?;
    for p in &packages {
        package_date(&p.date).with_context(|| format!("{}: date {:?} is not \"2006-01-02 15:04:05\"", p.id, p.date))?;
    }
    Ok(packages)
}

fn package_date(date: &str) -> chrono::ParseResult<NaiveDateTime> {
    NaiveDateTime::parse_from_str(date, "%Y-%m-%d %H:%M:%S")
}

/// Installs (or updates) package `id` from the source whose index is
/// `index`; returns the package folder.
pub fn install(index: &Path, id: &str, plugins_dir: &Path) -> anyhow::Result<PathBuf> {
    let package = read_index(index)?.into_iter().find(|p| p.id == id).ok_or_else(|| anyhow!("no package {id}"))?;
    let zip_path = index.parent().unwrap_or(Path::new(".")).join(&package.path);
    let data = std::fs::read(&zip_path).with_context(|| format!("reading {}", zip_path.display()))?;
    extract(package, &data, plugins_dir, index.display().to_string())
}

/// The installed package `id`'s manifest, as Stash reads it to list
/// installed plugins and their versions.
pub fn installed(plugins_dir: &Path, id: &str) -> anyhow::Result<Manifest> {
    let path = plugins_dir.join(DEFAULT_SOURCE_FOLDER).join(id).join("manifest");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(serde_norway::from_str(&text)?)
}

/// `PackageVersion.Upgradable`: Stash offers the update only when the
/// source's date is later than the installed one (not merely different,
/// and whatever the version says).
pub fn upgradable(installed: &Manifest, remote: &RemotePackage) -> bool {
    match (package_date(&installed.date), package_date(&remote.date)) {
        (Ok(local), Ok(remote)) => remote > local,
        _ => false,
    }
}

/// Checks the zip's sha256, replaces the installed files and writes the
/// new `manifest`.
fn extract(package: RemotePackage, data: &[u8], plugins_dir: &Path, source: String) -> anyhow::Result<PathBuf> {
    let id = package.id.clone();
    let sha = hex(&Sha256::digest(data));
    if sha != package.sha256 {
        bail!("package data ({sha}) does not match expected SHA256 ({})", package.sha256);
    }
    let dir = plugins_dir.join(DEFAULT_SOURCE_FOLDER).join(&id);
    remove_installed(&dir)?;
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(data)).context("reading zip data")?;
    let mut files = Vec::new();
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i)?;
        if entry.is_dir() {
            continue;
        }
        let name = entry.enclosed_name().ok_or_else(|| anyhow!("unsafe path in zip: {}", entry.name()))?;
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes)?;
        write_file(&dir.join(&name), &bytes, entry.unix_mode())?;
        files.push(name.to_string_lossy().into_owned());
    }
    let manifest = Manifest {
        id: package.id,
        name: package.name,
        metadata: package.metadata,
        version: package.version,
        date: package.date,
        requires: package.requires,
        source_repository: source,
        files,
    };
    std::fs::write(dir.join("manifest"), serde_norway::to_string(&manifest)?)?;
    Ok(dir)
}

/// `deletePackageFiles`: only the files the manifest lists, so a person's
/// own files in the folder survive an update.
fn remove_installed(dir: &Path) -> anyhow::Result<()> {
    let Ok(text) = std::fs::read_to_string(dir.join("manifest")) else { return Ok(()) };
    let manifest: Manifest = serde_norway::from_str(&text).context("reading the installed manifest")?;
    for file in &manifest.files {
        let _ = std::fs::remove_file(dir.join(file));
    }
    std::fs::remove_file(dir.join("manifest"))?;
    Ok(())
}

fn write_file(path: &Path, bytes: &[u8], mode: Option<u32>) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, bytes)?;
    #[cfg(unix)]
    if let Some(mode) = mode {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o7777))?;
    }
    #[cfg(not(unix))]
    let _ = mode;
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Stash's HTTP plugin source (pkg/pkg `httpRepository`).
pub struct HttpSource {
    index_url: url::Url,
    client: reqwest::Client,
    /// The list and the `Last-Modified` it came with (Stash's
    /// `repositoryCache`).
    cache: Mutex<Option<(DateTime<Utc>, Vec<RemotePackage>)>>,
}

impl HttpSource {
    pub fn new(index_url: url::Url) -> Self {
        Self { index_url, client: reqwest::Client::new(), cache: Mutex::new(None) }
    }

    /// `List`: with a cached list, a HEAD asks whether the index is newer
    /// than it (by `Last-Modified`, to the second); only then is it read
    /// again. So a deploy within the same second goes unseen, as in Stash.
    pub async fn list(&self) -> anyhow::Result<Vec<RemotePackage>> {
        let cached = self.cache.lock().clone();
        if let Some((at, list)) = cached {
            let head = self.client.head(self.index_url.clone()).send().await?.error_for_status()?;
            match last_modified(head.headers()) {
                Some(remote) if remote > at => {}
                Some(_) => return Ok(list),
                None => {}
            }
        }
        let answer = self.client.get(self.index_url.clone()).send().await?.error_for_status()?;
        let at = last_modified(answer.headers()).unwrap_or_default();
        let list = parse_index(&answer.text().await?)?;
        *self.cache.lock() = Some((at, list.clone()));
        Ok(list)
    }

    /// Installs (or updates) package `id`, fetching its zip from `path`
    /// resolved against the index URL (`resolvePath`).
    pub async fn install(&self, id: &str, plugins_dir: &Path) -> anyhow::Result<PathBuf> {
        let package = self.list().await?.into_iter().find(|p| p.id == id).ok_or_else(|| anyhow!("no package {id}"))?;
        let zip_url = self.resolve(&package.path)?;
        let answer = self.client.get(zip_url.clone()).send().await?;
        if !answer.status().is_success() {
            bail!("failed to get package file: {zip_url}: {}", answer.status());
        }
        let data = answer.bytes().await?;
        extract(package, &data, plugins_dir, self.index_url.to_string())
    }

    fn resolve(&self, path: &str) -> anyhow::Result<url::Url> {
        if let Ok(url) = url::Url::parse(path) {
            if url.scheme() == "file" {
                bail!("{url} is invalid for a remotely hosted package list");
            }
            return Ok(url);
        }
        Ok(self.index_url.join(path)?)
    }
}

fn last_modified(headers: &reqwest::header::HeaderMap) -> Option<DateTime<Utc>> {
    let text = headers.get(reqwest::header::LAST_MODIFIED)?.to_str().ok()?;
    DateTime::parse_from_rfc2822(text).ok().map(|t| t.with_timezone(&Utc))
}

/// A static site serving a folder, as a project's pages site serves its
/// plugin source: GET and HEAD, with `Last-Modified` from the file's time.
/// [`Site::deploy`] swaps the folder, as a new release's deploy does.
pub struct Site {
    url: url::Url,
    root: Arc<Mutex<PathBuf>>,
    task: tokio::task::JoinHandle<()>,
}

impl Site {
    pub async fn start(root: PathBuf) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let url = url::Url::parse(&format!("http://{}/plexsync/", listener.local_addr()?)).expect("a valid URL");
        let root = Arc::new(Mutex::new(root));
        let app = axum::Router::new().fallback(serve_file).with_state(Arc::clone(&root));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { url, root, task })
    }

    /// The site's base URL (a project folder, as on a pages site).
    pub fn url(&self) -> &url::Url {
        &self.url
    }

    pub fn deploy(&self, root: PathBuf) {
        *self.root.lock() = root;
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_file(State(root): State<Arc<Mutex<PathBuf>>>, method: Method, uri: Uri) -> Response {
    let Some(relative) = uri.path().strip_prefix("/plexsync/") else { return StatusCode::NOT_FOUND.into_response() };
    let relative = Path::new(relative);
    if relative.components().any(|c| !matches!(c, Component::Normal(_))) {
        return StatusCode::NOT_FOUND.into_response();
    }
    let path = root.lock().join(relative);
    let (Ok(bytes), Ok(meta)) = (std::fs::read(&path), std::fs::metadata(&path)) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let modified: DateTime<Utc> = meta.modified().map(Into::into).unwrap_or_default();
    let mut headers = HeaderMap::new();
    let http_date = modified.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    headers.insert(header::LAST_MODIFIED, http_date.parse().expect("an HTTP date is a header value"));
    headers.insert(header::CONTENT_LENGTH, bytes.len().into());
    if method == Method::HEAD {
        return (headers, ()).into_response();
    }
    (headers, bytes).into_response()
}
