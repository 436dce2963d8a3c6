//! A minimal blocking RESP2 client: enough to PING, read INFO, CLUSTER and SENTINEL answers.
//!
//! Wire format (RESP2, what a server speaks until a client sends `HELLO 3`): a command is
//! an array of bulk strings, `*<n>\r\n` then for each argument `$<len>\r\n<bytes>\r\n`. A
//! reply starts with one type byte and ends its header line with `\r\n`:
//!
//! | byte | type | rest |
//! | --- | --- | --- |
//! | `+` | simple string | the text |
//! | `-` | error | the text (`ERR …`, `LOADING …`) |
//! | `:` | integer | decimal `i64` |
//! | `$` | bulk string | length, then that many bytes and `\r\n`; `$-1` is nil |
//! | `*` | array | count, then that many replies; `*-1` is nil |
//!
//! Every read and write has a timeout, and lengths, element counts and nesting are bounded
//! (the `*_MAX` constants), so a confused peer fails a test instead of hanging it or
//! exhausting memory.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::KitError;

/// How long a connect may take (loopback: only a dead or overloaded server takes long).
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Read and write timeout of every connection.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest header line (type byte, number or simple string) accepted.
pub const LINE_BYTES_MAX: usize = 64 * 1024;
/// The longest bulk string accepted (INFO and CLUSTER NODES are a few KiB).
pub const BULK_BYTES_MAX: usize = 16 * 1024 * 1024;
/// The most elements accepted in one array.
pub const ARRAY_LEN_MAX: usize = 1024 * 1024;
/// The deepest nesting of arrays accepted (SENTINEL and CLUSTER SHARDS use 2 to 3).
pub const DEPTH_MAX: usize = 16;

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    /// `+OK`
    Simple(String),
    /// `-ERR …`, only inside an array: a top-level error reply is [`KitError::Reply`].
    Error(String),
    /// `:42`
    Integer(i64),
    /// `$3\r\nabc`
    Bulk(Vec<u8>),
    /// `$-1` or `*-1`
    Nil,
    /// `*2\r\n…`
    Array(Vec<Resp>),
}

impl Resp {
    /// The text of a simple or (UTF-8) bulk string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Resp::Simple(s) => Some(s),
            Resp::Bulk(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// The value of an integer reply.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Resp::Integer(i) => Some(*i),
            _ => None,
        }
    }

    /// The elements of an array reply.
    pub fn as_array(&self) -> Option<&[Resp]> {
        match self {
            Resp::Array(items) => Some(items),
            _ => None,
        }
    }

    /// The text of a string reply, or a protocol error naming what came instead.
    pub fn into_string(self) -> Result<String, KitError> {
        match self {
            Resp::Simple(s) => Ok(s),
            Resp::Bulk(b) => String::from_utf8(b)
                .map_err(|_| KitError::Protocol("a bulk string is not UTF-8".into())),
            other => Err(KitError::Protocol(format!(
                "expected a string, got {other:?}"
            ))),
        }
    }
}

/// The value of `field` in an `INFO` reply (`field:value` lines), if present.
pub fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key == field).then(|| value.trim_end())
    })
}

