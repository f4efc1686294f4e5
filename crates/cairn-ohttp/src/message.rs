//! HTTP requests and responses as Binary HTTP (RFC 9292), through Mozilla's `bhttp`.
//!
//! Requests go known-length; a streamed answer goes indeterminate-length, written here piece
//! by piece ([`StreamedResponse`]) so each piece can leave as its own chunk.

use crate::{OhttpError, put_varint};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use std::io::Cursor;

fn bad(e: impl std::fmt::Display) -> OhttpError {
    OhttpError::Bhttp(e.to_string())
}

/// A request as a known-length Binary HTTP message (scheme `https`, the URI's authority).
pub fn encode_request(req: &Request<Bytes>) -> Vec<u8> {
    let uri = req.uri();
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = uri.authority().map_or("", |a| a.as_str());
    let mut m = bhttp::Message::request(
        req.method().as_str().as_bytes().to_vec(),
        b"https".to_vec(),
        authority.as_bytes().to_vec(),
        path.as_bytes().to_vec(),
    );
    for (name, value) in req.headers() {
        m.put_header(name.as_str(), value.as_bytes());
    }
    m.write_content(req.body());
    let mut out = Vec::new();
    m.write_bhttp(bhttp::Mode::KnownLength, &mut out)
        .expect("writes to memory");
    out
}

/// Reads a Binary HTTP request (either framing). Its URI is its path (with the query): a
/// gateway serves its own routes whatever authority the client named.
pub fn decode_request(b: &[u8]) -> Result<Request<Bytes>, OhttpError> {
    let m = bhttp::Message::read_bhttp::<_, Cursor<&[u8]>>(&mut Cursor::new(b)).map_err(bad)?;
    let c = m.control();
    let (Some(method), Some(path)) = (c.method(), c.path()) else {
        return Err(bad("the message is a response, not a request"));
    };
    let mut req = Request::builder()
        .method(http::Method::from_bytes(method).map_err(bad)?)
        .uri(http::Uri::try_from(path).map_err(bad)?);
    for f in m.header().iter() {
        req = req.header(
            HeaderName::from_bytes(f.name()).map_err(bad)?,
            HeaderValue::from_bytes(f.value()).map_err(bad)?,
        );
    }
    req.body(Bytes::copy_from_slice(m.content())).map_err(bad)
}

/// A response as a known-length Binary HTTP message.
pub fn encode_response(status: StatusCode, headers: &http::HeaderMap, body: &[u8]) -> Vec<u8> {
    let mut m = bhttp::Message::response(
        bhttp::StatusCode::try_from(status.as_u16()).expect("a final status"),
    );
    for (name, value) in headers {
        m.put_header(name.as_str(), value.as_bytes());
    }
    m.write_content(body);
    let mut out = Vec::new();
    m.write_bhttp(bhttp::Mode::KnownLength, &mut out)
        .expect("writes to memory");
    out
}

/// Reads a whole Binary HTTP response (either framing).
pub fn decode_response(b: &[u8]) -> Result<Response<Bytes>, OhttpError> {
    let m = bhttp::Message::read_bhttp::<_, Cursor<&[u8]>>(&mut Cursor::new(b)).map_err(bad)?;
    let status = m
        .control()
        .status()
        .ok_or_else(|| bad("the message is a request, not a response"))?;
    let mut resp = Response::builder().status(status.code());
    for f in m.header().iter() {
        resp = resp.header(
            HeaderName::from_bytes(f.name()).map_err(bad)?,
            HeaderValue::from_bytes(f.value()).map_err(bad)?,
        );
    }
    resp.body(Bytes::copy_from_slice(m.content())).map_err(bad)
}

/// An indeterminate-length Binary HTTP response written as it is produced: the head, then
/// each piece of content, then the end (no trailers).
pub struct StreamedResponse;

impl StreamedResponse {
    /// Framing indicator 3, the status and the header section.
    pub fn head(status: StatusCode, headers: &http::HeaderMap) -> Vec<u8> {
        let mut out = Vec::new();
        put_varint(3, &mut out);
        put_varint(usize::from(status.as_u16()), &mut out);
        for (name, value) in headers {
            put_varint(name.as_str().len(), &mut out);
            out.extend_from_slice(name.as_str().as_bytes());
            put_varint(value.len(), &mut out);
            out.extend_from_slice(value.as_bytes());
        }
        put_varint(0, &mut out);
        out
    }

    /// One piece of content (empty pieces are skipped: a zero length ends the content).
    pub fn content(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        if !data.is_empty() {
            put_varint(data.len(), &mut out);
            out.extend_from_slice(data);
        }
        out
    }

    /// The end of the content and an empty trailer section.
    pub fn end() -> Vec<u8> {
        vec![0, 0]
    }
}

