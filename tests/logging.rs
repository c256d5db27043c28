//! The log never takes the server down (issue 25, item 1): with its stderr
//! a closed pipe (`chatd 2>&1 | head` after head quit), chatd keeps
//! relaying, and a SIGTERM still says goodbye to every client.

mod support;

use support::Server;

#[test]
fn a_closed_log_pipe_does_not_stop_the_server() {
    let mut server = Server::start_stderr_piped(&["--no-http"]);
    // Close the read end: every later log line meets EPIPE.
    drop(server.child.stderr.take());
    let mut alice = server.client();
    let mut bob = server.client();
    for i in 0..20 {
        // Joins, nick changes and leaves are logged; each is one more
        // write to the closed pipe.
        alice.send(&format!("/nick alice{i}"));
        alice.expect(&format!("alice{i}"), |l| l.contains(&format!("alice{i}")));
        let mut extra = server.client();
        extra.send("/quit");
        let _ = extra.read_to_eof();
        alice.send(&format!("line {i}"));
        bob.expect(&format!("line {i}"), |l| {
            l.ends_with(&format!("> line {i}"))
        });
    }
    let status = {
        let s = &mut server;
        std::process::Command::new("kill")
            .args(["-TERM", &s.child.id().to_string()])
            .status()
            .expect("kill");
        for c in [&mut alice, &mut bob] {
            c.expect("the goodbye", |l| l == "*** server shutting down");
        }
        support::wait_exit(&mut s.child, support::TIMEOUT).expect("chatd did not exit")
    };
    assert!(status.success(), "chatd exited with {status:?}");
}
