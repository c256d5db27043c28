//! Issue 15 (access control): the server password, operators, kick, ban,
//! mute, and bans kept across a restart, against the real binary.

mod support;

use std::time::{Duration, Instant};
use support::{Client, Server, TIMEOUT};

const NEEDS: &str = "*** this server needs a password: /pass SECRET";

/// A scratch directory for a bans file, removed at the end.
struct Dir(std::path::PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("chatd-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
    fn file(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Connects to a server with a password and gives it; returns the client
/// with its name from the welcome.
fn enter(server: &Server, secret: &str) -> Client {
    let mut c = Client::connect_raw(server.addr);
    c.next_is(NEEDS);
    c.send(&format!("/pass {secret}"));
    let welcome = c.expect("welcome", |l| l.starts_with("*** welcome"));
    c.name = support::parse_welcome_name(&welcome).unwrap();
    c
}

fn named(mut c: Client, name: &str) -> Client {
    c.send(&format!("/nick {name}"));
    c.expect_line(&format!("*** you are now {name}"));
    c.name = name.into();
    c
}

#[test]
fn a_password_is_needed_first_and_nothing_before_it_is_relayed() {
    let server = Server::start(&["--password", "hunter2"]);
    let mut inside = enter(&server, "hunter2");
    let mut outside = Client::connect_raw(server.addr);
    outside.next_is(NEEDS);
    for line in [
        "hello everyone",
        "/me waves",
        "/who",
        "/nick mallory",
        "/msg x hi",
    ] {
        outside.send(line);
        outside.next_is("*** error: this server needs a password: /pass SECRET");
    }
    // Not in any room: not listed, and hears nothing of the room.
    inside.send("/who");
    inside.next_is(&format!("*** #lobby (1): {}", inside.name));
    inside.send("said while the stranger waits");
    assert_eq!(inside.sync(), Vec::<String>::new(), "nothing was relayed");
    outside.send("/pass wrong");
    outside.next_is("*** error: wrong password");
    outside.send("/pass hunter2");
    let welcome = outside.read_line().unwrap();
    assert!(
        welcome.starts_with("*** welcome to chatd, guest-"),
        "{welcome}"
    );
    inside.expect("the join", |l| l.ends_with(" joined"));
}

#[test]
fn wrong_passwords_are_rate_limited_per_address() {
    let server = Server::start(&["--password", "hunter2", "--pass-attempts", "3"]);
    let mut c = Client::connect_raw(server.addr);
    c.next_is(NEEDS);
    for _ in 0..3 {
        c.send("/pass nope");
        c.next_is("*** error: wrong password");
    }
    // Even the right one is not looked at now, from any connection of
    // this address.
    c.send("/pass hunter2");
    let refused = c.read_line().unwrap();
    assert!(
        refused.starts_with("*** error: too many wrong passwords from your address; try again in "),
        "{refused}"
    );
    let mut again = Client::connect_raw(server.addr);
    again.next_is(NEEDS);
    again.send("/pass hunter2");
    let refused = again.read_line().unwrap();
    assert!(
        refused.starts_with("*** error: too many wrong passwords"),
        "{refused}"
    );
    let metrics = scrape(&server);
    let failures = metrics
        .lines()
        .find(|l| l.starts_with("chatd_password_failures_total{"))
        .unwrap_or_else(|| panic!("no password failures in {metrics}"));
    assert!(failures.ends_with("} 3"), "{failures}");
}

#[test]
fn the_password_can_come_from_a_file_or_the_environment() {
    let dir = Dir::new("pwfile");
    let path = dir.file("pw");
    std::fs::write(&path, "from-a-file\n").unwrap();
    let server = Server::start(&["--password-file", &path]);
    enter(&server, "from-a-file");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_chatd"));
    cmd.env("CHATD_PASSWORD", "from-env");
    let server = Server::start_with(cmd, &[]);
    enter(&server, "from-env");
}

fn scrape(server: &Server) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(server.http_addr.unwrap()).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text
}

/// alice (an operator) and bob, both in the lobby, all announcements read.
fn oper_and_user(server: &Server) -> (Client, Client) {
    let mut a = server.client();
    let mut b = server.client();
    a.next_is(&format!("*** {} joined", b.name));
    a.send("/nick alice");
    a.next_is("*** you are now alice");
    b.next_is(&format!("*** {} is now alice", a.name));
    b.send("/nick bob");
    b.next_is("*** you are now bob");
    a.next_is(&format!("*** {} is now bob", b.name));
    a.name = "alice".into();
    b.name = "bob".into();
    a.send("/oper sesame");
    a.next_is("*** you are now an operator; /help lists your commands");
    (a, b)
}

#[test]
fn operator_commands_need_the_operator_password() {
    let server = Server::start(&["--oper-password", "sesame"]);
    let mut a = named(server.client(), "alice");
    for (cmd, word) in [
        ("/kick bob", "kick"),
        ("/ban 10.0.0.1", "ban"),
        ("/unban 10.0.0.1", "unban"),
        ("/bans", "bans"),
        ("/mute bob", "mute"),
    ] {
        a.send(cmd);
        a.next_is(&format!(
            "*** error: /{word} is for operators (/oper PASSWORD)"
        ));
    }
    a.send("/oper alice");
    a.next_is("*** error: wrong operator password");
    a.send("/kick alice");
    a.next_is("*** error: /kick is for operators (/oper PASSWORD)");
    a.send("/help");
    let help = a.sync();
    assert!(!help.iter().any(|l| l.contains("/kick")), "{help:?}");
    a.send("/oper sesame");
    a.next_is("*** you are now an operator; /help lists your commands");
    a.send("/help");
    let help = a.sync();
    for cmd in [
        "/kick NAME",
        "/ban NAME|ADDRESS",
        "/unban",
        "/bans",
        "/mute NAME",
    ] {
        assert!(
            help.iter().any(|l| l.contains(cmd)),
            "{cmd} not in {help:?}"
        );
    }
}

#[test]
fn without_an_operator_password_there_are_no_operators() {
    let server = Server::start(&[]);
    let mut a = server.client();
    a.send("/oper");
    a.next_is("*** error: this server has no operators (no --oper-password)");
    a.send("/oper anything");
    a.next_is("*** error: this server has no operators (no --oper-password)");
}

#[test]
fn kick_tells_the_room_why_and_closes_the_connection() {
    let server = Server::start(&["--oper-password", "sesame"]);
    let (mut a, mut b) = oper_and_user(&server);
    a.send("/kick bob spamming links");
    a.next_is("*** bob was kicked by alice (spamming links)");
    b.expect_line("*** bob was kicked by alice (spamming links)");
    assert_eq!(b.read_to_eof(), "", "closed after the notice");
    a.send("/who");
    a.next_is("*** #lobby (1): alice");
    a.send("/kick nobody");
    a.next_is("*** error: no user named nobody");
}

/// Tries to connect until the server takes us in (a welcome), within the
/// bound; returns how many refusals came first.
fn connect_until_welcome(server: &Server) -> usize {
    let deadline = Instant::now() + TIMEOUT;
    let mut refusals = 0;
    while Instant::now() < deadline {
        let mut c = Client::connect_raw(server.addr);
        let first = c.read_line().unwrap_or_default();
        if first.starts_with("*** welcome") {
            return refusals;
        }
        assert!(
            first.starts_with("*** error: your address is banned"),
            "{first}"
        );
        refusals += 1;
        // The refusal is a round trip; pace the retries a little so the
        // loop stays well within its bound.
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("still banned after {TIMEOUT:?}");
}

#[test]
fn ban_by_name_closes_the_user_refuses_the_address_and_expires() {
    let dir = Dir::new("ban-name");
    let bans = dir.file("bans.txt");
    let server = Server::start(&["--oper-password", "sesame", "--bans-file", &bans]);
    let (mut a, mut b) = oper_and_user(&server);
    a.send("/ban bob confirm 2s spam");
    b.expect_line("*** bob was banned by alice for 2s (spam)");
    assert_eq!(b.read_to_eof(), "", "closed after the notice");
    a.expect_line("*** bob was banned by alice for 2s (spam)");
    a.next_is("*** banned 127.0.0.1 for 2s; 1 user disconnected");
    // The operator stays (same address): bans spare operators online.
    a.send("/bans");
    let listed = a.read_line().unwrap();
    assert_eq!(listed, "*** bans (1):");
    let entry = a.read_line().unwrap();
    assert!(
        entry.starts_with("***   127.0.0.1 (") && entry.ends_with(" more) by alice: bob: spam"),
        "{entry}"
    );
    // A new connection from the address is refused with a reason, closed.
    let mut c = Client::connect_raw(server.addr);
    let refused = c.read_line().unwrap();
    assert!(
        refused.starts_with("*** error: your address is banned from this server (")
            && refused.ends_with("more, by alice: bob: spam)"),
        "{refused}"
    );
    assert_eq!(c.read_to_eof(), "");
    assert!(connect_until_welcome(&server) < 100);
    let metrics = scrape(&server);
    let bans = metrics
        .lines()
        .find(|l| l.starts_with("chatd_bans_total{"))
        .unwrap_or_else(|| panic!("no bans in {metrics}"));
    assert!(bans.ends_with("} 1"), "{bans}");
}

#[test]
fn ban_by_address_prefix_and_unban() {
    let dir = Dir::new("ban-net");
    let bans = dir.file("bans.txt");
    let server = Server::start(&["--oper-password", "sesame", "--bans-file", &bans]);
    let (mut a, mut b) = oper_and_user(&server);
    a.send("/ban 127.0.0.0/8 confirm permanent flood from loopback");
    b.expect_line("*** bob was banned by alice permanently (flood from loopback)");
    assert_eq!(b.read_to_eof(), "");
    a.expect_line("*** bob was banned by alice permanently (flood from loopback)");
    a.next_is("*** banned 127.0.0.0/8 permanently; 1 user disconnected");
    let mut c = Client::connect_raw(server.addr);
    let refused = c.read_line().unwrap();
    assert!(
        refused.starts_with("*** error: your address is banned"),
        "{refused}"
    );
    a.send("/unban 127.0.0.1");
    a.next_is("*** error: no ban on 127.0.0.1 (see /bans)");
    a.send("/unban 127.0.0.0/8");
    a.next_is("*** unbanned 127.0.0.0/8");
    assert_eq!(connect_until_welcome(&server), 0);
    a.send("/bans");
    a.expect_line("*** no bans");
}

#[test]
fn mute_refuses_messages_with_a_reason_and_expires() {
    let server = Server::start(&["--oper-password", "sesame"]);
    let (mut a, mut b) = oper_and_user(&server);
    a.send("/mute bob 2s");
    a.next_is("*** bob was muted by alice for 2s");
    b.expect_line("*** bob was muted by alice for 2s");
    for line in ["hello?", "/me sulks", "/msg alice let me talk", "//slash"] {
        b.send(line);
        let err = b.read_line().unwrap();
        assert!(
            err.starts_with("*** error: you are muted ("),
            "{line}: {err}"
        );
    }
    assert_eq!(a.sync(), Vec::<String>::new(), "nothing reached the room");
    // Bounded: the mute lasts 2 s.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        b.send("free at last");
        let lines = b.sync();
        if lines.is_empty() {
            break;
        }
        assert!(
            lines.len() == 1 && lines[0].starts_with("*** error: you are muted ("),
            "{lines:?}"
        );
        assert!(Instant::now() < deadline, "still muted");
        std::thread::sleep(Duration::from_millis(200));
    }
    a.expect_line("<bob> free at last");
    a.send("/mute bob");
    a.next_is("*** bob was muted by alice permanently");
    a.send("/unmute bob");
    a.next_is("*** bob was unmuted by alice");
}

#[test]
fn bans_survive_a_restart() {
    let dir = Dir::new("ban-restart");
    let bans = dir.file("bans.txt");
    {
        let server = Server::start(&["--oper-password", "sesame", "--bans-file", &bans]);
        let (mut a, _b) = oper_and_user(&server);
        a.send("/ban 10.9.0.0/16 1h abuse");
        a.next_is("*** banned 10.9.0.0/16 for 1h; 0 users disconnected");
        a.send("/ban 192.0.2.7 1s brief");
        a.next_is("*** banned 192.0.2.7 for 1s; 0 users disconnected");
    }
    let text = std::fs::read_to_string(&bans).unwrap();
    assert!(text.contains("10.9.0.0/16\t"), "{text}");
    let server = Server::start(&["--oper-password", "sesame", "--bans-file", &bans]);
    let mut a = named(server.client(), "alice");
    a.send("/oper sesame");
    a.next_is("*** you are now an operator; /help lists your commands");
    // The 1 s ban may or may not have run out by now: only the long one
    // is sure to be there.
    a.send("/bans");
    let lines = a.sync();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("***   10.9.0.0/16 (") && l.ends_with("by alice: abuse")),
        "{lines:?}"
    );
    // No stray temp file is left next to it.
    let left: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("bans.txt")]);
}

