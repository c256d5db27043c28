//! The real `flood` binary against the real chatd (smoke test), and against
//! a tiny in-test line relay that can drop, duplicate or reorder a line or
//! stall, to prove that flood's verification fails when delivery is wrong.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use support::{Server, wait_exit};

/// Runs flood with `args` against `addr`; returns its exit code and the JSON
/// it printed. Fails the test if flood does not end within a minute.
fn flood(addr: SocketAddr, args: &[&str]) -> (i32, Value) {
    let mut args = args.to_vec();
    if !args.contains(&"--timeout") {
        args.extend(["--timeout", "5"]);
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_flood"))
        .args(["--host", "127.0.0.1", "--port", &addr.port().to_string()])
        .arg("--json")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn flood");
    let mut stdout = child.stdout.take().expect("flood stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let status = match wait_exit(&mut child, Duration::from_secs(60)) {
        Some(s) => s,
        None => {
            let _ = child.kill();
            panic!("flood did not finish within 60 s");
        }
    };
    let out = reader.join().expect("stdout reader");
    let json = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("flood printed no JSON ({e}): {out:?}"));
    (status.code().unwrap_or(-1), json)
}

fn count(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("no {key} in {v}"))
}

#[test]
fn smoke_against_chatd() {
    let server = Server::start(&[]);
    let pid = server.child.id().to_string();
    let (code, v) = flood(
        server.addr,
        &["-n", "20", "-s", "4", "-m", "200", "--pid", &pid],
    );
    assert_eq!(code, 0, "flood failed: {v}");
    assert_eq!(v["ok"], true);
    assert_eq!(count(&v, "deliveries"), 19 * 4 * 200);
    assert_eq!(count(&v, "expected_deliveries"), 19 * 4 * 200);
    assert_eq!(count(&v, "missing"), 0);
    assert_eq!(count(&v, "out_of_order"), 0);
    assert_eq!(count(&v, "duplicates"), 0);
    assert_eq!(count(&v, "echoes"), 0, "chatd must not echo to the sender");
    assert_eq!(v["greeting"], true, "chatd welcomes every connection");
    assert!(v["server"]["rss_peak_kib"].as_u64().unwrap_or(0) > 0);
    assert_eq!(count(&v["latency_us"], "count"), 19 * 4 * 200);
}

#[test]
fn open_loop_and_slow_reader_against_chatd() {
    let server = Server::start(&["--sendq", "65536"]);
    let (code, v) = flood(
        server.addr,
        &["-n", "10", "-s", "2", "-m", "100", "--rate", "2000"],
    );
    assert_eq!(code, 0, "open loop failed: {v}");
    assert_eq!(count(&v, "deliveries"), 9 * 2 * 100);
    assert!(v["window"].is_null());

    // One reader stops; 2 x 20000 lines of 200 B (8.5 MB for it) pass its
    // 64 KiB queue plus what loopback buffers in the kernel (a few MB), so
    // chatd cuts it off and the others still get everything.
    let (code, v) = flood(
        server.addr,
        &[
            "-n", "6", "-s", "2", "-m", "20000", "-b", "200", "--slow", "1",
        ],
    );
    assert_eq!(code, 0, "slow-reader run failed: {v}");
    assert_eq!(count(&v, "deliveries"), 4 * 2 * 20000);
    assert_eq!(count(&v["slow_readers"], "closed_by_server"), 1, "{v}");
}

#[test]
fn idle_mode_against_chatd() {
    let server = Server::start(&[]);
    let pid = server.child.id().to_string();
    let (code, v) = flood(server.addr, &["--idle", "200", "--pid", &pid]);
    assert_eq!(code, 0, "idle run failed: {v}");
    assert_eq!(count(&v["idle"], "connections"), 200);
    assert_eq!(count(&v, "deliveries"), 199);
    assert!(v["idle"]["rss_per_conn_bytes"].is_number(), "{v}");
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    Drop,
    Duplicate,
    Reorder,
    /// Stop relaying after the faulty line (keep reading).
    Stall,
}

/// The relayed line (counted from 0, over all senders) that the fault hits.
const FAULT_AT: usize = 10;

struct Relay {
    clients: Vec<(usize, TcpStream)>,
    relayed: usize,
    /// Reorder: (recipient, line) held back until that recipient's next line.
    held: Option<(usize, Vec<u8>)>,
}

