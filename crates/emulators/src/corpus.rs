//! A labelled matching corpus: Stash scenes and Plex items with the
//! variations real libraries show, each scene labelled with the Plex item
//! it must match, or with "no match" (missing from Plex, or ambiguous so
//! that a careful matcher must not write).

use rand::{Rng, RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use unicode_normalization::UnicodeNormalization;

use crate::plex::PlexState;
use crate::stash::StashState;

pub const STASH_PREFIX: &str = "/data/videos";
pub const PLEX_PREFIX: &str = "/media/library";

/// How a pair differs; each kind is generated in about equal numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Variation {
    /// Only the mount prefix differs.
    Prefix,
    /// Stash wrote `\` and doubled separators.
    Separators,
    /// Plex has the name in NFD (macOS), Stash in NFC.
    UnicodeForm,
    /// Plex's path differs in case (case-insensitive file system).
    Case,
    /// Stash's path went through a URL (`%20`).
    PercentEncoded,
    /// Plex has the file in a renamed folder (same name and size).
    RenamedFolder,
    /// Plex has the file with another extension, same folder and size.
    RenamedExtension,
    /// The same file name exists in other folders of Plex too.
    SharedName,
    /// A two-file scene of which Plex has only the second file.
    MultiFile,
    /// Plex holds a second copy elsewhere; the path still decides.
    DuplicateCopy,
    /// A very long name.
    LongName,
    /// Plex does not have the file: no match.
    Missing,
    /// Two copies in renamed folders: ambiguous, no match may be written.
    AmbiguousCopies,
}

pub const VARIATIONS: [Variation; 13] = [
    Variation::Prefix,
    Variation::Separators,
    Variation::UnicodeForm,
    Variation::Case,
    Variation::PercentEncoded,
    Variation::RenamedFolder,
    Variation::RenamedExtension,
    Variation::SharedName,
    Variation::MultiFile,
    Variation::DuplicateCopy,
    Variation::LongName,
    Variation::Missing,
    Variation::AmbiguousCopies,
];

#[derive(Clone, Debug)]
pub struct CorpusScene {
    /// (path, size, duration in seconds)
    pub files: Vec<(String, u64, f64)>,
    pub variation: Variation,
    /// Index into `Corpus::items` of the right answer; `None`: no match.
    pub answer: Option<usize>,
}

#[derive(Clone, Debug)]
pub struct CorpusItem {
    /// (path, size, duration in ms)
    pub parts: Vec<(String, u64, u64)>,
}

#[derive(Clone, Debug)]
pub struct Corpus {
    pub scenes: Vec<CorpusScene>,
    pub items: Vec<CorpusItem>,
}

const NAMES: &[&str] =
    &["Sunset", "Café", "Zoë", "Niño", "東京", "Crème Brûlée", "Night", "Beach", "Ångström", "Straße"];

fn name<R: Rng>(rng: &mut R, i: usize) -> String {
    let a = NAMES[rng.random_range(0..NAMES.len())];
    let b = NAMES[rng.random_range(0..NAMES.len())];
    format!("{a} {b} {i:05}")
}

/// Upper case as case-insensitive file systems compare it: one character
/// for one (`ß` stays `ß`; it is not `SS` on NTFS or APFS).
fn simple_upper(s: &str) -> String {
    s.chars()
        .map(|c| {
            let mut up = c.to_uppercase();
            match (up.next(), up.next()) {
                (Some(u), None) => u,
                _ => c,
            }
        })
        .collect()
}

impl Corpus {
    /// `n` labelled scenes (at least), seeded.
    pub fn generate(n: usize, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut corpus = Corpus { scenes: Vec::new(), items: Vec::new() };
        for i in 0..n {
            let variation = VARIATIONS[i % VARIATIONS.len()];
            corpus.add(&mut rng, i, variation);
        }
        corpus
    }

    fn item(&mut self, parts: Vec<(String, u64, u64)>) -> usize {
        self.items.push(CorpusItem { parts });
        self.items.len() - 1
    }

