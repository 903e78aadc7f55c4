//! A small RESP client for tests: sends commands as arrays of bulk strings (or raw bytes) and
//! reads replies of either protocol version.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    /// `$-1`, `*-1` or `_`.
    Nil,
    Array(Vec<Value>),
    /// RESP3 `>`.
    Push(Vec<Value>),
    /// RESP3 `%`, as its keys and values in turn.
    Map(Vec<Value>),
}

impl Value {
    /// The text of a status, bulk string or error.
    pub fn text(&self) -> String {
        match self {
            Value::Status(s) | Value::Error(s) => s.clone(),
            Value::Bulk(b) => String::from_utf8_lossy(b).into_owned(),
            other => format!("{other:?}"),
        }
    }

    pub fn is_error_starting(&self, prefix: &str) -> bool {
        matches!(self, Value::Error(e) if e.starts_with(prefix))
    }
}

pub struct RespClient {
    io: BufReader<TcpStream>,
}

impl RespClient {
    pub async fn connect(addr: SocketAddr) -> Result<RespClient> {
        let s = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        s.set_nodelay(true)?;
        Ok(RespClient {
            io: BufReader::new(s),
        })
    }

    /// Sends one command and reads its reply (within 10 s).
    pub async fn cmd(&mut self, args: &[&str]) -> Result<Value> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        self.send_raw(&out).await?;
        self.read().await
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.io.get_mut().write_all(bytes).await?;
        Ok(())
    }

    /// The next reply, within 10 s.
    pub async fn read(&mut self) -> Result<Value> {
        self.read_within(Duration::from_secs(10)).await
    }

    pub async fn read_within(&mut self, within: Duration) -> Result<Value> {
        tokio::time::timeout(within, read_value(&mut self.io))
            .await
            .context("no reply in time")?
    }

    /// Whether the server closed the connection (reads end of stream within `within`).
    pub async fn closed_within(&mut self, within: Duration) -> bool {
        let mut buf = [0u8; 256];
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.io.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }
}

fn read_value(
    io: &mut BufReader<TcpStream>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Value>> + Send + '_>> {
    Box::pin(async move {
        let mut line = Vec::new();
        if io.read_until(b'\n', &mut line).await? == 0 {
            bail!("connection closed");
        }
        let line = String::from_utf8(line)?;
        let line = line.trim_end_matches("\r\n");
        let (kind, rest) = line.split_at(1);
        let n = || {
            rest.parse::<i64>()
                .with_context(|| format!("bad header {line:?}"))
        };
        Ok(match kind {
            "+" => Value::Status(rest.into()),
            "-" => Value::Error(rest.into()),
            ":" => Value::Int(n()?),
            "_" => Value::Nil,
            "$" if n()? < 0 => Value::Nil,
            "$" => {
                let mut b = vec![0; n()? as usize + 2];
                io.read_exact(&mut b).await?;
                b.truncate(b.len() - 2);
                Value::Bulk(b)
            }
            "*" if n()? < 0 => Value::Nil,
            "*" | ">" | "%" => {
                let count = if kind == "%" { n()? * 2 } else { n()? };
                let mut items = Vec::new();
                for _ in 0..count {
                    items.push(read_value(io).await?);
                }
                match kind {
                    "*" => Value::Array(items),
                    ">" => Value::Push(items),
                    _ => Value::Map(items),
                }
            }
            _ => bail!("unknown reply {line:?}"),
        })
    })
}