/// What a [`StreamedReader`] has read so far.
#[derive(Debug)]
pub enum Streamed {
    /// The final status and header section.
    Head(StatusCode, http::HeaderMap),
    /// A piece of content.
    Data(Bytes),
    /// The content and the trailer section ended: the answer is whole.
    End,
}

/// Reads an indeterminate-length Binary HTTP response as it arrives (the inverse of
/// [`StreamedResponse`]); informational (1xx) responses are skipped, trailers ignored.
#[derive(Default)]
pub struct StreamedReader {
    buf: Vec<u8>,
    state: ReadState,
    informational: u8,
}

#[derive(Default, PartialEq)]
enum ReadState {
    #[default]
    Framing,
    Status,
    Fields {
        status: u16,
        headers: http::HeaderMap,
    },
    Content,
    Trailers,
    Done,
}

/// The longest field name or value taken: headers are small.
const MAX_FIELD: u64 = 64 << 10;

impl StreamedReader {
    /// Takes the next plaintext bytes; gives back what they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Streamed>, OhttpError> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            let rest = &self.buf[at..];
            match &mut self.state {
                ReadState::Done => {
                    if !rest.is_empty() {
                        return Err(bad("bytes after the end of the response"));
                    }
                    break;
                }
                ReadState::Framing => {
                    let Some((v, n)) = crate::get_varint(rest) else {
                        break;
                    };
                    if v != 3 {
                        return Err(bad(
                            "a streamed answer must be an indeterminate-length response (framing 3)",
                        ));
                    }
                    at += n;
                    self.state = ReadState::Status;
                }
                ReadState::Status => {
                    let Some((v, n)) = crate::get_varint(rest) else {
                        break;
                    };
                    if !(100..=599).contains(&v) {
                        return Err(bad(format!("status {v}")));
                    }
                    at += n;
                    self.state = ReadState::Fields {
                        status: v as u16,
                        headers: http::HeaderMap::new(),
                    };
                }
                ReadState::Fields { status, headers } => {
                    let Some((name_len, n)) = crate::get_varint(rest) else {
                        break;
                    };
                    if name_len == 0 {
                        at += n;
                        let s = *status;
                        if s < 200 {
                            // An informational response: its fields are dropped, the next
                            // status follows.
                            self.informational += 1;
                            if self.informational > 8 {
                                return Err(bad("more than 8 informational responses"));
                            }
                            self.state = ReadState::Status;
                        } else {
                            let status = StatusCode::from_u16(s).map_err(bad)?;
                            out.push(Streamed::Head(status, std::mem::take(headers)));
                            self.state = ReadState::Content;
                        }
                        continue;
                    }
                    if name_len > MAX_FIELD {
                        return Err(bad("a field name longer than 64 KiB"));
                    }
                    if headers.len() >= 256 {
                        return Err(bad("more than 256 header fields"));
                    }
                    let name_end = n + name_len as usize;
                    let Some((val_len, m)) = rest.get(name_end..).and_then(crate::get_varint)
                    else {
                        break;
                    };
                    if val_len > MAX_FIELD {
                        return Err(bad("a field value longer than 64 KiB"));
                    }
                    let end = name_end + m + val_len as usize;
                    if rest.len() < end {
                        break;
                    }
                    headers.append(
                        HeaderName::from_bytes(&rest[n..name_end]).map_err(bad)?,
                        HeaderValue::from_bytes(&rest[name_end + m..end]).map_err(bad)?,
                    );
                    at += end;
                }
                ReadState::Content | ReadState::Trailers => {
                    let Some((len, n)) = crate::get_varint(rest) else {
                        break;
                    };
                    if len == 0 {
                        at += n;
                        if self.state == ReadState::Content {
                            self.state = ReadState::Trailers;
                        } else {
                            self.state = ReadState::Done;
                            out.push(Streamed::End);
                        }
                        continue;
                    }
                    if self.state == ReadState::Trailers {
                        // A trailer field: its name was `len`; skip name and value.
                        let name_end = n + len as usize;
                        let Some((val_len, m)) = rest.get(name_end..).and_then(crate::get_varint)
                        else {
                            break;
                        };
                        let end = name_end + m + val_len as usize;
                        if len > MAX_FIELD || val_len > MAX_FIELD {
                            return Err(bad("a trailer longer than 64 KiB"));
                        }
                        if rest.len() < end {
                            break;
                        }
                        at += end;
                        continue;
                    }
                    if len > 16 << 20 {
                        return Err(bad("a content piece longer than 16 MiB"));
                    }
                    let end = n + len as usize;
                    if rest.len() < end {
                        break;
                    }
                    out.push(Streamed::Data(Bytes::copy_from_slice(&rest[n..end])));
                    at += end;
                }
            }
        }
        self.buf.drain(..at);
        Ok(out)
    }

    /// Whether the whole response has been read.
    pub fn is_done(&self) -> bool {
        self.state == ReadState::Done
    }
}
