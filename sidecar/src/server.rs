//! The sidecar process: parse config, init tracing, serve, drain on SIGTERM. Used by the
//! `ordo-sidecar` binary and by `ordoctl dev` when no `ordo-sidecar` binary is beside it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::server::TcpIncoming;

use crate::api::app::{self, AppServices};
use crate::api::authority::fix_incoming;
use crate::api::{admin, peer::GrpcPeers, peer::PeerService};
use crate::config::{LogFormat, Role, SidecarArgs};
use crate::membership::MembersFile;
use crate::metrics::Metrics;
use crate::node::{Endpoints, Node};
use crate::quorum::store::{RegisterStore, StoreOptions};

/// Streams a peer connection may see reset before the server accepted them (h2 closes the
/// connection beyond this).
const PEER_MAX_PENDING_RESETS: usize = 1024;

/// Runs a sidecar until SIGTERM or Ctrl-C.
pub fn main_with(args: SidecarArgs) -> Result<()> {
    init_tracing(args.log_format);
    args.validate()?;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if args.worker_threads > 0 {
        runtime.worker_threads(args.worker_threads);
    }
    runtime.enable_all().build()?.block_on(run(args))
}

fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("ORDO_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,h2=warn,tower=warn,hyper=warn"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Loads the members file, waiting while it is missing or older than what this member saw.
async fn load_members(path: &Path, min_epoch: u64) -> Result<MembersFile> {
    let mut warned = false;
    loop {
        match MembersFile::load(path) {
            Ok(f) if f.epoch >= min_epoch => return Ok(f),
            Ok(f) if !warned => {
                tracing::warn!(
                    file_epoch = f.epoch,
                    min_epoch,
                    "members file is older than this member's data; waiting for it to catch up"
                );
                warned = true;
            }
            Err(e) if !path.exists() && !warned => {
                tracing::warn!(error = %e, "members file missing; waiting for it");
                warned = true;
            }
            Err(e) if path.exists() => bail!("{e}"),
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Accepted TCP connections with Nagle off: `Server::tcp_nodelay` applies only to listeners
/// tonic binds itself, and peer rounds are small request/response exchanges that Nagle would
/// delay by tens of milliseconds.
fn nodelay(l: tokio::net::TcpListener) -> TcpIncoming {
    TcpIncoming::from(l).with_nodelay(Some(true))
}

fn bind_socket(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        // A socket left by a previous run of this sidecar: nobody can be listening on it now
        // unless another sidecar shares the path, which the connect check catches.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("{} is in use by another process", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))
}

async fn run(args: SidecarArgs) -> Result<()> {
    let id = args.resolved_id()?;
    let token = args.resolved_token()?;
    let divider_config = args.divider.load()?;
    if let Some(divider) = &divider_config {
        tracing::info!(divider = %divider.divider, seq_cluster = %divider.seq_cluster, "serving the configured divider");
    }
    let metrics = Arc::new(Metrics::new());
    let log_store = match (args.role, &args.data_dir) {
        (Role::Member, Some(dir)) => Some(
            crate::log::store::ReplicaStore::open(&dir.join("log"))
                .with_context(|| format!("opening the log store in {}", dir.display()))?,
        ),
        _ => None,
    };
    let peers = Arc::new(GrpcPeers::new(token.clone()));

    let store = match args.role {
        Role::Member => {
            let dir = args.data_dir.as_ref().context("data dir")?;
            let store = RegisterStore::open_observed(dir, &id, StoreOptions::default(), metrics.store.clone())
                .with_context(|| format!("opening the store in {}", dir.display()))?;
            peers.set_local(id.clone(), store.clone());
            Some(store)
        }
        Role::Client => None,
    };
    let min_epoch = store.as_ref().map_or(0, |s| s.meta().max_epoch);
    let members = load_members(&args.members_file, min_epoch).await?;
    if args.role == Role::Member && !members.contains(&id) {
        tracing::warn!(%id, "this member is not in the members file yet; it will not vote until it is");
    }
    if let Some(s) = &store {
        s.set_meta(Some(members.epoch), members.previous.is_none().then_some(members.epoch)).await?;
    }
    metrics.epoch.set(members.epoch as i64);

    let app_tcp = args.app_tcp()?;
    let socket_listener = bind_socket(&args.app_socket)?;
    let admin_listener = tokio::net::TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("binding admin {}", args.admin_listen))?;
    let endpoints = Endpoints {
        app_socket: args.app_socket.display().to_string(),
        app_tcp: app_tcp.map(|a| a.to_string()).unwrap_or_default(),
        admin_addr: admin_listener.local_addr()?.to_string(),
    };
    let node = Node::new(
        id.clone(),
        args.role,
        store.clone(),
        peers,
        members,
        args.members_file.clone(),
        metrics.clone(),
        endpoints,
    );

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let shutdown = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let log_peers = crate::api::log_peer::GrpcLogPeers::new(node.clone(), &token).map_err(anyhow::Error::msg)?;
    let log_router = crate::log::router::LogRouter::new(
        node.clone(),
        log_store.clone(),
        log_peers,
        crate::log::router::LogSettings::from_args(&args.log, args.request_timeout()),
    );
    // After the log router registered its migration step.
    node.spawn_background();

    let dividers = app::divider::dividers(&args.divider, divider_config, args.request_timeout(), &node);
    // Every primitive's app services; health reports each by name, following readiness.
    let app_services = AppServices::default()
        .merge(app::log::services(
            &log_router,
            usize::try_from(args.log.max_batch_bytes).unwrap_or(usize::MAX).saturating_add(1 << 20),
            usize::try_from(args.log.max_inflight_bytes).unwrap_or(usize::MAX),
        ))
        .merge(app::sequencer::services(&args.sequencer, args.request_timeout(), &node))
        .merge(app::cluster::services(&node))
        .merge(app::registers::services(&args.registers, args.request_timeout(), &node))
        .merge(app::divider::services(dividers.clone()));
    let health_service = app::health::following_readiness(app_services.names(), node.watch_ready()).await;
    let app_routes = app_services.into_routes();
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(ordo_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    // v1alpha too: grpcui, Postman, older grpcurl and grpcio-reflection ask it.
    let (reflection, reflection_v1alpha) = (reflection().build_v1()?, reflection().build_v1alpha()?);
    let app_router = || {
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .layer(app::shutdown::EndStreamsAtShutdownLayer::new(shutdown_rx.clone()))
            .add_routes(app_routes.clone())
            .add_service(health_service.clone())
            .add_service(reflection.clone())
            .add_service(reflection_v1alpha.clone())
    };

    let mut tasks = tokio::task::JoinSet::new();
    let uds = app_router().serve_with_incoming_shutdown(
        fix_incoming(UnixListenerStream::new(socket_listener)),
        shutdown(shutdown_rx.clone()),
    );
    tasks.spawn(async move { uds.await.context("app socket server") });
    if let Some(addr) = app_tcp {
        let l = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding app {addr}"))?;
        let tcp = app_router().serve_with_incoming_shutdown(fix_incoming(nodelay(l)), shutdown(shutdown_rx.clone()));
        tasks.spawn(async move { tcp.await.context("app TCP server") });
    }
    if let Some(store) = &store {
        let l = tokio::net::TcpListener::bind(args.peer_listen)
            .await
            .with_context(|| format!("binding peer {}", args.peer_listen))?;
        let svc = PeerService::server(node.clone(), store.clone(), token.clone(), shutdown_rx.clone());
        let log_svc = log_store
            .clone()
            .map(|s| crate::api::log_peer::LogPeerService::server(log_router.clone(), s, token, shutdown_rx.clone()));
        // Rounds stop waiting once a quorum answered, which resets the slower peers' streams;
        // under load many are still queued, and h2's default (20 such resets) would close the
        // connection with every round on it. Bounded still (rapid-reset protection), and the
        // peer port is open to members only.
        let server = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .http2_max_pending_accept_reset_streams(Some(PEER_MAX_PENDING_RESETS))
            .add_service(svc)
            .add_optional_service(log_svc)
            .serve_with_incoming_shutdown(nodelay(l), shutdown(shutdown_rx.clone()));
        tasks.spawn(async move { server.await.context("peer server") });
    }
    {
        let router = admin::router(node.clone(), dividers.clone());
        let rx = shutdown_rx.clone();
        tasks.spawn(async move {
            axum::serve(admin_listener, router).with_graceful_shutdown(shutdown(rx)).await.context("admin server")
        });
    }
    tracing::info!(
        %id,
        role = ?args.role,
        socket = %args.app_socket.display(),
        app_tcp = ?app_tcp,
        admin = %node.endpoints.admin_addr,
        peer = %args.peer_listen,
        "ordo-sidecar serving"
    );

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: draining"),
        Some(r) = tasks.join_next() => {
            r??;
            bail!("a server stopped unexpectedly");
        }
    }
    node.start_draining();
    // Divider sessions leave first, while the app servers still carry their Stops and confirms,
    // so their keys get new owners now rather than at lease expiry (bounded by the stop
    // timeout plus a little; the operator's grace period covers it and the drain below).
    dividers.leave_all().await;
    let _ = shutdown_tx.send(true);
    let drain = Duration::from_millis(args.drain_timeout_ms);
    if tokio::time::timeout(drain, async { while tasks.join_next().await.is_some() {} }).await.is_err() {
        tracing::warn!(timeout_ms = args.drain_timeout_ms, "drain timed out; exiting with requests in flight");
    }
    let _ = std::fs::remove_file(&args.app_socket);
    tracing::info!("stopped");
    Ok(())
}
