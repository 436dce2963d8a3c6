//! Turning script replies into the queue's types, and the stream fields of a message.
//!
//! A message is stored as stream fields: `b` payload, `h` headers (the blob below), `i`
//! producer id (32 hex digits), `d` due time (decimal ms), `tg` the group a replay is for.
//! A dead letter adds `g` group, `o` original seq, `a` attempts, `r` reason, `t` time.

use bytes::Bytes;
use redis::Value;

use crate::error::{Error, Result};

pub(crate) fn bad(what: &str) -> Error {
    Error::Protocol(format!("unexpected reply from Redis: {what}"))
}

pub(crate) fn array(v: Value) -> Result<Vec<Value>> {
    match v {
        Value::Array(a) | Value::Set(a) => Ok(a),
        Value::Nil => Ok(Vec::new()),
        other => Err(bad(&format!("{other:?} where an array was expected"))),
    }
}

pub(crate) fn bytes(v: Value) -> Result<Vec<u8>> {
    match v {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        Value::Int(i) => Ok(i.to_string().into_bytes()),
        Value::Okay => Ok(b"OK".to_vec()),
        other => Err(bad(&format!("{other:?} where a string was expected"))),
    }
}

pub(crate) fn int(v: &Value) -> Result<i64> {
    match v {
        Value::Int(i) => Ok(*i),
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("a number that does not parse")),
        Value::SimpleString(s) => s.parse().map_err(|_| bad("a number that does not parse")),
        other => Err(bad(&format!("{other:?} where a number was expected"))),
    }
}

pub(crate) fn uint(v: &Value) -> Result<u64> {
    let i = int(v)?;
    u64::try_from(i).map_err(|_| bad(&format!("negative number {i}")))
}

/// Encodes headers: per header a u16 name length, the name, a u32 value length, the value
/// (little-endian). Empty for no headers.
pub(crate) fn encode_headers(headers: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in headers {
        out.extend_from_slice(&(k.len() as u16).to_le_bytes());
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        out.extend_from_slice(v);
    }
    out
}

/// Decodes [`encode_headers`]; a malformed blob is an error, never a panic.
pub(crate) fn decode_headers(mut b: &[u8]) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    let take = |b: &mut &[u8], n: usize| -> Result<Vec<u8>> {
        if b.len() < n {
            return Err(bad("truncated headers"));
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Ok(head.to_vec())
    };
    while !b.is_empty() {
        let n = take(&mut b, 2)?;
        let name = take(&mut b, usize::from(u16::from_le_bytes([n[0], n[1]])))?;
        let n = take(&mut b, 4)?;
        let value = take(
            &mut b,
            u32::from_le_bytes([n[0], n[1], n[2], n[3]]) as usize,
        )?;
        let name = String::from_utf8(name).map_err(|_| bad("header name not UTF-8"))?;
        out.push((name, value));
    }
    Ok(out)
}

/// A message's stored fields.
#[derive(Debug, Default)]
pub(crate) struct Fields {
    pub(crate) payload: Bytes,
    pub(crate) headers: Vec<(String, Vec<u8>)>,
    pub(crate) id: Option<u128>,
    pub(crate) due_ms: Option<u64>,
    pub(crate) group: Option<String>,
    pub(crate) original_seq: u64,
    pub(crate) attempts: u32,
    pub(crate) reason: String,
    pub(crate) at_ms: u64,
}

fn text(b: Vec<u8>) -> Result<String> {
    String::from_utf8(b).map_err(|_| bad("field not UTF-8"))
}

fn number(b: Vec<u8>) -> Result<u64> {
    text(b)?
        .parse()
        .map_err(|_| bad("numeric field does not parse"))
}

/// Reads alternating field names and values.
pub(crate) fn fields(flat: Vec<Value>) -> Result<Fields> {
    let mut f = Fields::default();
    let mut it = flat.into_iter();
    while let (Some(name), Some(value)) = (it.next(), it.next()) {
        let value = bytes(value)?;
        match bytes(name)?.as_slice() {
            b"b" => f.payload = Bytes::from(value),
            b"h" => f.headers = decode_headers(&value)?,
            b"i" => {
                f.id =
                    Some(u128::from_str_radix(&text(value)?, 16).map_err(|_| bad("producer id"))?);
            }
            b"d" => f.due_ms = Some(number(value)?),
            b"g" => f.group = Some(text(value)?),
            b"o" => f.original_seq = number(value)?,
            b"a" => f.attempts = u32::try_from(number(value)?).unwrap_or(u32::MAX),
            b"r" => f.reason = text(value)?,
            b"t" => f.at_ms = number(value)?,
            _ => {}
        }
    }
    Ok(f)
}

/// Reads an XRANGE reply: `(seq, fields)` per entry.
pub(crate) fn entries(v: Value) -> Result<Vec<(u64, Fields)>> {
    let mut out = Vec::new();
    for e in array(v)? {
        let mut e = array(e)?.into_iter();
        let (Some(id), Some(flat)) = (e.next(), e.next()) else {
            return Err(bad("stream entry without id and fields"));
        };
        let id = text(bytes(id)?)?;
        let seq = id
            .split('-')
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("stream id"))?;
        out.push((seq, fields(array(flat)?)?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_garbage_is_an_error() {
        let h = vec![("a".to_string(), b"1".to_vec()), ("bb".into(), vec![])];
        assert_eq!(decode_headers(&encode_headers(&h)).expect("decode"), h);
        assert!(decode_headers(&[]).expect("empty").is_empty());
        let blob = encode_headers(&h);
        // Every cut inside the first header (2 + 1 + 4 + 1 bytes) leaves it incomplete.
        for cut in 1..8 {
            assert!(decode_headers(&blob[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode_headers(&[1, 0, 0xff, 0, 0, 0, 0]).is_err());
    }
}
