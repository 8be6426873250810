//! A minimal HTTP/1.1 keep-alive client over one TCP connection (etcd's JSON gateway, the
//! sidecars' `/metrics`): nothing spawned per request, no extra crates.

use std::time::Duration;

use anyhow::{anyhow, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;

/// Longest wait for one answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// HTTP/1.1 with keep-alive on one TCP connection.
pub struct Http {
    conn: BufStream<TcpStream>,
    host: String,
}

impl Http {
    /// Connects to `addr` (`host:port`).
    pub async fn connect(addr: &str) -> anyhow::Result<Self> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        Ok(Self { conn: BufStream::new(tcp), host: addr.to_string() })
    }

    /// POSTs a JSON body; returns the body of a 200 answer.
    pub async fn post(&mut self, path: &str, body: &str) -> anyhow::Result<String> {
        tokio::time::timeout(TIMEOUT, self.request("POST", path, body))
            .await
            .map_err(|_| anyhow!("no answer to POST {path} within {TIMEOUT:?}"))?
    }

    /// GETs `path`; returns the body of a 200 answer.
    pub async fn get(&mut self, path: &str) -> anyhow::Result<String> {
        tokio::time::timeout(TIMEOUT, self.request("GET", path, ""))
            .await
            .map_err(|_| anyhow!("no answer to GET {path} within {TIMEOUT:?}"))?
    }

    async fn request(&mut self, method: &str, path: &str, body: &str) -> anyhow::Result<String> {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.host,
            body.len()
        );
        self.conn.write_all(head.as_bytes()).await?;
        self.conn.write_all(body.as_bytes()).await?;
        self.conn.flush().await?;
        let mut line = String::new();
        self.conn.read_line(&mut line).await?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("bad status line {line:?}"))?;
        let mut length = None;
        let mut chunked = false;
        loop {
            line.clear();
            if self.conn.read_line(&mut line).await? == 0 {
                bail!("connection closed");
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let (k, v) = (k.trim(), v.trim());
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.parse::<usize>().ok();
                } else if k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked") {
                    chunked = true;
                }
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.conn.read_line(&mut line).await?;
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)?;
                let mut chunk = vec![0; size + 2];
                self.conn.read_exact(&mut chunk).await?;
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        } else {
            let n = length.ok_or_else(|| anyhow!("response without length"))?;
            body.resize(n, 0);
            self.conn.read_exact(&mut body).await?;
        }
        let body = String::from_utf8(body)?;
        if status != 200 {
            bail!("HTTP {status}: {body}");
        }
        Ok(body)
    }
}
