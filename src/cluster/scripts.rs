//! The Lua scripts the link runs on Redis, each with its KEYS/ARGV contract
//! next to it: one place to read what Redis does on the cluster's behalf.
//! The payload SAY publishes is the one [`super::wire::said_payload`]
//! builds and [`super::wire::Wire::decode`] reads back.

use super::wire::Keys;
use crate::history::Id;
use crate::hub::ClientId;

/// Moves the shared guest counter past what this instance already handed
/// out (a restarted Redis forgets it), then reserves a block.
/// KEYS[1] the counter (`chatd:guests`); ARGV[1] guest numbers used here,
/// ARGV[2] the block's size. Returns the block's last number.
pub const GUESTS: &str = "local v = tonumber(redis.call('get', KEYS[1]) or '0') \
     if v < tonumber(ARGV[1]) then redis.call('set', KEYS[1], ARGV[1]) end \
     return redis.call('incrby', KEYS[1], ARGV[2])";

/// Redis numbers and keeps room lines (docs/cluster.md, "Room history"):
/// KEYS meta hash (e: epoch, n: last N), stream, channel; ARGV maxlen (0:
/// keep none), ttl ms, node, sender, lines. Every line gets the id
/// EPOCH-N (EPOCH: the ms when Redis began this room's history), goes into
/// the stream under that id, and the batch is published with the first id
/// and the sender (`NODE =EPOCH-N:SENDER\nLINE\nLINE...`), so every
/// instance, the sender's too, delivers it as it comes back: one order for
/// all. Returns the first id.
///
/// A stream whose last id is at or past the counter's (an entry written
/// there by anyone who can reach Redis, or a counter Redis lost while the
/// stream lived on) would refuse every XADD, and with it every line of the
/// room until the stream expired, which nothing would renew: then the room
/// begins a new record (a new epoch from now, its stream emptied, N from
/// 1), as after a restarted Redis. Resuming clients are told the history
/// since their id is gone; no id is given twice.
pub const SAY: &str = "local t = redis.call('time') \
     local ms = string.format('%.0f', t[1] * 1000 + math.floor(t[2] / 1000)) \
     local count = #ARGV - 4 \
     local e = redis.call('hget', KEYS[1], 'e') \
     if not e then e = ms redis.call('hset', KEYS[1], 'e', e) end \
     local first = redis.call('hincrby', KEYS[1], 'n', count) - count + 1 \
     local function keep(call) \
       for i = 5, #ARGV do \
         local r = call('xadd', KEYS[2], 'MAXLEN', '~', ARGV[1], e .. '-' .. (first + i - 5), 't', ARGV[i], 'ms', ms) \
         if type(r) == 'table' and r.err then return false end \
       end \
       return true \
     end \
     if ARGV[1] ~= '0' and not keep(redis.pcall) then \
       redis.call('del', KEYS[2]) \
       if e == ms then e = string.format('%.0f', tonumber(ms) + 1) else e = ms end \
       first = 1 \
       redis.call('hset', KEYS[1], 'e', e, 'n', count) \
       keep(redis.call) \
     end \
     redis.call('pexpire', KEYS[1], ARGV[2]) \
     if ARGV[1] ~= '0' then redis.call('pexpire', KEYS[2], ARGV[2]) end \
     redis.call('publish', KEYS[3], ARGV[3] .. ' =' .. e .. '-' .. first .. ':' .. ARGV[4] .. '\\n' .. table.concat(ARGV, '\\n', 5)) \
     return e .. '-' .. first";

/// SAY's KEYS and its ARGV but the lines, which follow them one per
/// argument: [meta, stream, channel, maxlen, ttl ms (at least 1), node,
/// sender].
pub fn say_args(
    keys: &Keys,
    room: &str,
    keep: usize,
    ttl_ms: u64,
    node: &str,
    from: ClientId,
) -> [String; 7] {
    let (meta, stream) = keys.history(room);
    [
        meta,
        stream,
        keys.room(room),
        keep.to_string(),
        ttl_ms.max(1).to_string(),
        node.to_string(),
        from.0.to_string(),
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

/// The scripts loaded once per connection (SCRIPT LOAD) and then called
/// by SHA1, by index: the ones sent often enough for their size to matter
/// (REASSERT: once per ban held, up to MAX_BANS, at every link-up).
pub const LOADED: [&str; 3] = [SAY, READ, REASSERT];
/// Index of [`SAY`] in [`LOADED`].
pub const SAY_I: usize = 0;
/// Index of [`READ`] in [`LOADED`].
pub const READ_I: usize = 1;
/// Index of [`REASSERT`] in [`LOADED`].
pub const REASSERT_I: usize = 2;

/// SHA1s of [`LOADED`] as loaded on this connection; until known (or after
/// Redis forgot them), the scripts are sent whole.
#[derive(Debug, Default)]
pub struct Loaded([Option<String>; LOADED.len()]);

impl Loaded {
    /// SCRIPT LOAD answered for script `i`.
    pub fn set(&mut self, i: usize, sha: Option<String>) {
        self.0[i] = sha;
    }

    /// After SCRIPT FLUSH, Redis answers NOSCRIPT: send the scripts whole
    /// again (EVAL loads them as it runs them).
    pub fn forgot(&mut self, err: &str) {
        if err.starts_with("NOSCRIPT") {
            self.0 = Default::default();
        }
    }

    /// `EVALSHA SHA` when script `i` is loaded, `EVAL SCRIPT` otherwise.
    pub fn call(&self, i: usize) -> (&'static [u8], Vec<u8>) {
        match &self.0[i] {
            Some(sha) => (b"EVALSHA", sha.as_bytes().to_vec()),
            None => (b"EVAL", LOADED[i].as_bytes().to_vec()),
        }
    }
}

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