/// A thread-per-client line relay like a small seed chat: every line to
/// every other client as `<uN> line`, with one injected `fault`.
fn line_server(fault: Fault, greet: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let relay = Arc::new(Mutex::new(Relay {
        clients: Vec::new(),
        relayed: 0,
        held: None,
    }));
    let ids = Arc::new(AtomicUsize::new(0));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let id = ids.fetch_add(1, Ordering::SeqCst);
            if greet && stream.write_all(b"hello\r\n").is_err() {
                continue;
            }
            let Ok(writer) = stream.try_clone() else {
                continue;
            };
            relay.lock().unwrap().clients.push((id, writer));
            let relay = relay.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    relay_line(&relay, fault, id, &line);
                }
            });
        }
    });
    addr
}

fn relay_line(relay: &Mutex<Relay>, fault: Fault, from: usize, line: &str) {
    let mut r = relay.lock().unwrap();
    let n = r.relayed;
    r.relayed += 1;
    if fault == Fault::Stall && n > FAULT_AT {
        return;
    }
    let out = format!("<u{from}> {line}\r\n").into_bytes();
    let mut first_other = true;
    let Relay { clients, held, .. } = &mut *r;
    for (id, w) in clients.iter_mut() {
        if *id == from {
            continue;
        }
        let hit = n == FAULT_AT && first_other;
        first_other = false;
        let _ = match (hit, fault) {
            (true, Fault::Drop) => Ok(()),
            (true, Fault::Duplicate) => w.write_all(&out).and_then(|_| w.write_all(&out)),
            (true, Fault::Reorder) => {
                *held = Some((*id, out.clone()));
                Ok(())
            }
            _ => w.write_all(&out),
        };
        if !hit && held.as_ref().is_some_and(|(h, _)| h == id) {
            let (_, late) = held.take().expect("held line");
            let _ = w.write_all(&late);
        }
    }
}

/// One sender so that "the next line to the same receiver" is the same
/// sender's next line, which makes a held-back line arrive out of order.
fn flood_faulty(fault: Fault) -> (i32, Value) {
    let addr = line_server(fault, true);
    flood(addr, &["-n", "3", "-s", "1", "-m", "50", "--window", "4"])
}

