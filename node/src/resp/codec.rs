//! RESP on the wire: requests in ([`Decoder`]), replies out ([`Reply::encode`]).
//!
//! A request is an array of bulk strings (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`) or an inline
//! command (`GET k\r\n`, as typed into a terminal). Nothing in a request nests, so the
//! decoder is flat: it takes each argument off the buffer as soon as it is whole and keeps
//! where it is between reads, so a large pipeline or value arriving in small pieces is read
//! once, and every length is checked against the limits before anything is allocated.

use bytes::{Buf, Bytes, BytesMut};

/// Longest line of an inline command, or of a length header.
pub const MAX_INLINE_BYTES: usize = 64 * 1024;

/// The bounds of one request.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most arguments, the command's name included.
    pub max_args: usize,
    /// Longest argument, in bytes.
    pub max_arg_bytes: usize,
    /// Most bytes of arguments in one request.
    pub max_request_bytes: usize,
}

/// Malformed input. The connection answers `-ERR Protocol error: …` and closes, as Redis does:
/// what follows cannot be framed.
#[derive(Debug, PartialEq, Eq)]
pub struct ProtocolError(pub String);

/// Reads requests off a connection's input buffer.
#[derive(Debug)]
pub struct Decoder {
    limits: Limits,
    /// The request being read: how many arguments it has, and those read so far.
    pending: Option<(usize, Vec<Bytes>)>,
    /// Bytes of the arguments of the request being read.
    pending_bytes: usize,
}

fn crlf(buf: &[u8], within: usize) -> Option<usize> {
    buf.iter().take(within).position(|&b| b == b'\n')
}

/// A length header's number (`*3`, `$5`), without its type byte and line end.
fn header_number(line: &[u8]) -> Option<i64> {
    let line = line.strip_suffix(b"\r")?;
    let s = std::str::from_utf8(line).ok()?;
    if s.is_empty() || s.starts_with('+') {
        return None;
    }
    s.parse().ok()
}

impl Decoder {
    pub fn new(limits: Limits) -> Decoder {
        Decoder {
            limits,
            pending: None,
            pending_bytes: 0,
        }
    }