/// Encodes a command as a RESP array of bulk strings.
pub fn encode_command<A: AsRef<[u8]>>(args: &[A]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(16 + args.iter().map(|a| a.as_ref().len() + 16).sum::<usize>());
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        let arg = arg.as_ref();
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Reads one reply. Errors inside arrays stay [`Resp::Error`] values; the caller decides
/// what a top-level error means ([`Connection::cmd`] makes it [`KitError::Reply`]).
pub fn read_reply(reader: &mut impl BufRead) -> Result<Resp, KitError> {
    read_value(reader, 0)
}

fn read_value(reader: &mut impl BufRead, depth: usize) -> Result<Resp, KitError> {
    if depth > DEPTH_MAX {
        return Err(KitError::Protocol(format!(
            "arrays nested deeper than {DEPTH_MAX}"
        )));
    }
    let line = read_line(reader)?;
    let (&tag, rest) = line
        .split_first()
        .ok_or_else(|| KitError::Protocol("an empty reply line".into()))?;
    let text = || String::from_utf8_lossy(rest).into_owned();
    match tag {
        b'+' => Ok(Resp::Simple(text())),
        b'-' => Ok(Resp::Error(text())),
        b':' => Ok(Resp::Integer(parse_int(rest)?)),
        b'$' => {
            let Some(len) = parse_len(rest, BULK_BYTES_MAX, "bulk string")? else {
                return Ok(Resp::Nil);
            };
            let mut body = vec![0; len + 2];
            reader
                .read_exact(&mut body)
                .map_err(|e| KitError::io("reading a bulk string", e))?;
            if !body.ends_with(b"\r\n") {
                return Err(KitError::Protocol(
                    "a bulk string does not end with CRLF".into(),
                ));
            }
            body.truncate(len);
            Ok(Resp::Bulk(body))
        }
        b'*' => {
            let Some(len) = parse_len(rest, ARRAY_LEN_MAX, "array")? else {
                return Ok(Resp::Nil);
            };
            let mut items = Vec::with_capacity(len.min(1024));
            for _ in 0..len {
                items.push(read_value(reader, depth + 1)?);
            }
            Ok(Resp::Array(items))
        }
        other => Err(KitError::Protocol(format!(
            "unknown reply type byte {:?}",
            char::from(other)
        ))),
    }
}

/// One header line without its CRLF; at most [`LINE_BYTES_MAX`] bytes.
fn read_line(reader: &mut impl BufRead) -> Result<Vec<u8>, KitError> {
    let mut line = Vec::new();
    let limit = u64::try_from(LINE_BYTES_MAX + 2).unwrap_or(u64::MAX);
    let n = reader
        .by_ref()
        .take(limit)
        .read_until(b'\n', &mut line)
        .map_err(|e| KitError::io("reading a reply", e))?;
    if n == 0 {
        return Err(KitError::io(
            "reading a reply",
            std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
        ));
    }
    if !line.ends_with(b"\r\n") {
        return Err(KitError::Protocol(if line.len() > LINE_BYTES_MAX {
            format!("a reply line longer than {LINE_BYTES_MAX} bytes")
        } else {
            "a reply line cut short (no CRLF)".into()
        }));
    }
    line.truncate(line.len() - 2);
    Ok(line)
}

fn parse_int(digits: &[u8]) -> Result<i64, KitError> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            KitError::Protocol(format!(
                "not an integer: {:?}",
                String::from_utf8_lossy(digits)
            ))
        })
}

/// A bulk or array length: `None` for `-1` (nil), an error beyond `max` or below `-1`.
fn parse_len(digits: &[u8], max: usize, what: &str) -> Result<Option<usize>, KitError> {
    match parse_int(digits)? {
        -1 => Ok(None),
        n => match usize::try_from(n) {
            Ok(len) if len <= max => Ok(Some(len)),
            _ => Err(KitError::Protocol(format!(
                "{what} length {n} outside 0..={max}"
            ))),
        },
    }
}

