//! Stash's plugin package manager (pkg/pkg): a source index lists
//! packages; installing one checks the zip's sha256, deletes the files the
//! installed version's `manifest` lists, extracts the zip with its file
//! modes into `<plugins>/<source folder>/<id>/`, and writes a new
//! `manifest` listing what it extracted. So a test installs PlexSync
//! exactly as a person does from a plugin source.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
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
    let packages: Vec<RemotePackage> = serde_norway::from_str(&text).context("parsing the source index")?;
    for p in &packages {
        chrono::NaiveDateTime::parse_from_str(&p.date, "%Y-%m-%d %H:%M:%S")
            .with_context(|| format!("{}: date {:?} is not \"2006-01-02 15:04:05\"", p.id, p.date))?;
    }
    Ok(packages)
}

/// Installs (or updates) package `id` from the source whose index is
/// `index`; returns the package folder.
pub fn install(index: &Path, id: &str, plugins_dir: &Path) -> anyhow::Result<PathBuf> {
    let package = read_index(index)?.into_iter().find(|p| p.id == id).ok_or_else(|| anyhow!("no package {id}"))?;
    let zip_path = index.parent().unwrap_or(Path::new(".")).join(&package.path);
    let data = std::fs::read(&zip_path).with_context(|| format!("reading {}", zip_path.display()))?;
    let sha = hex(&Sha256::digest(&data));
    if sha != package.sha256 {
        bail!("package data ({sha}) does not match expected SHA256 ({})", package.sha256);
    }
    let dir = plugins_dir.join(DEFAULT_SOURCE_FOLDER).join(id);
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
        source_repository: index.display().to_string(),
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
