//! Seeded generator of realistic sample libraries.
//!
//! One [`Library`] feeds both emulators so that Stash and Plex see the same
//! files, the way a real home server does: Stash under its mount prefix, Plex
//! under another, a few files Plex has not scanned, duplicate copies, and
//! names that are not ASCII. The same seed always yields the same library.

use rand::{Rng, RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A file of a scene as both servers see it.
#[derive(Clone, Debug, PartialEq)]
pub struct FixtureFile {
    /// Path as Stash knows it.
    pub stash_path: String,
    /// Path as Plex knows it (same file, other mount point).
    pub plex_path: String,
    pub size: u64,
    pub duration_secs: f64,
}

/// A studio, optionally owned by a parent network.
#[derive(Clone, Debug, PartialEq)]
pub struct FixtureStudio {
    pub name: String,
    pub parent: Option<usize>,
}

/// A scene with its metadata in Stash.
#[derive(Clone, Debug, PartialEq)]
pub struct FixtureScene {
    pub title: String,
    pub code: Option<String>,
    pub details: Option<String>,
    pub director: Option<String>,
    pub date: Option<String>,
    pub rating100: Option<i32>,
    pub organized: bool,
    pub urls: Vec<String>,
    pub studio: Option<usize>,
    pub performers: Vec<usize>,
    pub tags: Vec<usize>,
    pub files: Vec<FixtureFile>,
    /// Whether Plex has scanned the files of this scene.
    pub in_plex: bool,
    /// Whether Plex holds a second copy of the first file (another folder,
    /// same name and size), as happens with backups inside a library.
    pub plex_duplicate: bool,
}

/// A complete sample library: what Stash holds and what Plex has scanned.
#[derive(Clone, Debug, PartialEq)]
pub struct Library {
    pub stash_prefix: String,
    pub plex_prefix: String,
    pub studios: Vec<FixtureStudio>,
    pub performers: Vec<String>,
    pub tags: Vec<String>,
    pub scenes: Vec<FixtureScene>,
}

/// Knobs of the generator; the defaults resemble a typical home library.
#[derive(Clone, Debug)]
pub struct LibrarySpec {
    pub scenes: usize,
    pub seed: u64,
    pub stash_prefix: String,
    pub plex_prefix: String,
    /// Share of scenes Plex has not scanned yet.
    pub missing_rate: f64,
    /// Share of scenes with a duplicate copy in Plex.
    pub duplicate_rate: f64,
    /// Share of scenes made of more than one file.
    pub multi_file_rate: f64,
}

impl Default for LibrarySpec {
    fn default() -> Self {
        Self {
            scenes: 200,
            seed: 1,
            stash_prefix: "/data/videos".into(),
            plex_prefix: "/media/library".into(),
            missing_rate: 0.03,
            duplicate_rate: 0.01,
            multi_file_rate: 0.02,
        }
    }
}

const WORDS: &[&str] = &[
    "Summer", "Night", "Beach", "City", "Lights", "Morning", "Session", "Holiday", "Garden", "Studio", "Rooftop",
    "Sunset", "Weekend", "Escape", "Secret", "Golden", "Velvet", "River", "Mountain", "Winter", "Coffee", "Dance",
    "Paris", "Tokyo", "Road", "Trip", "Party", "Pool",
];
/// Non-ASCII words, both precomposed and with combining marks, so that
/// Unicode normalization matters.
const WORDS_UNICODE: &[&str] = &[
    "Café",
    "Über",
    "Niño",
    "Crème Brûlée",
    "Zoë",
    "東京",
    "Ñandú",
    "Ångström",
    "Fiancée",
    "Señorita",
    "Smörgåsbord",
    "Łódź",
    "Dvořák",
    "🌅 Dawn",
    "Straße",
];
const FIRST: &[&str] = &[
    "Anna", "Bella", "Chloe", "Dana", "Eva", "Fiona", "Gina", "Hana", "Iris", "Jade", "Kira", "Lena", "Mia", "Nora",
    "Olga", "Paula", "Rosa", "Sara", "Tina", "Vera", "Zoé", "Élodie", "Björk", "Yuki",
];
const LAST: &[&str] = &[
    "Adams",
    "Brook",
    "Clark",
    "Dior",
    "Evans",
    "Frost",
    "Grey",
    "Hart",
    "Ivy",
    "Jones",
    "Knight",
    "Lane",
    "Moon",
    "North",
    "Owens",
    "Pierce",
    "Quinn",
    "Rivers",
    "Stone",
    "Taylor",
    "Müller",
    "Østergaard",
];
const TAGS: &[&str] = &[
    "Outdoor",
    "Indoor",
    "HD",
    "4K",
    "POV",
    "Romantic",
    "Amateur",
    "Professional",
    "Vintage",
    "Behind the Scenes",
    "Interview",
    "Compilation",
    "Solo",
    "Duo",
    "Group",
    "Music",
    "Travel",
    "Comedy",
    "Drama",
    "Documentary",
    "Short",
    "Series",
    "Classic",
    "Fan Favourite",
    "Award Winner",
];
const EXTENSIONS: &[&str] = &["mp4", "mkv", "mov", "wmv", "avi", "m4v"];

impl Library {
    /// Generates a library from `spec`; equal specs give equal libraries.
    pub fn generate(spec: &LibrarySpec) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
        let studios = gen_studios(&mut rng);
        let performers = gen_performers(&mut rng, (spec.scenes / 4).clamp(10, 2_000));
        let tags = TAGS.iter().map(|t| t.to_string()).collect::<Vec<_>>();
        let scenes =
            (0..spec.scenes).map(|i| gen_scene(&mut rng, spec, i, &studios, performers.len(), tags.len())).collect();
        Self {
            stash_prefix: spec.stash_prefix.clone(),
            plex_prefix: spec.plex_prefix.clone(),
            studios,
            performers,
            tags,
            scenes,
        }
    }

    /// A small library for quick starts and the demo.
    pub fn sample(scenes: usize, seed: u64) -> Self {
        Self::generate(&LibrarySpec { scenes, seed, ..LibrarySpec::default() })
    }
}

