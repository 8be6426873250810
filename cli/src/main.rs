//! `ordoctl`: the Ordo command line. `ordoctl dev` runs a local 3-member cluster; the other
//! commands talk to a sidecar (`--socket`, `$ORDO_SOCKET`, or the running dev cluster).

mod log;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use ordo_client::{Client, SOCKET_ENV};
use ordoctl::dev::{default_dir, read_cluster_file, DevCluster, DevOptions};
use serde_json::json;

mod divider;

#[derive(Parser)]
#[command(name = "ordoctl", version, about = "Ordo command line: local dev cluster, sequences, status")]
struct Cli {
    /// Sidecar socket path (or http://127.0.0.1:7070). Default: $ORDO_SOCKET, else the running
    /// `ordoctl dev` cluster.
    #[arg(long, global = true)]
    socket: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value = "human")]
    output: Output,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a local cluster of ordo-sidecar processes on 127.0.0.1 until Ctrl-C.
    Dev {
        /// Number of members.
        #[arg(long, default_value_t = 3)]
        members: usize,
        /// Directory for data, sockets and logs (default $ORDO_DEV_DIR or <tmp>/ordo-dev).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// First port (member i uses base+2i for peers and base+2i+1 for admin HTTP).
        #[arg(long, default_value_t = 17100)]
        base_port: u16,
        /// Delete the directory's previous data first.
        #[arg(long)]
        fresh: bool,
        /// Extra arguments for every sidecar (e.g. --range-size=64).
        #[arg(last = true)]
        sidecar_args: Vec<String>,
    },
    /// Sequences.
    Seq {
        #[command(subcommand)]
        command: SeqCmd,
    },
    /// Log streams: create, append, read, subscribe, tail, trim, describe, list.
    Log {
        #[command(subcommand)]
        command: log::LogCmd,
    },
    /// Members, their pids and addresses, epoch, reachability and readiness.
    Status,
    /// The work divider: keys, members, watch, lookup, affinity, flush, status.
    Divider(divider::DividerCmd),
    /// Run an ordo-sidecar in this process (what `ordoctl dev` starts when no ordo-sidecar
    /// binary is installed beside ordoctl).
    #[command(hide = true)]
    Sidecar {
        #[arg(allow_hyphen_values = true, trailing_var_arg = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum SeqCmd {
    /// Allocate IDs: prints the range [start, end).
    Next {
        /// Sequence name.
        name: String,
        /// How many IDs.
        #[arg(long, default_value_t = 1)]
        count: u64,
        /// Allocate through the quorum (ordered in real time across the cluster).
        #[arg(long)]
        strict: bool,
    },
    /// The next ID the cluster would hand out.
    Current {
        /// Sequence name.
        name: String,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Cmd::Sidecar { args } = &cli.command {
        let mut argv = vec!["ordo-sidecar".to_string()];
        argv.extend(args.iter().cloned());
        let parsed = <ordo_sidecar::config::SidecarArgs as Parser>::parse_from(argv);
        if let Err(e) = ordo_sidecar::server::main_with(parsed) {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    if let Err(e) = rt.block_on(run(cli)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn connect(socket: Option<String>) -> Result<Client> {
    if let Some(s) = socket.or_else(|| std::env::var(SOCKET_ENV).ok()) {
        return Ok(Client::connect(&s).await?);
    }
    let dir = default_dir();
    let cluster = read_cluster_file(&dir).with_context(|| {
        format!("no --socket, no ${SOCKET_ENV}, and no dev cluster in {} (start one with `ordoctl dev`)", dir.display())
    })?;
    let mut last = None;
    for m in cluster.members.iter().filter(|m| m.pid != 0) {
        match Client::connect(&m.socket).await {
            Ok(c) => return Ok(c),
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(e) => Err(e).context("no member of the dev cluster answered"),
        None => bail!("the dev cluster in {} has no running member", dir.display()),
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Dev { members, dir, base_port, fresh, sidecar_args } => {
            dev(members, dir, base_port, fresh, sidecar_args).await
        }
        Cmd::Log { command } => log::run(connect(cli.socket).await?, command, cli.output == Output::Json).await,
        Cmd::Divider(cmd) => divider::run(connect(cli.socket).await?, cmd, cli.output == Output::Json).await,
        Cmd::Seq { command } => {
            let client = connect(cli.socket).await?;
            match command {
                SeqCmd::Next { name, count, strict } => {
                    let r = client.next(&name, count, strict).await?;
                    match cli.output {
                        Output::Json => println!("{}", json!({"sequence": name, "start": r.start, "end": r.end})),
                        Output::Human if r.end - r.start == 1 => println!("{}", r.start),
                        Output::Human => println!("{}..{} ({} IDs)", r.start, r.end, r.end - r.start),
                    }
                }
                SeqCmd::Current { name } => {
                    let next = client.current(&name).await?;
                    match cli.output {
                        Output::Json => println!("{}", json!({"sequence": name, "next": next})),
                        Output::Human => println!("{name}: next ID {next}"),
                    }
                }
            }
            Ok(())
        }
        Cmd::Status => {
            let client = connect(cli.socket).await?;
            let st = client.status().await?;
            match cli.output {
                Output::Json => {
                    let members: Vec<_> = st
                        .members
                        .iter()
                        .map(|m| {
                            json!({
                                "id": m.id, "pid": m.pid, "peer_addr": m.peer_addr, "socket": m.app_socket,
                                "ready": m.ready, "reachable": m.reachable, "caught_up": m.caught_up, "epoch": m.epoch,
                            })
                        })
                        .collect();
                    println!(
                        "{}",
                        json!({"epoch": st.epoch, "members": members, "previous_members": st.previous_members, "answered_by": st.id})
                    );
                }
                Output::Human => {
                    println!(
                        "epoch {}   (answered by {}, {})",
                        st.epoch,
                        st.id,
                        if st.ready { "ready" } else { "NOT ready" }
                    );
                    if !st.previous_members.is_empty() {
                        println!("membership change in progress; previous members: {}", st.previous_members.join(", "));
                    }
                    println!(
                        "{:<12} {:>8} {:<22} {:<10} {:<9} {:<6} SOCKET",
                        "MEMBER", "PID", "PEER", "REACHABLE", "CAUGHT-UP", "READY"
                    );
                    for m in &st.members {
                        println!(
                            "{:<12} {:>8} {:<22} {:<10} {:<9} {:<6} {}",
                            m.id,
                            if m.pid == 0 { "-".to_string() } else { m.pid.to_string() },
                            m.peer_addr,
                            yes(m.reachable),
                            yes(m.caught_up),
                            yes(m.ready),
                            m.app_socket
                        );
                    }
                }
            }
            Ok(())
        }
        Cmd::Sidecar { .. } => unreachable!("handled in main"),
    }
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

async fn dev(
    members: usize,
    dir: Option<PathBuf>,
    base_port: u16,
    fresh: bool,
    sidecar_args: Vec<String>,
) -> Result<()> {
    if members == 0 || members > 9 {
        bail!("--members must be between 1 and 9");
    }
    let dir = dir.unwrap_or_else(default_dir);
    if fresh && dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    if let Some(existing) = read_cluster_file(&dir) {
        if existing.members.iter().any(|m| m.pid != 0 && std::path::Path::new(&format!("/proc/{}", m.pid)).exists()) {
            bail!("a dev cluster already runs in {} (stop it, or pass --dir)", dir.display());
        }
    }
    let mut opts = DevOptions::new(dir.clone());
    opts.members = members;
    opts.base_port = base_port;
    opts.extra_args = sidecar_args;
    opts.log_dir = Some(dir.join("logs"));
    let mut cluster = DevCluster::start(opts)?;
    println!("ordo dev cluster: {members} members in {}", dir.display());
    for i in 0..cluster.len() {
        let m = cluster.member(i);
        println!(
            "  {}  pid {:<7} socket {}  peer {}  admin http://{}",
            m.id, m.pid, m.socket, m.peer_addr, m.admin_addr
        );
    }
    println!("logs: {}/logs", dir.display());

    // Wait for readiness, then keep watching until Ctrl-C.
    let socket = cluster.member(0).socket.clone();
    let ready_by = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut announced = false;
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = &mut ctrl_c => break,
            _ = term.recv() => break,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        for (i, status) in cluster.exited() {
            eprintln!(
                "member {} exited: {status} (see {}/logs/{}.log)",
                cluster.member(i).id,
                dir.display(),
                cluster.member(i).id
            );
        }
        if !announced {
            if let Ok(c) = Client::connect(&socket).await {
                if c.status().await.is_ok_and(|s| s.ready) {
                    println!("ready. Try:  ordoctl seq next orders --count 10   |   ordoctl status   (Ctrl-C stops the cluster)");
                    println!("apps: export {SOCKET_ENV}={socket}");
                    announced = true;
                }
            }
            if !announced && tokio::time::Instant::now() > ready_by {
                eprintln!("the cluster is not ready after 30 s; see the logs in {}/logs", dir.display());
                announced = true;
            }
        }
    }
    println!("stopping...");
    cluster.shutdown(Duration::from_secs(5));
    Ok(())
}
