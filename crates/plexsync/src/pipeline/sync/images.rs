//! Images: covers, backgrounds and gallery images copied from Stash to
//! Plex only when their content is new to the item, checked as Plex
//! decodes them, and StashPlexAgent's copy adopted instead of sent again.

use crate::clients::plex::{ImageKind, PlexItem};
use crate::clients::stash::{GalleryImage, Image, Scene};
use crate::config::Field;
use crate::error::{Error, ErrorClass};
use crate::pipeline::desired::{Desired, Value};
use crate::pipeline::picture;
use sha2::{Digest, Sha256};

use super::delivery::Pipeline;

/// Largest image we copy from Stash to Plex.
pub(crate) const MAX_IMAGE_BYTES: usize = 20 * 1024 * 1024;

/// Answers of Stash's image server within one delivery, by (URL, ETag
/// sent): poster and background share the screenshot, and every item of a
/// multi-item scene needs the same image.
#[derive(Default)]
pub(super) struct Images(std::collections::HashMap<(String, Option<String>), Image>);

/// The images to upload, and record entries for the ones Plex has already.
#[derive(Default)]
pub(super) struct CheckedImages {
    /// Images downloaded from Stash whose content is new to the item, as
    /// Plex decodes them.
    pub(super) upload: std::collections::HashMap<Field, picture::Shown>,
    pub(super) record: Vec<(String, String)>,
    /// Images Plex has already (StashPlexAgent's copy of the same cover).
    pub(super) adopted: Vec<Field>,
}

/// Record key suffixes beside a field's value hash: the hash of an image's
/// content and its `ETag` at Stash.
pub(super) const CONTENT_SUFFIX: &str = ".content";

/// Recorded beside an image Plex could not be given (an AVIF cover):
/// Plex shows its own frame, and reconcile does not count it as a difference.
pub(super) const UNSHOWN_SUFFIX: &str = ".unshown";

/// Whether the field's image could not be given to Plex at its last
/// delivery (see [`UNSHOWN_SUFFIX`]).
pub(crate) fn unshown(previous: &std::collections::BTreeMap<String, String>, field: Field) -> bool {
    previous.contains_key(&format!("{}{UNSHOWN_SUFFIX}", field.name()))
}

/// Record key of the gallery images uploaded to an item (a JSON list of
/// Stash image ids), so each goes up once.
pub(super) const GALLERY_IMAGES: &str = "poster.gallery";

/// Gallery images sent per scene, at most: a bound on what one delivery
/// can cost.
pub(crate) const GALLERY_IMAGES_MAX: usize = 50;

/// Beside an image kept as StashPlexAgent left it: not locked yet.
pub(super) const ADOPTED_SUFFIX: &str = ".adopted";

const ETAG_SUFFIX: &str = ".etag";

