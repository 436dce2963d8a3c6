//! HTTP/1.1 on the wire for [`crate::Conn`]: a request's bytes, and an answer's head and
//! body framing read from a buffer (heads parsed by `httparse`).
//!
//! The connection owns its socket and runs in its caller's task: no driver task, no channel
//! between the two, no `hyper` client state. What it supports is what a keep-alive client of
//! an HTTP/1.1 server needs: `Content-Length` and `chunked` bodies, a body read to the end
//! of the connection when neither is given, `Connection: close`, interim `1xx` answers
//! skipped, and answers without a body (`HEAD`, `204`, `304`).

use std::io::Write;

use bytes::{Buf, Bytes, BytesMut};
use hyper::header::{CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{HeaderMap, Method, Request, StatusCode};

use crate::{LoadError, RESPONSE_BYTES_MAX};

/// Largest answer head read; a longer one is an error.
pub const HEAD_BYTES_MAX: usize = 64 * 1024;
/// Most headers an answer may carry.
pub const HEADERS_MAX: usize = 64;

/// Appends `req`'s head and `body` to `out`: the request line (origin form), the caller's
/// headers, `Host` when the caller gave none, and `Content-Length` when there is a body or
/// the method usually carries one. A caller's own `Content-Length` or `Transfer-Encoding`
/// is refused: the length is always the body's.
pub fn encode_request<B>(
    req: &Request<B>,
    body: &[u8],
    host: &str,
    out: &mut Vec<u8>,
) -> Result<(), LoadError> {
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
            return Err(LoadError::Http(format!(
                "the request sets {name}: the driver frames the body itself"
            )));
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !req.headers().contains_key(HOST) {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(host.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let bodiless = matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS | Method::TRACE
    );
    if !body.is_empty() || !bodiless {
        // (Written in place: no string allocated per request. A Vec's writes never fail.)
        let _ = write!(out, "content-length: {}\r\n", body.len());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    Ok(())
}

/// How an answer's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (`HEAD`, `1xx`, `204`, `304`).
    Empty,
    /// Exactly this many bytes.
    Length(usize),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Everything until the server closes the connection.
    UntilClose,
}

/// An answer's head.
#[derive(Debug)]
pub struct Head {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// How the body is delimited.
    pub framing: Framing,
    /// Whether the connection may carry another request after this answer.
    pub keep_alive: bool,
}

/// Parses an answer's head from the start of `buf`: `Ok(None)` when it is not all there
/// yet, else the head and its length in bytes. `head_request`: the request was a `HEAD`.
pub fn parse_head(buf: &[u8], head_request: bool) -> Result<Option<(Head, usize)>, LoadError> {
    let mut slots = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut parsed = httparse::Response::new(&mut slots);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > HEAD_BYTES_MAX => {
            return Err(LoadError::Http(format!(
                "an answer head longer than {HEAD_BYTES_MAX} bytes"
            )));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(LoadError::Http(format!("a malformed answer head: {e}"))),
    };
    let code = parsed.code.unwrap_or(0);
    let status = StatusCode::from_u16(code)
        .map_err(|_| LoadError::Http(format!("an answer with status {code}")))?;
    let mut headers = HeaderMap::with_capacity(parsed.headers.len());
    let mut length: Option<usize> = None;
    let mut chunked = false;
    let mut close = parsed.version != Some(1);
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| LoadError::Http(format!("a malformed header name {:?}", h.name)))?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| LoadError::Http(format!("a malformed value of {name}")))?;
        if name == CONTENT_LENGTH {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or_else(|| LoadError::Http("a malformed content-length".into()))?;
            if length.is_some_and(|m| m != n) {
                return Err(LoadError::Http("two different content-lengths".into()));
            }
            length = Some(n);
        } else if name == TRANSFER_ENCODING {
            // Chunked must be the last coding; anything else this driver cannot undo.
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or_default();
            if !last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(LoadError::Http(format!(
                    "an answer in transfer-encoding {:?}",
                    String::from_utf8_lossy(h.value)
                )));
            }
            chunked = true;
        } else if name == CONNECTION {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && parsed.version == Some(0) {
                    close = false;
                }
            }
        }
        headers.append(name, value);
    }
    let framing = if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        if n > RESPONSE_BYTES_MAX {
            return Err(LoadError::Http(format!(
                "an answer body of {n} bytes, over {RESPONSE_BYTES_MAX}"
            )));
        }
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    let keep_alive = !close && framing != Framing::UntilClose;
    Ok(Some((
        Head {
            status,
            headers,
            framing,
            keep_alive,
        },
        len,
    )))
}

/// Takes a whole `chunked` body (and its trailers) off the front of `buf`: `Ok(None)` when it
/// is not all there yet (nothing is taken), else the body's bytes.
pub fn take_chunked(buf: &mut BytesMut) -> Result<Option<Bytes>, LoadError> {
    let mut body = BytesMut::new();
    let mut at = 0;
    loop {
        let Some(line_end) = find_crlf(&buf[at..]) else {
            return too_long_or_wait(buf.len() - at);
        };
        let line = &buf[at..at + line_end];
        // Chunk extensions (`;name=value`) are allowed and ignored.
        let size_text = line.split(|&b| b == b';').next().unwrap_or_default();
        let size = std::str::from_utf8(size_text)
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
            .ok_or_else(|| LoadError::Http("a malformed chunk size".into()))?;
        at += line_end + 2;
        if size == 0 {
            // Trailers, then an empty line.
            loop {
                let Some(end) = find_crlf(&buf[at..]) else {
                    return too_long_or_wait(buf.len() - at);
                };
                at += end + 2;
                if end == 0 {
                    buf.advance(at);
                    return Ok(Some(body.freeze()));
                }
            }
        }
        if body.len() + size > RESPONSE_BYTES_MAX {
            return Err(LoadError::Http(format!(
                "a chunked answer body over {RESPONSE_BYTES_MAX} bytes"
            )));
        }
        if buf.len() < at + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&buf[at..at + size]);
        if &buf[at + size..at + size + 2] != b"\r\n" {
            return Err(LoadError::Http("a chunk not followed by CRLF".into()));
        }
        at += size + 2;
    }
}

