//! Room history, pure: the last lines said in each room, with their time and
//! id, under a line bound per room and a byte bound over all rooms.
//!
//! No sockets and no clock: every call that needs the time is given it (the
//! reactor reads the wall clock once per turn). The hub pushes messages and
//! actions here as it relays them, and reads them back for join replays and
//! `/history`.
//!
//! Ids are `EPOCH-N`: N counts the room's lines from 1, EPOCH is the time in
//! milliseconds when this record of the room began. The pair increases within
//! a room for as long as the record lives, it has the shape of a Redis stream
//! id (so a cluster can use the same ids as explicit stream ids), and it
//! lets the server count exactly what a resuming client missed: with the
//! same EPOCH, every N between the client's and the first one still kept;
//! with another EPOCH, the record the client knew is gone (a restart, or an
//! empty room that outlived `--history-ttl`), and that is said instead.
//!
//! A room's record lives while the room has members, and after the last one
//! leaves for `ttl` as long as it still holds lines. Over the byte bound the
//! oldest lines of all rooms go first, whichever room they are in.

use slab::Slab;
use std::collections::{HashMap, VecDeque};
use std::fmt;

/// What one kept line costs beyond its text, charged against the byte
/// bound so that the bound is what the process really holds, whatever the
/// mix of rooms and lines. From the layout (the unit test below pins the
/// sizes; a type that grows grows the charge):
/// - its `Line` in the room's ring, which holds at most two slots per line
///   (it doubles when full, and is halved when evictions leave it more
///   than half empty): 2 × 40;
/// - its `(seq, room)` in the eviction queue, which holds stale entries up
///   to twice the live ones before it is compacted and at most doubles its
///   capacity: 4 × 16;
/// - the allocator's header and rounding of its text: at most 32.
///
/// Together 176 (measured with `mallinfo2`, 200 000 lines of 40 bytes in
/// 2000 rooms hold about 60 beyond their text: the worst case is rare).
pub const ENTRY_OVERHEAD: usize =
    SLOTS_PER_LINE * size_of::<Line>() + 4 * size_of::<(u64, usize)>() + 32;

/// Ring slots per kept line at most (see `evict_oldest`).
const SLOTS_PER_LINE: usize = 2;

/// What a room's record costs beyond its lines and its name, charged
/// while the record lives (a room that emptied keeps it for
/// --history-ttl): without it 40 000 rooms of one line each held 13.6 MiB
/// under a 4 MiB bound. From the layout:
/// - its slot in the slab of records, which may be half empty after it
///   doubled: 2 × (the record + the slab's tag);
/// - its entry in the map by name, at most 8/7 full and half empty after
///   it doubled: 16/7 × (the entry + its control byte);
/// - its entry in the expiry queue (one at most), doubled: 2 × 24;
/// - its ring's first allocation, four slots whatever it holds.
///
/// The name itself is charged as allocated, twice (record and map key).
pub const ROOM_OVERHEAD: usize = 2 * (size_of::<Room>() + 8)
    + (size_of::<(Box<str>, usize)>() + 1) * 16 / 7
    + 2 * size_of::<(u64, usize, u64)>()
    + malloc_chunk(4 * size_of::<Line>());

/// glibc's malloc chunk for an `n`-byte request on a 64-bit machine.
const fn malloc_chunk(n: usize) -> usize {
    let chunk = (n + 8 + 15) & !15;
    if chunk < 32 { 32 } else { chunk }
}

fn room_cost(key: &str) -> usize {
    ROOM_OVERHEAD + 2 * malloc_chunk(key.len())
}

/// A line's id: see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Id {
    pub epoch: u64,
    pub n: u64,
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.epoch, self.n)
    }
}