/// A blocking connection to one server, with read and write timeouts.
#[derive(Debug)]
pub struct Connection {
    addr: SocketAddr,
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Connection {
    /// Connects to `addr` (e.g. "127.0.0.1:40123") within [`CONNECT_TIMEOUT`].
    pub fn connect(addr: &str) -> Result<Connection, KitError> {
        let what = || format!("connecting to {addr}");
        let sock = addr
            .to_socket_addrs()
            .map_err(|e| KitError::io(what(), e))?
            .next()
            .ok_or_else(|| KitError::Invalid(format!("{addr} resolves to no address")))?;
        let stream = TcpStream::connect_timeout(&sock, CONNECT_TIMEOUT)
            .map_err(|e| KitError::io(what(), e))?;
        let setup = |s: &TcpStream| -> std::io::Result<()> {
            s.set_read_timeout(Some(IO_TIMEOUT))?;
            s.set_write_timeout(Some(IO_TIMEOUT))?;
            s.set_nodelay(true)
        };
        setup(&stream).map_err(|e| KitError::io(what(), e))?;
        let writer = stream.try_clone().map_err(|e| KitError::io(what(), e))?;
        Ok(Connection {
            addr: sock,
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends one command and reads its reply; an error reply is [`KitError::Reply`].
    pub fn cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<Resp, KitError> {
        if args.is_empty() {
            return Err(KitError::Invalid("an empty command".into()));
        }
        self.writer
            .write_all(&encode_command(args))
            .map_err(|e| KitError::io(format!("sending a command to {}", self.addr), e))?;
        match read_reply(&mut self.reader)? {
            Resp::Error(e) => Err(KitError::Reply(e)),
            reply => Ok(reply),
        }
    }

    /// A command whose reply is a string (`INFO`, `CLUSTER NODES`, `PING`).
    pub fn cmd_string<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<String, KitError> {
        self.cmd(args)?.into_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Result<Resp, KitError> {
        read_reply(&mut &bytes[..])
    }

    #[test]
    fn encodes_a_command_as_an_array_of_bulk_strings() {
        assert_eq!(
            encode_command(&["GET", "k"]),
            b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n".to_vec()
        );
        assert_eq!(
            encode_command(&["SET", ""]),
            b"*2\r\n$3\r\nSET\r\n$0\r\n\r\n".to_vec()
        );
    }

    #[test]
    fn parses_every_reply_type() -> Result<(), KitError> {
        assert_eq!(parse(b"+PONG\r\n")?, Resp::Simple("PONG".into()));
        assert_eq!(parse(b"-ERR no\r\n")?, Resp::Error("ERR no".into()));
        assert_eq!(parse(b":-12\r\n")?, Resp::Integer(-12));
        assert_eq!(
            parse(b"$5\r\na\r\nbc\r\n")?,
            Resp::Bulk(b"a\r\nbc".to_vec())
        );
        assert_eq!(parse(b"$0\r\n\r\n")?, Resp::Bulk(Vec::new()));
        assert_eq!(parse(b"$-1\r\n")?, Resp::Nil);
        assert_eq!(parse(b"*-1\r\n")?, Resp::Nil);
        assert_eq!(
            parse(b"*2\r\n$9\r\n127.0.0.1\r\n*1\r\n:7\r\n")?,
            Resp::Array(vec![
                Resp::Bulk(b"127.0.0.1".to_vec()),
                Resp::Array(vec![Resp::Integer(7)])
            ])
        );
        Ok(())
    }

    #[test]
    fn reads_replies_one_after_another() -> Result<(), KitError> {
        let mut input: &[u8] = b"+OK\r\n:1\r\n";
        assert_eq!(read_reply(&mut input)?, Resp::Simple("OK".into()));
        assert_eq!(read_reply(&mut input)?, Resp::Integer(1));
        assert!(matches!(read_reply(&mut input), Err(KitError::Io { .. })));
        Ok(())
    }

    #[test]
    fn refuses_malformed_or_oversized_input() {
        for bad in [
            &b"+OK"[..],         // no CRLF
            b"+OK\n",            // LF only
            b"?x\r\n",           // unknown type
            b":1x\r\n",          // not a number
            b"$3\r\nab\r\n",     // short body (EOF)
            b"$2\r\nabcd",       // body without CRLF
            b"$-2\r\n",          // negative length
            b"$99999999999\r\n", // beyond BULK_BYTES_MAX
            b"*99999999999\r\n", // beyond ARRAY_LEN_MAX
            b"*2\r\n:1\r\n",     // array cut short
            b"\r\n",             // empty line
        ] {
            assert!(
                parse(bad).is_err(),
                "{:?} was accepted",
                String::from_utf8_lossy(bad)
            );
        }
        let deep = "*1\r\n".repeat(DEPTH_MAX + 2) + ":1\r\n";
        assert!(
            parse(deep.as_bytes()).is_err(),
            "nesting beyond DEPTH_MAX was accepted"
        );
        let long = format!("+{}\r\n", "x".repeat(LINE_BYTES_MAX + 1));
        assert!(
            parse(long.as_bytes()).is_err(),
            "an over-long line was accepted"
        );
    }

    #[test]
    fn finds_info_fields() {
        let info = "# Persistence\r\naof_enabled:1\r\nrole:master\r\nmaster_host:127.0.0.1\r\n";
        assert_eq!(info_field(info, "aof_enabled"), Some("1"));
        assert_eq!(info_field(info, "master_host"), Some("127.0.0.1"));
        assert_eq!(info_field(info, "aof"), None);
    }
}
