//! The Lua code the link runs on Redis, each piece with its KEYS/ARGV
//! contract next to it: one place to read what Redis does on the cluster's
//! behalf. The payload SAY publishes is the one
//! [`super::wire::said_payload`] builds and [`super::wire::Wire::decode`]
//! reads back.
//!
//! They travel as one library of Redis functions ([`Library`]), loaded
//! with `FUNCTION LOAD REPLACE` on every new connection and called with
//! `FCALL` by name: a call is a few bytes, never the script. Functions are
//! kept by Redis like data (persisted, and replicated to its replicas), so
//! a promoted replica has them; after a `FUNCTION FLUSH` the link loads
//! the library again and sends the refused call once more (see
//! `Link::on_reply`). Redis 7.0 or later is needed.

use super::wire::Keys;
use crate::history::Id;

/// Moves the shared guest counter past what this instance already handed
/// out (a restarted Redis forgets it), then reserves a block.
/// KEYS[1] the counter (`chatd:guests`); ARGV[1] guest numbers used here,
/// ARGV[2] the block's size. Returns the block's last number.
pub const GUESTS: &str = "local v = tonumber(redis.call('get', KEYS[1]) or '0') \
     if v < tonumber(ARGV[1]) then redis.call('set', KEYS[1], ARGV[1]) end \
     return redis.call('incrby', KEYS[1], ARGV[2])";

/// Redis numbers and keeps room lines (docs/cluster.md, "Room history"):
/// KEYS meta hash (e: epoch, n: last N, r: the replication id the epoch
/// was numbered under), stream, channel, the room's topic (whose TTL is
/// renewed with the history's, if it is there); ARGV maxlen (0: keep none), ttl
/// ms, node, senders (who said which lines, [`super::wire::senders`]),
/// the replication id, lines. Every line gets the id EPOCH-N (EPOCH: the ms when Redis began
/// this room's history), goes into the stream under that id, and the batch
/// is published with the first id and the senders (`NODE
/// =EPOCH-N:SENDERS\nLINE\nLINE...`), so every instance, the senders' too,
/// delivers it as it comes back: one order for all. Returns the first id.
///
/// The room begins a new record (a new epoch from now, its stream emptied,
/// N from 1), as after a restarted Redis, so that no id is ever given to
/// two lines; resuming clients are told the history since their id is
/// gone:
/// - when the Redis numbering it is not the one that numbered the epoch
///   (`master_replid`, which a failover's promoted replica, a restart or a
///   `REPLICAOF` changes): a replica may not have had the last lines, and
///   its counter would give their ids again. The link reads it with `INFO`
///   once per connection and passes it in (an `INFO` inside every call
///   cost Redis about as much as the rest of the call): a failover, a
///   restart or a demotion ends the connection (a replica is refused at
///   connect, and a write refused with READONLY drops the link), so no
///   connection writes under an id that is not its Redis's;
/// - when the stream's last id is at or past the counter's (an entry
///   written there by anyone who can reach Redis, or a counter Redis lost
///   while the stream lived on): every XADD would be refused, and with it
///   every line of the room until the stream expired, which nothing would
///   renew.
pub const SAY: &str = "local t = redis.call('time') \
     local ms = string.format('%.0f', t[1] * 1000 + math.floor(t[2] / 1000)) \
     local rid = ARGV[5] \
     local count = #ARGV - 5 \
     local m = redis.call('hmget', KEYS[1], 'e', 'r') \
     local e, first = m[1], 1 \
     local function restart() \
       redis.call('del', KEYS[2]) \
       if e == ms then e = string.format('%.0f', tonumber(ms) + 1) else e = ms end \
       first = 1 \
       redis.call('hset', KEYS[1], 'e', e, 'n', count, 'r', rid) \
     end \
     if e and m[2] == rid then \
       first = redis.call('hincrby', KEYS[1], 'n', count) - count + 1 \
     else restart() end \
     local function keep(call) \
       for i = 6, #ARGV do \
         local r = call('xadd', KEYS[2], 'MAXLEN', '~', ARGV[1], e .. '-' .. (first + i - 6), 't', ARGV[i], 'ms', ms) \
         if type(r) == 'table' and r.err then return false end \
       end \
       return true \
     end \
     if ARGV[1] ~= '0' and not keep(redis.pcall) then \
       restart() \
       keep(redis.call) \
     end \
     redis.call('pexpire', KEYS[1], ARGV[2]) \
     if ARGV[1] ~= '0' then redis.call('pexpire', KEYS[2], ARGV[2]) end \
     redis.call('pexpire', KEYS[4], ARGV[2]) \
     redis.call('publish', KEYS[3], ARGV[3] .. ' =' .. e .. '-' .. first .. ':' .. ARGV[4] .. '\\n' .. table.concat(ARGV, '\\n', 6)) \
     return e .. '-' .. first";

