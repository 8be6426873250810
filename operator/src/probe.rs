//! Reads members' admin `/status` (an [`ordo_contract::status::StatusReport`]) to drive scaling,
//! and WorkDivider pods' `/divider` (a [`DividerReport`]) for the WorkDivider's status.

use std::time::Duration;

use futures::future::BoxFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use ordo_contract::status::{DividerReport, Report, StatusReport};

/// Source of member reports (HTTP in production, a table in tests).
pub trait MemberProbe: Send + Sync {
    /// The report of the member at `host`, or `None` when it does not answer.
    fn status<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Option<StatusReport>>;

    /// The report of divider `name` (empty: the pod's configured one) from the pod at `host`, or
    /// `None` when it does not answer (the default: a probe that knows no dividers).
    fn divider<'a>(&'a self, host: &'a str, name: &'a str) -> BoxFuture<'a, Option<DividerReport>> {
        let _ = (host, name);
        Box::pin(async { None })
    }
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

impl HttpMemberProbe {
    /// `GET path` on the admin port of `host`, parsed as `T`; `None` (logged) on any failure.
    async fn get<T: Report>(&self, host: &str, path: &str) -> Option<T> {
        match tokio::time::timeout(self.timeout, get_report(host, self.port, path)).await {
            Ok(Ok(report)) => Some(report),
            Ok(Err(e)) => {
                tracing::debug!(host, path, error = %e, "admin report unavailable");
                None
            }
            Err(_) => {
                tracing::debug!(host, path, "admin report timed out");
                None
            }
        }
    }
}

impl MemberProbe for HttpMemberProbe {
    fn status<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Option<StatusReport>> {
        Box::pin(self.get(host, "/status"))
    }

    fn divider<'a>(&'a self, host: &'a str, name: &'a str) -> BoxFuture<'a, Option<DividerReport>> {
        Box::pin(async move {
            // Divider names are DNS-label-like: nothing in them needs escaping in a query.
            if ordo_contract::validate::validate_name(name).is_err() && !name.is_empty() {
                return None;
            }
            self.get(host, &format!("/divider?name={name}")).await
        })
    }
}

/// **Test only.** Probes members at addresses taken from a hosts file instead of resolving
/// their DNS names, so the real-API-server suite (`e2e/apiserver/`) can stand real `ordo-sidecar`
/// processes on loopback addresses in for simulated pods that run nothing. The file holds
/// `ADDRESS HOST` lines (`#` comments) and is re-read on every probe, so members may be added
/// while the operator runs. A host the file does not list counts as not answering: nothing is
/// ever resolved through DNS in this mode. Enabled by `ordo-operator run --test-member-hosts`.
#[derive(Debug, Clone)]
pub struct TestHostsProbe<P> {
    /// The probe that reaches the mapped address.
    pub inner: P,
    /// The hosts file.
    pub hosts_file: std::path::PathBuf,
}

/// The address `hosts` (hosts-file text) gives `host`, if any.
pub fn lookup_test_host(hosts: &str, host: &str) -> Option<String> {
    hosts
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default())
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let addr = words.next()?;
            words.any(|h| h == host).then(|| addr.to_string())
        })
        .next()
}

impl<P: MemberProbe> TestHostsProbe<P> {
    /// The address the hosts file gives `host` (re-read now), if any.
    async fn mapped(&self, host: &str) -> Option<String> {
        let hosts = match tokio::fs::read_to_string(&self.hosts_file).await {
            Ok(text) => text,
            Err(e) => {
                tracing::warn!(file = %self.hosts_file.display(), error = %e, "test hosts file unreadable");
                return None;
            }
        };
        lookup_test_host(&hosts, host)
    }
}

impl<P: MemberProbe> MemberProbe for TestHostsProbe<P> {
    fn status<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Option<StatusReport>> {
        Box::pin(async move { self.inner.status(&self.mapped(host).await?).await })
    }

    fn divider<'a>(&'a self, host: &'a str, name: &'a str) -> BoxFuture<'a, Option<DividerReport>> {
        Box::pin(async move { self.inner.divider(&self.mapped(host).await?, name).await })
    }
}

async fn get_report<T: Report>(host: &str, port: u16, path: &str) -> std::io::Result<T> {
    let mut stream = TcpStream::connect((host, port)).await?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nAccept: application/json\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.take(64 * 1024).read_to_end(&mut raw).await?;
    parse_response(&raw)
}

/// Parses an HTTP/1.x response carrying a JSON report (any status line but 200 is an error).
pub fn parse_response<T: Report>(raw: &[u8]) -> std::io::Result<T> {
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| invalid("no end of headers".into()))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let status_line = head.lines().next().unwrap_or_default();
    if status_line.split_whitespace().nth(1) != Some("200") {
        return Err(invalid(format!("unexpected response {status_line:?}")));
    }
    T::from_json(&raw[split + 4..]).map_err(|e| invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_body() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{\"id\":\"s-0\",\"role\":\"member\",\"epoch\":2,\"caught_up\":true,\"migrated_epoch\":2,\"ready\":true,\"pid\":7}";
        let r = parse_response::<StatusReport>(raw).unwrap();
        assert_eq!((r.id.as_str(), r.epoch, r.migrated_epoch, r.ready), ("s-0", 2, 2, true));
        assert!(parse_response::<StatusReport>(b"HTTP/1.1 503 Service Unavailable\r\n\r\n{}").is_err());
        assert!(parse_response::<StatusReport>(b"garbage").is_err());
        // A renamed field is an error, not a default that would stall scaling.
        let renamed = String::from_utf8_lossy(raw).replace("migrated_epoch", "migratedEpoch");
        assert!(parse_response::<StatusReport>(renamed.as_bytes()).unwrap_err().to_string().contains("migrated_epoch"));
    }

    #[test]
    fn test_hosts_map_listed_hosts_only() {
        let hosts = "# members\n127.1.0.1 s-0.s-peers.ns.svc\n127.1.0.2  s-1.s-peers.ns.svc other # x\n";
        assert_eq!(lookup_test_host(hosts, "s-0.s-peers.ns.svc").as_deref(), Some("127.1.0.1"));
        assert_eq!(lookup_test_host(hosts, "other").as_deref(), Some("127.1.0.2"));
        assert_eq!(lookup_test_host(hosts, "s-2.s-peers.ns.svc"), None);
        assert_eq!(lookup_test_host(hosts, "x"), None, "comments are not hosts");
    }

    #[tokio::test]
    async fn test_hosts_probe_reaches_the_mapped_address_and_never_an_unlisted_host() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let _serve = tokio::spawn(async move {
            for _ in 0..2 {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let body = r#"{"id":"s-0","role":"member","epoch":3,"caught_up":true,"migrated_epoch":3,"ready":true,"pid":7}"#;
                let reply = format!("HTTP/1.0 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                s.write_all(reply.as_bytes()).await.unwrap();
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let hosts_file = dir.path().join("hosts");
        std::fs::write(&hosts_file, "127.0.0.1 s-0.s-peers.ns.svc\n").unwrap();
        let probe = TestHostsProbe { inner: HttpMemberProbe { port, timeout: Duration::from_secs(2) }, hosts_file };
        let report = probe.status("s-0.s-peers.ns.svc").await.expect("mapped member answers");
        assert_eq!((report.id.as_str(), report.epoch), ("s-0", 3));
        // "localhost" would resolve and reach the listener; unlisted, it must not be probed.
        assert_eq!(probe.status("localhost").await, None);
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
