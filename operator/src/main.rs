//! `ordo-operator`: run the controllers, generate CRDs, or render objects offline.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kube::Client;
use ordo_operator::admin::{self, AdminState};
use ordo_operator::context::Context;
use ordo_operator::leader::{self, LeaseConfig};
use ordo_operator::metrics::Metrics;
use ordo_operator::probe::{HttpMemberProbe, MemberProbe, TestHostsProbe};
use ordo_operator::{controller, crd_wait, crdgen, render};
use tokio::sync::watch;

#[derive(Parser)]
#[command(name = "ordo-operator", version, about = "Kubernetes operator for Ordo SeqClusters and WorkDividers")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controllers (the default).
    Run(RunArgs),
    /// Write the CRD YAML into crds/ and charts/ordo/crds/ (or the given directories).
    Crdgen {
        /// Output directories; defaults to the repository's crds/ and charts/ordo/crds/.
        #[arg(long = "out")]
        out: Vec<PathBuf>,
    },
    /// Print every object the operator would apply for the SeqCluster/WorkDivider objects given.
    Render {
        /// YAML files (multi-document allowed); `-` reads stdin.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Parser, Clone)]
struct RunArgs {
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "ORDO_OPERATOR_ADMIN_LISTEN", default_value = "0.0.0.0:8080")]
    admin_listen: SocketAddr,
    /// Leader-election Lease name.
    #[arg(long, env = "ORDO_OPERATOR_LEASE", default_value = "ordo-operator")]
    lease_name: String,
    /// Namespace of the Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Identity in the Lease.
    #[arg(long, env = "POD_NAME", default_value = "ordo-operator")]
    identity: String,
    /// How often to check whether the CRDs are established, at startup (milliseconds).
    #[arg(long, env = "ORDO_OPERATOR_CRD_POLL_MS", default_value_t = 10_000)]
    crd_poll_ms: u64,
    /// Log format: json or text.
    #[arg(long, env = "ORDO_OPERATOR_LOG_FORMAT", default_value = "json")]
    log_format: String,
    /// TEST ONLY: reach members at the addresses this hosts file gives (`ADDRESS HOST` lines)
    /// instead of through DNS; unlisted members count as not answering. For e2e/apiserver.
    #[arg(long, env = "ORDO_OPERATOR_TEST_MEMBER_HOSTS")]
    test_member_hosts: Option<PathBuf>,
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,kube=warn".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_tracing(&args.log_format);
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let admin_state = AdminState { metrics: metrics.clone(), ready: ready.clone() };
    let admin = tokio::spawn(admin::serve(args.admin_listen, admin_state, stopped(stop_rx.clone())));

    let client = Client::try_default().await.context("no Kubernetes client configuration")?;
    tokio::select! {
        _ = crd_wait::wait_established(&client, Duration::from_millis(args.crd_poll_ms)) => {}
        _ = stopped(stop_rx.clone()) => return Ok(()),
    }
    ready.store(true, Ordering::Relaxed);

    let lease = LeaseConfig {
        name: args.lease_name,
        namespace: args.lease_namespace,
        identity: args.identity,
        duration: Duration::from_secs(15),
        renew_every: Duration::from_secs(5),
    };
    tokio::select! {
        _ = leader::acquire(&client, &lease) => {}
        _ = stopped(stop_rx.clone()) => return Ok(()),
    }
    let probe: Arc<dyn MemberProbe> = match args.test_member_hosts {
        Some(hosts_file) => {
            tracing::warn!(file = %hosts_file.display(), "TEST ONLY: members are reached at the addresses of a hosts file");
            Arc::new(TestHostsProbe { inner: HttpMemberProbe::default(), hosts_file })
        }
        None => Arc::new(HttpMemberProbe::default()),
    };
    let ctx = Arc::new(Context::new(client.clone(), probe, metrics));
    let (lost_tx, lost_rx) = watch::channel(false);
    let holder = {
        let client = client.clone();
        let lease = lease.clone();
        tokio::spawn(async move {
            leader::hold(&client, &lease).await;
            let _ = lost_tx.send(true);
        })
    };
    let stop = stopped(stop_rx.clone());
    let lost = stopped(lost_rx.clone());
    controller::run(ctx, async move {
        tokio::select! {
            _ = stop => {}
            _ = lost => {}
        }
    })
    .await;
    holder.abort();
    if *lost_rx.borrow() {
        anyhow::bail!("lost leadership; exiting so a fresh process campaigns again");
    }
    admin.await.context("admin task")?.context("admin server")?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        None => run(RunArgs::parse_from(["ordo-operator"])).await,
        Some(Command::Run(args)) => run(args).await,
        Some(Command::Crdgen { out }) => {
            let dirs = if out.is_empty() { crdgen::output_dirs(&std::env::current_dir()?) } else { out };
            for path in crdgen::write_all(&dirs)? {
                println!("wrote {}", path.display());
            }
            Ok(())
        }
        Some(Command::Render { files }) => {
            print!("{}", render::render_files(&files)?);
            Ok(())
        }
    }
}