impl std::str::FromStr for Id {
    type Err = ();
    fn from_str(s: &str) -> Result<Id, ()> {
        let (e, n) = s.split_once('-').ok_or(())?;
        let digits =
            |t: &str| !t.is_empty() && t.len() <= 20 && t.bytes().all(|b| b.is_ascii_digit());
        if !digits(e) || !digits(n) {
            return Err(());
        }
        Ok(Id {
            epoch: e.parse().map_err(|_| ())?,
            n: n.parse().map_err(|_| ())?,
        })
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Lines kept per room (--history); 0 keeps none, but ids still count.
    pub per_room: usize,
    /// Bytes kept over all rooms (--history-bytes), each line charged its
    /// text plus [`ENTRY_OVERHEAD`], each room's record its name twice
    /// plus [`ROOM_OVERHEAD`].
    pub bytes: usize,
    /// How long an empty room keeps its lines (--history-ttl), in ms.
    pub ttl_ms: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            per_room: 100,
            bytes: 16 << 20,
            ttl_ms: 3600 * 1000,
        }
    }
}

/// One kept line.
#[derive(Debug, PartialEq, Eq)]
pub struct Line {
    pub n: u64,
    /// When it was said, ms since the Unix epoch.
    pub ms: u64,
    /// Global insertion order, to find the oldest line of all rooms.
    seq: u64,
    /// As relayed: `<alice> hi` or `* alice waves`.
    pub text: Box<str>,
}

impl Line {
    /// A line kept elsewhere (the cluster's history in Redis).
    pub fn new(n: u64, ms: u64, text: &str) -> Line {
        Line {
            n,
            ms,
            seq: 0,
            text: text.into(),
        }
    }
}

fn cost(text: &str) -> usize {
    text.len() + ENTRY_OVERHEAD
}

struct Room {
    key: Box<str>,
    epoch: u64,
    /// The N the next line gets.
    next: u64,
    lines: VecDeque<Line>,
    occupied: bool,
    /// When the room last became empty (while it is).
    empty_since: u64,
    /// Whether an entry for this room is in `History::expiry`.
    in_expiry: bool,
}

/// What `/history since ID` finds.
#[derive(Debug, PartialEq, Eq)]
pub enum Since {
    /// Same record: these lines come after the id (`from` is the index in
    /// the room's kept lines); `evicted` lines between the id and the first
    /// kept one are gone.
    Kept { from: usize, evicted: u64 },
    /// The id is from a record that no longer exists.
    Lost,
}

pub struct History {
    limits: Limits,
    rooms: Slab<Room>,
    keys: HashMap<Box<str>, usize>,
    /// (seq, room slot) of every kept line in the order they came, plus
    /// stale entries for lines already gone another way (per-room bound,
    /// expiry), skipped when met and compacted when they pile up.
    order: VecDeque<(u64, usize)>,
    /// (deadline, slot, epoch) of empty rooms, in deadline order (the TTL is
    /// the same for all). At most one entry per room record.
    expiry: VecDeque<(u64, usize, u64)>,
    lines: usize,
    bytes: usize,
    seq: u64,
    last_epoch: u64,
}