    /// The next whole request in `buf`, taken off it; `None` until more input arrives. An
    /// empty request (`*0`, a blank line) is skipped.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        loop {
            if self.pending.is_none() {
                let Some(&first) = buf.first() else {
                    return Ok(None);
                };
                if first != b'*' {
                    match self.inline(buf)? {
                        Some(args) if args.is_empty() => continue,
                        other => return Ok(other),
                    }
                }
                let Some(end) = crlf(buf, MAX_INLINE_BYTES) else {
                    if buf.len() >= MAX_INLINE_BYTES {
                        return Err(ProtocolError("too big multibulk count".into()));
                    }
                    return Ok(None);
                };
                let n = header_number(&buf[1..end])
                    .ok_or_else(|| ProtocolError("invalid multibulk length".into()))?;
                buf.advance(end + 1);
                if n <= 0 {
                    continue;
                }
                let n = n as usize;
                if n > self.limits.max_args {
                    return Err(ProtocolError(format!(
                        "a command of {n} arguments is over the limit of {} (resp.max_args)",
                        self.limits.max_args
                    )));
                }
                self.pending = Some((n, Vec::with_capacity(n.min(1024))));
                self.pending_bytes = 0;
            }
            while self
                .pending
                .as_ref()
                .is_some_and(|(n, args)| args.len() < *n)
            {
                let Some(arg) = self.bulk(buf)? else {
                    return Ok(None);
                };
                self.pending_bytes += arg.len();
                self.pending.as_mut().expect("checked above").1.push(arg);
            }
            let (_, args) = self.pending.take().expect("set above");
            return Ok(Some(args));
        }
    }

    /// The next bulk string argument (`$5\r\nhello\r\n`), taken off `buf` once it is
    /// whole; `None` until then. Its length is checked against the limits before any of it
    /// is waited for.
    fn bulk(&self, buf: &mut BytesMut) -> Result<Option<Bytes>, ProtocolError> {
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        if first != b'$' {
            return Err(ProtocolError(format!(
                "expected '$', got '{}'",
                (first as char).escape_default()
            )));
        }
        let Some(end) = crlf(buf, 32) else {
            if buf.len() >= 32 {
                return Err(ProtocolError("invalid bulk length".into()));
            }
            return Ok(None);
        };
        let len = header_number(&buf[1..end])
            .filter(|l| *l >= 0)
            .ok_or_else(|| ProtocolError("invalid bulk length".into()))? as usize;
        if len > self.limits.max_arg_bytes {
            return Err(ProtocolError(format!(
                "an argument of {len} bytes is over the limit of {} bytes \
                 (limits.max_value_bytes)",
                self.limits.max_arg_bytes
            )));
        }
        if self.pending_bytes + len > self.limits.max_request_bytes {
            return Err(ProtocolError(format!(
                "a request of more than {} bytes of arguments is over the limit \
                 (2 x limits.max_value_bytes + 64 KiB)",
                self.limits.max_request_bytes
            )));
        }
        let whole = end + 1 + len + 2;
        if buf.len() < whole {
            // Room for the rest of this argument only: its length was checked.
            buf.reserve(whole - buf.len());
            return Ok(None);
        }
        if &buf[whole - 2..whole] != b"\r\n" {
            return Err(ProtocolError("a bulk string must end with CRLF".into()));
        }
        buf.advance(end + 1);
        let arg = buf.split_to(len).freeze();
        buf.advance(2);
        Ok(Some(arg))
    }

    /// An inline command: words separated by spaces, with Redis's quoting (`"a b"`, `'c'`,
    /// and `\n`, `\xHH` escapes inside double quotes).
    fn inline(&self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        let Some(end) = crlf(buf, MAX_INLINE_BYTES) else {
            if buf.len() >= MAX_INLINE_BYTES {
                return Err(ProtocolError("too big inline request".into()));
            }
            return Ok(None);
        };
        let line = buf.split_to(end + 1);
        let line = line.strip_suffix(b"\n").unwrap_or(&line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let args = split_inline(line)
            .ok_or_else(|| ProtocolError("unbalanced quotes in request".into()))?;
        if args.len() > self.limits.max_args {
            return Err(ProtocolError("too many arguments in inline request".into()));
        }
        Ok(Some(args.into_iter().map(Bytes::from).collect()))
    }
}

/// Splits an inline command into its words; `None` when a quote is not closed.
fn split_inline(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut words = Vec::new();
    let mut i = 0;
    while i < line.len() {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == line.len() {
            break;
        }
        let mut word = Vec::new();
        match line[i] {
            q @ (b'"' | b'\'') => {
                i += 1;
                loop {
                    let &c = line.get(i)?;
                    i += 1;
                    if c == q {
                        break;
                    }
                    if c == b'\\' && q == b'"' {
                        let &e = line.get(i)?;
                        i += 1;
                        match e {
                            b'n' => word.push(b'\n'),
                            b'r' => word.push(b'\r'),
                            b't' => word.push(b'\t'),
                            b'x' => {
                                let hex = line.get(i..i + 2)?;
                                let hex = std::str::from_utf8(hex).ok()?;
                                word.push(u8::from_str_radix(hex, 16).ok()?);
                                i += 2;
                            }
                            other => word.push(other),
                        }
                    } else if c == b'\\' && line.get(i) == Some(&b'\'') {
                        word.push(b'\'');
                        i += 1;
                    } else {
                        word.push(c);
                    }
                }
                // A closing quote must end the word.
                if line.get(i).is_some_and(|c| !c.is_ascii_whitespace()) {
                    return None;
                }
            }
            _ => {
                while i < line.len() && !line[i].is_ascii_whitespace() {
                    word.push(line[i]);
                    i += 1;
                }
            }
        }
        words.push(word);
    }
    Some(words)
}

