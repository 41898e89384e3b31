//! Incremental Server-Sent Events parser (WHATWG `text/event-stream`) and
//! writer helpers.
//!
//! Lines end with `\n`, `\r\n` or `\r` (a `\r\n` split across chunks is
//! handled); `data:` lines (with or without one leading space) are joined
//! with `\n`; `event:` sets the event name; lines starting with `:` are
//! comments; an event is dispatched at a blank line if it has data.

use bytes::{BufMut, BytesMut};
use serde::Serialize;

use super::FormatError;

/// Longest line we buffer before declaring the stream malformed.
const MAX_LINE: usize = 32 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SseEvent {
    /// `event:` field (None = default "message").
    pub event: Option<String>,
    pub data: String,
}

#[derive(Default)]
pub(super) struct SseParser {
    /// Bytes of the current incomplete line.
    line: Vec<u8>,
    /// The previous chunk ended in `\r`: skip a leading `\n`.
    skip_lf: bool,
    /// At the first line (strip a UTF-8 BOM).
    started: bool,
    event: Option<String>,
    data: String,
    has_data: bool,
}

impl SseParser {
    /// Parse `chunk`, appending completed events to `out`.
    pub fn feed(&mut self, mut chunk: &[u8], out: &mut Vec<SseEvent>) -> Result<(), FormatError> {
        if self.skip_lf {
            self.skip_lf = false;
            if let Some(rest) = chunk.strip_prefix(b"\n") {
                chunk = rest;
            }
        }
        while !chunk.is_empty() {
            let Some(pos) = chunk.iter().position(|&b| b == b'\n' || b == b'\r') else {
                if self.line.len() + chunk.len() > MAX_LINE {
                    return Err(FormatError::general("upstream SSE line too long"));
                }
                self.line.extend_from_slice(chunk);
                break;
            };
            let term = chunk[pos];
            let mut next = pos + 1;
            if term == b'\r' {
                match chunk.get(next) {
                    Some(b'\n') => next += 1,
                    Some(_) => {}
                    None => self.skip_lf = true,
                }
            }
            if self.line.is_empty() {
                self.process_line(&chunk[..pos], out)?;
            } else {
                self.line.extend_from_slice(&chunk[..pos]);
                let line = std::mem::take(&mut self.line);
                let res = self.process_line(&line, out);
                self.line = line;
                self.line.clear();
                res?;
            }
            chunk = &chunk[next..];
        }
        Ok(())
    }

    fn process_line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) -> Result<(), FormatError> {
        let mut line = line;
        if !self.started {
            self.started = true;
            if let Some(rest) = line.strip_prefix("\u{feff}".as_bytes()) {
                line = rest;
            }
        }
        if line.is_empty() {
            if self.has_data {
                out.push(SseEvent {
                    event: self.event.take(),
                    data: std::mem::take(&mut self.data),
                });
                self.has_data = false;
            } else {
                self.event = None;
                self.data.clear();
            }
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(());
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                let value = std::str::from_utf8(value)
                    .map_err(|_| FormatError::general("upstream SSE data is not valid UTF-8"))?;
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            b"event" => {
                let value = std::str::from_utf8(value)
                    .map_err(|_| FormatError::general("upstream SSE event is not valid UTF-8"))?;
                self.event = Some(value.to_owned());
            }
            // id, retry and unknown fields carry nothing we need.
            _ => {}
        }
        Ok(())
    }
}

/// Append `event: {name}\ndata: {json}\n\n` (no `event:` line if `name` is None).
pub(super) fn write_event<T: Serialize + ?Sized>(out: &mut BytesMut, name: Option<&str>, data: &T) {
    if let Some(name) = name {
        out.put_slice(b"event: ");
        out.put_slice(name.as_bytes());
        out.put_slice(b"\n");
    }
    out.put_slice(b"data: ");
    // Writing into a BytesMut cannot fail, and our event types serialize
    // infallibly (string keys only).
    let _ = serde_json::to_writer(out.writer(), data);
    out.put_slice(b"\n\n");
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn parse_all(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, &mut out).unwrap();
        }
        out
    }

    fn ev(event: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            event: event.map(str::to_owned),
            data: data.to_owned(),
        }
    }

    #[test]
    fn data_with_and_without_space_and_multiline() {
        let input = b"data:a\ndata: b\n\nevent: x\ndata:  two spaces\n\n";
        assert_eq!(
            parse_all(&[input]),
            vec![ev(None, "a\nb"), ev(Some("x"), " two spaces")]
        );
    }

    #[test]
    fn comments_ids_and_empty_events_ignored() {
        let input = b": keepalive\n\nid: 7\nretry: 100\n\nevent: ping\n\ndata: x\n\n";
        // An event with no data is not dispatched and its name is reset.
        assert_eq!(parse_all(&[input]), vec![ev(None, "x")]);
    }

    #[test]
    fn crlf_cr_and_lf_line_endings() {
        let input = b"event: a\r\ndata: 1\r\n\r\ndata: 2\r\rdata: 3\n\n";
        assert_eq!(
            parse_all(&[input]),
            vec![ev(Some("a"), "1"), ev(None, "2"), ev(None, "3")]
        );
    }

    #[test]
    fn every_split_point_gives_same_events() {
        let input =
            "\u{feff}event: a\r\ndata: h\u{e9}llo \u{1f600}\r\n\r\n: c\r\ndata:x\ndata:y\r\n\r\n"
                .as_bytes();
        let whole = parse_all(&[input]);
        assert_eq!(
            whole,
            vec![ev(Some("a"), "h\u{e9}llo \u{1f600}"), ev(None, "x\ny")]
        );
        for i in 0..=input.len() {
            assert_eq!(
                parse_all(&[&input[..i], &input[i..]]),
                whole,
                "split at {i}"
            );
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(parse_all(&bytes), whole);
    }

    #[test]
    fn incomplete_event_not_dispatched() {
        assert!(parse_all(&[b"data: [DONE]\n"]).is_empty());
        assert!(parse_all(&[b"data: [DONE]"]).is_empty());
    }

    #[test]
    fn invalid_utf8_is_error() {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        assert!(p.feed(b"data: \xff\xfe\n\n", &mut out).is_err());
    }

    #[test]
    fn write_event_format() {
        let mut out = BytesMut::new();
        write_event(&mut out, Some("ping"), &serde_json::json!({"type": "ping"}));
        write_event(&mut out, None, "x");
        assert_eq!(
            &out[..],
            b"event: ping\ndata: {\"type\":\"ping\"}\n\ndata: \"x\"\n\n"
        );
    }
}
