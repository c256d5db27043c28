//! Sans-IO HTTP/1.1 for the web port: parse a request head from the bytes a
//! connection has sent so far, decide what to answer, and build the answer.
//!
//! The web port's state machine (conn/http.rs) keeps at most [`MAX_HEAD`]
//! bytes per connection, calls [`parse_head`] after each read, and then
//! either waits, answers an error and closes, or routes the request with
//! [`route`]. Every answer except the WebSocket upgrade carries
//! `Connection: close`: browsers fetch three small files once, so
//! keep-alive would only add state.
//!
//! Routing is in one place and returns plain data ([`Route`]); the one
//! route whose answer needs the server's numbers, `/metrics`, is built by
//! metrics.rs with [`response`], so it gets the same security headers.

use tungstenite::handshake::derive_accept_key;

/// The request head (request line and headers) may not exceed this; a longer
/// one is answered 431 and closed, so a connection holds at most this much
/// before it is either served or dropped.
pub const MAX_HEAD: usize = 8 * 1024;

/// httparse needs a fixed header array. Browsers send about 20 headers and
/// proxies add a few; more than this is answered 431 like an oversize head.
const MAX_HEADERS: usize = 64;

/// The page, its script and its style, embedded so the binary needs no files
/// at run time and works offline. They are separate files (not inline) so
/// the Content-Security-Policy can forbid all inline script and style.
pub const INDEX_HTML: &str = include_str!("web/index.html");
pub const APP_JS: &str = include_str!("web/app.js");
pub const APP_CSS: &str = include_str!("web/app.css");
pub const FAVICON_SVG: &str = include_str!("web/favicon.svg");

/// Only the page's own script and style, and connections back to the origin
/// it came from. `connect-src 'self'` covers ws: and wss: to the same host
/// and port in current browsers (CSP level 3), which is what lets the page
/// work unchanged behind a proxy or tunnel under any Host name.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
frame-ancestors 'none'";

/// The outcome of parsing the bytes received so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Head {
    /// No complete head yet and still under [`MAX_HEAD`]: read more.
    Incomplete,
    /// A complete head of `len` bytes. Bytes after it are not HTTP: for a
    /// WebSocket they are the first frames and belong to the frame decoder.
    Complete { request: Request, len: usize },
    /// Answer with [`HttpError::response`], then close.
    Invalid(HttpError),
}

/// Why a head cannot be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpError {
    /// The head is longer than [`MAX_HEAD`] or has too many headers: 431.
    TooLarge,
    /// Not HTTP/1.x as we accept it: 400, with the reason as the body.
    Malformed(&'static str),
}

impl HttpError {
    pub fn status(self) -> u16 {
        match self {
            HttpError::TooLarge => 431,
            HttpError::Malformed(_) => 400,
        }
    }

    /// The complete answer (status line, headers, body); close after it.
    pub fn response(self) -> Vec<u8> {
        let body = match self {
            HttpError::TooLarge => "request head too large\n".to_string(),
            HttpError::Malformed(why) => format!("bad request: {why}\n"),
        };
        response(self.status(), TEXT, body.as_bytes(), false, &[])
    }
}

/// What the router needs from a request head, copied out of the read buffer
/// so the buffer can be reused or dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path without the query; an absolute-form target
    /// (`http://host/path`, as some proxies send) reduced to its path.
    pub path: String,
    /// The minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// `Connection` lists the `upgrade` token (in any case, among others:
    /// Firefox sends `keep-alive, Upgrade`).
    pub connection_upgrade: bool,
    /// `Upgrade` lists the `websocket` token.
    pub upgrade_websocket: bool,
    pub websocket_version: Option<String>,
    pub websocket_key: Option<String>,
    /// The head announces a body (Transfer-Encoding, or a Content-Length
    /// other than 0). None is ever read: after a WebSocket upgrade it would
    /// be taken for frames. Refused, but only once the method is known to
    /// be allowed, so a POST gets its 405.
    pub has_body: bool,
}