/// A reply, encoded for the connection's protocol version (2 or 3).
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// `+OK`.
    Status(&'static str),
    /// `-<text>`: the text starts with the error's kind (`ERR`, `WRONGTYPE`, `NOAUTH`, …).
    Error(String),
    Int(i64),
    Bulk(Bytes),
    /// RESP2 `$-1`, RESP3 `_`.
    Nil,
    /// RESP2 `*-1`, RESP3 `_` (an aborted transaction).
    NilArray,
    Array(Vec<Reply>),
    /// RESP3 `%`; RESP2 a flat array of keys and values.
    Map(Vec<(Reply, Reply)>),
    /// RESP3 `>` (pub/sub messages); RESP2 an array.
    Push(Vec<Reply>),
    /// Several replies to one command, one after the other (`SUBSCRIBE a b`).
    Many(Vec<Reply>),
}

impl Reply {
    pub fn ok() -> Reply {
        Reply::Status("OK")
    }

    /// `-ERR <message>`.
    pub fn err(message: impl std::fmt::Display) -> Reply {
        Reply::Error(format!("ERR {message}"))
    }

    pub fn bulk(b: impl Into<Bytes>) -> Reply {
        Reply::Bulk(b.into())
    }

    pub fn text(s: impl Into<String>) -> Reply {
        Reply::Bulk(Bytes::from(s.into()))
    }

    pub fn is_error(&self) -> bool {
        match self {
            Reply::Error(_) => true,
            Reply::Many(r) => r.iter().any(Reply::is_error),
            _ => false,
        }
    }