/// A line still without its end: wait for more, unless it is already too long to be one.
fn too_long_or_wait(pending: usize) -> Result<Option<Bytes>, LoadError> {
    if pending > HEAD_BYTES_MAX {
        Err(LoadError::Http("a chunk line that does not end".into()))
    } else {
        Ok(None)
    }
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<Option<(Head, usize)>, LoadError> {
        parse_head(text.as_bytes(), false)
    }

    #[test]
    fn a_request_is_framed_by_its_body() {
        let req = Request::builder()
            .method("POST")
            .uri("/api/purchase?x=1")
            .header("cookie", "s=1")
            .body(())
            .expect("a request");
        let mut out = Vec::new();
        encode_request(&req, b"{}", "127.0.0.1:1", &mut out).expect("encoded");
        assert_eq!(
            String::from_utf8(out).expect("ascii"),
            "POST /api/purchase?x=1 HTTP/1.1\r\ncookie: s=1\r\nhost: 127.0.0.1:1\r\n\
             content-length: 2\r\n\r\n{}"
        );
        // A GET without a body says nothing of a length; an empty POST says 0.
        let get = Request::get("/healthz").body(()).expect("a request");
        let mut out = Vec::new();
        encode_request(&get, b"", "h", &mut out).expect("encoded");
        assert_eq!(out, b"GET /healthz HTTP/1.1\r\nhost: h\r\n\r\n");
        let post = Request::post("/p").body(()).expect("a request");
        let mut out = Vec::new();
        encode_request(&post, b"", "h", &mut out).expect("encoded");
        assert!(out.ends_with(b"content-length: 0\r\n\r\n"));
        // The caller's own framing is refused.
        let framed = Request::post("/p")
            .header("content-length", "5")
            .body(())
            .expect("a request");
        assert!(encode_request(&framed, b"", "h", &mut Vec::new()).is_err());
    }

    #[test]
    fn heads_give_status_headers_and_framing() {
        let text = "HTTP/1.1 202 Accepted\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello";
        let (h, len) = head(text).expect("valid").expect("complete");
        assert_eq!(
            (h.status.as_u16(), len, h.framing),
            (202, text.len() - 5, Framing::Length(5))
        );
        assert!(h.keep_alive);
        assert_eq!(h.headers.get("x-a").map(|v| v.as_bytes()), Some(&b"b"[..]));
        let (h, _) =
            head("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n")
                .expect("valid")
                .expect("complete");
        assert_eq!(h.framing, Framing::Chunked);
        assert!(!h.keep_alive);
        let (h, _) = head("HTTP/1.1 200 OK\r\n\r\n")
            .expect("valid")
            .expect("complete");
        assert_eq!(h.framing, Framing::UntilClose);
        assert!(!h.keep_alive, "a body to the end ends the connection");
        let (h, _) = head("HTTP/1.1 204 No Content\r\n\r\n")
            .expect("valid")
            .expect("complete");
        assert_eq!(h.framing, Framing::Empty);
        let (h, _) = parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n", true)
            .expect("valid")
            .expect("complete");
        assert_eq!(h.framing, Framing::Empty, "an answer to HEAD has no body");
        let (h, _) = head("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n")
            .expect("valid")
            .expect("complete");
        assert!(!h.keep_alive, "HTTP/1.0 closes unless it says keep-alive");
        assert!(
            head("HTTP/1.1 200 OK\r\ncontent-le")
                .expect("valid")
                .is_none()
        );
    }

    #[test]
    fn malformed_or_oversized_heads_are_errors_not_panics() {
        for bad in [
            "HTTP/1.1 abc OK\r\n\r\n",
            "garbage\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 99999999999\r\n\r\n",
        ] {
            assert!(head(bad).is_err(), "{bad:?}");
        }
        let long = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(HEAD_BYTES_MAX));
        assert!(head(&long).is_err(), "a head that never ends");
        let many: String = (0..=HEADERS_MAX).map(|i| format!("x{i}: 1\r\n")).collect();
        assert!(head(&format!("HTTP/1.1 200 OK\r\n{many}\r\n")).is_err());
    }

    #[test]
    fn chunked_bodies_are_joined_and_wait_for_their_end() {
        let whole = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        for cut in 0..whole.len() - 4 {
            let mut partial = BytesMut::from(&whole[..cut]);
            assert_eq!(
                take_chunked(&mut partial).expect("valid so far"),
                None,
                "{cut}"
            );
            assert_eq!(partial.len(), cut, "nothing taken while incomplete");
        }
        let mut buf = BytesMut::from(&whole[..]);
        let body = take_chunked(&mut buf).expect("valid").expect("complete");
        assert_eq!(&body[..], b"hello world");
        assert_eq!(&buf[..], b"NEXT", "what follows the body stays");
        for bad in [&b"zz\r\n"[..], b"5\r\nhelloXX0\r\n\r\n"] {
            assert!(take_chunked(&mut BytesMut::from(bad)).is_err(), "{bad:?}");
        }
        let huge = format!("{:x}\r\n", RESPONSE_BYTES_MAX + 1);
        assert!(take_chunked(&mut BytesMut::from(huge.as_bytes())).is_err());
    }
}