/// SAY's KEYS and its ARGV but the lines, which follow them one per
/// argument: [meta, stream, channel, topic, maxlen, ttl ms (at least 1),
/// node, senders ([`super::wire::senders`]: who said which lines), the
/// replication id of the Redis the connection writes to].
pub fn say_args(
    keys: &Keys,
    room: &str,
    keep: usize,
    ttl_ms: u64,
    node: &str,
    senders: &str,
    replid: &str,
) -> [String; 9] {
    let (meta, stream) = keys.history(room);
    [
        meta,
        stream,
        keys.room(room),
        keys.topic(room),
        keep.to_string(),
        ttl_ms.max(1).to_string(),
        node.to_string(),
        senders.to_string(),
        replid.to_string(),
    ]
}

/// Reads a room's history: KEYS meta hash, stream; ARGV the oldest id to
/// leave out (`(EPOCH-N`, or `-` for none), how many lines at most, the
/// most bytes the answer may take ([`BUDGET`]) and the longest line taken.
/// Returns the epoch, the last N, then id, ms, text of each line, newest
/// first, then how many lines were left out (read by
/// [`super::wire::Wire::read_answer`] and [`super::wire::left_out`]). A
/// line longer than the longest taken is left out, and once the budget is
/// spent so is every older one: no `/history`, `--history` or line in the
/// stream (anyone who can reach Redis can XADD one of 5 MiB) makes the
/// answer larger than the link reads (`MAX_REPLY`), which would drop the
/// link for every user.
pub const READ: &str = "local r = {redis.call('hget', KEYS[1], 'e') or '', \
     redis.call('hget', KEYS[1], 'n') or '0'} \
     if tonumber(ARGV[2]) > 0 then \
       local budget, most, used, out = tonumber(ARGV[3]), tonumber(ARGV[4]), 0, 0 \
       local xs = redis.call('xrevrange', KEYS[2], '+', ARGV[1], 'COUNT', ARGV[2]) \
       for k, x in ipairs(xs) do \
         local t, ms = '', '0' \
         for i = 1, #x[2], 2 do \
           if x[2][i] == 't' then t = x[2][i + 1] elseif x[2][i] == 'ms' then ms = x[2][i + 1] end \
         end \
         if #t > most then out = out + 1 \
         elseif used + #t + 64 > budget then out = out + #xs - k + 1 break \
         else used = used + #t + 64 r[#r + 1] = x[1] r[#r + 1] = ms r[#r + 1] = t end \
       end \
       r[#r + 1] = tostring(out) \
     end \
     return r";

/// The most bytes a READ or BANS answer may take, counting 64 for each
/// entry's id, time and framing: half what the link reads of one reply.
pub const BUDGET: usize = super::redis::MAX_REPLY / 2;

/// READ's KEYS and ARGV: [meta, stream, `(AFTER` or `-`, count, budget,
/// longest line].
pub fn read_args(
    keys: &Keys,
    room: &str,
    after: Option<Id>,
    count: usize,
    longest: usize,
) -> [String; 6] {
    let (meta, stream) = keys.history(room);
    let after = after.map_or("-".to_string(), |a| format!("({a}"));
    [
        meta,
        stream,
        after,
        count.to_string(),
        BUDGET.to_string(),
        longest.to_string(),
    ]
}