    pub fn encode(&self, proto: u8, out: &mut BytesMut) {
        fn line(out: &mut BytesMut, kind: u8, n: impl itoa::Integer) {
            out.extend_from_slice(&[kind]);
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        match self {
            Reply::Status(s) => {
                out.extend_from_slice(b"+");
                out.extend_from_slice(s.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Reply::Error(e) => {
                out.extend_from_slice(b"-");
                // An error is one line.
                for b in e.bytes() {
                    out.extend_from_slice(&[if b == b'\r' || b == b'\n' { b' ' } else { b }]);
                }
                out.extend_from_slice(b"\r\n");
            }
            Reply::Int(n) => line(out, b':', *n),
            Reply::Bulk(b) => {
                line(out, b'$', b.len());
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
            }
            Reply::Nil if proto >= 3 => out.extend_from_slice(b"_\r\n"),
            Reply::Nil => out.extend_from_slice(b"$-1\r\n"),
            Reply::NilArray if proto >= 3 => out.extend_from_slice(b"_\r\n"),
            Reply::NilArray => out.extend_from_slice(b"*-1\r\n"),
            Reply::Array(items) => {
                line(out, b'*', items.len());
                items.iter().for_each(|i| i.encode(proto, out));
            }
            Reply::Push(items) => {
                line(out, if proto >= 3 { b'>' } else { b'*' }, items.len());
                items.iter().for_each(|i| i.encode(proto, out));
            }
            Reply::Many(replies) => replies.iter().for_each(|r| r.encode(proto, out)),
            Reply::Map(pairs) => {
                if proto >= 3 {
                    line(out, b'%', pairs.len());
                } else {
                    line(out, b'*', pairs.len() * 2);
                }
                for (k, v) in pairs {
                    k.encode(proto, out);
                    v.encode(proto, out);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_args: 8,
        max_arg_bytes: 16,
        max_request_bytes: 40,
    };

    fn all(input: &[u8]) -> Result<Vec<Vec<Bytes>>, ProtocolError> {
        let mut d = Decoder::new(LIMITS);
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(args) = d.decode(&mut buf)? {
            out.push(args);
        }
        Ok(out)
    }

    fn words(cmds: &[&[&str]]) -> Vec<Vec<Bytes>> {
        cmds.iter()
            .map(|c| c.iter().map(|w| Bytes::from(w.to_string())).collect())
            .collect()
    }

    #[test]
    fn decodes_pipelines_byte_by_byte_as_at_once() {
        let input = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*0\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\nPING\r\n\r\n";
        let want = words(&[&["GET", "k"], &["SET", "k", ""], &["PING"]]);
        assert_eq!(all(input).unwrap(), want);
        let mut d = Decoder::new(LIMITS);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in input {
            buf.extend_from_slice(&[*b]);
            while let Some(args) = d.decode(&mut buf).unwrap() {
                got.push(args);
            }
        }
        assert_eq!(got, want);
        assert!(buf.is_empty());
    }

    #[test]
    fn inline_commands_take_quotes_and_escapes() {
        assert_eq!(
            all(b"set \"a b\" 'c d' \"\\x41\\n\"\r\n").unwrap(),
            vec![vec![
                Bytes::from("set"),
                Bytes::from("a b"),
                Bytes::from("c d"),
                Bytes::from("A\n")
            ]]
        );
        assert!(all(b"set \"a\r\n").is_err());
        assert!(all(b"set \"a\"b\r\n").is_err());
    }

    #[test]
    fn refuses_what_is_over_the_limits_or_malformed() {
        for bad in [
            &b"*9\r\n"[..],
            b"*-\r\n",
            b"*+1\r\n",
            b"*1\r\n$17\r\n",
            b"*1\r\n$-1\r\n",
            b"*1\r\n:1\r\n",
            b"*1\r\n$1\r\nab\r\n",
            // 48 bytes of arguments, over 40.
            b"*3\r\n$16\r\naaaaaaaaaaaaaaaa\r\n$16\r\naaaaaaaaaaaaaaaa\r\n$16\r\n",
        ] {
            assert!(all(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        // Within the limits: incomplete, not refused, and nothing is allocated past them.
        let mut d = Decoder::new(LIMITS);
        let mut buf = BytesMut::from(&b"*8\r\n$16\r\nabc"[..]);
        assert_eq!(d.decode(&mut buf), Ok(None));
        assert!(buf.capacity() < 64);
    }

    #[test]
    fn random_input_never_panics() {
        let mut seed = 0x2545F4914F6CDD1Du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet = b"*$\r\n0123456789-+ \"'\\xaGET";
        for _ in 0..20_000 {
            let len = (next() % 40) as usize;
            let input: Vec<u8> = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            let mut d = Decoder::new(LIMITS);
            let mut buf = BytesMut::from(&input[..]);
            while let Ok(Some(args)) = d.decode(&mut buf) {
                assert!(args.len() <= LIMITS.max_args);
                assert!(args.iter().all(|a| a.len() <= LIMITS.max_arg_bytes.max(40)));
            }
        }
    }

    #[test]
    fn encodes_replies_for_each_protocol() {
        let enc = |r: Reply, proto| {
            let mut out = BytesMut::new();
            r.encode(proto, &mut out);
            String::from_utf8(out.to_vec()).unwrap()
        };
        assert_eq!(enc(Reply::Nil, 2), "$-1\r\n");
        assert_eq!(enc(Reply::Nil, 3), "_\r\n");
        assert_eq!(enc(Reply::err("a\r\nb"), 2), "-ERR a  b\r\n");
        let map = Reply::Map(vec![(Reply::text("a"), Reply::Int(1))]);
        assert_eq!(enc(map.clone(), 2), "*2\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(enc(map, 3), "%1\r\n$1\r\na\r\n:1\r\n");
        let push = Reply::Push(vec![Reply::text("message")]);
        assert_eq!(enc(push.clone(), 2), "*1\r\n$7\r\nmessage\r\n");
        assert_eq!(enc(push, 3), ">1\r\n$7\r\nmessage\r\n");
    }
}