#[test]
fn generic_relay_without_greeting_passes() {
    let addr = line_server(Fault::None, false);
    let (code, v) = flood(addr, &["-n", "4", "-s", "2", "-m", "100"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(
        v["greeting"], false,
        "auto-detected: this relay says nothing"
    );
    assert_eq!(count(&v, "deliveries"), 3 * 2 * 100);
}

#[test]
fn dropped_line_is_missing() {
    let (code, v) = flood_faulty(Fault::Drop);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["ok"], false);
    assert_eq!(count(&v, "missing"), 1);
    assert_eq!(count(&v, "duplicates"), 0);
    assert_eq!(count(&v, "out_of_order"), 0);
    assert_eq!(count(&v, "deliveries"), 2 * 50 - 1);
}

#[test]
fn duplicated_line_is_counted() {
    let (code, v) = flood_faulty(Fault::Duplicate);
    assert_eq!(code, 1, "{v}");
    assert_eq!(count(&v, "duplicates"), 1);
    assert_eq!(count(&v, "missing"), 0);
    assert_eq!(count(&v, "deliveries"), 2 * 50);
}

#[test]
fn reordered_line_is_counted() {
    let (code, v) = flood_faulty(Fault::Reorder);
    assert_eq!(code, 1, "{v}");
    assert_eq!(count(&v, "out_of_order"), 1);
    assert_eq!(count(&v, "missing"), 0);
    assert_eq!(count(&v, "duplicates"), 0);
}

#[test]
fn stalled_server_ends_the_run_with_missing_lines() {
    let addr = line_server(Fault::Stall, true);
    let (code, v) = flood(addr, &["-n", "3", "-s", "1", "-m", "50", "--timeout", "1"]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["stalled"], true);
    // Lines 0..=FAULT_AT reach both receivers; the rest reach nobody.
    let got = (FAULT_AT as u64 + 1) * 2;
    assert_eq!(count(&v, "deliveries"), got);
    assert_eq!(count(&v, "missing"), 2 * 50 - got);
}

/// A WebSocket relay (tungstenite, thread per client) standing in for
/// chatd's web port until it exists: greets with one text frame, relays every
/// text frame to every other client as `<uN> text`, one frame per line.
fn ws_relay() -> SocketAddr {
    use tungstenite::protocol::frame::FrameHeader;
    use tungstenite::protocol::frame::coding::{Data, OpCode};

    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let writers: Arc<Mutex<Vec<(usize, TcpStream)>>> = Arc::default();
    std::thread::spawn(move || {
        for (id, stream) in listener.incoming().enumerate() {
            let Ok(stream) = stream else { return };
            let Ok(mut ws) = tungstenite::accept(stream) else {
                continue;
            };
            let Ok(raw) = ws.get_ref().try_clone() else {
                continue;
            };
            if ws.send(tungstenite::Message::text("welcome")).is_err() {
                continue;
            }
            writers.lock().unwrap().push((id, raw));
            let writers = writers.clone();
            std::thread::spawn(move || {
                while let Ok(msg) = ws.read() {
                    let tungstenite::Message::Text(text) = msg else {
                        continue;
                    };
                    let payload = format!("<u{id}> {}", text.as_str());
                    let mut frame = Vec::new();
                    let header = FrameHeader {
                        opcode: OpCode::Data(Data::Text),
                        ..FrameHeader::default()
                    };
                    header
                        .format(payload.len() as u64, &mut frame)
                        .expect("format");
                    frame.extend_from_slice(payload.as_bytes());
                    for (other, w) in writers.lock().unwrap().iter_mut() {
                        if *other != id {
                            let _ = w.write_all(&frame);
                        }
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn websocket_transport_against_a_ws_relay() {
    let addr = ws_relay();
    let (code, v) = flood(addr, &["--ws", "-n", "4", "-s", "2", "-m", "100"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["transport"], "ws");
    assert_eq!(
        v["greeting"], true,
        "the welcome frame counts as a greeting"
    );
    assert_eq!(count(&v, "deliveries"), 3 * 2 * 100);
    assert_eq!(count(&v, "missing"), 0);
}

#[test]
fn connections_the_server_refuses_are_counted_not_waited_for() {
    // chatd answers the 4th and 5th connection with "server full" and
    // closes them: data and FIN arrive together, and flood must see the EOF
    // even though no later event will come for that socket.
    let server = Server::start(&["--max-clients", "3"]);
    let (code, v) = flood(server.addr, &["-n", "5", "-s", "1", "-m", "50"]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(count(&v, "connected"), 3);
    assert_eq!(
        count(&v, "connect_failed") + count(&v, "lost_before_start"),
        2
    );
    assert_eq!(v["stalled"], false, "{v}");
    assert_eq!(count(&v, "deliveries"), 2 * 50);
    assert_eq!(count(&v, "missing"), 0);
}

/// A fake socket.io v4 server on the websocket transport (tungstenite, thread
/// per client): Engine.IO open, one ping per client (whose pong it counts),
/// CONNECT accepted, every `42["chat",text]` to every other client as
/// `42["chat","<\"uN\"> text"]` (serde_json escapes the quotes, so flood has
/// to unescape), and `drop_at`: the relayed event (counted from 0) that it
/// swallows instead of sending to its first recipient.
// tungstenite's handshake callback type fixes the size of its error.
#[allow(clippy::result_large_err)]
fn socket_io_server(drop_at: Option<usize>) -> (SocketAddr, Arc<AtomicUsize>) {
    use tungstenite::Message;

    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let pongs = Arc::new(AtomicUsize::new(0));
    let pongs2 = pongs.clone();
    type Peers = Arc<Mutex<Vec<(usize, std::sync::mpsc::Sender<String>)>>>;
    let peers: Peers = Arc::default();
    let relayed = Arc::new(AtomicUsize::new(0));
    std::thread::spawn(move || {
        for (id, stream) in listener.incoming().enumerate() {
            let Ok(stream) = stream else { return };
            let mut path = String::new();
            let Ok(mut ws) = tungstenite::accept_hdr(
                stream,
                |req: &tungstenite::handshake::server::Request, resp| {
                    path = req.uri().to_string();
                    Ok(resp)
                },
            ) else {
                continue;
            };
            assert_eq!(path, "/socket.io/?EIO=4&transport=websocket");
            let open = r#"0{"sid":"s","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#;
            if ws.send(Message::text(open)).is_err() || ws.send(Message::text("2")).is_err() {
                continue;
            }
            let (tx, rx) = std::sync::mpsc::channel::<String>();
            let (peers, pongs, relayed) = (peers.clone(), pongs2.clone(), relayed.clone());
            std::thread::spawn(move || {
                let _ = ws
                    .get_ref()
                    .set_read_timeout(Some(Duration::from_millis(2)));
                // Bounded: the client goes away (read error) when flood ends.
                loop {
                    while let Ok(out) = rx.try_recv() {
                        if ws.send(Message::text(out)).is_err() {
                            return;
                        }
                    }
                    let text = match ws.read() {
                        Ok(Message::Text(t)) => t.as_str().to_owned(),
                        Ok(_) => continue,
                        Err(tungstenite::Error::Io(e))
                            if e.kind() == std::io::ErrorKind::WouldBlock
                                || e.kind() == std::io::ErrorKind::TimedOut =>
                        {
                            continue;
                        }
                        Err(_) => return,
                    };
                    if text == "3" {
                        pongs.fetch_add(1, Ordering::SeqCst);
                    } else if text == "40" {
                        peers.lock().unwrap().push((id, tx.clone()));
                        if ws.send(Message::text(r#"40{"sid":"n"}"#)).is_err() {
                            return;
                        }
                    } else if let Some(json) = text.strip_prefix("42") {
                        let v: Value = serde_json::from_str(json).expect("event json");
                        assert_eq!(v[0], "chat");
                        let line = v[1].as_str().expect("string argument");
                        let out = format!(
                            "42{}",
                            serde_json::json!(["chat", format!("<\"u{id}\"> {line}")])
                        );
                        let n = relayed.fetch_add(1, Ordering::SeqCst);
                        let mut first = true;
                        for (other, tx) in peers.lock().unwrap().iter() {
                            if *other == id {
                                continue;
                            }
                            if first && Some(n) == drop_at {
                                first = false;
                                continue;
                            }
                            first = false;
                            let _ = tx.send(out.clone());
                        }
                    }
                }
            });
        }
    });
    (addr, pongs)
}

#[test]
fn socket_io_transport_against_a_fake_socket_io_server() {
    let (addr, pongs) = socket_io_server(None);
    let (code, v) = flood(addr, &["--socketio", "-n", "4", "-s", "2", "-m", "100"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["transport"], "socket.io");
    assert_eq!(v["greeting"], true, "the CONNECT answer proves acceptance");
    assert_eq!(count(&v, "deliveries"), 3 * 2 * 100);
    assert_eq!(count(&v, "missing"), 0);
    assert_eq!(count(&v["latency_us"], "count"), 3 * 2 * 100);
    assert_eq!(pongs.load(Ordering::SeqCst), 4, "every ping answered");
}

#[test]
fn socket_io_dropped_event_is_missing() {
    let (addr, _) = socket_io_server(Some(FAULT_AT));
    let (code, v) = flood(
        addr,
        &[
            "--socketio",
            "-n",
            "3",
            "-s",
            "1",
            "-m",
            "50",
            "--window",
            "4",
        ],
    );
    assert_eq!(code, 1, "{v}");
    assert_eq!(count(&v, "missing"), 1);
    assert_eq!(count(&v, "deliveries"), 2 * 50 - 1);
}

#[test]
fn cross_instance_latency_counts_only_senders_on_another_instance() {
    // One relay, but flood is told connection i sits on instance i % 2:
    // sender 0 reaches 1 and 3 across, sender 1 reaches 0 and 2.
    let addr = line_server(Fault::None, true);
    let (code, v) = flood(
        addr,
        &["-n", "4", "-s", "2", "-m", "100", "--instances", "2"],
    );
    assert_eq!(code, 0, "{v}");
    assert_eq!(count(&v, "instances"), 2);
    assert_eq!(count(&v["latency_cross_us"], "count"), 2 * 2 * 100);
    assert_eq!(count(&v["latency_us"], "count"), 3 * 2 * 100);
}

#[test]
fn watched_processes_get_their_cpu_over_the_run_reported() {
    let server = Server::start(&[]);
    let pid = server.child.id();
    let me = std::process::id();
    let (code, v) = flood(
        server.addr,
        &[
            "-n",
            "10",
            "-s",
            "2",
            "-m",
            "200",
            "--watch",
            &format!("{pid},{me}"),
        ],
    );
    assert_eq!(code, 0, "{v}");
    let watched = v["watched"].as_array().unwrap_or_else(|| panic!("{v}"));
    assert_eq!(watched.len(), 2, "{v}");
    assert_eq!(watched[0]["pid"], pid);
    assert_eq!(watched[1]["pid"], me);
    for w in watched {
        assert!(w["cpu_s"].as_f64().is_some_and(|c| c >= 0.0), "{v}");
    }
}

/// Issue 25, item 9: `--version`, plural forms, and a progress line on
/// stderr (forced here; by default only when stderr is a terminal).
#[test]
fn version_plurals_and_progress() {
    let out = Command::new(env!("CARGO_BIN_EXE_flood"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("flood "));

    let server = Server::start(&[]);
    // Open loop at 200 lines/s for 300 lines: at least 1.5 s, so at least
    // one progress line.
    let out = Command::new(env!("CARGO_BIN_EXE_flood"))
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &server.addr.port().to_string(),
        ])
        .args([
            "-n",
            "2",
            "-s",
            "1",
            "-m",
            "300",
            "--rate",
            "200",
            "--progress",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains(": 2 clients, 1 sender x 300 lines x"),
        "{stdout}"
    );
    assert!(
        stderr.contains("flood: 1 s: ") && stderr.contains("deliveries/s"),
        "no progress line: {stderr:?}"
    );
}
