// chatd in the browser: one WebSocket to the host the page came from, one
// protocol line per text frame, the same commands as telnet. Everything the
// server or other people send is shown with textContent, never parsed as HTML.
'use strict';

(function () {
  const $ = (id) => document.getElementById(id);
  const log = $('log');
  const form = $('form');
  const input = $('input');
  const statusEl = $('status');
  const retry = $('retry');
  const meEl = $('me');
  const roomEl = $('room');
  const usersEl = $('users');
  const countEl = $('count');
  const roomsEl = $('rooms');
  const joinedEl = $('joined');
  const privatesEl = $('privates');
  const side = $('side');
  const toggle = $('toggle');
  const passform = $('passform');
  const password = $('password');
  const whereEl = $('where');

  // The viewer's time zone, for the history headers: the page shows every
  // time in it, not in the UTC the server's lines are written in.
  const ZONE = (function () {
    try {
      return Intl.DateTimeFormat().resolvedOptions().timeZone || 'local time';
    } catch (e) {
      return 'local time';
    }
  })();

  // A server with a password says this first, and answers anything but
  // /pass with the error.
  const NEEDS_PASSWORD = '*** this server needs a password: /pass SECRET';
  const NEEDS_PASSWORD_ERROR = '*** error: this server needs a password: /pass SECRET';

  // Bounds: the page may stay open for days.
  const MAX_LOG = 2000;
  // Private conversations kept as views of their own; past it the oldest
  // one not on screen goes.
  const MAX_PRIVATE = 50;
  const MAX_HISTORY = 100;
  const BACKOFF_MIN_MS = 1000;
  const BACKOFF_MAX_MS = 30000;
  // Joins and leaves come in bursts; refresh the lists once per burst.
  const REFRESH_DELAY_MS = 1500;
  // Rooms elsewhere come and go without a word to this room: the list is
  // asked for again this often while the page is visible.
  const ROOMS_POLL_MS = 10000;
  // A server error this soon after a typed line is taken as its answer, and
  // the line goes back into an empty input to be fixed and sent again.
  const REJECT_WINDOW_MS = 5000;
  // A name refused after a reconnect because it is still held (a cluster
  // keeps a dead server's names 15 s; one stopped gracefully gives them
  // back at once) is asked for again this long, the waits doubling to 2 s.
  const RECLAIM_MS = 20000;
  const RECLAIM_FIRST_MS = 500;

  const state = {
    ws: null,
    wasOpen: false,
    name: '',
    // The server's current room (where plain lines go and unmarked lines
    // come from), as shown and lowercased; '' in no room.
    room: '',
    roomKey: '',
    // The people of the current room, and which of them are its operators.
    users: [],
    ops: new Set(),
    // The last /nick the server confirmed, and the rooms it says we are in
    // (in the order joined), sent again after a reconnect (and after a
    // reload, from sessionStorage); `want`: the room to make current again.
    nick: stored('chatd.nick'),
    joined: storedRooms(),
    want: stored('chatd.current').toLowerCase(),
    // What the message list can show: one view per room we are in
    // ('#games') and per person we talk with privately ('@bob'), plus ''
    // (while in no room) and '*' (the page's own notes, shown in every
    // view). key -> {key, kind: 'room'|'private'|'misc', name, lines, unread}.
    views: new Map(),
    // The view on screen.
    active: '',
    // The rooms whose `now talking in` answer is not shown: the page's
    // own /join of a room it is in (a click on it, a rejoin).
    quiet: [],
    quietPart: false,
    // A room typed in /join: shown once the server confirms it.
    follow: '',
    attempt: 0,
    timer: 0,
    ticker: 0,
    // Set by /quit: the server said bye on purpose, so do not come back.
    stopped: false,
    // Set when the server says we were kicked or banned: the close that
    // follows is not a lost connection. {kind: 'kick'|'ban', text, untilMs}
    ended: null,
    // The longest line the server takes: said in its welcome (and, from
    // older servers, learnt from a refusal or the reason of a 1009 close).
    maxBytes: Infinity,
    // The last line typed and sent, until an error sends it back to the
    // input or REJECT_WINDOW_MS passes.
    lastSent: null,
    // After a reconnect: the name asked for again, until when, the next wait.
    reclaim: null,
    roomsPoll: 0,
    // One entry per /who or /rooms in flight, oldest first: true when the
    // page asked (its answer only updates the side panel), false when the
    // person typed it (the answer is shown too). The server answers in order.
    wantWho: [],
    wantRooms: [],
    refreshTimer: 0,
    history: [],
    historyPos: 0,
    // Room history and resuming (the same scheme as the chat client's
    // resume.rs): ids are turned on first thing on every connection; the
    // last id shown per room (lowercased) is remembered, and after a
    // reconnect each room is joined again and asked `/history since ID`
    // for what was said there meanwhile.
    ids: false, // the server confirmed /ids on for this connection
    last: {}, // room -> {e, n, s}: the last id shown there
    pending: [], // the rooms whose `/history since` answer is awaited
    block: null, // inside a history block: {show, view}
    // The server password, once given: sent first on every reconnect (and
    // after a reload: sessionStorage lasts as long as the tab).
    pass: stored('chatd.pass'),
    // The server asked for the password and has not let us in yet: the
    // page's own lines sent on open were refused, and are sent again
    // after the welcome.
    gated: false,
  };

  function stored(key) {
    try {
      return sessionStorage.getItem(key) || '';
    } catch (e) {
      return ''; // storage disabled: just forget across reloads
    }
  }

  // [{key: '#games', name: '#Games'}] from sessionStorage.
  function storedRooms() {
    try {
      const list = JSON.parse(stored('chatd.rooms') || '[]');
      return Array.isArray(list) ? list.filter(function (n) { return typeof n === 'string' && /^#\S+$/.test(n); })
        .map(function (n) { return { key: n.toLowerCase(), name: n }; }) : [];
    } catch (e) {
      return [];
    }
  }

  function storeRooms() {
    store('chatd.rooms', JSON.stringify(state.joined.map(function (r) { return r.name; })));
  }

  function store(key, value) {
    try {
      sessionStorage.setItem(key, value);
    } catch (e) {
      // as above
    }
  }

  // ws: or wss: to the same host, port and path prefix as the page, so it
  // works on localhost, behind a TLS proxy and under a tunnel's host name.
  function socketUrl() {
    const url = new URL('ws', location.href);
    url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
    url.search = '';
    url.hash = '';
    return url.href;
  }

  function setStatus(text, down) {
    statusEl.textContent = text;
    statusEl.classList.toggle('down', down);
    document.body.dataset.state = down ? 'down' : (state.ws && state.ws.readyState === 1 ? 'open' : 'connecting');
  }

  function connect() {
    clearTimeout(state.timer);
    clearInterval(state.ticker);
    retry.hidden = true;
    state.wantWho = [];
    state.wantRooms = [];
    setStatus('connecting…', false);
    let ws;
    try {
      ws = new WebSocket(socketUrl());
    } catch (e) {
      closed(0, String(e.message || e));
      return;
    }
    state.ws = ws;
    ws.onopen = function () {
      state.wasOpen = true;
      state.gated = false;
      setStatus('connected', false);
      setUp();
      clearInterval(state.roomsPoll);
      state.roomsPoll = setInterval(function () {
        if (document.visibilityState === 'visible') ask('rooms');
      }, ROOMS_POLL_MS);
    };
    ws.onmessage = function (ev) {
      if (typeof ev.data === 'string') incoming(ev.data);
    };
    ws.onclose = function (ev) {
      if (state.ws !== ws) return;
      state.ws = null;
      closed(ev.code, ev.reason);
    };
    // onclose always follows with the code and reason.
    ws.onerror = function () {};
  }

  // What the page says first on a connection: ids, its name and room
  // back, what it missed, the lists. Again after the welcome if the
  // server wanted the password first.
  function setUp() {
    state.ids = false;
    state.block = null;
    state.pending = [];
    state.quiet = [];
    state.quietPart = false;
    sendRaw('/ids on');
    if (state.nick) {
      sendRaw('/nick ' + state.nick);
      state.reclaim = { name: state.nick, until: Date.now() + RECLAIM_MS, wait: RECLAIM_FIRST_MS };
    }
    rejoin();
    ask('who');
    ask('rooms');
  }

  // Back in every room we were in, in the order we joined them: `/join`
  // makes a room current, and `/history since` then asks it for what we
  // missed (if we know where we stood); the lobby, where a connection
  // starts, is left again if we had left it, and the room that was
  // current is made current again.
  function rejoin() {
    let current = '#lobby';
    for (const r of state.joined) {
      if (r.key !== current) {
        if (r.key === '#lobby') state.quiet.push(r.key);
        sendRaw('/join ' + r.name);
        current = r.key;
      }
      const last = state.last[r.key];
      if (last) {
        state.pending.push(r.key);
        sendRaw('/history since ' + last.s);
      }
    }
    if (state.joined.length && !isJoined('#lobby')) {
      state.quietPart = true;
      sendRaw('/part #lobby');
    }
    const want = state.joined.find(function (r) { return r.key === state.want; });
    if (want && want.key !== current) {
      state.quiet.push(want.key);
      sendRaw('/join ' + want.name);
    }
  }

  // The server wants the password: the stored one goes at once, else the
  // page asks for it.
  function gate() {
    state.gated = true;
    // What setUp asked will never be answered.
    state.wantWho = [];
    state.wantRooms = [];
    state.pending = [];
    if (state.pass) {
      sendRaw('/pass ' + state.pass);
    } else {
      askPassword();
    }
  }

  function askPassword() {
    passform.hidden = false;
    form.hidden = true;
    // Not "chatd … in …" while nobody is in yet.
    whereEl.hidden = true;
    password.value = '';
    password.focus();
  }

  function passwordTaken() {
    passform.hidden = true;
    form.hidden = false;
    input.focus();
  }

  function closed(code, reason) {
    clearInterval(state.roomsPoll);
    // The room to be current again after the reconnect.
    if (state.roomKey) state.want = state.roomKey;
    const why = reason ? ' (' + reason + ')' : '';
    if (code === 1009) {
      const m = /longer than (\d+) bytes/.exec(reason);
      if (m) state.maxBytes = Number(m[1]);
    }
    const wasOpen = state.wasOpen;
    state.wasOpen = false;
    if (state.ended) {
      endedBy(state.ended);
      return;
    }
    if (state.stopped) {
      if (wasOpen) note('disconnected' + why, 'net');
      setStatus('disconnected', true);
      retry.hidden = false;
      return;
    }
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * Math.pow(2, state.attempt));
    // Jitter so that many pages do not all come back at the same instant
    // after a restart.
    const delay = Math.round(base / 2 + Math.random() * base / 2);
    state.attempt += 1;
    let left = Math.ceil(delay / 1000);
    if (wasOpen) note('connection lost' + why + '; reconnecting in ' + left + ' s', 'net');
    const show = function () {
      setStatus('disconnected — reconnecting in ' + left + ' s (attempt ' + state.attempt + ')', true);
    };
    show();
    state.ticker = setInterval(function () {
      left = Math.max(0, left - 1);
      show();
    }, 1000);
    state.timer = setTimeout(connect, delay);
    retry.hidden = false;
  }

  // A kick or a ban: no reconnect on our own. After a kick the person
  // decides (the button); a ban with an end is waited out, counting down.
  function endedBy(end) {
    retry.hidden = false;
    retry.textContent = 'reconnect';
    if (end.kind === 'kick') {
      note(end.text + '; not reconnecting on our own (the button reconnects)', 'net');
      setStatus('kicked', true);
      return;
    }
    if (!end.untilMs) {
      note(end.text + '; not reconnecting', 'net');
      setStatus('banned', true);
      return;
    }
    note(end.text + '; reconnecting when the ban ends', 'net');
    const show = function () {
      const left = Math.max(0, Math.ceil((end.untilMs - Date.now()) / 1000));
      setStatus('banned — ' + span(left) + ' left', true);
    };
    show();
    state.ticker = setInterval(show, 1000);
    state.timer = setTimeout(reconnectNow, Math.max(0, end.untilMs - Date.now()) + 1000);
  }

  // 3725 -> "1h 2m 5s"
  function span(secs) {
    const parts = [[Math.floor(secs / 86400), 'd'], [Math.floor(secs / 3600) % 24, 'h'],
      [Math.floor(secs / 60) % 60, 'm'], [secs % 60, 's']];
    const shown = parts.filter(function (p) { return p[0] > 0; }).map(function (p) { return p[0] + p[1]; });
    return shown.length ? shown.join(' ') : '0s';
  }

  // "9m 59s", "1h 30m", "2d 3h" -> seconds; 0 if it is not one.
  function parseSpan(text) {
    let total = 0;
    for (const w of text.trim().split(/\s+/)) {
      const m = /^(\d+)([dhms])$/.exec(w);
      if (!m) return 0;
      total += Number(m[1]) * { d: 86400, h: 3600, m: 60, s: 1 }[m[2]];
    }
    return total;
  }

  // The server's words for ending us (src/hub/moderation.rs): the room
  // notice naming us, or the refusal at connect while banned.
  function endingLine(line) {
    let m;
    const me = state.name;
    if (me && line.startsWith('*** ' + me + ' was kicked by ')) {
      return { kind: 'kick', text: 'you were kicked by ' + line.slice(('*** ' + me + ' was kicked by ').length) };
    }
    if (me && line.startsWith('*** ' + me + ' was banned by ')) {
      const rest = line.slice(('*** ' + me + ' was banned by ').length);
      m = /^\S+ for ([^(]+?)(?: \(|$)/.exec(rest);
      const secs = m ? parseSpan(m[1]) : 0;
      return { kind: 'ban', text: 'you were banned by ' + rest, untilMs: secs ? Date.now() + secs * 1000 : 0 };
    }
    if ((m = /^\*\*\* error: your address is banned from this server \((.*)\)$/.exec(line))) {
      const left = /^(.+?) more,/.exec(m[1]);
      const secs = left ? parseSpan(left[1]) : 0;
      return { kind: 'ban', text: 'banned (' + m[1] + ')', untilMs: secs ? Date.now() + secs * 1000 : 0 };
    }
    return null;
  }

  function reconnectNow() {
    if (state.ws) return;
    state.stopped = false;
    state.ended = null;
    retry.textContent = 'reconnect now';
    state.attempt = 0;
    connect();
  }

  function isOpen() {
    return state.ws !== null && state.ws.readyState === WebSocket.OPEN;
  }

  function sendRaw(line) {
    if (!isOpen()) return false;
    state.ws.send(line);
    return true;
  }

  // A /who or /rooms the page needs for the side panel; at most one of each
  // in flight.
  function ask(kind) {
    const queue = kind === 'who' ? state.wantWho : state.wantRooms;
    if (queue.includes(true) || !isOpen()) return;
    queue.push(true);
    sendRaw('/' + kind);
  }

  function refreshSoon() {
    if (state.refreshTimer) return;
    state.refreshTimer = setTimeout(function () {
      state.refreshTimer = 0;
      ask('who');
      ask('rooms');
    }, REFRESH_DELAY_MS);
  }

  // A line typed by the person: sent as-is, commands included.
  function submit(line) {
    if (line.trim() === '') return true;
    const bytes = new TextEncoder().encode(line).length;
    if (bytes > state.maxBytes) {
      note('that line is ' + bytes + ' bytes; the server takes at most ' + state.maxBytes + ' (it is still in the input)', 'err');
      return false;
    }
    if (!isOpen()) {
      note('not connected; the line was not sent', 'err');
      return false;
    }
    // Commands are case-insensitive, and /who and /rooms ignore arguments.
    if (/^\/who(\s|$)/i.test(line)) state.wantWho.push(false);
    if (/^\/rooms(\s|$)/i.test(line)) state.wantRooms.push(false);
    if (/^\/quit(\s|$)/i.test(line)) state.stopped = true;
    let m;
    if ((m = /^\/join\s+#?(\S+)/i.exec(line))) state.follow = '#' + m[1].toLowerCase();
    const view = state.views.get(state.active);
    const plain = !line.startsWith('/') || line.startsWith('//');
    const said = plain || /^\/me\s/i.test(line);
    if (plain && view && view.kind === 'private') {
      // Said in a person's view: to that person. The server's
      // `-> *bob* …` shows it.
      sendRaw('/msg ' + view.name + ' ' + (line.startsWith('//') ? line.slice(1) : line));
      state.lastSent = { line: line, at: Date.now() };
      return true;
    }
    if (/^\/part\s*$/i.test(line) && view && view.kind === 'room') {
      // `/part` alone leaves the room on screen, whatever the server's
      // current room is.
      line = '/part ' + view.name;
    }
    if (said && view && view.kind === 'room' && view.key !== state.roomKey) {
      // Said in a room's view that is not (or no longer) the server's
      // current room: made current first, so it goes where it was typed.
      state.quiet.push(view.key);
      sendRaw('/join ' + view.name);
    }
    sendRaw(line);
    state.lastSent = { line: line, at: Date.now() };
    if ((m = /^\/me\s+(\S[\s\S]*)$/i.exec(line))) {
      // As the others see it.
      show('* ' + state.name + ' ' + m[1].trim(), 'self');
    } else if (line.startsWith('/') && !line.startsWith('//')) {
      show(line, 'cmd');
    } else if (line.startsWith('//')) {
      show('<' + state.name + '> ' + line.slice(1), 'self');
    } else {
      // The server does not echo our own lines back.
      show('<' + state.name + '> ' + line, 'self');
    }
    return true;
  }

  function parseId(s) {
    const m = /^(\d+)-(\d+)$/.exec(s || '');
    return m ? { e: Number(m[1]), n: Number(m[2]), s: s } : null;
  }

  // Within a room's record by N; a later epoch is a new record (the server
  // restarted or forgot the room), so everything in it is new.
  function after(a, b) {
    return a.e === b.e ? a.n > b.n : a.e > b.e;
  }

  function newer(room, id) {
    const last = state.last[room];
    return !last || after(id, last);
  }

  function seen(room, id) {
    const last = state.last[room];
    if (!last || after(id, last)) state.last[room] = id;
  }

  // "@id=1-2;room=games;ms=3 rest" -> {id, room, ms, line: "rest"}
  function untag(raw) {
    const sp = raw.indexOf(' ');
    if (raw[0] !== '@' || sp < 0) return { id: null, room: '', ms: 0, line: raw };
    const tags = {};
    for (const t of raw.slice(1, sp).split(';')) {
      const i = t.indexOf('=');
      if (i > 0) tags[t.slice(0, i)] = t.slice(i + 1);
    }
    return { id: parseId(tags.id), room: tags.room || '', ms: Number(tags.ms) || 0, line: raw.slice(sp + 1) };
  }

  // "[#games] rest": the server's mark on a line of a room we are in that
  // is not the current one -> {room: '#games', text: 'rest'}.
  function roomMark(line) {
    const m = /^\[(#[^\]\s]+)\] ([\s\S]*)$/.exec(line);
    return m ? { room: m[1], text: m[2] } : { room: '', text: line };
  }

  function isRoomLine(line) {
    return line.startsWith('<') || (line.startsWith('* ') && !line.startsWith('*** '));
  }

  // A notice about the current room (someone came, left, was renamed or
  // kicked, the topic, its history), not an answer to a command.
  function isRoomNotice(line) {
    return /^\*\*\* (\S+ (joined|left|is now|was kicked|set the topic|cleared the topic|locked the topic|unlocked the topic|made|took)\b|topic of |the history since |\d+ (lines? (was|were) missed|older lines? left out))/.test(line);
  }

  // Our own message or action, echoed back now that ids are on: it is
  // already shown, from when it was typed.
  function isOwn(line) {
    return state.name !== '' &&
      (line.startsWith('<' + state.name + '> ') || line.startsWith('* ' + state.name + ' '));
  }

  function isJoined(key) {
    return state.joined.some(function (r) { return r.key === key; });
  }

  // A room's resume answer has come (or will not).
  function answered(key) {
    const i = state.pending.indexOf(key);
    if (i < 0) return false;
    state.pending.splice(i, 1);
    return true;
  }

  // Everything the server sends comes through here first: history blocks
  // and ids are handled, the rest goes on to `receive` with its room.
  function incoming(raw) {
    if (state.block) {
      const b = state.block;
      if (raw === '*** end of history') {
        state.block = null;
        if (b.show) show(raw, 'sys', null, b.view);
        return;
      }
      if (!b.show) return;
      const t = untag(raw);
      if (t.id) {
        if (!newer(b.view, t.id)) return;
        seen(b.view, t.id);
      }
      showHistory(t.line, t.ms, b.view);
      return;
    }
    if (raw.startsWith('*** history of ')) {
      const room = raw.slice('*** history of '.length).split(/[ :]/)[0].toLowerCase();
      if (!raw.endsWith('):')) {
        // "#room: empty", "...: nothing new since ID", "...: off on this server"
        if (answered(room)) return;
        show(forPeople(raw), null, null, room);
        return;
      }
      const since = / since \S+ \(/.test(raw);
      let shown = true;
      if (since && state.ids) {
        answered(room);
      } else if (state.pending.length > 0) {
        // While resuming, the replays on connect and on join are covered
        // by the answers awaited.
        shown = false;
      }
      state.block = { show: shown, view: room };
      if (shown) show(forPeople(raw), 'sys', null, room);
      return;
    }
    let m;
    if ((m = /^\*\*\* ids on: (\S+) at (\d+-\d+)$/.exec(raw))) {
      state.ids = true;
      const room = m[1].toLowerCase();
      if (!state.pending.includes(room)) seen(room, parseId(m[2]));
      return;
    }
    if (raw.startsWith('*** error: ') && (raw.includes('/history') || raw.includes('in no room'))) {
      state.pending.shift(); // a resume that gets no answer of its own
    }
    const t = untag(raw);
    const mark = roomMark(t.line);
    const room = t.room ? '#' + t.room : mark.room.toLowerCase();
    if (t.id) {
      const r = room || state.roomKey;
      const rejoining = state.pending.length > 0;
      if (state.pending.includes(r) || (rejoining && !isJoined(r)) || !newer(r, t.id)) return;
      seen(r, t.id);
      if (isOwn(mark.text)) return;
    } else if (state.pending.length > 0 && isRoomLine(mark.text)) {
      return;
    }
    receive(mark.text, room);
  }

  // The server's history lines are written for telnet: ids (which mean
  // nothing to a person) and UTC (the page shows local times) are
  // reworded.
  function forPeople(line) {
    if (!line.startsWith('*** ')) return line;
    return line
      .replace(/ since \d+-\d+/g, ' since you were last here')
      .replace(/, times UTC\):$/, ', times ' + ZONE + '):');
  }

  // "[12:03] <alice> hi": said before, at `ms` (or, without ids, at 12:03
  // UTC within the last day).
  function showHistory(line, ms, view) {
    let when = ms ? new Date(ms) : null;
    const m = /^\[(\d\d):(\d\d)\] ([\s\S]*)$/.exec(line);
    if (m) {
      line = m[3];
      if (!when) {
        const now = new Date();
        when = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate(), Number(m[1]), Number(m[2])));
        if (when > now) when = new Date(when.getTime() - 86400000);
      }
    }
    show(line, 'hist', when, view);
  }

  // One line from the server, past its tags and its room's mark: `room` is
  // the room it was marked with ('' for the current room or none).
  function receive(line, room) {
    let m;
    // Where it is shown: its room, else a person's view for a private
    // line, else the current room for what happens there, else the view
    // on screen (the answer to what was typed there).
    const activeView = state.views.get(state.active);
    let view = room ||
      ((isRoomLine(line) || isRoomNotice(line) || !activeView || activeView.kind !== 'private')
        ? (state.roomKey || state.active) : state.active);
    // Lines someone said (not notices), which count as unread.
    let said = isRoomLine(line);
    // Renamed (told in each room we share, marked or not): so is the
    // conversation with them.
    if ((m = /^\*\*\* (\S+) is now (\S+)$/.exec(line))) renamePrivate(m[1], m[2]);
    if (line === NEEDS_PASSWORD) {
      gate();
    } else if (state.gated && line === NEEDS_PASSWORD_ERROR) {
      return; // the answer to a line setUp sent before it knew
    } else if (state.gated && (line === '*** error: wrong password' || line.startsWith('*** error: too many wrong passwords'))) {
      state.pass = '';
      store('chatd.pass', '');
      askPassword();
    } else if ((m = /^\*\*\* welcome to chatd, (.+?)! you are in (\S+)/.exec(line))) {
      state.attempt = 0; // a real welcome: the connection is good
      state.ended = null;
      whereEl.hidden = false;
      if (state.gated) {
        state.gated = false;
        passwordTaken();
        setUp();
      }
      setName(m[1]);
      // A connection starts in the lobby; after a reconnect the rooms we
      // were in are joined again by `rejoin`.
      if (state.joined.length === 0) addRoom(m[2]);
      setRoom(m[2]);
      if (!state.active) activate(m[2].toLowerCase());
      view = state.active;
      const max = /; lines up to (\d+) bytes$/.exec(line);
      if (max) {
        state.maxBytes = Number(max[1]);
        // For the page, not the person: it warns before a long line.
        line = line.slice(0, max.index);
      }
    } else if (state.reclaim && refusedForNow(line, state.reclaim.name)) {
      reclaimLater();
    } else if ((m = /^\*\*\* you are now (\S+)$/.exec(line))) {
      state.reclaim = null;
      rename(state.name, m[1]);
      setName(m[1]);
      state.nick = m[1];
      store('chatd.nick', m[1]);
    } else if ((m = /^\*\*\* you joined (\S+) \(\d+\): (.*)$/.exec(line))) {
      addRoom(m[1]);
      setRoom(m[1]);
      setRoster(m[2]);
      view = m[1].toLowerCase();
      state.quiet = state.quiet.filter(function (k) { return k !== view; });
      if (state.follow === view) {
        state.follow = '';
        activate(view);
      }
      ask('rooms');
    } else if ((m = /^\*\*\* now talking in (\S+)$/.exec(line))) {
      setRoom(m[1]);
      ask('who');
      view = m[1].toLowerCase();
      if (state.follow === view) {
        state.follow = '';
        activate(view);
      }
      const i = state.quiet.indexOf(view);
      if (i >= 0) {
        state.quiet.splice(i, 1);
        return; // the answer to the page's own /join
      }
    } else if ((m = /^\*\*\* you left (\S+?)(?:; now talking in (\S+)|; you are in no room now.*)?$/.exec(line))) {
      const gone = m[1].toLowerCase();
      setRoom(m[2] || '');
      removeRoom(gone);
      view = state.active;
      ask('who');
      ask('rooms');
      if (state.quietPart && gone === '#lobby') {
        state.quietPart = false;
        return; // the lobby left again after a reconnect
      }
    } else if (line.startsWith('*** you are in no room now')) {
      setRoom('');
    } else if (state.name && line.startsWith('*** ' + state.name + ' was kicked from ')) {
      // A room operator's kick: out of that room only.
      removeRoom(line.slice(('*** ' + state.name + ' was kicked from ').length).split(' ')[0].toLowerCase());
      view = state.active;
    } else if ((m = /^\*\*\* (#\S+) \(\d+\): (.*)$/.exec(line))) {
      const mine = state.wantWho.length > 0 && state.wantWho.shift();
      if (m[1].toLowerCase() === state.roomKey) setRoster(m[2]);
      if (mine) return;
      view = state.active;
    } else if ((m = /^\*\*\* rooms \(\d+\): (.*)$/.exec(line))) {
      const mine = state.wantRooms.length > 0 && state.wantRooms.shift();
      setRooms(m[1]);
      if (mine) return;
    } else if ((m = /^(?:-> )?\*([^* ]+)\* /.exec(line))) {
      // A private line, received (`*bob* hi`) or sent (`-> *bob* hi`):
      // shown in the person's view, and where it always was too.
      const key = privateView(m[1]);
      show(line, null, null, key, !line.startsWith('-> '));
      if (state.active === key) return;
      said = false; // counted in the person's view
    } else if ((m = /^\*\*\* (\S+) is away: /.exec(line)) && state.views.has('@' + m[1].toLowerCase())) {
      view = '@' + m[1].toLowerCase();
    } else if (!room && (m = /^\*\*\* (\S+) (joined|left)(?: #\S+)?(?: \(.*\))?$/.exec(line))) {
      // In the current room: "alice joined", "alice left (too slow)",
      // "alice joined #games".
      if (m[2] === 'joined') {
        if (!state.users.includes(m[1])) setUsers(state.users.concat([m[1]]));
      } else {
        setUsers(state.users.filter(function (u) { return u !== m[1]; }));
      }
      refreshSoon();
    } else if (!room && /^\*\*\* \S+ (made \S+ an operator|took \S+'s operator status) /.test(line)) {
      refreshSoon(); // the @ in the people list
    } else if (!room && (m = /^\*\*\* (\S+) is now (\S+)$/.exec(line))) {
      rename(m[1], m[2]);
    } else if (line === '*** bye') {
      state.stopped = true;
    } else if ((m = /^\*\*\* error: line too long \(max (\d+) bytes\)$/.exec(line))) {
      // From now on, say so before sending rather than after.
      state.maxBytes = Number(m[1]);
    }
    const end = endingLine(line);
    if (end) state.ended = end;
    if (line.startsWith('*** error: ') && !end) giveBack();
    if (line.startsWith('*** ')) said = false;
    show(forPeople(line), null, null, view, said);
  }

  // Whether the server refused `/nick name` for a reason that may pass: the
  // name still held, or the cluster not ready yet.
  function refusedForNow(line, name) {
    return line === '*** error: the name ' + name + ' is taken' ||
      line === '*** error: names cannot change while the cluster link is down' ||
      (line.startsWith('*** error: ') && line.includes('try /nick again'));
  }

  // The name re-sent after a reconnect was refused for now: ask again
  // after a while, until RECLAIM_MS has passed; then say so.
  function reclaimLater() {
    const r = state.reclaim;
    if (Date.now() + r.wait > r.until) {
      state.reclaim = null;
      note('could not get the name ' + r.name + ' back: still taken after ' + RECLAIM_MS / 1000 + ' s; try /nick ' + r.name + ' later', 'net');
      return;
    }
    if (r.wait === RECLAIM_FIRST_MS) {
      note('the name ' + r.name + ' is still held (by the connection that was lost); asking again for a few seconds', 'net');
    }
    const wait = r.wait;
    r.wait = Math.min(wait * 2, 2000);
    setTimeout(function () {
      if (state.reclaim === r) sendRaw('/nick ' + r.name);
    }, wait);
  }

  // The server refused the line just typed: put it back to be fixed, unless
  // something new is being typed already.
  function giveBack() {
    const last = state.lastSent;
    state.lastSent = null;
    if (!last || Date.now() - last.at > REJECT_WINDOW_MS || input.value !== '') return;
    input.value = last.line;
  }

  // "@alice, bob, … and 12 more": the people of the current room; `@`
  // marks its operators (it is not part of the name), and the end of a
  // long list is nobody's name.
  function setRoster(list) {
    const users = [];
    state.ops = new Set();
    for (let s of list.split(', ')) {
      s = s.trim();
      if (!s || s.startsWith('… and ')) continue;
      if (s[0] === '@') {
        s = s.slice(1);
        state.ops.add(s);
      }
      users.push(s);
    }
    setUsers(users);
  }

  function setName(name) {
    state.name = name;
    meEl.textContent = name;
    setUsers(state.users); // to mark who "you" are
  }

  // The server's current room ('' for none).
  function setRoom(room) {
    state.room = room;
    state.roomKey = room.toLowerCase();
    if (room) store('chatd.current', room);
    markRoom();
  }

  function view(key, kind, name) {
    let v = state.views.get(key);
    if (!v) {
      v = { key: key, kind: kind, name: name, lines: [], unread: 0 };
      state.views.set(key, v);
    }
    return v;
  }

  // A room we are now in (as the server says): a view of its own, and
  // joined again after a reconnect.
  function addRoom(name) {
    const key = name.toLowerCase();
    if (!isJoined(key)) {
      state.joined.push({ key: key, name: name });
      storeRooms();
    }
    view(key, 'room', name);
    renderViews();
  }

  // A room we are no longer in: its view goes, and the current room (or
  // another view) is shown if it was on screen.
  function removeRoom(key) {
    state.joined = state.joined.filter(function (r) { return r.key !== key; });
    storeRooms();
    state.pending = state.pending.filter(function (r) { return r !== key; });
    dropView(key);
  }

  function dropView(key) {
    const v = state.views.get(key);
    if (v) {
      for (const li of v.lines) li.remove();
      state.views.delete(key);
    }
    if (state.active === key) {
      const next = state.roomKey || (state.joined[0] && state.joined[0].key) ||
        Array.from(state.views.keys()).find(function (k) { return k[0] === '@'; }) || '';
      activate(next);
    }
    renderViews();
  }

  // The view of a private conversation with `name`, made if new (the
  // oldest not on screen goes past MAX_PRIVATE).
  function privateView(name) {
    const key = '@' + name.toLowerCase();
    if (!state.views.has(key)) {
      const privates = Array.from(state.views.values()).filter(function (v) { return v.kind === 'private'; });
      if (privates.length >= MAX_PRIVATE) {
        const old = privates.find(function (v) { return v.key !== state.active; });
        if (old) dropView(old.key);
      }
      view(key, 'private', name);
    }
    state.views.get(key).name = name;
    renderViews();
    return key;
  }

  function renamePrivate(from, to) {
    const old = '@' + from.toLowerCase();
    const key = '@' + to.toLowerCase();
    const v = state.views.get(old);
    if (!v || state.views.has(key)) return;
    state.views.delete(old);
    v.key = key;
    v.name = to;
    state.views.set(key, v);
    for (const li of v.lines) li.dataset.view = key;
    if (state.active === old) activate(key);
    renderViews();
  }

  // Puts view `key` on screen: its lines shown, the others' hidden, its
  // unread count cleared.
  function activate(key) {
    state.active = key;
    for (const li of log.children) {
      li.hidden = li.dataset.view !== key && li.dataset.view !== '*';
    }
    const v = state.views.get(key);
    if (v) v.unread = 0;
    roomEl.textContent = v ? (v.kind === 'private' ? v.name + ' (private)' : v.name) : 'no room';
    input.placeholder = v && v.kind === 'private' ? 'message to ' + v.name + ', or /help' : 'message, or /help';
    log.scrollTop = log.scrollHeight;
    renderViews();
  }

  // A click on a view in the side panel: a room is made current on the
  // server too (we stay in the others); a person's view just shows.
  function switchTo(key) {
    const v = state.views.get(key);
    if (!v) return;
    if (v.kind === 'room' && key !== state.roomKey && isOpen()) {
      state.quiet.push(key);
      sendRaw('/join ' + v.name);
    }
    activate(key);
    closeSide();
    input.focus();
  }

  // The rooms we are in and the private conversations, each with its
  // unread count and a × (leave the room, close the conversation).
  function renderViews() {
    const item = function (v) {
      const li = document.createElement('li');
      li.dataset.view = v.key;
      li.classList.toggle('here', v.key === state.active);
      li.classList.toggle('unread', v.unread > 0);
      const name = document.createElement('bdi');
      name.className = 'name';
      name.textContent = v.name;
      const count = document.createElement('span');
      count.className = 'count';
      count.textContent = v.unread > 0 ? String(v.unread) : '';
      count.hidden = v.unread === 0;
      const x = document.createElement('button');
      x.type = 'button';
      x.className = 'close';
      x.textContent = '×';
      const what = v.kind === 'room' ? 'leave ' + v.name : 'close the conversation with ' + v.name;
      x.title = what;
      x.setAttribute('aria-label', what);
      x.addEventListener('click', function (ev) {
        ev.stopPropagation();
        if (v.kind === 'room') {
          if (isOpen()) sendRaw('/part ' + v.name);
        } else {
          dropView(v.key);
        }
      });
      li.title = v.kind === 'room' ? 'talk in ' + v.name : 'talk with ' + v.name + ' privately';
      li.append(name, count, x);
      li.addEventListener('click', function () { switchTo(v.key); });
      return li;
    };
    joinedEl.replaceChildren();
    for (const r of state.joined) {
      const v = state.views.get(r.key);
      if (v) joinedEl.appendChild(item(v));
    }
    privatesEl.replaceChildren();
    for (const v of state.views.values()) {
      if (v.kind === 'private') privatesEl.appendChild(item(v));
    }
    $('privates-title').hidden = privatesEl.childElementCount === 0;
    markRoom();
    updateTitle();
  }

  // "chatd #games"; while the tab is hidden, what came meanwhile in front:
  // "(3) chatd #games".
  function updateTitle() {
    let unread = 0;
    for (const v of state.views.values()) unread += v.unread;
    const v = state.views.get(state.active);
    const title = 'chatd' + (v ? ' ' + (v.kind === 'private' ? v.name : v.name) : '');
    document.title = (document.hidden && unread > 0 ? '(' + unread + ') ' : '') + title;
  }

  function rename(from, to) {
    if (state.users.includes(from)) {
      setUsers(state.users.map(function (u) { return u === from ? to : u; }));
    }
  }

  function setUsers(users) {
    state.users = users.slice().sort(function (a, b) { return a.localeCompare(b); });
    countEl.textContent = '(' + state.users.length + ')';
    usersEl.replaceChildren();
    for (const user of state.users) {
      const li = document.createElement('li');
      li.textContent = (state.ops.has(user) ? '@' : '') + user;
      if (user === state.name) {
        // A /msg to oneself is no use: clicking your own name does nothing.
        li.className = 'you';
        li.title = 'you';
        usersEl.appendChild(li);
        continue;
      }
      li.title = 'message ' + user + (state.ops.has(user) ? ' (an operator of the room)' : '');
      li.addEventListener('click', function () {
        input.value = '/msg ' + user + ' ';
        closeSide();
        input.focus();
      });
      usersEl.appendChild(li);
    }
  }

  // "#games (1), #lobby (3)"
  function setRooms(list) {
    roomsEl.replaceChildren();
    for (const item of list.split(', ')) {
      const m = /^(\S+) \((\d+)\)$/.exec(item.trim());
      if (!m) continue;
      const li = document.createElement('li');
      li.dataset.room = m[1];
      li.textContent = m[1] + ' (' + m[2] + ')';
      li.title = 'join ' + m[1];
      li.addEventListener('click', function () {
        const key = m[1].toLowerCase();
        if (isJoined(key)) {
          switchTo(key);
          return;
        }
        submit('/join ' + m[1]);
        closeSide();
        input.focus();
      });
      roomsEl.appendChild(li);
    }
    markRoom();
  }

  function markRoom() {
    for (const li of roomsEl.children) {
      li.classList.toggle('here', li.dataset.room.toLowerCase() === state.roomKey);
      li.classList.toggle('joined', isJoined(li.dataset.room.toLowerCase()));
    }
  }

  // One line in the message list, in view `key` (default: the one on
  // screen); `kind` overrides the style worked out from the line's shape;
  // `when` is when it was said (default: now); `counts`: someone said it, so
  // it counts as unread if its view is not on screen or the tab is hidden.
  function show(line, kind, when, key, counts) {
    if (key === undefined || key === null || (key !== '*' && !state.views.has(key))) key = state.active;
    // Before the welcome, and in no room: shown whatever the view.
    if (key === '') key = '*';
    const v = view(key, 'misc', '');
    const li = document.createElement('li');
    li.dataset.view = key;
    li.hidden = key !== state.active && key !== '*';
    let m;
    if (kind) {
      li.className = kind;
    } else if (line.startsWith('*** error: ')) {
      li.className = 'err';
    } else if (line.startsWith('*** warning: ')) {
      li.className = 'warn';
    } else if (line.startsWith('*** ')) {
      li.className = 'sys';
    } else if (line.startsWith('-> *') || /^\*[^* ]+\* /.test(line)) {
      li.className = 'priv';
    }
    const time = document.createElement('time');
    const at = when || new Date();
    time.dateTime = at.toISOString();
    time.textContent = at.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', hour12: false });
    const text = document.createElement('span');
    text.className = 'text';
    // What someone typed goes in a <bdi>: right-to-left text reads right
    // but cannot reorder the name in front of it.
    const said = (text) => {
      const bdi = document.createElement('bdi');
      bdi.textContent = text;
      return bdi;
    };
    if ((m = /^<([^>]+)> ([\s\S]*)$/.exec(line))) {
      const nick = document.createElement('span');
      nick.className = 'nick';
      nick.textContent = '<' + m[1] + '>';
      text.append(nick, ' ', said(m[2]));
    } else if ((m = /^(\* [^ ]+ |\*[^* ]+\* |-> \*[^* ]+\* )([\s\S]*)$/.exec(line))) {
      text.append(m[1], said(m[2]));
    } else if (line.startsWith('*** ')) {
      // A notice carries names and reasons from users too (a ban's, a
      // kick's): isolated like a message, after the server's own mark.
      text.append('*** ', said(line.slice(4)));
    } else {
      text.textContent = line;
    }
    li.append(time, text);
    const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 48;
    log.appendChild(li);
    v.lines.push(li);
    if (log.childElementCount > MAX_LOG) evict();
    if (atBottom) log.scrollTop = log.scrollHeight;
    if (counts && (key !== state.active || document.hidden)) {
      v.unread++;
      renderViews();
    }
  }

  // Past MAX_LOG lines in all, the oldest line of the view with the most
  // goes: a busy room does not push a quiet one's lines out.
  function evict() {
    let big = null;
    for (const v of state.views.values()) {
      if (!big || v.lines.length > big.lines.length) big = v;
    }
    if (big && big.lines.length > 0) big.lines.shift().remove();
  }

  // Something the page itself says (not from the server), in every view.
  function note(text, kind) {
    show('— ' + text, kind, null, '*');
  }

  function openSide(open) {
    side.classList.toggle('open', open);
    toggle.setAttribute('aria-expanded', String(open));
  }

  function closeSide() {
    openSide(false);
  }

  passform.addEventListener('submit', function (ev) {
    ev.preventDefault();
    const secret = password.value.trim();
    if (secret === '' || !isOpen()) return;
    state.pass = secret;
    store('chatd.pass', secret);
    password.value = '';
    passform.hidden = true;
    sendRaw('/pass ' + secret);
  });

  form.addEventListener('submit', function (ev) {
    ev.preventDefault();
    const line = input.value;
    if (!submit(line)) return; // keep what was typed so it can be sent later
    if (line.trim() !== '') {
      state.history.push(line);
      if (state.history.length > MAX_HISTORY) state.history.shift();
    }
    state.historyPos = state.history.length;
    input.value = '';
  });

  // Up and down walk through what was sent, as in a terminal.
  input.addEventListener('keydown', function (ev) {
    if (ev.key !== 'ArrowUp' && ev.key !== 'ArrowDown') return;
    if (state.history.length === 0) return;
    ev.preventDefault();
    const step = ev.key === 'ArrowUp' ? -1 : 1;
    state.historyPos = Math.max(0, Math.min(state.history.length, state.historyPos + step));
    input.value = state.history[state.historyPos] || '';
  });

  toggle.addEventListener('click', function () {
    openSide(!side.classList.contains('open'));
  });
  // On a phone the panel covers the messages: a tap beside it closes it.
  $('chat').addEventListener('click', closeSide);
  retry.addEventListener('click', reconnectNow);
  window.addEventListener('online', function () {
    if (!state.stopped) reconnectNow();
  });
  // Back to a tab that was hidden: the rooms may have changed meanwhile.
  document.addEventListener('visibilitychange', function () {
    if (document.visibilityState === 'visible') {
      // What came while hidden in the view on screen is seen now.
      const v = state.views.get(state.active);
      if (v) v.unread = 0;
      renderViews();
      ask('rooms');
    }
    updateTitle();
  });

  for (const r of state.joined) view(r.key, 'room', r.name);
  connect();
})();
