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
    room: '',
    users: [],
    // The last /nick and /join the server confirmed, sent again after a
    // reconnect (and after a reload, from sessionStorage).
    nick: stored('chatd.nick'),
    joined: stored('chatd.room'),
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
    // reconnect `/history since ID` asks for what was said meanwhile.
    roomKey: '',
    ids: false, // the server confirmed /ids on for this connection
    last: {}, // room -> {e, n, s}: the last id shown there
    resuming: null, // the room whose `/history since` answer is awaited
    block: null, // inside a history block: 'show' or 'skip'
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
    state.resuming = null;
    sendRaw('/ids on');
    if (state.nick) {
      sendRaw('/nick ' + state.nick);
      state.reclaim = { name: state.nick, until: Date.now() + RECLAIM_MS, wait: RECLAIM_FIRST_MS };
    }
    if (state.joined) {
      sendRaw('/join ' + state.joined); // its answer lists the people
    } else {
      ask('who');
    }
    // Back in the room we were in: ask for what we missed there.
    const target = (state.joined || '#lobby').toLowerCase();
    if (state.last[target]) {
      state.resuming = target;
      sendRaw('/history since ' + state.last[target].s);
    }
    ask('rooms');
  }

  // The server wants the password: the stored one goes at once, else the
  // page asks for it.
  function gate() {
    state.gated = true;
    // What setUp asked will never be answered.
    state.wantWho = [];
    state.wantRooms = [];
    state.resuming = null;
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
    sendRaw(line);
    state.lastSent = { line: line, at: Date.now() };
    let m;
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

  function newer(id) {
    const last = state.last[state.roomKey];
    return !last || after(id, last);
  }

  function seen(room, id) {
    const last = state.last[room];
    if (!last || after(id, last)) state.last[room] = id;
  }

  // "@id=1-2;ms=3 rest" -> {id, ms, line: "rest"}
  function untag(raw) {
    const sp = raw.indexOf(' ');
    if (raw[0] !== '@' || sp < 0) return { id: null, ms: 0, line: raw };
    const tags = {};
    for (const t of raw.slice(1, sp).split(';')) {
      const i = t.indexOf('=');
      if (i > 0) tags[t.slice(0, i)] = t.slice(i + 1);
    }
    return { id: parseId(tags.id), ms: Number(tags.ms) || 0, line: raw.slice(sp + 1) };
  }

  function isRoomLine(line) {
    return line.startsWith('<') || (line.startsWith('* ') && !line.startsWith('*** '));
  }

  // Our own message or action, echoed back now that ids are on: it is
  // already shown, from when it was typed.
  function isOwn(line) {
    return state.name !== '' &&
      (line.startsWith('<' + state.name + '> ') || line.startsWith('* ' + state.name + ' '));
  }

  // Everything the server sends comes through here first: history blocks
  // and ids are handled, the rest goes on to `receive`.
  function incoming(raw) {
    if (state.block) {
      if (raw === '*** end of history') {
        const b = state.block;
        state.block = null;
        if (b === 'show') show(raw, 'sys');
        return;
      }
      if (state.block === 'skip') return;
      const t = untag(raw);
      if (t.id) {
        if (!newer(t.id)) return;
        seen(state.roomKey, t.id);
      }
      showHistory(t.line, t.ms);
      return;
    }
    if (raw.startsWith('*** history of ')) {
      if (!raw.endsWith('):')) {
        // "#room: empty", "...: nothing new since ID", "...: off on this server"
        if (state.resuming) {
          state.resuming = null;
          return;
        }
        show(forPeople(raw));
        return;
      }
      const since = / since \S+ \(/.test(raw);
      let b = 'show';
      // While resuming, the replays on connect and on join are covered by
      // the answer awaited.
      if (state.resuming && (!state.ids || !since)) b = 'skip';
      else if (since) state.resuming = null;
      state.block = b;
      if (b === 'show') show(forPeople(raw), 'sys');
      return;
    }
    let m;
    if ((m = /^\*\*\* ids on: (\S+) at (\d+-\d+)$/.exec(raw))) {
      state.ids = true;
      const room = m[1].toLowerCase();
      if (state.resuming !== room) seen(room, parseId(m[2]));
      return;
    }
    if (raw.startsWith('*** error: ') && raw.includes('/history')) state.resuming = null;
    const t = untag(raw);
    if (t.id) {
      if (state.resuming || !newer(t.id)) return;
      seen(state.roomKey, t.id);
      if (isOwn(t.line)) return;
    } else if (state.resuming && isRoomLine(raw)) {
      return;
    }
    receive(t.line);
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
  function showHistory(line, ms) {
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
    show(line, 'hist', when);
  }

  function receive(line) {
    let m;
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
      setRoom(m[2]);
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
      setRoom(m[1]);
      state.joined = m[1];
      store('chatd.room', m[1]);
      setUsers(names(m[2]));
      ask('rooms');
    } else if ((m = /^\*\*\* (#\S+) \(\d+\): (.*)$/.exec(line))) {
      const mine = state.wantWho.length > 0 && state.wantWho.shift();
      if (m[1] === state.room) setUsers(names(m[2]));
      if (mine) return;
    } else if ((m = /^\*\*\* rooms \(\d+\): (.*)$/.exec(line))) {
      const mine = state.wantRooms.length > 0 && state.wantRooms.shift();
      setRooms(m[1]);
      if (mine) return;
    } else if ((m = /^\*\*\* (\S+) (joined|left)(?: #\S+)?(?: \(.*\))?$/.exec(line))) {
      // "alice joined", "alice left (too slow)", and when someone switches
      // rooms "alice left #lobby" / "alice joined #games".
      if (m[2] === 'joined') {
        if (!state.users.includes(m[1])) setUsers(state.users.concat([m[1]]));
      } else {
        setUsers(state.users.filter(function (u) { return u !== m[1]; }));
      }
      refreshSoon();
    } else if ((m = /^\*\*\* (\S+) is now (\S+)$/.exec(line))) {
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
    show(forPeople(line));
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

  function names(list) {
    // A long list ends with "… and 12 more", which is nobody's name.
    return list.split(', ').map(function (s) { return s.trim(); })
      .filter(function (s) { return s && !s.startsWith('… and '); });
  }

  function setName(name) {
    state.name = name;
    meEl.textContent = name;
    setUsers(state.users); // to mark who "you" are
  }

  function setRoom(room) {
    state.room = room;
    state.roomKey = room.toLowerCase();
    roomEl.textContent = room;
    document.title = 'chatd ' + room;
    markRoom();
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
      li.textContent = user;
      if (user === state.name) {
        // A /msg to oneself is no use: clicking your own name does nothing.
        li.className = 'you';
        li.title = 'you';
        usersEl.appendChild(li);
        continue;
      }
      li.title = 'message ' + user;
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
        if (m[1] !== state.room) submit('/join ' + m[1]);
        closeSide();
        input.focus();
      });
      roomsEl.appendChild(li);
    }
    markRoom();
  }

  function markRoom() {
    for (const li of roomsEl.children) {
      li.classList.toggle('here', li.dataset.room === state.room);
    }
  }

  // One line in the message list; `kind` overrides the style worked out
  // from the line's shape; `when` is when it was said (default: now).
  function show(line, kind, when) {
    const li = document.createElement('li');
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
    while (log.childElementCount > MAX_LOG) log.firstElementChild.remove();
    if (atBottom) log.scrollTop = log.scrollHeight;
  }

  // Something the page itself says (not from the server).
  function note(text, kind) {
    show('— ' + text, kind);
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
    if (document.visibilityState === 'visible') ask('rooms');
  });

  connect();
})();
