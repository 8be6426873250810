//! Reads members' admin `/status` (an [`ordo_contract::status::StatusReport`]) to drive scaling.

use std::time::Duration;

use futures::future::BoxFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use ordo_contract::status::StatusReport;

/// Source of member reports (HTTP in production, a table in tests).
pub trait MemberProbe: Send + Sync {
    /// The report of the member at `host`, or `None` when it does not answer.
    fn status<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Option<StatusReport>>;
}

/// `GET http://<host>:7072/status` with a short deadline.
#[derive(Debug, Clone)]
pub struct HttpMemberProbe {
    /// Admin port.
    pub port: u16,
    /// Deadline of one request.
    pub timeout: Duration,
}

impl Default for HttpMemberProbe {
    fn default() -> Self {
        Self { port: ordo_contract::config::DEFAULT_ADMIN_PORT, timeout: Duration::from_secs(2) }
    }
}

impl MemberProbe for HttpMemberProbe {
    fn status<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Option<StatusReport>> {
        Box::pin(async move {
            match tokio::time::timeout(self.timeout, get_status(host, self.port)).await {
                Ok(Ok(report)) => Some(report),
                Ok(Err(e)) => {
                    tracing::debug!(host, error = %e, "member status unavailable");
                    None
                }
                Err(_) => {
                    tracing::debug!(host, "member status timed out");
                    None
                }
            }
        })
    }
}

async fn get_status(host: &str, port: u16) -> std::io::Result<StatusReport> {
    let mut stream = TcpStream::connect((host, port)).await?;
    let request = format!("GET /status HTTP/1.0\r\nHost: {host}\r\nAccept: application/json\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.take(64 * 1024).read_to_end(&mut raw).await?;
    parse_response(&raw)
}

/// Parses an HTTP/1.x response carrying a `/status` JSON body (any status line but 200 is an error).
pub fn parse_response(raw: &[u8]) -> std::io::Result<StatusReport> {
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| invalid("no end of headers".into()))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let status_line = head.lines().next().unwrap_or_default();
    if status_line.split_whitespace().nth(1) != Some("200") {
        return Err(invalid(format!("unexpected response {status_line:?}")));
    }
    StatusReport::from_json(&raw[split + 4..]).map_err(|e| invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_body() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{\"id\":\"s-0\",\"role\":\"member\",\"epoch\":2,\"caught_up\":true,\"migrated_epoch\":2,\"ready\":true,\"pid\":7}";
        let r = parse_response(raw).unwrap();
        assert_eq!((r.id.as_str(), r.epoch, r.migrated_epoch, r.ready), ("s-0", 2, 2, true));
        assert!(parse_response(b"HTTP/1.1 503 Service Unavailable\r\n\r\n{}").is_err());
        assert!(parse_response(b"garbage").is_err());
        // A renamed field is an error, not a default that would stall scaling.
        let renamed = String::from_utf8_lossy(raw).replace("migrated_epoch", "migratedEpoch");
        assert!(parse_response(renamed.as_bytes()).unwrap_err().to_string().contains("migrated_epoch"));
    }

    #[tokio::test]
    async fn unreachable_member_is_none_within_the_deadline() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // Accepts but never answers: the probe must give up at its deadline.
        let _hold = tokio::spawn(async move {
            let (_s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let probe = HttpMemberProbe { port, timeout: Duration::from_millis(200) };
        assert_eq!(probe.status("127.0.0.1").await, None);
    }
}
