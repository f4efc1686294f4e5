//! The client's half: seal a request to a key configuration, open the answer.

use crate::{
    Aead, KeyConfig, OhttpError,
    config::{KDF_SHA256, KEM_X25519},
    ctx::{Receiver, Sender, response_keys},
    gateway::{
        INFO_CHUNKED_REQUEST, INFO_REQUEST, LABEL_CHUNKED_RESPONSE, LABEL_RESPONSE, info,
        response_nonce_len,
    },
    get_varint, put_varint,
};

/// The longest non-final chunk a client takes from a gateway (a gateway seals at most
/// [`crate::MAX_CHUNK`]; this leaves room for other implementations).
const MAX_RESPONSE_CHUNK: u64 = 1 << 20;

pub(crate) type SetupSender<'a> =
    &'a dyn Fn(Aead, &[u8], &[u8]) -> Result<(Vec<u8>, Sender), OhttpError>;

/// `hdr ‖ enc` and the request's HPKE context, sealing to the configuration's preferred AEAD.
pub(crate) fn start(
    config: &KeyConfig,
    label: &[u8],
    setup: SetupSender<'_>,
) -> Result<(Vec<u8>, Aead, Sender, Vec<u8>), OhttpError> {
    let aead = config.aeads()[0];
    let mut header = vec![config.key_id()];
    header.extend_from_slice(&KEM_X25519.to_be_bytes());
    header.extend_from_slice(&KDF_SHA256.to_be_bytes());
    header.extend_from_slice(&aead.id().to_be_bytes());
    let (enc, ctx) = setup(aead, config.public_key(), &info(label, &header))?;
    let mut msg = header;
    msg.extend_from_slice(&enc);
    Ok((msg, aead, ctx, enc))
}

/// Seals `request` (a Binary HTTP message) as a `message/ohttp-req` to `config`.
pub fn encapsulate(
    config: &KeyConfig,
    request: &[u8],
) -> Result<(Vec<u8>, ResponseOpener), OhttpError> {
    encapsulate_with(config, request, &Sender::setup)
}

pub(crate) fn encapsulate_with(
    config: &KeyConfig,
    request: &[u8],
    setup: SetupSender<'_>,
) -> Result<(Vec<u8>, ResponseOpener), OhttpError> {
    let (mut msg, aead, mut ctx, enc) = start(config, INFO_REQUEST, setup)?;
    msg.extend(ctx.seal(request, b""));
    let secret = ctx.export(LABEL_RESPONSE, aead.nk());
    Ok((msg, ResponseOpener { aead, secret, enc }))
}

/// Seals `request` as a `message/ohttp-chunked-req` (chunks of at most
/// [`crate::MAX_CHUNK`], the last one final), whose answer is read as it arrives.
pub fn encapsulate_chunked(
    config: &KeyConfig,
    request: &[u8],
) -> Result<(Vec<u8>, ChunkedOpener), OhttpError> {
    let (mut msg, aead, mut ctx, enc) = start(config, INFO_CHUNKED_REQUEST, &Sender::setup)?;
    let mut pieces = request.chunks(crate::MAX_CHUNK).peekable();
    while let Some(piece) = pieces.next() {
        if pieces.peek().is_none() {
            break;
        }
        let ct = ctx.seal(piece, b"");
        put_varint(ct.len(), &mut msg);
        msg.extend(ct);
    }
    let last = request
        .chunks(crate::MAX_CHUNK)
        .next_back()
        .unwrap_or_default();
    put_varint(0, &mut msg);
    msg.extend(ctx.seal(last, b"final"));
    let secret = ctx.export(LABEL_CHUNKED_RESPONSE, aead.nk());
    Ok((
        msg,
        ChunkedOpener {
            aead,
            secret,
            enc,
            ctx: None,
            buf: Vec::new(),
            in_final: false,
        },
    ))
}

/// Opens the answer to one [`encapsulate`]d request (a clone opens what the gateway answered
/// to the same request sent again).
#[derive(Clone)]
pub struct ResponseOpener {
    aead: Aead,
    secret: Vec<u8>,
    enc: Vec<u8>,
}

impl ResponseOpener {
    /// Opens a `message/ohttp-res`.
    pub fn open(self, msg: &[u8]) -> Result<Vec<u8>, OhttpError> {
        let (nonce, ct) = msg
            .split_at_checked(response_nonce_len(self.aead))
            .ok_or(OhttpError::Truncated("response nonce"))?;
        let (key, iv) = response_keys(self.aead, &self.secret, &self.enc, nonce);
        Receiver::from_secrets(self.aead, &key, &iv).open(ct, b"")
    }
}

/// Opens a chunked answer as its bytes arrive.
pub struct ChunkedOpener {
    aead: Aead,
    secret: Vec<u8>,
    enc: Vec<u8>,
    ctx: Option<Receiver>,
    buf: Vec<u8>,
    in_final: bool,
}

impl ChunkedOpener {
    /// Takes the next bytes off the wire; gives back what they complete of the answer.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<u8>, OhttpError> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        if self.in_final {
            // The final chunk is opened only at the end: what it may hold is bounded.
            if self.buf.len() as u64 > MAX_RESPONSE_CHUNK + 16 {
                return Err(OhttpError::Chunk("a final chunk longer than 1 MiB"));
            }
            return Ok(out);
        }
        if self.ctx.is_none() {
            let n = response_nonce_len(self.aead);
            if self.buf.len() < n {
                return Ok(out);
            }
            let (key, iv) = response_keys(self.aead, &self.secret, &self.enc, &self.buf[..n]);
            self.ctx = Some(Receiver::from_secrets(self.aead, &key, &iv));
            self.buf.drain(..n);
        }
        let ctx = self.ctx.as_mut().expect("set above");
        let mut at = 0;
        while let Some((len, n)) = get_varint(&self.buf[at..]) {
            if len == 0 {
                at += n;
                self.in_final = true;
                break;
            }
            if len > MAX_RESPONSE_CHUNK {
                return Err(OhttpError::Chunk("a chunk longer than 1 MiB"));
            }
            let len = len as usize;
            let Some(ct) = self.buf.get(at + n..at + n + len) else {
                break;
            };
            out.extend(ctx.open(ct, b"")?);
            at += n + len;
        }
        self.buf.drain(..at);
        if self.in_final && self.buf.len() as u64 > MAX_RESPONSE_CHUNK + 16 {
            return Err(OhttpError::Chunk("a final chunk longer than 1 MiB"));
        }
        Ok(out)
    }

    /// The stream ended: opens the final chunk. An answer cut before it is refused, so a
    /// relay cannot pass a truncated answer off as whole.
    pub fn finish(mut self) -> Result<Vec<u8>, OhttpError> {
        if !self.in_final {
            return Err(OhttpError::Truncated(
                "the answer ended before its final chunk",
            ));
        }
        let ctx = self.ctx.as_mut().expect("set before the final chunk");
        ctx.open(&self.buf, b"final")
    }
}