#[test]
fn passwords_never_reach_the_log_even_with_v() {
    let dir = Dir::new("pw-log");
    let log = std::path::PathBuf::from(dir.file("chatd.log"));
    let server = support::cluster::start_logged(
        &log,
        &["-v", "--password", "hunter2", "--oper-password", "sesame"],
    );
    let mut c = enter(&server, "hunter2");
    c.send("/oper sesame");
    c.next_is("*** you are now an operator; /help lists your commands");
    c.send("/pass wrong-one");
    c.next_is("*** error: you are already in; /pass is only asked first");
    let _ = c.sync();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("/pass ***"),
        "the line is logged, redacted:\n{text}"
    );
    for secret in ["hunter2", "sesame", "wrong-one"] {
        assert!(!text.contains(secret), "{secret} in the log:\n{text}");
    }
}

// Issue 26: access control that holds under attack and operators'
// mistakes.

/// Item 1: a connection waiting at the password prompt is closed by a new
/// ban on its address; it never gets in with the right password after.
#[test]
fn a_new_ban_reaches_a_connection_waiting_for_the_password() {
    let server = Server::start(&["--password", "hunter2", "--oper-password", "sesame"]);
    let mut spare = Client::connect_from("127.0.0.5", server.addr);
    spare.next_is(NEEDS);
    let mut op = enter(&server, "hunter2");
    op.send("/oper sesame");
    op.next_is("*** you are now an operator; /help lists your commands");
    op.send("/ban 127.0.0.5 1h");
    let banned = op.read_line().unwrap_or_default();
    // It may be closed already: what it was told is still there to read.
    let _ = std::io::Write::write_all(&mut spare.stream, b"/pass hunter2\n");
    let first = spare.read_line().unwrap_or_default();
    assert!(
        first.starts_with("*** error: your address is banned from this server (1h"),
        "{first}"
    );
    let rest = spare.read_to_eof();
    assert!(!rest.contains("welcome"), "{rest}");
    assert_eq!(
        banned,
        "*** banned 127.0.0.5 for 1h; 0 users disconnected (and 1 connection waiting for the password)"
    );
}