impl Request {
    /// HEAD gets the headers of the GET answer without the body.
    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }

    /// The value for `Sec-WebSocket-Accept` when this is a valid RFC 6455
    /// opening handshake (method and path aside), or why it is not.
    pub fn websocket_accept(&self) -> Result<String, &'static str> {
        if self.version < 1 {
            return Err("WebSocket needs HTTP/1.1");
        }
        if !self.upgrade_websocket {
            return Err("expected Upgrade: websocket");
        }
        if !self.connection_upgrade {
            return Err("expected Connection: upgrade");
        }
        if self.websocket_version.as_deref() != Some("13") {
            return Err("expected Sec-WebSocket-Version: 13");
        }
        let key = self
            .websocket_key
            .as_deref()
            .ok_or("missing Sec-WebSocket-Key")?;
        if !is_websocket_key(key) {
            return Err("Sec-WebSocket-Key is not 16 bytes in base64");
        }
        Ok(derive_accept_key(key.as_bytes()))
    }
}

/// RFC 6455 4.1: the key is 16 random bytes in base64, i.e. 22 base64
/// characters and `==`. Checking the shape rejects garbage without decoding.
fn is_websocket_key(key: &str) -> bool {
    let b = key.as_bytes();
    b.len() == 24
        && b.ends_with(b"==")
        && b[..22]
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/')
}

/// Parses the head at the start of `buf` (everything received so far).
pub fn parse_head(buf: &[u8]) -> Head {
    let window = &buf[..buf.len().min(MAX_HEAD)];
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(window) {
        Ok(httparse::Status::Complete(len)) => len,
        // A partial head that already fills the window can never complete.
        Ok(httparse::Status::Partial) if window.len() >= MAX_HEAD => {
            return Head::Invalid(HttpError::TooLarge);
        }
        Ok(httparse::Status::Partial) => return Head::Incomplete,
        Err(httparse::Error::TooManyHeaders) => return Head::Invalid(HttpError::TooLarge),
        Err(e) => return Head::Invalid(HttpError::Malformed(malformed_reason(e))),
    };
    match request_from(&req) {
        Ok(request) => Head::Complete { request, len },
        Err(why) => Head::Invalid(HttpError::Malformed(why)),
    }
}

fn malformed_reason(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid method",
        httparse::Error::Version => "not HTTP/1.x",
        httparse::Error::TooManyHeaders => "too many headers",
    }
}

fn request_from(req: &httparse::Request) -> Result<Request, &'static str> {
    // httparse fills all three when it reports Complete; be defensive anyway.
    let method = req.method.ok_or("missing method")?;
    let target = req.path.ok_or("missing target")?;
    let version = req.version.ok_or("missing version")?;
    let mut out = Request {
        method: method.to_string(),
        path: path_of(target).ok_or("invalid request target")?.to_string(),
        version,
        connection_upgrade: false,
        upgrade_websocket: false,
        websocket_version: None,
        websocket_key: None,
        has_body: false,
    };
    let mut hosts = 0;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case("connection") {
            out.connection_upgrade |= has_token(h.value, "upgrade");
        } else if name.eq_ignore_ascii_case("upgrade") {
            out.upgrade_websocket |= has_token(h.value, "websocket");
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            // RFC 6455 4.1: each of these appears once; with two, which
            // one the accept key answers would be a guess.
            if out.websocket_version.is_some() {
                return Err("more than one Sec-WebSocket-Version header");
            }
            out.websocket_version = Some(text(h.value)?.trim().to_string());
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            if out.websocket_key.is_some() {
                return Err("more than one Sec-WebSocket-Key header");
            }
            out.websocket_key = Some(text(h.value)?.trim().to_string());
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || (name.eq_ignore_ascii_case("content-length") && text(h.value)?.trim() != "0")
        {
            out.has_body = true;
        }
    }
    // RFC 9112 3.2: an HTTP/1.1 request needs exactly one Host.
    if version >= 1 && hosts != 1 {
        return Err("HTTP/1.1 needs exactly one Host header");
    }
    Ok(out)
}