/// One page of the bans hash: KEYS[1] the hash; ARGV the HSCAN cursor, the
/// page's size, the longest value taken, [`BUDGET`]. Returns the next cursor (`0`: the
/// last page), how many entries were left out, then field, value of each.
/// A value longer than a ban's line can be, or past [`BUDGET`], is left
/// out, so no size of the hash makes an answer the link cannot read (it
/// once read the hash whole, and 5 000 long bans made every instance that
/// linked up flap for good).
pub const BANS: &str = "local page = redis.call('hscan', KEYS[1], ARGV[1], 'COUNT', ARGV[2]) \
     local r, used, out, most = {page[1], '0'}, 0, 0, tonumber(ARGV[3]) \
     for i = 1, #page[2], 2 do \
       local f, v = page[2][i], page[2][i + 1] \
       if #v > most or #f > most or used + #f + #v + 64 > tonumber(ARGV[4]) then out = out + 1 \
       else used = used + #f + #v + 64 r[#r + 1] = f r[#r + 1] = v end \
     end \
     r[2] = tostring(out) \
     return r";

/// How many entries of the bans hash are asked for in one page.
pub const BANS_PAGE: usize = 100;

/// Renewal: re-creates the key if it is gone (a restarted or flushed Redis,
/// or expired during a freeze), extends it if it is ours, and takes it over
/// from a claim we beat. KEYS[1] the name's key; ARGV[1] our claim
/// ([`super::wire::claim_value`]), ARGV[2] its lifetime in ms, ARGV[3] the
/// claim we beat (or empty). Returns who holds the name now.
pub const RENEW: &str = "local v = redis.call('get', KEYS[1]) \
     if not v or v == ARGV[1] or v == ARGV[3] then \
     redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2]) return ARGV[1] end \
     return v";

/// A ban lifted: its record leaves the bans hash and a tombstone takes its
/// place, naming the lifted ban by its end (UNTIL, `permanent`, or `*`
/// when Redis had no record of it), so an instance that was away when it
/// was lifted learns it when it re-asserts its bans ([`REASSERT`]).
/// KEYS[1] the bans hash, KEYS[2] the tombstones hash; ARGV[1] the net.
pub const UNBAN: &str = "local v = redis.call('hget', KEYS[1], ARGV[1]) \
     local u = v and string.match(v, '^[^\t]*\t([^\t]*)') or '*' \
     redis.call('hdel', KEYS[1], ARGV[1]) \
     redis.call('hset', KEYS[2], ARGV[1], u) \
     return u";

/// At link-up, one ban this instance holds, re-asserted: if a tombstone
/// says that very ban (same end, or `*`) was lifted and it has not run out,
/// the answer is `lifted` and the instance lifts it too; otherwise the
/// tombstone (of another ban, or run out) goes, and the ban is written
/// unless Redis has a record for the net already (Redis's record is the
/// latest `/ban` made while it was up: it wins over a memory). So after
/// Redis lost its state the instances write their bans back, and an
/// instance started later reads them.
/// KEYS[1] the bans hash, KEYS[2] the tombstones hash; ARGV[1] the net,
/// ARGV[2] the ban's line, ARGV[3] its end (UNTIL or `permanent`), ARGV[4]
/// now in ms. Returns `lifted` or `kept`.
pub const REASSERT: &str = "local t = redis.call('hget', KEYS[2], ARGV[1]) \
     if t then \
       local live = t == 'permanent' or t == '*' or (tonumber(t) or 0) > tonumber(ARGV[4]) \
       if live and (t == ARGV[3] or t == '*') then return 'lifted' end \
       redis.call('hdel', KEYS[2], ARGV[1]) \
     end \
     redis.call('hsetnx', KEYS[1], ARGV[1], ARGV[2]) \
     return 'kept'";

