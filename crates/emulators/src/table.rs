//! Rows by id, kept in a second order too, that answer offset pages of
//! either order without sorting or filtering every row.
//!
//! Clients page through a library by offset (Stash's `page`/`per_page`,
//! Plex's container start and size). Sorting or filtering the whole library
//! for every page made the emulators, not the client, the cost of a large
//! run. A [`Table`] holds its rows by id plus an index of `(key, id)`, the
//! key being what the common listings sort or narrow by (a scene's
//! `updated_at` text; an item's section and `addedAt`). Every write goes
//! through the table, which keeps the index in step. A page walks from a
//! cursor that the previous page of the same listing left; each cursor
//! knows its rank (how many rows of the listing it has passed), and writes
//! keep ranks and totals exact, so paging 1, 2, 3… visits each row once,
//! even while rows change between pages, and answers what a sort of the
//! whole library would.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::{Bound, Deref, DerefMut};

/// A row of a [`Table`]: the key of its second order.
pub trait Row {
    type Key: Ord + Clone;

    fn key(&self) -> Self::Key;

    /// `self.key().cmp(key)`; rows whose key is costly to build (text)
    /// compare in place, as a walk by id narrowed by key does per row.
    fn cmp_key(&self, key: &Self::Key) -> Ordering {
        self.key().cmp(key)
    }
}

/// The order a listing walks in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    Id,
    /// By key, rows with equal keys by id.
    Key,
}

/// The rows whose key lies between `from` and `to`, in `order`, last
/// first when `desc`.
#[derive(Clone, Debug, PartialEq)]
pub struct Listing<K> {
    pub order: Order,
    pub desc: bool,
    pub from: Bound<K>,
    pub to: Bound<K>,
}

impl<K: Ord> Listing<K> {
    /// Every row.
    pub fn all(order: Order, desc: bool) -> Self {
        Self { order, desc, from: Bound::Unbounded, to: Bound::Unbounded }
    }

    /// Whether a key that compares with each bound as `cmp` does is in range.
    fn admits_by(&self, cmp: impl Fn(&K) -> Ordering) -> bool {
        let above = match &self.from {
            Bound::Included(k) => cmp(k) != Ordering::Less,
            Bound::Excluded(k) => cmp(k) == Ordering::Greater,
            Bound::Unbounded => true,
        };
        let below = match &self.to {
            Bound::Included(k) => cmp(k) != Ordering::Greater,
            Bound::Excluded(k) => cmp(k) == Ordering::Less,
            Bound::Unbounded => true,
        };
        above && below
    }

    fn admits(&self, key: &K) -> bool {
        self.admits_by(|bound| key.cmp(bound))
    }

    /// Whether `entry` is at or before `last` in this listing's walk.
    fn passed(&self, last: &(K, u64), entry: &(K, u64)) -> bool {
        let ord = match self.order {
            Order::Id => entry.1.cmp(&last.1),
            Order::Key => entry.cmp(last),
        };
        if self.desc {
            ord != Ordering::Less
        } else {
            ord != Ordering::Greater
        }
    }
}

/// How many listings keep their totals and cursors, and how many cursors
/// each: enough for a few clients walking a few listings at once.
const LISTINGS_KEPT: usize = 16;
const CURSORS_KEPT: usize = 8;

/// Where a walk of a listing stopped: after `last`, having passed `rank`
/// of its rows. `last` may since have changed or gone; it still marks the
/// place, and `rank` counts the rows now at or before it.
#[derive(Debug)]
struct Cursor<K> {
    last: (K, u64),
    rank: usize,
    /// `Index::clock` when last used.
    used: u64,
}

/// A listing recently paged: its row count and cursors, kept exact by
/// every write.
#[derive(Debug)]
struct Walked<K> {
    listing: Listing<K>,
    total: usize,
    cursors: Vec<Cursor<K>>,
    used: u64,
}