fn text(value: &[u8]) -> Result<&str, &'static str> {
    std::str::from_utf8(value).map_err(|_| "header value is not UTF-8")
}

/// A comma-separated header value contains `token`, case-insensitively.
fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// `/a/b?q` -> `/a/b`; `http://host:80/a?q` -> `/a`; `http://host` -> `/`;
/// `*` stays `*` (it then matches no route). Anything else is not a target.
fn path_of(target: &str) -> Option<&str> {
    let no_query = target.split(['?', '#']).next().unwrap_or("");
    if no_query.starts_with('/') || no_query == "*" {
        return Some(no_query);
    }
    let lower = no_query.get(..8).unwrap_or(no_query).to_ascii_lowercase();
    let rest = if lower.starts_with("http://") {
        &no_query[7..]
    } else if lower.starts_with("https://") {
        &no_query[8..]
    } else {
        return None;
    };
    Some(rest.find('/').map_or("/", |i| &rest[i..]))
}

/// What to answer, as data; [`Route::response`] builds the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /`: the chat page.
    Page,
    /// `GET /app.js`.
    Script,
    /// `GET /app.css`.
    Style,
    /// `GET /favicon.svg`, so browsers do not log a 404 for every visit.
    Icon,
    /// `GET /healthz`: 200 `ok`, for load balancers.
    Health,
    /// `/metrics` (any method; metrics.rs answers, 405 for all but GET and
    /// HEAD): Prometheus text. The answer needs the server's numbers, so
    /// the reactor builds it ([`crate::metrics::answer`]), not
    /// [`Route::response`].
    Metrics,
    /// `GET /ws` with a valid upgrade: answer 101 and switch the connection
    /// to WebSocket frames.
    WebSocket {
        accept: String,
    },
    /// `/ws` without a valid upgrade: 400 with the reason.
    BadUpgrade(&'static str),
    /// An allowed method with a body: 400 (bodies are never read).
    BodyRefused,
    /// A known path with the wrong method: 405 with `Allow`.
    MethodNotAllowed {
        allow: &'static str,
    },
    NotFound,
}

/// What the connection becomes once the answer is flushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    Close,
    WebSocket,
}

pub fn route(req: &Request) -> Route {
    let get_or_head = req.method == "GET" || req.method == "HEAD";
    let file = match req.path.as_str() {
        "/metrics" => return Route::Metrics,
        "/" | "/index.html" => Route::Page,
        "/app.js" => Route::Script,
        "/app.css" => Route::Style,
        "/favicon.svg" => Route::Icon,
        "/healthz" => Route::Health,
        "/ws" if req.method == "GET" && req.has_body => return Route::BodyRefused,
        "/ws" if req.method == "GET" => match req.websocket_accept() {
            Ok(accept) => Route::WebSocket { accept },
            Err(why) => Route::BadUpgrade(why),
        },
        "/ws" => return Route::MethodNotAllowed { allow: "GET" },
        _ => return Route::NotFound,
    };
    if !get_or_head {
        Route::MethodNotAllowed { allow: "GET, HEAD" }
    } else if req.has_body {
        Route::BodyRefused
    } else {
        file
    }
}

const TEXT: &str = "text/plain; charset=utf-8";

impl Route {
    /// The complete answer; `head_only` (for HEAD) leaves out the body.
    pub fn response(&self, head_only: bool) -> Vec<u8> {
        match self {
            Route::Page => response(
                200,
                "text/html; charset=utf-8",
                INDEX_HTML.as_bytes(),
                head_only,
                &[],
            ),
            Route::Script => response(
                200,
                "text/javascript; charset=utf-8",
                APP_JS.as_bytes(),
                head_only,
                &[],
            ),
            Route::Style => response(
                200,
                "text/css; charset=utf-8",
                APP_CSS.as_bytes(),
                head_only,
                &[],
            ),
            Route::Icon => response(200, "image/svg+xml", FAVICON_SVG.as_bytes(), head_only, &[]),
            Route::Health => response(200, TEXT, b"ok", head_only, &[]),
            // Answered by the reactor with the numbers; never built here.
            Route::Metrics => response(404, TEXT, b"not found\n", head_only, &[]),
            Route::WebSocket { accept } => switching_protocols(accept),
            Route::BadUpgrade(why) => response(
                400,
                TEXT,
                format!("bad WebSocket request: {why}\n").as_bytes(),
                head_only,
                // RFC 6455 4.4: tell the client which version we speak.
                &[("Sec-WebSocket-Version", "13")],
            ),
            Route::MethodNotAllowed { allow } => response(
                405,
                TEXT,
                b"method not allowed\n",
                head_only,
                &[("Allow", allow)],
            ),
            Route::BodyRefused => response(
                400,
                TEXT,
                b"bad request: request bodies are not accepted\n",
                head_only,
                &[],
            ),
            Route::NotFound => response(404, TEXT, b"not found\n", head_only, &[]),
        }
    }