fn pick<'a, R: Rng>(rng: &mut R, list: &[&'a str]) -> &'a str {
    list[rng.random_range(0..list.len())]
}

fn gen_studios<R: Rng>(rng: &mut R) -> Vec<FixtureStudio> {
    let mut studios = vec![
        FixtureStudio { name: "Sunrise Network".into(), parent: None },
        FixtureStudio { name: "Moonlight Media".into(), parent: None },
    ];
    for i in 0..18 {
        let name = format!("{} {}", pick(rng, WORDS), ["Films", "Pictures", "Studios", "Productions"][i % 4]);
        let parent = match i % 3 {
            0 => Some(0),
            1 => Some(1),
            _ => None,
        };
        studios.push(FixtureStudio { name, parent });
    }
    studios.push(FixtureStudio { name: "Fête & Co.".into(), parent: Some(0) });
    studios
}

fn gen_performers<R: Rng>(rng: &mut R, n: usize) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let mut name = format!("{} {}", pick(rng, FIRST), pick(rng, LAST));
        if !seen.insert(name.clone()) {
            name = format!("{name} {}", out.len());
            seen.insert(name.clone());
        }
        out.push(name);
    }
    out
}

fn gen_title<R: Rng>(rng: &mut R) -> String {
    let words = rng.random_range(2..5);
    (0..words)
        .map(|_| if rng.random_bool(0.12) { pick(rng, WORDS_UNICODE) } else { pick(rng, WORDS) })
        .collect::<Vec<_>>()
        .join(" ")
}