impl<K: Ord> Walked<K> {
    /// `entry`, which this listing admits, came (or went): the total and
    /// the rank of each cursor past it follow.
    fn shift(&mut self, entry: &(K, u64), came: bool) {
        let by = |n: &mut usize| if came { *n += 1 } else { *n -= 1 };
        by(&mut self.total);
        for c in &mut self.cursors {
            if self.listing.passed(&c.last, entry) {
                by(&mut c.rank);
            }
        }
    }
}

/// A range of index entries.
type Entries<K> = (Bound<(K, u64)>, Bound<(K, u64)>);

/// The second order of a [`Table`] and what pages left behind.
#[derive(Debug)]
struct Index<K> {
    entries: BTreeSet<(K, u64)>,
    walked: Vec<Walked<K>>,
    /// Counts pages, to drop the listings and cursors used least recently.
    clock: u64,
    /// Entries and rows walked by pages and counts (see [`Table::rows_visited`]).
    visited: u64,
}

impl<K> Default for Index<K> {
    fn default() -> Self {
        Self { entries: BTreeSet::new(), walked: Vec::new(), clock: 0, visited: 0 }
    }
}

impl<K: Ord + Clone> Index<K> {
    /// A row's entry changed from `old` to `new` (`None`: absent).
    fn changed(&mut self, old: Option<(K, u64)>, new: Option<(K, u64)>) {
        if old == new {
            return;
        }
        if let Some(e) = &old {
            self.entries.remove(e);
        }
        if let Some(e) = &new {
            self.entries.insert(e.clone());
        }
        for w in &mut self.walked {
            if let Some(e) = old.as_ref().filter(|e| w.listing.admits(&e.0)) {
                w.shift(e, false);
            }
            if let Some(e) = new.as_ref().filter(|e| w.listing.admits(&e.0)) {
                w.shift(e, true);
            }
        }
    }

    /// The bounds of `listing`'s key range on the entries.
    fn bounds(listing: &Listing<K>) -> Entries<K> {
        let from = match &listing.from {
            Bound::Included(k) => Bound::Included((k.clone(), 0)),
            Bound::Excluded(k) => Bound::Excluded((k.clone(), u64::MAX)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let to = match &listing.to {
            Bound::Included(k) => Bound::Included((k.clone(), u64::MAX)),
            Bound::Excluded(k) => Bound::Excluded((k.clone(), 0)),
            Bound::Unbounded => Bound::Unbounded,
        };
        (from, to)
    }

    /// The place of `listing` in `walked`, counted now if new.
    fn find_or_count(&mut self, listing: &Listing<K>) -> usize {
        self.clock += 1;
        if let Some(i) = self.walked.iter().position(|w| &w.listing == listing) {
            self.walked[i].used = self.clock;
            return i;
        }
        let total = match Self::bounds(listing) {
            (Bound::Unbounded, Bound::Unbounded) => self.entries.len(),
            range if nonempty(&range) => {
                let n = self.entries.range(range).count();
                self.visited += n as u64;
                n
            }
            _ => 0,
        };
        if self.walked.len() >= LISTINGS_KEPT {
            let oldest = (0..self.walked.len()).min_by_key(|&i| self.walked[i].used).expect("not empty");
            self.walked.swap_remove(oldest);
        }
        self.walked.push(Walked { listing: listing.clone(), total, cursors: Vec::new(), used: self.clock });
        self.walked.len() - 1
    }
}

/// Whether a range may hold anything; `BTreeSet::range` panics on some
/// that cannot (start after end).
fn nonempty<T: Ord>((from, to): &(Bound<T>, Bound<T>)) -> bool {
    match (from, to) {
        (Bound::Included(a), Bound::Included(b)) => a <= b,
        (Bound::Included(a) | Bound::Excluded(a), Bound::Included(b) | Bound::Excluded(b)) => a < b,
        _ => true,
    }
}

/// Rows by id (read it as the `BTreeMap` it derefs to), also ordered by
/// their [`Row::key`]; every change goes through its methods so the order
/// stays true.
pub struct Table<T: Row> {
    rows: BTreeMap<u64, T>,
    index: Index<T::Key>,
}

impl<T: Row> Default for Table<T> {
    fn default() -> Self {
        Self { rows: BTreeMap::new(), index: Index::default() }
    }
}

impl<T: Row + fmt::Debug> fmt::Debug for Table<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.rows.fmt(f)
    }
}