    pub fn after(&self) -> After {
        match self {
            Route::WebSocket { .. } => After::WebSocket,
            _ => After::Close,
        }
    }
}

/// The 101 answer that completes the WebSocket handshake. No subprotocol and
/// no extensions are offered, so frames must have all reserved bits clear.
pub fn switching_protocols(accept: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\n\
         Upgrade: websocket\r\n\
         Connection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\
         \r\n"
    )
    .into_bytes()
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// A complete non-upgrade answer with the headers every answer carries:
/// `Connection: close` (the caller closes after flushing), no caching (the
/// page is tied to the binary that serves it), no MIME sniffing, and the CSP.
/// `extra` headers are written as given; keep them free of CR and LF.
pub fn response(
    status: u16,
    content_type: &str,
    body: &[u8],
    head_only: bool,
    extra: &[(&str, &str)],
) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\n\
         Content-Type: {content_type}\r\n\
         Content-Length: {}\r\n\
         Connection: close\r\n\
         Cache-Control: no-store\r\n\
         X-Content-Type-Options: nosniff\r\n\
         Referrer-Policy: no-referrer\r\n\
         Content-Security-Policy: {CSP}\r\n",
        reason_phrase(status),
        body.len(),
    );
    for (name, value) in extra {
        debug_assert!(!name.contains(['\r', '\n']) && !value.contains(['\r', '\n']));
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &str = "GET /ws HTTP/1.1\r\n\
        Host: chat.example:8080\r\n\
        Connection: keep-alive, Upgrade\r\n\
        Upgrade: websocket\r\n\
        Sec-WebSocket-Version: 13\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

    fn complete(raw: &str) -> (Request, usize) {
        match parse_head(raw.as_bytes()) {
            Head::Complete { request, len } => (request, len),
            other => panic!("expected a complete head, got {other:?}"),
        }
    }

    fn get(path: &str) -> Request {
        complete(&format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")).0
    }

    fn text_of(bytes: &[u8]) -> &str {
        std::str::from_utf8(bytes).expect("answers are ASCII")
    }

    /// Splits an answer into status code, headers (lowercased names) and body.
    fn split(bytes: &[u8]) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let n = match resp.parse(bytes).expect("answer parses") {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => panic!("incomplete answer"),
        };
        let hs = resp
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8(h.value.to_vec()).unwrap(),
                )
            })
            .collect();
        (resp.code.unwrap(), hs, bytes[n..].to_vec())
    }

    fn header<'a>(hs: &'a [(String, String)], name: &str) -> Option<&'a str> {
        hs.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn incomplete_until_the_blank_line() {
        let raw = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        for cut in 0..raw.len() {
            assert_eq!(parse_head(&raw[..cut]), Head::Incomplete, "cut at {cut}");
        }
        assert!(matches!(parse_head(raw), Head::Complete { len, .. } if len == raw.len()));
    }

    #[test]
    fn bytes_after_the_head_are_not_part_of_it() {
        let mut raw = UPGRADE.as_bytes().to_vec();
        raw.extend_from_slice(&[0x81, 0x80, 1, 2, 3, 4]);
        let (_, len) = complete(text_of(&raw[..UPGRADE.len()]));
        assert!(
            matches!(parse_head(&raw), Head::Complete { len: l, .. } if l == len && l == UPGRADE.len())
        );
    }

    #[test]
    fn head_at_the_limit_is_accepted_and_one_byte_more_is_431() {
        let base = "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: \r\n\r\n".len();
        let fits = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(MAX_HEAD - base)
        );
        assert_eq!(fits.len(), MAX_HEAD);
        assert!(matches!(parse_head(fits.as_bytes()), Head::Complete { .. }));

        let over = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(MAX_HEAD - base + 1)
        );
        assert_eq!(
            parse_head(over.as_bytes()),
            Head::Invalid(HttpError::TooLarge)
        );
        // Also when the bytes come in one at a time: the verdict must come
        // once the buffer reaches the limit, so the caller never buffers more.
        assert_eq!(
            parse_head(&over.as_bytes()[..MAX_HEAD]),
            Head::Invalid(HttpError::TooLarge)
        );
        assert_eq!(
            parse_head(&over.as_bytes()[..MAX_HEAD - 1]),
            Head::Incomplete
        );
    }

    #[test]
    fn too_many_headers_is_431() {
        let mut raw = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
        for i in 0..MAX_HEADERS {
            raw.push_str(&format!("X-{i}: y\r\n"));
        }
        raw.push_str("\r\n");
        assert_eq!(
            parse_head(raw.as_bytes()),
            Head::Invalid(HttpError::TooLarge)
        );
        let (code, _, _) = split(&HttpError::TooLarge.response());
        assert_eq!(code, 431);
    }

    #[test]
    fn malformed_heads_are_400() {
        for raw in [
            "GET / HTTP/1.1\r\nHost x\r\n\r\n",             // no colon
            "GET / HTTP/2.0\r\nHost: x\r\n\r\n",            // not 1.x
            "G(T / HTTP/1.1\r\nHost: x\r\n\r\n",            // bad method token
            "GET / HTTP/1.1\r\nHo st: x\r\n\r\n",           // bad header name
            "GET / HTTP/1.1\r\n\r\n",                       // 1.1 without Host
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", // two Hosts
            "GET nowhere HTTP/1.1\r\nHost: x\r\n\r\n",      // not a target
            "\x16\x03\x01\x02\x00\x01\x00\x01\x03\x03",     // a TLS hello
        ] {
            match parse_head(raw.as_bytes()) {
                Head::Invalid(e @ HttpError::Malformed(_)) => {
                    let (code, hs, body) = split(&e.response());
                    assert_eq!(code, 400, "{raw:?}");
                    assert_eq!(header(&hs, "connection"), Some("close"));
                    assert!(text_of(&body).starts_with("bad request: "));
                }
                other => panic!("{raw:?}: expected 400, got {other:?}"),
            }
        }
    }

    #[test]
    fn request_bodies_are_refused_after_the_method_is_decided() {
        let route_of = |raw: &str| route(&complete(raw).0);
        let allow = "GET, HEAD";
        assert_eq!(
            route_of("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"),
            Route::MethodNotAllowed { allow }
        );
        assert_eq!(
            route_of("POST /ws HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Route::MethodNotAllowed { allow: "GET" }
        );
        for raw in [
            "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
            "GET /ws HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert_eq!(route_of(raw), Route::BodyRefused, "{raw:?}");
        }
        let (req, _) = complete("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(route(&req), Route::Page);
    }

    /// Property: a head is judged as it arrives and never changes its
    /// mind — once the bytes so far are complete or invalid, every longer
    /// prefix gets the same answer — and no input panics the parser or the
    /// router. Inputs are random sequences of request pieces (methods,
    /// targets, versions, headers, line ends, a second key, bodies) and
    /// random bytes.
    #[test]
    fn head_parsing_is_decided_as_bytes_arrive_and_never_panics() {
        let pieces: &[&[u8]] = &[
            b"GET",
            b"POST",
            b"HEAD",
            b" ",
            b"/",
            b"/ws",
            b"?q=1",
            b"http://h/x",
            b" HTTP/1.1",
            b" HTTP/1.0",
            b" HTTP/2",
            b"\r\n",
            b"\n",
            b"\r\n\r\n",
            b"Host: x",
            b"host:y",
            b"Upgrade: websocket",
            b"Connection: keep-alive, Upgrade",
            b"Sec-WebSocket-Version: 13",
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            b"\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n\r\n",
            b"Content-Length: 5",
            b"Transfer-Encoding: chunked",
            b":",
            b"\0",
            b"\xff\xfe",
            "é".as_bytes(),
        ];
        let mut rng = fastrand::Rng::with_seed(11);
        for _ in 0..3000 {
            let mut buf = Vec::new();
            // Most inputs start like a request, so the parser gets deep.
            match rng.u8(0..3) {
                0 => buf.extend_from_slice(b"GET /ws HTTP/1.1\r\nHost: x\r\n"),
                1 => buf.extend_from_slice(UPGRADE.trim_end().as_bytes()),
                _ => {}
            }
            for _ in 0..rng.usize(0..24) {
                if rng.u8(0..8) == 0 {
                    buf.push(rng.u8(..));
                } else {
                    buf.extend_from_slice(pieces[rng.usize(..pieces.len())]);
                }
            }
            let full = parse_head(&buf);
            if let Head::Complete { request, len } = &full {
                assert!(*len <= buf.len() && *len <= MAX_HEAD);
                let route = route(request);
                let _ = route.response(request.is_head());
                if let Route::WebSocket { .. } = route {
                    // An upgrade answers exactly one key, and no body
                    // follows it to be mistaken for frames.
                    let head = String::from_utf8_lossy(&buf[..*len]).to_ascii_lowercase();
                    let keys = head
                        .split('\n')
                        .filter(|l| l.starts_with("sec-websocket-key:"));
                    assert_eq!(keys.count(), 1, "{head:?}");
                    assert!(!request.has_body, "{head:?}");
                }
            }
            let mut decided: Option<Head> = None;
            for k in 0..=buf.len() {
                let now = parse_head(&buf[..k]);
                match (&decided, &now) {
                    (None, Head::Incomplete) => {}
                    (None, _) => decided = Some(now),
                    (Some(d), _) => assert_eq!(
                        d,
                        &now,
                        "changed its mind at byte {k} of {:?}",
                        String::from_utf8_lossy(&buf)
                    ),
                }
            }
            assert_eq!(decided.unwrap_or(Head::Incomplete), full);
        }
    }

    #[test]
    fn a_second_websocket_key_or_version_is_refused() {
        for dup in [
            "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n",
            "Sec-WebSocket-Version: 13\r\n",
        ] {
            let raw = UPGRADE.replace("\r\n\r\n", &format!("\r\n{dup}\r\n"));
            assert!(
                matches!(
                    parse_head(raw.as_bytes()),
                    Head::Invalid(HttpError::Malformed(_))
                ),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn http_1_0_needs_no_host() {
        let (req, _) = complete("GET /healthz HTTP/1.0\r\n\r\n");
        assert_eq!(req.version, 0);
        assert_eq!(route(&req), Route::Health);
    }

    #[test]
    fn paths_drop_the_query_and_the_absolute_form() {
        assert_eq!(get("/?x=1").path, "/");
        assert_eq!(get("/ws?token=a#frag").path, "/ws");
        assert_eq!(get("http://chat.example:8080/healthz?x").path, "/healthz");
        assert_eq!(get("HTTPS://chat.example").path, "/");
        assert_eq!(route(&get("http://chat.example/")), Route::Page);
    }

    #[test]
    fn routes() {
        assert_eq!(route(&get("/")), Route::Page);
        assert_eq!(route(&get("/index.html")), Route::Page);
        assert_eq!(route(&get("/app.js")), Route::Script);
        assert_eq!(route(&get("/app.css")), Route::Style);
        assert_eq!(route(&get("/favicon.svg")), Route::Icon);
        assert_eq!(route(&get("/healthz")), Route::Health);
        assert_eq!(route(&get("/nope")), Route::NotFound);
        // Every path is routed here, /metrics too (issue 14; it used to be
        // special-cased in the reactor, and this said NotFound).
        assert_eq!(route(&get("/metrics")), Route::Metrics);
        assert_eq!(route(&get("//")), Route::NotFound);
        assert!(matches!(route(&get("/ws")), Route::BadUpgrade(_)));
    }

    #[test]
    fn other_methods_are_405_with_allow() {
        for (method, path, allow) in [
            ("POST", "/", "GET, HEAD"),
            ("DELETE", "/healthz", "GET, HEAD"),
            ("PUT", "/app.js", "GET, HEAD"),
            ("POST", "/ws", "GET"),
            ("HEAD", "/ws", "GET"),
        ] {
            let (req, _) = complete(&format!("{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n"));
            let r = route(&req);
            assert_eq!(r, Route::MethodNotAllowed { allow }, "{method} {path}");
            let (code, hs, _) = split(&r.response(false));
            assert_eq!(code, 405);
            assert_eq!(header(&hs, "allow"), Some(allow));
            assert_eq!(r.after(), After::Close);
        }
        // Unknown paths are 404 whatever the method.
        let (req, _) = complete("POST /nope HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(route(&req), Route::NotFound);
    }

    #[test]
    fn page_answer_has_security_headers_and_the_page() {
        let r = route(&get("/"));
        let bytes = r.response(false);
        let (code, hs, body) = split(&bytes);
        assert_eq!(code, 200);
        assert_eq!(
            header(&hs, "content-type"),
            Some("text/html; charset=utf-8")
        );
        assert_eq!(
            header(&hs, "content-length"),
            Some(&*body.len().to_string())
        );
        assert_eq!(header(&hs, "connection"), Some("close"));
        assert_eq!(header(&hs, "cache-control"), Some("no-store"));
        assert_eq!(header(&hs, "x-content-type-options"), Some("nosniff"));
        let csp = header(&hs, "content-security-policy").expect("csp");
        assert!(csp.contains("default-src 'none'"));
        assert!(csp.contains("script-src 'self'"));
        assert!(csp.contains("connect-src 'self'"));
        assert!(!csp.contains("unsafe"), "{csp}");
        assert_eq!(body, INDEX_HTML.as_bytes());
        assert_eq!(r.after(), After::Close);
    }

    #[test]
    fn script_style_and_health_answers() {
        for (path, ctype, body) in [
            (
                "/app.js",
                "text/javascript; charset=utf-8",
                APP_JS.as_bytes(),
            ),
            ("/app.css", "text/css; charset=utf-8", APP_CSS.as_bytes()),
            ("/favicon.svg", "image/svg+xml", FAVICON_SVG.as_bytes()),
            ("/healthz", "text/plain; charset=utf-8", b"ok".as_slice()),
        ] {
            let (code, hs, got) = split(&route(&get(path)).response(false));
            assert_eq!(code, 200, "{path}");
            assert_eq!(header(&hs, "content-type"), Some(ctype), "{path}");
            assert_eq!(got, body, "{path}");
        }
    }

    #[test]
    fn head_gets_headers_without_body() {
        let (req, _) = complete("HEAD / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(req.is_head());
        let r = route(&req);
        assert_eq!(r, Route::Page);
        let (code, hs, body) = split(&r.response(req.is_head()));
        assert_eq!(code, 200);
        assert_eq!(
            header(&hs, "content-length"),
            Some(&*INDEX_HTML.len().to_string())
        );
        assert!(body.is_empty());
    }

    #[test]
    fn not_found_is_404() {
        let (code, hs, body) = split(&route(&get("/favicon.ico")).response(false));
        assert_eq!(code, 404);
        assert_eq!(header(&hs, "connection"), Some("close"));
        assert_eq!(body, b"not found\n");
    }

    #[test]
    fn websocket_upgrade_gets_101_with_the_rfc_accept_key() {
        let (req, _) = complete(UPGRADE);
        let r = route(&req);
        // The worked example from RFC 6455 section 1.3.
        assert_eq!(
            r,
            Route::WebSocket {
                accept: "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into()
            }
        );
        assert_eq!(r.after(), After::WebSocket);
        let bytes = r.response(false);
        let (code, hs, body) = split(&bytes);
        assert_eq!(code, 101);
        assert_eq!(header(&hs, "upgrade"), Some("websocket"));
        assert_eq!(header(&hs, "connection"), Some("Upgrade"));
        assert_eq!(
            header(&hs, "sec-websocket-accept"),
            Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        );
        assert!(header(&hs, "content-length").is_none());
        assert!(body.is_empty());
    }

    #[test]
    fn upgrade_headers_are_case_insensitive_and_token_lists() {
        let raw = "GET /ws?x HTTP/1.1\r\nhost: x\r\nconnection: Keep-Alive ,UPGRADE\r\n\
                   upgrade: WebSocket\r\nsec-websocket-version:  13 \r\n\
                   SEC-WEBSOCKET-KEY: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        assert!(matches!(route(&complete(raw).0), Route::WebSocket { .. }));
    }

    #[test]
    fn broken_upgrades_are_400() {
        let cases = [
            (
                "Connection: keep-alive, Upgrade\r\n",
                "Connection: keep-alive\r\n",
            ),
            ("Upgrade: websocket\r\n", "Upgrade: h2c\r\n"),
            (
                "Sec-WebSocket-Version: 13\r\n",
                "Sec-WebSocket-Version: 8\r\n",
            ),
            ("Sec-WebSocket-Version: 13\r\n", ""),
            ("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""),
            (
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
                "Sec-WebSocket-Key: short\r\n",
            ),
            ("HTTP/1.1", "HTTP/1.0"),
        ];
        for (from, to) in cases {
            let raw = UPGRADE.replacen(from, to, 1);
            assert_ne!(raw, UPGRADE);
            let r = route(&complete(&raw).0);
            assert!(matches!(r, Route::BadUpgrade(_)), "{to:?}: {r:?}");
            let (code, hs, body) = split(&r.response(false));
            assert_eq!(code, 400);
            assert_eq!(header(&hs, "sec-websocket-version"), Some("13"));
            assert_eq!(header(&hs, "connection"), Some("close"));
            assert!(text_of(&body).starts_with("bad WebSocket request: "));
            assert_eq!(r.after(), After::Close);
        }
    }

    #[test]
    fn extra_headers_for_later_routes() {
        let bytes = response(
            200,
            "text/plain; version=0.0.4",
            b"x 1\n",
            false,
            &[("X-A", "b")],
        );
        let (code, hs, body) = split(&bytes);
        assert_eq!(code, 200);
        assert_eq!(header(&hs, "x-a"), Some("b"));
        assert_eq!(header(&hs, "content-length"), Some("4"));
        assert!(header(&hs, "content-security-policy").is_some());
        assert_eq!(body, b"x 1\n");
    }

    #[test]
    fn page_references_only_its_own_files() {
        // The CSP blocks anything else, so the page must not need it.
        assert!(INDEX_HTML.contains(r#"src="app.js""#));
        assert!(INDEX_HTML.contains(r#"href="app.css""#));
        assert!(INDEX_HTML.contains(r#"href="favicon.svg""#));
        for bad in ["<script>", "<style", "style=", "http:", "https:", "//"] {
            assert!(!INDEX_HTML.contains(bad), "index.html contains {bad:?}");
        }
        // No inline event handlers (onclick=...): the CSP would block them.
        for (i, _) in INDEX_HTML.match_indices(" on") {
            let attr: String = INDEX_HTML[i + 1..]
                .chars()
                .take_while(|c| c.is_ascii_alphabetic())
                .collect();
            let after = INDEX_HTML[i + 1 + attr.len()..].chars().next();
            assert!(after != Some('='), "inline handler {attr}");
        }
        assert!(
            !APP_JS.contains("innerHTML"),
            "app.js must not use innerHTML"
        );
        assert!(!APP_JS.contains("eval("));
    }
}