impl Pipeline {
    /// `IncludeGalleryImages`: the images of the scene's galleries this item
    /// has not had yet, uploaded as extra posters and backgrounds (by
    /// orientation with `SortGalleryImages`, else as both; one Stash request
    /// lists them all, at most [`GALLERY_IMAGES_MAX`]). Returns the ids now
    /// on the item, and the image fields an upload took over (an upload
    /// becomes the item's shown image).
    pub(super) async fn upload_gallery(
        &self,
        rk: &str,
        scene: &Scene,
        previous: &std::collections::BTreeMap<String, String>,
    ) -> Result<(Vec<String>, Vec<Field>), Error> {
        let mut on_item: Vec<String> =
            previous.get(GALLERY_IMAGES).and_then(|j| serde_json::from_str(j).ok()).unwrap_or_default();
        let ids: Vec<String> = scene.galleries.iter().map(|g| g.id.clone()).collect();
        if ids.is_empty() {
            return Ok((on_item, Vec::new()));
        }
        let (images, total) = self.stash.gallery_images(&ids, GALLERY_IMAGES_MAX).await?;
        if total > images.len() {
            tracing::warn!(
                "scene {}: its galleries hold {total} images; the first {} are sent",
                scene.id,
                images.len()
            );
        }
        let plex = self.plex()?;
        let mut took_over = Vec::new();
        let new: Vec<&GalleryImage> = images.iter().filter(|i| !on_item.contains(&i.id)).collect();
        for image in new {
            let Some(url) = image.paths.image.as_deref() else { continue };
            let shown = match self.stash.image(url, MAX_IMAGE_BYTES, None).await {
                Ok(Image::Fetched { bytes, .. }) => {
                    let Some(shown) = self.shown(&scene.id, &format!("gallery image {}", image.id), bytes) else {
                        continue;
                    };
                    shown
                }
                Ok(_) => continue,
                Err(e) if e.class == ErrorClass::BadData => {
                    self.tally(|s| s.warnings += 1);
                    tracing::warn!("scene {}: gallery image {} not copied: {e}", scene.id, image.id);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let kinds: &[(ImageKind, Field)] = match (self.settings.agent.sort_gallery_images, image.portrait()) {
                (true, true) => &[(ImageKind::Poster, Field::Poster)],
                (true, false) => &[(ImageKind::Background, Field::Background)],
                (false, _) => &[(ImageKind::Poster, Field::Poster), (ImageKind::Background, Field::Background)],
            };
            for (kind, field) in kinds {
                self.tally(|s| s.plex_writes += 1);
                plex.upload_image(rk, *kind, shown.bytes.clone(), shown.kind).await?;
                if !took_over.contains(field) {
                    took_over.push(*field);
                }
            }
            on_item.push(image.id.clone());
        }
        Ok((on_item, took_over))
    }

    /// The scene's cover bytes for `d` (poster or background), to upload
    /// again; false when Stash has no cover yet.
    pub(super) async fn cover_bytes(
        &self,
        scene: &Scene,
        d: &Desired,
        checked: &mut CheckedImages,
    ) -> Result<bool, Error> {
        if checked.upload.contains_key(&d.field) {
            return Ok(true);
        }
        let Value::Image(Some(url)) = &d.value else { return Ok(false) };
        match self.stash.image(url, MAX_IMAGE_BYTES, None).await? {
            Image::Fetched { bytes, .. } => match self.shown(&scene.id, d.field.name(), bytes) {
                Some(shown) => {
                    checked.upload.insert(d.field, shown);
                    Ok(true)
                }
                None => Ok(false),
            },
            Image::NotModified | Image::Placeholder => Ok(false),
        }
    }

    /// `bytes` as Plex can show them; `None`, with a warning, when Plex
    /// could not (an AVIF cover: Plex keeps its own frame).
    fn shown(&self, scene_id: &str, what: &str, bytes: Vec<u8>) -> Option<picture::Shown> {
        match picture::for_plex(bytes) {
            Ok(shown) => Some(shown),
            Err(why) => {
                self.tally(|s| s.warnings += 1);
                tracing::warn!("scene {scene_id}: {what} not copied: {why}");
                None
            }
        }
    }

    /// The poster StashPlexAgent downloaded into an item is Stash's cover
    /// already when its bytes are the same: then it is recorded, not
    /// uploaded again (one read of Plex's copy instead of an upload).
    pub(super) async fn keep_agents_poster(
        &self,
        item: &PlexItem,
        previous: &std::collections::BTreeMap<String, String>,
        checked: &mut CheckedImages,
    ) -> Result<(), Error> {
        let content = format!("{}{CONTENT_SUFFIX}", Field::Poster.name());
        let (Some(thumb), Some(fetched)) = (item.thumb.as_deref(), checked.upload.get(&Field::Poster)) else {
            return Ok(());
        };
        if previous.contains_key(&content) {
            return Ok(());
        }
        let theirs = match self.plex()?.image(thumb, MAX_IMAGE_BYTES).await {
            Ok(bytes) => bytes,
            Err(e) if e.class == ErrorClass::BadData || e.class == ErrorClass::NotInPlex => return Ok(()),
            Err(e) => return Err(e),
        };
        if Sha256::digest(&theirs) == Sha256::digest(&fetched.bytes) {
            checked.upload.remove(&Field::Poster);
            checked.adopted.push(Field::Poster);
        }
        Ok(())
    }

    /// Decides, for each image whose Stash URL changed (Stash's image URLs
    /// carry `?t=<updated_at>`, so every save of the scene changes them),
    /// whether its content is new to the item. The request carries the
    /// `ETag` we saw last, so an unchanged image costs a `304` and no
    /// download; content is compared by hash when Stash sends the image
    /// anyway. Stash's stand-in for a missing cover is never copied.
    pub(super) async fn check_images(
        &self,
        changes: &[&Desired],
        previous: &std::collections::BTreeMap<String, String>,
        scene: &Scene,
        images: &mut Images,
    ) -> Result<CheckedImages, Error> {
        let mut checked = CheckedImages::default();
        for d in changes {
            let Value::Image(Some(url)) = &d.value else { continue };
            let key = |suffix: &str| format!("{}{suffix}", d.field.name());
            let etag = previous.get(&key(ETAG_SUFFIX)).cloned();
            let answer = match images.0.get(&(url.clone(), etag.clone())) {
                Some(answer) => answer.clone(),
                None => {
                    let answer = match self.stash.image(url, MAX_IMAGE_BYTES, etag.as_deref()).await {
                        Err(e) if e.class == ErrorClass::BadData => {
                            self.tally(|s| s.warnings += 1);
                            tracing::warn!("scene {}: {} not copied: {e}", scene.id, d.field.name());
                            continue;
                        }
                        other => other?,
                    };
                    images.0.insert((url.clone(), etag.clone()), answer.clone());
                    answer
                }
            };
            match answer {
                Image::NotModified => checked.record.push((d.field.name().to_string(), d.hash())),
                Image::Placeholder => {
                    tracing::debug!("scene {}: no cover in Stash yet; {} left as it is", scene.id, d.field.name())
                }
                Image::Fetched { bytes, etag } => {
                    let content = hex::encode(&Sha256::digest(&bytes)[..12]);
                    if let Some(etag) = etag {
                        checked.record.push((key(ETAG_SUFFIX), etag));
                    }
                    checked.record.push((key(CONTENT_SUFFIX), content.clone()));
                    if previous.get(&key(CONTENT_SUFFIX)) == Some(&content) {
                        checked.record.push((d.field.name().to_string(), d.hash()));
                    } else if let Some(shown) = self.shown(&scene.id, d.field.name(), bytes) {
                        checked.upload.insert(d.field, shown);
                    } else {
                        // Warned once: taken care of until the cover changes,
                        // and no difference to reconcile meanwhile.
                        checked.record.push((d.field.name().to_string(), d.hash()));
                        checked.record.push((key(UNSHOWN_SUFFIX), "1".into()));
                    }
                }
            }
        }
        Ok(checked)
    }
}