impl<T: Row> Deref for Table<T> {
    type Target = BTreeMap<u64, T>;

    fn deref(&self) -> &Self::Target {
        &self.rows
    }
}

/// Built at once: full B-tree nodes, no per-row insertion (a library of a
/// million rows loads in a fraction of the time and memory).
impl<T: Row> FromIterator<(u64, T)> for Table<T> {
    fn from_iter<I: IntoIterator<Item = (u64, T)>>(iter: I) -> Self {
        let rows: BTreeMap<u64, T> = iter.into_iter().collect();
        let entries = rows.iter().map(|(id, row)| (row.key(), *id)).collect();
        Self { rows, index: Index { entries, ..Index::default() } }
    }
}

impl<T: Row> IntoIterator for Table<T> {
    type Item = (u64, T);
    type IntoIter = std::collections::btree_map::IntoIter<u64, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.rows.into_iter()
    }
}

impl<T: Row> Table<T> {
    pub fn insert(&mut self, id: u64, row: T) -> Option<T> {
        let new = (row.key(), id);
        let old = self.rows.insert(id, row);
        self.index.changed(old.as_ref().map(|r| (r.key(), id)), Some(new));
        old
    }

    pub fn remove(&mut self, id: &u64) -> Option<T> {
        let old = self.rows.remove(id)?;
        self.index.changed(Some((old.key(), *id)), None);
        Some(old)
    }

    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// The row to change; its place in the order follows when the handle
    /// is dropped.
    pub fn get_mut(&mut self, id: &u64) -> Option<RowMut<'_, T>> {
        let row = self.rows.get_mut(id)?;
        Some(RowMut { key: row.key(), id: *id, row, index: &mut self.index })
    }

    /// Changes every row in id order.
    pub fn for_each_mut(&mut self, mut f: impl FnMut(&mut T)) {
        self.retain(|_, row| {
            f(row);
            true
        });
    }

    /// Keeps the rows for which `keep` (which may change them) says so.
    pub fn retain(&mut self, mut keep: impl FnMut(&u64, &mut T) -> bool) {
        let index = &mut self.index;
        self.rows.retain(|id, row| {
            let key = row.key();
            let kept = keep(id, row);
            if !kept || row.cmp_key(&key) != Ordering::Equal {
                index.changed(Some((key, *id)), kept.then(|| (row.key(), *id)));
            }
            kept
        });
    }

    /// Rows the page walks have visited so far: what a page cost.
    pub fn rows_visited(&self) -> u64 {
        self.index.visited
    }

    /// A page of `listing`: how many rows it holds, and the ids of at most
    /// `limit` of them (all with `None`) from `offset` on.
    ///
    /// The walk starts at the cursor of the same listing nearest before
    /// `offset`, and leaves one where it ends.
    pub fn page(&mut self, listing: &Listing<T::Key>, offset: usize, limit: Option<usize>) -> (usize, Vec<u64>) {
        let Self { rows, index } = self;
        let w = index.find_or_count(listing);
        let total = index.walked[w].total;
        let limit = limit.unwrap_or(usize::MAX).min(total.saturating_sub(offset));
        if limit == 0 {
            return (total, Vec::new());
        }
        let start = index.walked[w].cursors.iter().filter(|c| c.rank <= offset).max_by_key(|c| c.rank);
        let skip = offset - start.map_or(0, |c| c.rank);
        let start = start.map(|c| c.last.clone());
        let desc = listing.desc;
        let visited = &mut index.visited;
        let mut ids = Vec::with_capacity(limit);
        let last = match listing.order {
            Order::Key => {
                let (mut from, mut to) = Index::bounds(listing);
                match start {
                    Some(p) if desc => to = Bound::Excluded(p),
                    Some(p) => from = Bound::Excluded(p),
                    None => {}
                }
                let range = (from, to);
                if !nonempty(&range) {
                    return (total, ids);
                }
                let range = index.entries.range(range);
                let walk: Box<dyn Iterator<Item = &(T::Key, u64)>> =
                    if desc { Box::new(range.rev()) } else { Box::new(range) };
                let mut last = None;
                for entry in walk.inspect(|_| *visited += 1).skip(skip).take(limit) {
                    ids.push(entry.1);
                    last = Some(entry);
                }
                last.cloned()
            }
            Order::Id => {
                let after = start.map(|(_, id)| id);
                let range = match after {
                    Some(id) if desc => rows.range(..id),
                    Some(id) => rows.range((Bound::Excluded(id), Bound::Unbounded)),
                    None => rows.range(..),
                };
                let walk: Box<dyn Iterator<Item = (&u64, &T)>> =
                    if desc { Box::new(range.rev()) } else { Box::new(range) };
                let admitted = walk.inspect(|_| *visited += 1).filter(|(_, row)| listing.admits_by(|b| row.cmp_key(b)));
                let mut last = None;
                for (id, row) in admitted.skip(skip).take(limit) {
                    ids.push(*id);
                    last = Some((id, row));
                }
                last.map(|(id, row)| (row.key(), *id))
            }
        };
        if let Some(last) = last {
            index.clock += 1;
            let (rank, used) = (offset + ids.len(), index.clock);
            let cursors = &mut index.walked[w].cursors;
            if let Some(c) = cursors.iter_mut().find(|c| c.rank == rank) {
                *c = Cursor { last, rank, used };
            } else {
                if cursors.len() >= CURSORS_KEPT {
                    let oldest = (0..cursors.len()).min_by_key(|&i| cursors[i].used).expect("not empty");
                    cursors.swap_remove(oldest);
                }
                cursors.push(Cursor { last, rank, used });
            }
        }
        (total, ids)
    }
}

