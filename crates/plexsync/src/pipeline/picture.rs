//! Images as Plex can show them. Plex Media Server decodes JPEG, PNG, GIF
//! and WebP; Stash (v0.30+) also keeps AVIF and JPEG XL covers and
//! performer photos. Each image is recognised by its bytes (never by what
//! a proxy called it), a JPEG XL one is made a JPEG, and an AVIF one is
//! refused with the reason: no AVIF decoder builds for every release
//! target without C or an assembler, and Plex keeps its own frame rather
//! than an image it cannot decode.

/// Bytes Plex decodes, with their content type.
#[derive(Debug)]
pub(crate) struct Shown {
    pub bytes: Vec<u8>,
    pub kind: &'static str,
}

/// The largest picture decoded (pixels): a poster needs far fewer, and a
/// decoded picture takes 3 bytes a pixel.
const MAX_PIXELS: u64 = 40_000_000;
/// JPEG quality of a converted picture.
const QUALITY: u8 = 90;

/// What the bytes of an image are, by their first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    Jpeg,
    Png,
    Gif,
    Webp,
    Avif,
    JpegXl,
    Other,
}

pub(crate) fn format(bytes: &[u8]) -> Format {
    match bytes {
        [0xFF, 0xD8, 0xFF, ..] => Format::Jpeg,
        [0x89, b'P', b'N', b'G', ..] => Format::Png,
        [b'G', b'I', b'F', b'8', ..] => Format::Gif,
        [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P', ..] => Format::Webp,
        // An ISO-BMFF `ftyp` box whose brand is AVIF's (still or sequence).
        [_, _, _, _, b'f', b't', b'y', b'p', b'a', b'v', b'i', b's' | b'f', ..] => Format::Avif,
        // A bare codestream, or the ISO-BMFF container's signature box.
        [0xFF, 0x0A, ..] | [0, 0, 0, 0x0C, b'J', b'X', b'L', b' ', 0x0D, 0x0A, 0x87, 0x0A, ..] => Format::JpegXl,
        _ => Format::Other,
    }
}

/// `bytes` as Plex can show them, or why not.
pub(crate) fn for_plex(bytes: Vec<u8>) -> Result<Shown, String> {
    let kind = match format(&bytes) {
        Format::Jpeg => "image/jpeg",
        Format::Png => "image/png",
        Format::Gif => "image/gif",
        Format::Webp => "image/webp",
        Format::JpegXl => return jpeg_of_jxl(&bytes).map(|bytes| Shown { bytes, kind: "image/jpeg" }),
        Format::Avif => {
            return Err("it is AVIF, which Plex cannot show and PlexSync cannot convert; \
                 Plex keeps its own frame (save the image in Stash as JPEG, PNG or WebP)"
                .into())
        }
        Format::Other => return Err("it is not JPEG, PNG, GIF, WebP or JPEG XL".into()),
    };
    Ok(Shown { bytes, kind })
}

/// A JPEG of the JPEG XL picture: the original JPEG when the picture is a
/// recompressed one (no loss), else its first frame in sRGB.
fn jpeg_of_jxl(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let why = |e: &dyn std::fmt::Display| format!("its JPEG XL cannot be read: {e}");
    let mut image = jxl_oxide::JxlImage::builder().read(bytes).map_err(|e| why(&e))?;
    let (width, height) = (image.width(), image.height());
    if u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(format!("its JPEG XL is {width}×{height}, larger than PlexSync converts"));
    }
    if image.jpeg_reconstruction_status() == jxl_oxide::JpegReconstructionStatus::Available {
        let mut jpeg = Vec::new();
        if image.reconstruct_jpeg(&mut jpeg).is_ok() && format(&jpeg) == Format::Jpeg {
            return Ok(jpeg);
        }
    }
    image.request_color_encoding(jxl_oxide::EnumColourEncoding::srgb(jxl_oxide::RenderingIntent::Relative));
    let render = image.render_frame(0).map_err(|e| why(&e))?;
    let mut stream = render.stream_no_alpha();
    let (w, h, channels) = (stream.width(), stream.height(), stream.channels());
    let color = match channels {
        1 => jpeg_encoder::ColorType::Luma,
        3 => jpeg_encoder::ColorType::Rgb,
        n => return Err(format!("its JPEG XL has {n} colour channels")),
    };
    let len = usize::try_from(u64::from(w) * u64::from(h) * u64::from(channels)).map_err(|e| why(&e))?;
    let mut pixels = vec![0u8; len];
    stream.write_to_buffer(&mut pixels);
    let (w, h) = (u16::try_from(w).map_err(|e| why(&e))?, u16::try_from(h).map_err(|e| why(&e))?);
    let mut jpeg = Vec::new();
    jpeg_encoder::Encoder::new(&mut jpeg, QUALITY).encode(&pixels, w, h, color).map_err(|e| why(&e))?;
    Ok(jpeg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_told_by_their_bytes() {
        let png = b"\x89PNG\r\n\x1a\n rest";
        assert_eq!(format(png), Format::Png);
        assert_eq!(format(b"\xFF\xD8\xFF\xE0"), Format::Jpeg);
        assert_eq!(format(b"GIF89a"), Format::Gif);
        assert_eq!(format(b"RIFF\0\0\0\0WEBPVP8 "), Format::Webp);
        assert_eq!(format(b"\0\0\0\x1cftypavif\0\0\0\0"), Format::Avif);
        assert_eq!(format(b"\0\0\0\x1cftypavis\0\0\0\0"), Format::Avif);
        assert_eq!(format(b"\xFF\x0A\xFA"), Format::JpegXl);
        assert_eq!(format(b"\0\0\0\x0CJXL \r\n\x87\n"), Format::JpegXl);
        assert_eq!(format(b"<svg"), Format::Other);
        assert_eq!(for_plex(png.to_vec()).unwrap().kind, "image/png");
        let avif = for_plex(b"\0\0\0\x1cftypavif\0\0\0\0".to_vec()).unwrap_err();
        assert!(avif.contains("AVIF") && avif.contains("JPEG, PNG or WebP"), "{avif}");
        assert!(for_plex(b"<svg/>".to_vec()).is_err());
        assert!(for_plex(b"\xFF\x0A broken".to_vec()).unwrap_err().contains("JPEG XL"));
    }

    /// The JPEG's size from its frame header (SOF0 or SOF2).
    fn jpeg_size(jpeg: &[u8]) -> Option<(u16, u16)> {
        let at = jpeg.windows(2).position(|w| w == [0xFF, 0xC0] || w == [0xFF, 0xC2])?;
        let be = |i: usize| u16::from_be_bytes([jpeg[at + i], jpeg[at + i + 1]]);
        Some((be(7), be(5)))
    }

    #[test]
    fn the_sample_librarys_jpeg_xl_cover_becomes_a_jpeg_of_its_size_and_its_avif_one_is_refused() {
        let shown = for_plex(emulators::stash::state::JPEG_XL_COVER.to_vec()).unwrap();
        assert_eq!((shown.kind, format(&shown.bytes)), ("image/jpeg", Format::Jpeg));
        assert_eq!(jpeg_size(&shown.bytes), Some((48, 72)));
        let avif = for_plex(emulators::stash::state::AVIF_COVER.to_vec()).unwrap_err();
        assert!(avif.contains("AVIF"), "{avif}");
    }
}