impl History {
    pub fn new(limits: Limits) -> History {
        History {
            limits,
            rooms: Slab::new(),
            keys: HashMap::new(),
            order: VecDeque::new(),
            expiry: VecDeque::new(),
            lines: 0,
            bytes: 0,
            seq: 0,
            last_epoch: 0,
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Lines held over all rooms.
    pub fn lines(&self) -> usize {
        self.lines
    }

    /// Bytes charged over all rooms (text plus overhead per line, name
    /// plus overhead per room's record).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Room `key` has members: its record (found, or begun now) stays until
    /// [`History::close`]. Returns the handle for the other calls.
    pub fn open(&mut self, key: &str, now: u64) -> usize {
        if let Some(&slot) = self.keys.get(key) {
            self.rooms[slot].occupied = true;
            return slot;
        }
        // Strictly increasing, so an id from an older record of the same
        // room never looks like one of this record, even within one ms.
        let epoch = now.max(self.last_epoch + 1);
        self.last_epoch = epoch;
        let slot = self.rooms.insert(Room {
            key: key.into(),
            epoch,
            next: 1,
            lines: VecDeque::new(),
            occupied: true,
            empty_since: 0,
            in_expiry: false,
        });
        self.keys.insert(key.into(), slot);
        self.bytes += room_cost(key);
        self.trim();
        slot
    }

    /// Evicts the oldest lines until the charge is within the bound (or
    /// nothing is left to evict: the records of rooms with members stay,
    /// and those are bounded by the users).
    fn trim(&mut self) {
        while self.bytes > self.limits.bytes && self.evict_oldest() {}
    }

    /// The room behind `slot` has no members any more: its lines stay for
    /// the TTL; with none, the record goes now.
    pub fn close(&mut self, slot: usize, now: u64) {
        let Some(r) = self.rooms.get_mut(slot) else {
            return;
        };
        r.occupied = false;
        r.empty_since = now;
        if r.lines.is_empty() {
            self.remove(slot);
        } else if !r.in_expiry {
            r.in_expiry = true;
            self.expiry
                .push_back((now + self.limits.ttl_ms, slot, r.epoch));
        }
    }

    /// Keeps `text` as said in the room at `now`; returns its id.
    pub fn push(&mut self, slot: usize, now: u64, text: &str) -> Id {
        let Some(r) = self.rooms.get_mut(slot) else {
            return Id { epoch: 0, n: 0 };
        };
        let id = Id {
            epoch: r.epoch,
            n: r.next,
        };
        r.next += 1;
        if self.limits.per_room == 0 {
            return id;
        }
        self.seq += 1;
        r.lines.push_back(Line {
            n: id.n,
            ms: now,
            seq: self.seq,
            text: text.into(),
        });
        self.order.push_back((self.seq, slot));
        self.lines += 1;
        self.bytes += cost(text);
        if r.lines.len() > self.limits.per_room
            && let Some(old) = r.lines.pop_front()
        {
            self.lines -= 1;
            self.bytes -= cost(&old.text);
        }
        self.trim();
        // Stale entries come from the per-room bound and expiry; keep them
        // from outgrowing the live ones.
        if self.order.len() > 2 * self.lines + 1024 {
            let rooms = &self.rooms;
            self.order.retain(|&(seq, s)| {
                rooms
                    .get(s)
                    .is_some_and(|r| r.lines.front().is_some_and(|f| f.seq <= seq))
            });
        }
        id
    }

    /// Drops the oldest line of all rooms; false if there was none.
    fn evict_oldest(&mut self) -> bool {
        while let Some((seq, slot)) = self.order.pop_front() {
            let Some(r) = self.rooms.get_mut(slot) else {
                continue;
            };
            if r.lines.front().is_none_or(|f| f.seq != seq) {
                continue;
            }
            if let Some(old) = r.lines.pop_front() {
                self.lines -= 1;
                self.bytes -= cost(&old.text);
            }
            // A ring never gives back what it grew to by itself: keep it
            // within SLOTS_PER_LINE slots per line. Shrunk to 1.5 slots, it
            // takes half as many pushes to grow again as it holds, so the
            // copies cost O(1) per line.
            let len = r.lines.len();
            if r.lines.capacity() > 4 && r.lines.capacity() > SLOTS_PER_LINE * len {
                r.lines.shrink_to((len + len / 2).max(4));
            }
            if r.lines.is_empty() && !r.occupied {
                self.remove(slot);
            }
            return true;
        }
        false
    }

    fn remove(&mut self, slot: usize) {
        if let Some(r) = self.rooms.try_remove(slot) {
            self.keys.remove(&r.key);
            self.bytes -= room_cost(&r.key);
            self.lines -= r.lines.len();
            self.bytes -= r.lines.iter().map(|l| cost(&l.text)).sum::<usize>();
        }
    }

    /// Forgets empty rooms whose TTL has passed.
    pub fn expire(&mut self, now: u64) {
        while let Some(&(deadline, slot, epoch)) = self.expiry.front() {
            if deadline > now {
                return;
            }
            self.expiry.pop_front();
            let Some(r) = self.rooms.get_mut(slot) else {
                continue;
            };
            if r.epoch != epoch {
                continue;
            }
            r.in_expiry = false;
            if r.occupied {
                continue;
            }
            let due = r.empty_since + self.limits.ttl_ms;
            if due <= now {
                self.remove(slot);
            } else {
                // Emptied again after this entry was queued: wait for the
                // later deadline (still in order: it is at most now + ttl).
                r.in_expiry = true;
                self.expiry.push_back((due, slot, epoch));
            }
        }
    }

    /// The kept lines of a room, oldest first.
    pub fn kept(&self, slot: usize) -> &VecDeque<Line> {
        static EMPTY: VecDeque<Line> = VecDeque::new();
        self.rooms.get(slot).map_or(&EMPTY, |r| &r.lines)
    }

    /// The room's current epoch and the next N (so `next - 1` lines were
    /// said in this record).
    pub fn head(&self, slot: usize) -> Option<Id> {
        self.rooms.get(slot).map(|r| Id {
            epoch: r.epoch,
            n: r.next,
        })
    }

    /// Whether a room's record (any room's) has `epoch`: epochs never
    /// repeat, so an id with it was given out in that record.
    pub fn has_epoch(&self, epoch: u64) -> bool {
        self.rooms.iter().any(|(_, r)| r.epoch == epoch)
    }

    /// Where the lines after `id` begin among the room's kept lines.
    pub fn since(&self, slot: usize, id: Id) -> Since {
        let Some(r) = self.rooms.get(slot) else {
            return Since::Lost;
        };
        if id.epoch != r.epoch || id.n >= r.next {
            // An id this record never gave out is from another record.
            return if id.epoch == r.epoch && id.n + 1 == r.next {
                Since::Kept {
                    from: r.lines.len(),
                    evicted: 0,
                }
            } else {
                Since::Lost
            };
        }
        let first = r.lines.front().map_or(r.next, |l| l.n);
        if id.n + 1 >= first {
            let from = r.lines.partition_point(|l| l.n <= id.n);
            Since::Kept { from, evicted: 0 }
        } else {
            Since::Kept {
                from: 0,
                evicted: first - id.n - 1,
            }
        }
    }

    /// Rooms with a record (for tests and metrics).
    pub fn rooms(&self) -> usize {
        self.rooms.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(per_room: usize, bytes: usize, ttl_ms: u64) -> History {
        History::new(Limits {
            per_room,
            bytes,
            ttl_ms,
        })
    }

    fn texts(h: &History, slot: usize) -> Vec<&str> {
        h.kept(slot).iter().map(|l| &*l.text).collect()
    }

    #[test]
    fn ids_print_and_parse() {
        let id = Id {
            epoch: 1764562778123,
            n: 42,
        };
        assert_eq!(id.to_string(), "1764562778123-42");
        assert_eq!("1764562778123-42".parse(), Ok(id));
        for bad in [
            "",
            "1",
            "1-",
            "-1",
            "a-1",
            "1-2-3",
            "1 -2",
            "+1-2",
            "99999999999999999999999-1",
        ] {
            assert_eq!(bad.parse::<Id>(), Err(()), "{bad:?}");
        }
    }

    #[test]
    fn ids_increase_within_a_room_and_each_room_counts_alone() {
        let mut h = store(10, 1 << 20, 1000);
        let a = h.open("a", 5);
        let b = h.open("b", 5);
        assert_eq!(h.push(a, 6, "<x> 1"), Id { epoch: 5, n: 1 });
        assert_eq!(h.push(a, 7, "<x> 2"), Id { epoch: 5, n: 2 });
        assert_eq!(
            h.push(b, 7, "<x> 3"),
            Id { epoch: 6, n: 1 },
            "epochs never repeat"
        );
        assert_eq!(h.kept(a).iter().map(|l| l.ms).collect::<Vec<_>>(), [6, 7]);
    }

    #[test]
    fn each_room_keeps_its_last_n_lines() {
        let mut h = store(3, 1 << 20, 1000);
        let a = h.open("a", 0);
        for i in 0..5 {
            h.push(a, i, &format!("<x> {i}"));
        }
        assert_eq!(texts(&h, a), ["<x> 2", "<x> 3", "<x> 4"]);
        assert_eq!(h.lines(), 3);
        assert_eq!(h.bytes(), room_cost("a") + 3 * (5 + ENTRY_OVERHEAD));
    }

    #[test]
    fn zero_lines_keeps_nothing_but_still_counts_ids() {
        let mut h = store(0, 1 << 20, 1000);
        let a = h.open("a", 9);
        h.push(a, 10, "<x> 1");
        assert_eq!(h.push(a, 10, "<x> 2").n, 2);
        assert_eq!((h.lines(), h.bytes()), (0, room_cost("a")));
    }

    #[test]
    fn the_byte_bound_evicts_the_oldest_lines_of_all_rooms_first() {
        let line = 10 + ENTRY_OVERHEAD;
        let rooms = room_cost("a") + room_cost("b");
        let mut h = store(100, rooms + 4 * line, 1000);
        let a = h.open("a", 0);
        let b = h.open("b", 0);
        h.push(a, 1, "<x> a1 ...");
        h.push(b, 2, "<x> b1 ...");
        h.push(a, 3, "<x> a2 ...");
        h.push(b, 4, "<x> b2 ...");
        assert_eq!(h.bytes(), rooms + 4 * line);
        h.push(b, 5, "<x> b3 ...");
        assert_eq!(texts(&h, a), ["<x> a2 ..."], "a1 was the oldest");
        h.push(b, 6, "<x> b4 ...");
        assert_eq!(texts(&h, b), ["<x> b2 ...", "<x> b3 ...", "<x> b4 ..."]);
        assert!(h.bytes() <= rooms + 4 * line);
        // A line larger than the whole bound does not stay either.
        h.push(a, 7, &"y".repeat(5 * line));
        assert_eq!((h.lines(), h.bytes()), (0, rooms));
    }

    #[test]
    fn the_charges_match_the_layout_they_were_derived_from() {
        // If a type grows, the charges grow with it; these pin the figures
        // the comments give.
        assert_eq!(size_of::<Line>(), 40);
        assert_eq!(size_of::<(u64, usize)>(), 16);
        assert_eq!(ENTRY_OVERHEAD, 176);
        assert_eq!(size_of::<Room>(), 80);
        assert_eq!(ROOM_OVERHEAD, 176 + 57 + 48 + 176);
        assert_eq!(room_cost("lobby"), ROOM_OVERHEAD + 64);
    }

    #[test]
    fn rooms_are_charged_and_empty_ones_are_forgotten_to_stay_in_the_bound() {
        // 1000 rooms of one line each, emptied, under room for about 100.
        let one = room_cost("r000") + 10 + ENTRY_OVERHEAD;
        let mut h = store(100, 100 * one, 60_000);
        for i in 0..1000 {
            let r = h.open(&format!("r{i:03}"), i);
            h.push(r, i, "<x> hello");
            h.close(r, i);
            assert!(h.bytes() <= 100 * one, "{} over the bound", h.bytes());
        }
        assert_eq!(h.rooms(), 100, "the oldest rooms went with their lines");
        assert_eq!(h.lines(), 100);
        assert!(h.keys.contains_key("r999") && !h.keys.contains_key("r899"));
    }

    #[test]
    fn a_ring_emptied_by_the_bound_gives_back_its_slots() {
        let mut h = store(1000, 1 << 20, 1000);
        let a = h.open("a", 0);
        let b = h.open("b", 0);
        for i in 0..1000 {
            h.push(a, i, "<x> hi");
        }
        let big = h.kept(a).capacity();
        assert!(big >= 1000);
        // b's lines push a's out: a's ring shrinks as it empties.
        for i in 0..1000 {
            h.push(b, 1000 + i, &"x".repeat(1000));
        }
        let left = h.kept(a).len();
        assert!(
            h.kept(a).capacity() <= (2 * left).max(4),
            "{left} lines in {}",
            h.kept(a).capacity()
        );
    }

    #[test]
    fn stale_eviction_entries_do_not_pile_up() {
        let mut h = store(2, 1 << 30, 1000);
        let a = h.open("a", 0);
        for i in 0..100_000 {
            h.push(a, i, "<x> hi");
        }
        assert!(h.order.len() <= 2 * h.lines() + 1024, "{}", h.order.len());
    }

    #[test]
    fn an_empty_room_keeps_its_lines_for_the_ttl_then_forgets_them() {
        let mut h = store(10, 1 << 20, 1000);
        let a = h.open("a", 0);
        h.push(a, 1, "<x> hi");
        h.close(a, 100);
        h.expire(1099);
        assert_eq!(texts(&h, a), ["<x> hi"]);
        // Back before the TTL: the same record, and its ids go on.
        assert_eq!(h.open("a", 1099), a);
        assert_eq!(h.push(a, 1099, "<x> again").n, 2);
        h.expire(5000);
        assert_eq!(h.lines(), 2, "occupied rooms never expire");
        h.close(a, 5000);
        h.expire(5999);
        assert_eq!(h.lines(), 2);
        h.expire(6000);
        assert_eq!((h.lines(), h.bytes(), h.rooms()), (0, 0, 0));
        let again = h.open("a", 7000);
        assert_eq!(
            h.head(again),
            Some(Id { epoch: 7000, n: 1 }),
            "a new record"
        );
    }

    #[test]
    fn leaving_and_coming_back_often_keeps_one_expiry_entry() {
        let mut h = store(10, 1 << 20, 1000);
        let a = h.open("a", 0);
        h.push(a, 0, "<x> hi");
        for t in 0..10_000 {
            h.close(a, t);
            h.open("a", t);
        }
        assert_eq!(h.expiry.len(), 1);
        h.close(a, 10_000);
        h.expire(10_999);
        assert_eq!(h.lines(), 1, "the deadline moved with the last close");
        h.expire(11_000);
        assert_eq!(h.lines(), 0);
    }

    #[test]
    fn an_empty_room_without_lines_goes_at_once() {
        let mut h = store(10, 1 << 20, 1000);
        let a = h.open("a", 0);
        h.close(a, 0);
        assert_eq!(h.rooms(), 0);
    }

    #[test]
    fn since_counts_exactly_what_was_missed() {
        let mut h = store(3, 1 << 20, 1000);
        let a = h.open("a", 50);
        let ids: Vec<Id> = (0..5).map(|i| h.push(a, i, "<x> y")).collect();
        // Kept: 3, 4, 5.
        assert_eq!(
            h.since(a, ids[4]),
            Since::Kept {
                from: 3,
                evicted: 0
            }
        );
        assert_eq!(
            h.since(a, ids[3]),
            Since::Kept {
                from: 2,
                evicted: 0
            }
        );
        assert_eq!(
            h.since(a, ids[1]),
            Since::Kept {
                from: 0,
                evicted: 0
            }
        );
        assert_eq!(
            h.since(a, ids[0]),
            Since::Kept {
                from: 0,
                evicted: 1
            }
        );
        assert_eq!(
            h.since(a, Id { epoch: 50, n: 0 }),
            Since::Kept {
                from: 0,
                evicted: 2
            }
        );
        assert_eq!(h.since(a, Id { epoch: 49, n: 3 }), Since::Lost);
        assert_eq!(
            h.since(a, Id { epoch: 50, n: 9 }),
            Since::Lost,
            "never given out"
        );
    }
}