/// Item 2: a ban's reason and name from the bans file (or Redis) get the
/// cleaning every line gets: no line separator, no bidi override, nothing
/// invisible reaches `/bans` or the refusal.
#[test]
fn ban_text_from_the_file_is_cleaned_like_any_line() {
    let dir = Dir::new("ban-text");
    let bans = dir.file("bans.txt");
    std::fs::write(
        &bans,
        "127.0.0.9\tpermanent\tev\u{202e}il\tx\u{2028}<alice> I am the admin\u{200b}\u{2066}\u{2029}!\n",
    )
    .unwrap();
    let server = Server::start(&["--oper-password", "sesame", "--bans-file", &bans]);
    let mut a = named(server.client(), "alice");
    a.send("/oper sesame");
    a.next_is("*** you are now an operator; /help lists your commands");
    a.send("/bans");
    a.next_is("*** bans (1):");
    a.next_is("***   127.0.0.9 (permanent) by evil: x <alice> I am the admin !");
    let mut c = Client::connect_from("127.0.0.9", server.addr);
    c.next_is(
        "*** error: your address is banned from this server (permanent, by evil: x <alice> I am the admin !)",
    );
}

/// Item 5: what is almost certainly a mistake is refused, with what to
/// type if it was meant; mapped prefixes match the IPv4 addresses.
#[test]
fn operators_mistakes_are_refused_not_kept() {
    let server = Server::start(&["--oper-password", "sesame"]);
    let (mut a, mut b) = oper_and_user(&server);
    for typo in ["30min", "1hour", "1.5h", "10 m", "0s"] {
        a.send(&format!("/ban 10.0.0.1 {typo} spam"));
        let word = typo.split(' ').next().unwrap();
        a.next_is(&format!("*** error: {word} is not a duration: a whole number and one of s, m, h, d, w (30s, 10m, 2h, 7d, 1w; at most 3650d), or permanent"));
    }
    a.send("/ban 0.0.0.0/0");
    a.next_is("*** error: not banned: 0.0.0.0/0: it covers your own address (127.0.0.1); to ban it anyway: /ban 0.0.0.0/0 confirm");
    a.send("/ban 2000::/3 1h");
    a.next_is("*** error: not banned: 2000::/3: it is wider than /32 of IPv6; to ban it anyway: /ban 2000::/3 confirm 1h");
    a.send("/ban bob 1h");
    a.next_is("*** error: not banned: 127.0.0.1: it covers your own address (127.0.0.1); to ban it anyway: /ban bob confirm 1h");
    a.send("/bans");
    a.next_is("*** no bans");
    a.send("/ban ::ffff:127.0.0.0/120 1h mapped");
    a.next_is("*** error: not banned: 127.0.0.0/24: it covers your own address (127.0.0.1); to ban it anyway: /ban ::ffff:127.0.0.0/120 confirm 1h mapped");
    a.send("/ban ::ffff:127.0.9.0/120 1h mapped");
    a.next_is("*** banned 127.0.9.0/24 for 1h; 0 users disconnected");
    let mut c = Client::connect_from("127.0.9.9", server.addr);
    let refused = c.read_line().unwrap_or_default();
    assert!(
        refused.starts_with("*** error: your address is banned"),
        "{refused}"
    );
    assert_eq!(b.sync(), Vec::<String>::new(), "bob was never banned");
}