/// A row being changed (see [`Table::get_mut`]).
pub struct RowMut<'a, T: Row> {
    row: &'a mut T,
    id: u64,
    /// The key before the change.
    key: T::Key,
    index: &'a mut Index<T::Key>,
}

impl<T: Row> Deref for RowMut<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.row
    }
}

impl<T: Row> DerefMut for RowMut<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.row
    }
}

impl<T: Row> Drop for RowMut<'_, T> {
    fn drop(&mut self) {
        if self.row.cmp_key(&self.key) != Ordering::Equal {
            self.index.changed(Some((self.key.clone(), self.id)), Some((self.row.key(), self.id)));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ops::RangeBounds;

    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    /// Few distinct keys: many ties.
    #[derive(Debug)]
    struct R(u8);

    impl Row for R {
        type Key = u8;

        fn key(&self) -> u8 {
            self.0
        }
    }

    /// The page by filtering and sorting every row.
    fn brute(table: &Table<R>, l: &Listing<u8>, offset: usize, limit: Option<usize>) -> (usize, Vec<u64>) {
        let range = (l.from, l.to);
        let mut rows: Vec<(u8, u64)> =
            table.iter().map(|(id, r)| (r.0, *id)).filter(|(key, _)| range.contains(key)).collect();
        match l.order {
            Order::Id => rows.sort_by_key(|&(_, id)| id),
            Order::Key => rows.sort(),
        }
        if l.desc {
            rows.reverse();
        }
        (rows.len(), rows.iter().skip(offset).take(limit.unwrap_or(usize::MAX)).map(|&(_, id)| id).collect())
    }

    fn bound(rng: &mut ChaCha8Rng) -> Bound<u8> {
        let key = rng.random_range(0..12);
        match rng.random_range(0..3) {
            0 => Bound::Unbounded,
            1 => Bound::Included(key),
            _ => Bound::Excluded(key),
        }
    }

    #[test]
    fn pages_are_what_filtering_and_sorting_every_row_gives_through_any_writes() {
        for seed in 0..12 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut table: Table<R> = (0..150).map(|id| (id, R(rng.random_range(0..10)))).collect();
            // Listings walked page by page (some empty or inverted ranges).
            let mut walks: Vec<(Listing<u8>, usize, usize)> = (0..6)
                .map(|_| {
                    let order = if rng.random_bool(0.5) { Order::Id } else { Order::Key };
                    let listing =
                        Listing { order, desc: rng.random_bool(0.5), from: bound(&mut rng), to: bound(&mut rng) };
                    (listing, rng.random_range(1..30), 0)
                })
                .collect();
            for step in 0..3_000 {
                let id = rng.random_range(0..200);
                match rng.random_range(0..100) {
                    0..30 => {
                        if let Some(mut row) = table.get_mut(&id) {
                            row.0 = rng.random_range(0..10);
                        }
                    }
                    30..40 => {
                        table.insert(id, R(rng.random_range(0..10)));
                    }
                    40..48 => {
                        table.remove(&id);
                    }
                    48..50 => {
                        let m = rng.random_range(2..5);
                        table.retain(|id, row| {
                            row.0 = (row.0 + 1) % 10;
                            id % m != 0
                        });
                    }
                    50..52 => table.for_each_mut(|row| row.0 = (row.0 * 7) % 10),
                    _ => {
                        let w = rng.random_range(0..walks.len());
                        let (listing, per_page, page) = &mut walks[w];
                        let (offset, limit) = match rng.random_range(0..10) {
                            0 => (rng.random_range(0..220), Some(*per_page)),
                            1 => (0, None),
                            _ => (*page * *per_page, Some(*per_page)),
                        };
                        let got = table.page(listing, offset, limit);
                        assert_eq!(got, brute(&table, listing, offset, limit), "seed {seed} step {step} {listing:?}");
                        *page = if got.1.is_empty() { 0 } else { offset / *per_page + 1 };
                    }
                }
            }
        }
    }

    #[test]
    fn a_page_walks_its_own_rows_not_the_table_even_with_writes_between_pages() {
        let n = 20_000u64;
        let per_page = 500;
        let mut table: Table<R> = (0..n).map(|id| (id, R((id % 7) as u8))).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for listing in [Listing::all(Order::Key, false), Listing::all(Order::Id, true)] {
            let before = table.rows_visited();
            let mut seen = 0;
            for page in 0.. {
                // A write between pages, before or after where the walk is.
                if let Some(mut row) = table.get_mut(&rng.random_range(0..n)) {
                    row.0 = rng.random_range(0..7);
                }
                let (total, ids) = table.page(&listing, page * per_page, Some(per_page));
                assert_eq!(total, usize::try_from(n).unwrap());
                seen += ids.len();
                if ids.is_empty() {
                    break;
                }
            }
            assert_eq!(seen, usize::try_from(n).unwrap());
            // A sort per page would visit 40 × 20 000 rows; a restart per page half that.
            let visited = table.rows_visited() - before;
            assert!(visited < 3 * n, "{visited} rows visited for {n}");
        }
    }

    #[test]
    fn the_newest_row_alone_costs_one_row() {
        let mut table: Table<R> = (0..10_000).map(|id| (id, R((id % 3) as u8))).collect();
        let newest = Listing::all(Order::Key, true);
        assert_eq!(table.page(&newest, 0, Some(1)), (10_000, vec![9_998]));
        assert_eq!(table.rows_visited(), 1);
    }
}