    fn add<R: Rng>(&mut self, rng: &mut R, i: usize, variation: Variation) {
        let studio = format!("Studio {}", i % 37);
        let base = name(rng, i);
        let size = rng.random_range(10_000_000..4_000_000_000u64);
        let whole_secs = rng.random_range(60..7200u32);
        let secs = f64::from(whole_secs);
        let ms = u64::from(whole_secs) * 1000;
        let rel = format!("{studio}/{base}.mp4");
        let stash = format!("{STASH_PREFIX}/{rel}");
        let plex = format!("{PLEX_PREFIX}/{rel}");
        let mut files = vec![(stash.clone(), size, secs)];
        let answer = match variation {
            Variation::Prefix => Some(self.item(vec![(plex, size, ms)])),
            Variation::Separators => {
                files[0].0 = format!("{STASH_PREFIX}//{}", rel.replace('/', "\\"));
                Some(self.item(vec![(plex, size, ms)]))
            }
            Variation::UnicodeForm => Some(self.item(vec![(plex.nfd().collect(), size, ms)])),
            Variation::Case => Some(self.item(vec![(format!("{PLEX_PREFIX}/{}", simple_upper(&rel)), size, ms)])),
            Variation::PercentEncoded => {
                files[0].0 = stash.replace(' ', "%20");
                Some(self.item(vec![(plex, size, ms)]))
            }
            Variation::RenamedFolder => {
                Some(self.item(vec![(format!("{PLEX_PREFIX}/Renamed {studio}/{base}.mp4"), size, ms)]))
            }
            Variation::RenamedExtension => {
                Some(self.item(vec![(format!("{PLEX_PREFIX}/{studio}/{base}.mkv"), size, ms)]))
            }
            Variation::SharedName => {
                let shared = format!("clip {}.mp4", i % 5);
                files[0].0 = format!("{STASH_PREFIX}/{studio}/{i}/{shared}");
                self.item(vec![(format!("{PLEX_PREFIX}/Other/{i}/{shared}"), size + 1, ms)]);
                Some(self.item(vec![(format!("{PLEX_PREFIX}/{studio}/{i}/{shared}"), size, ms)]))
            }
            Variation::MultiFile => {
                let second = format!("{STASH_PREFIX}/{studio}/{base} - part 2.mp4");
                files.push((second, size + 7, secs));
                Some(self.item(vec![(format!("{PLEX_PREFIX}/{studio}/{base} - part 2.mp4"), size + 7, ms)]))
            }
            Variation::DuplicateCopy => {
                self.item(vec![(format!("{PLEX_PREFIX}/Backup/{rel}"), size, ms)]);
                Some(self.item(vec![(plex, size, ms)]))
            }
            Variation::LongName => {
                let long = format!("{base} {}", "very long title words ".repeat(10)).trim().to_string();
                files[0].0 = format!("{STASH_PREFIX}/{studio}/{long}.mp4");
                Some(self.item(vec![(format!("{PLEX_PREFIX}/{studio}/{long}.mp4"), size, ms)]))
            }
            Variation::Missing => None,
            Variation::AmbiguousCopies => {
                self.item(vec![(format!("{PLEX_PREFIX}/Copy A/{base}.mp4"), size, ms)]);
                self.item(vec![(format!("{PLEX_PREFIX}/Copy B/{base}.mp4"), size, ms)]);
                None
            }
        };
        self.scenes.push(CorpusScene { files, variation, answer });
    }

    /// A Stash holding the corpus scenes (scene ids in corpus order).
    pub fn stash_state(&self) -> StashState {
        let mut state = StashState::new();
        for scene in &self.scenes {
            let id = state.add_scene(&scene.files);
            state.scenes.get_mut(&id).expect("just added").organized = true;
        }
        state
    }

    /// A Plex holding the corpus items; returns the ratingKey of each item.
    pub fn plex_state(&self) -> (PlexState, Vec<u64>) {
        let mut state = PlexState::new(PLEX_PREFIX);
        let keys = self.items.iter().map(|item| state.add_item(1, &item.parts)).collect();
        (state, keys)
    }
}