/// Item 5: a ban that could not be written to the bans file says so.
#[test]
fn a_ban_that_could_not_be_saved_says_so() {
    let dir = Dir::new("ban-unsaved");
    let bans = dir.file("bans.txt");
    let server = Server::start(&["--oper-password", "sesame", "--bans-file", &bans]);
    let (mut a, _b) = oper_and_user(&server);
    // A directory (not empty) where the file should go: no rename over it.
    std::fs::create_dir_all(std::path::Path::new(&bans).join("in-the-way")).unwrap();
    a.send("/ban 10.0.0.1 1h");
    a.next_is("*** banned 10.0.0.1 for 1h; 0 users disconnected");
    let told = a.read_line().unwrap_or_default();
    assert!(
        told.starts_with("*** error: the bans file could not be written (")
            && told.ends_with("); the change holds only until the server restarts"),
        "{told}"
    );
}

/// Item 6: a byte that is not UTF-8 in the bans file costs its line, not
/// the start; the line is counted and logged.
#[test]
fn a_bans_file_with_bytes_that_are_not_utf8_still_starts() {
    let dir = Dir::new("ban-bytes");
    let bans = dir.file("bans.txt");
    let log = std::path::PathBuf::from(dir.file("chatd.log"));
    let mut file = b"127.0.0.9\tpermanent\talice\tok\n".to_vec();
    file.extend_from_slice(b"127.0.0.10\tpermanent\talice\tbad \xff byte\n");
    std::fs::write(&bans, file).unwrap();
    let server = support::cluster::start_logged(&log, &["--bans-file", &bans]);
    let mut c = Client::connect_from("127.0.0.9", server.addr);
    let refused = c.read_line().unwrap_or_default();
    assert!(
        refused.starts_with("*** error: your address is banned"),
        "{refused}"
    );
    support::cluster::wait_log(
        &log,
        &["1 line(s) that are not bans left out (line 2)"],
        TIMEOUT,
    );
    let mut d = Client::connect_from("127.0.0.10", server.addr);
    let first = d.read_line().unwrap_or_default();
    assert!(first.starts_with("*** welcome"), "{first}");
}

/// Item 7: white space before `/pass` or `/oper` neither leaks the secret
/// into the -v log nor sends it to the room.
#[test]
fn a_leading_space_hides_no_secret() {
    let dir = Dir::new("pw-space");
    let log = std::path::PathBuf::from(dir.file("chatd.log"));
    let server = support::cluster::start_logged(
        &log,
        &["-v", "--password", "hunter2", "--oper-password", "sesame"],
    );
    let mut watcher = enter(&server, "hunter2");
    let mut c = Client::connect_raw(server.addr);
    c.next_is(NEEDS);
    c.send(" /pass hunter2");
    let welcome = c.expect("welcome", |l| l.starts_with("*** welcome"));
    c.name = support::parse_welcome_name(&welcome).unwrap();
    watcher.expect("the join", |l| l.ends_with(" joined"));
    c.send("\t /oper sesame");
    c.next_is("*** you are now an operator; /help lists your commands");
    let seen = watcher.sync();
    assert!(seen.iter().all(|l| !l.contains("sesame")), "{seen:?}");
    let _ = c.sync();
    let text = std::fs::read_to_string(&log).unwrap();
    for secret in ["hunter2", "sesame"] {
        assert!(!text.contains(secret), "{secret} in the log:\n{text}");
    }
}