/// Gives back a name held by a user of an instance declared lost (which
/// cannot give it back itself), so it is free at once rather than when the
/// claim runs out. KEYS[1] the name's key; ARGV[1] the end of that user's
/// claims ([`super::wire::claim_tail`]: ` NODE ID`). Deletes only a claim
/// `MS NODE ID` of that user: one another user made since is left alone.
/// Returns 1 if deleted. Should the instance come back, its renewal
/// re-creates the claim, or takes it over as the earlier one.
pub const RELEASE_LOST: &str = "local v = redis.call('get', KEYS[1]) \
     if v and #v > #ARGV[1] and string.sub(v, -#ARGV[1]) == ARGV[1] \
       and string.match(string.sub(v, 1, #v - #ARGV[1]), '^%d+$') then \
     return redis.call('del', KEYS[1]) end return 0";

/// Gives a name back only if it is still ours: after a collision the key
/// belongs to the winner, and a plain DEL would free it for a third user.
/// KEYS[1] the name's key; ARGV[1] our claim. Returns 1 if deleted.
pub const RELEASE: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then \
     return redis.call('del', KEYS[1]) end return 0";

/// The functions of the [`Library`], each one of the scripts above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Func {
    Guests,
    Say,
    Read,
    Bans,
    Renew,
    Unban,
    Reassert,
    ReleaseLost,
    Release,
}

impl Func {
    pub const ALL: [Func; 9] = [
        Func::Guests,
        Func::Say,
        Func::Read,
        Func::Bans,
        Func::Renew,
        Func::Unban,
        Func::Reassert,
        Func::ReleaseLost,
        Func::Release,
    ];

    /// Its script, and whether it only reads (flagged `no-writes`: it then
    /// runs even when Redis is out of memory and refuses writes).
    fn script(self) -> (&'static str, bool) {
        match self {
            Func::Guests => (GUESTS, false),
            Func::Say => (SAY, false),
            Func::Read => (READ, true),
            Func::Bans => (BANS, true),
            Func::Renew => (RENEW, false),
            Func::Unban => (UNBAN, false),
            Func::Reassert => (REASSERT, false),
            Func::ReleaseLost => (RELEASE_LOST, false),
            Func::Release => (RELEASE, false),
        }
    }

    fn short(self) -> &'static str {
        match self {
            Func::Guests => "guests",
            Func::Say => "say",
            Func::Read => "read",
            Func::Bans => "bans",
            Func::Renew => "renew",
            Func::Unban => "unban",
            Func::Reassert => "reassert",
            Func::ReleaseLost => "release_lost",
            Func::Release => "release",
        }
    }

    /// Its name in Redis: `chatd_HASH_SHORT`.
    pub fn name(self) -> &'static str {
        &LIBRARY.names[self as usize]
    }
}

/// The library as Redis loads it. Its name, and so its functions' names,
/// carry a hash of the code: instances of two versions on one Redis (a
/// rolling restart) each call their own functions, and neither's `FUNCTION
/// LOAD REPLACE` changes what the other runs.
pub struct Library {
    pub code: String,
    names: Vec<String>,
}

/// Built once, from the scripts above.
pub static LIBRARY: std::sync::LazyLock<Library> = std::sync::LazyLock::new(|| {
    // FNV-1a: stable across builds and platforms, which `Hash` is not.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for f in Func::ALL {
        let (script, ro) = f.script();
        for b in script.bytes().chain([ro as u8]) {
            h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    let lib = format!("chatd_{:012x}", h & 0xffff_ffff_ffff);
    let names: Vec<String> = Func::ALL
        .iter()
        .map(|f| format!("{lib}_{}", f.short()))
        .collect();
    let mut code = format!("#!lua name={lib}\n");
    for (f, name) in Func::ALL.iter().zip(&names) {
        let (script, ro) = f.script();
        let flags = if ro { ", flags = {'no-writes'}" } else { "" };
        code.push_str(&format!(
            "redis.register_function{{function_name = '{name}', callback = function(KEYS, ARGV) {script} end{flags}}}\n"
        ));
    }
    Library { code, names }
});

/// Whether Redis refused a call because it does not have the function
/// (a `FUNCTION FLUSH` or `DELETE` since the library was loaded).
pub fn not_loaded(err: &str) -> bool {
    err.contains("Function not found")
}