fn gen_scene<R: Rng>(
    rng: &mut R,
    spec: &LibrarySpec,
    index: usize,
    studios: &[FixtureStudio],
    performer_count: usize,
    tag_count: usize,
) -> FixtureScene {
    let title = gen_title(rng);
    let studio = rng.random_bool(0.9).then(|| rng.random_range(0..studios.len()));
    let folder = match studio {
        Some(s) => studios[s].name.clone(),
        None => "Unsorted".to_string(),
    };
    let file_count = if rng.random_bool(spec.multi_file_rate) { 2 } else { 1 };
    // Every 97th scene reuses a common file name in its own folder, so that
    // a file name alone is not always unique.
    let base = if index % 97 == 5 { "video".to_string() } else { format!("{} [{index:05}]", title.replace('/', "-")) };
    let ext = pick(rng, EXTENSIONS);
    let files = (0..file_count)
        .map(|part| {
            let name =
                if file_count > 1 { format!("{base} - part {}.{ext}", part + 1) } else { format!("{base}.{ext}") };
            let rel = format!("{folder}/{index:05}/{name}");
            FixtureFile {
                stash_path: format!("{}/{rel}", spec.stash_prefix),
                plex_path: format!("{}/{rel}", spec.plex_prefix),
                size: rng.random_range(50_000_000..4_000_000_000),
                duration_secs: f64::from(rng.random_range(60_000..5_400_000)) / 1000.0,
            }
        })
        .collect();
    let mut performers: Vec<usize> =
        (0..rng.random_range(0..4)).map(|_| rng.random_range(0..performer_count)).collect();
    performers.sort_unstable();
    performers.dedup();
    let mut tags: Vec<usize> = (0..rng.random_range(0..6)).map(|_| rng.random_range(0..tag_count)).collect();
    tags.sort_unstable();
    tags.dedup();
    let date = rng.random_bool(0.85).then(|| {
        format!("{}-{:02}-{:02}", rng.random_range(2005..2026), rng.random_range(1..13), rng.random_range(1..29))
    });
    FixtureScene {
        code: rng.random_bool(0.5).then(|| format!("SC-{:04}", rng.random_range(0..10_000))),
        details: rng
            .random_bool(0.7)
            .then(|| format!("{title}: a scene shot on location.\nSecond paragraph with & and = and # characters.")),
        director: rng.random_bool(0.3).then(|| format!("{} {}", pick(rng, FIRST), pick(rng, LAST))),
        date,
        rating100: rng.random_bool(0.4).then(|| rng.random_range(0..=100)),
        organized: rng.random_bool(0.8),
        urls: if rng.random_bool(0.6) { vec![format!("https://example.com/scenes/{index}")] } else { Vec::new() },
        studio,
        performers,
        tags,
        files,
        in_plex: !rng.random_bool(spec.missing_rate),
        plex_duplicate: rng.random_bool(spec.duplicate_rate),
        title,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_library_other_seed_other_library() {
        let a = Library::sample(300, 7);
        assert_eq!(a, Library::sample(300, 7));
        assert_ne!(a, Library::sample(300, 8));
    }

    #[test]
    fn library_has_the_variations_tests_rely_on() {
        let lib = Library::sample(2_000, 3);
        assert_eq!(lib.scenes.len(), 2_000);
        assert!(lib.scenes.iter().any(|s| !s.in_plex), "some scenes missing from Plex");
        assert!(lib.scenes.iter().any(|s| s.plex_duplicate), "some duplicates");
        assert!(lib.scenes.iter().any(|s| s.files.len() > 1), "some multi-file scenes");
        assert!(lib.scenes.iter().any(|s| !s.files[0].stash_path.is_ascii()), "non-ASCII paths");
        for scene in &lib.scenes {
            for f in &scene.files {
                assert!(f.stash_path.starts_with("/data/videos/"));
                assert_eq!(f.stash_path.strip_prefix("/data/videos"), f.plex_path.strip_prefix("/media/library"));
            }
        }
    }
}
