//! `ordoctl divider`: the work divider from the command line. With `--output json` every
//! command prints the shapes scripts rely on (one JSON object, or one per line for `watch`).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};
use ordo_client::divider::{DividerEvent, StopReason};
use ordo_client::Client;
use serde_json::{json, Value};

/// `ordoctl divider ...`.
#[derive(Args)]
pub struct DividerCmd {
    /// Divider name (default: the sidecar's configured divider).
    #[arg(long, global = true, default_value = "")]
    name: String,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Add, remove or list keys.
    Keys {
        #[command(subcommand)]
        command: KeysCmd,
    },
    /// Join as a member and print Start/Stop events until interrupted, then leave.
    Watch {
        /// Member id.
        #[arg(long)]
        member: String,
        /// Affinity (default: the divider's default).
        #[arg(long, allow_negative_numbers = true)]
        affinity: Option<i64>,
        /// Address others can reach this member at.
        #[arg(long, default_value = "")]
        address: String,
        /// Confirm each stop after this many milliseconds.
        #[arg(long, default_value_t = 0)]
        confirm_after_ms: u64,
    },
    /// The owner of a key, its address and token.
    Lookup {
        /// Key.
        key: String,
    },
    /// Keys a member holds, with tokens.
    Assigned {
        /// Member id.
        #[arg(long)]
        member: String,
    },
    /// Get, set or alter a member's affinity.
    Affinity {
        /// get, set or alter.
        #[arg(value_parser = ["get", "set", "alter"])]
        action: String,
        /// Member id.
        #[arg(long)]
        member: String,
        /// New affinity (set) or delta (alter).
        #[arg(allow_negative_numbers = true)]
        value: Option<i64>,
    },
    /// Stop every key of a member and wait until they moved.
    Flush {
        /// Member id.
        #[arg(long)]
        member: String,
    },
    /// Keys, unowned keys, members with their affinity and owned key counts.
    Status,
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Add keys.
    Add {
        /// Keys.
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Remove keys.
    Remove {
        /// Keys.
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// List keys.
    List {
        /// Only keys starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
    },
}

fn print(json_out: bool, value: Value, human: impl FnOnce() -> String) {
    if json_out {
        println!("{value}");
    } else {
        println!("{}", human());
    }
}

/// Runs `ordoctl divider ...` against `client`.
pub async fn run(client: Client, cmd: DividerCmd, json_out: bool) -> Result<()> {
    let d = client.divider(&cmd.name);
    let name = cmd.name.clone();
    match cmd.command {
        Cmd::Keys { command: KeysCmd::Add { keys } } => {
            let n = d.add_keys(keys).await?;
            print(json_out, json!({"divider": name, "added": n}), || format!("{n} keys added"));
        }
        Cmd::Keys { command: KeysCmd::Remove { keys } } => {
            let n = d.remove_keys(keys).await?;
            print(json_out, json!({"divider": name, "removed": n}), || format!("{n} keys removed"));
        }
        Cmd::Keys { command: KeysCmd::List { prefix } } => {
            let keys = d.list_keys(&prefix).await?;
            print(json_out, json!({"divider": name, "keys": keys}), || keys.join("\n"));
        }
        Cmd::Watch { member, affinity, address, confirm_after_ms } => {
            watch(&d, &member, affinity, &address, Duration::from_millis(confirm_after_ms), json_out).await?;
        }
        Cmd::Lookup { key } => {
            let l = d.lookup(&key).await?;
            print(json_out, json!({"key": key, "owner": l.owner, "token": l.token, "address": l.address}), || match &l
                .owner
            {
                Some(o) => format!("{key}: {o} (token {}, address {:?})", l.token, l.address),
                None => format!("{key}: no owner (last token {})", l.token),
            });
        }
        Cmd::Assigned { member } => {
            let keys = d.member(&member).assigned().await?;
            let list: Vec<Value> = keys.iter().map(|(k, t)| json!({"key": k, "token": t})).collect();
            print(json_out, json!({"member": member, "keys": list}), || {
                keys.iter().map(|(k, t)| format!("{k} {t}")).collect::<Vec<_>>().join("\n")
            });
        }
        Cmd::Affinity { action, member, value } => {
            let m = d.member(&member);
            let a = match (action.as_str(), value) {
                ("get", _) => m.affinity().await?,
                ("set", Some(v)) => m.set_affinity(v).await?,
                ("alter", Some(v)) => m.alter_affinity(v).await?,
                (a, None) => anyhow::bail!("affinity {a} needs a value"),
                (a, _) => anyhow::bail!("unknown affinity action {a}"),
            };
            print(json_out, json!({"member": member, "affinity": a}), || a.to_string());
        }
        Cmd::Flush { member } => {
            d.member(&member).flush().await?;
            print(json_out, json!({"member": member, "flushed": true}), || format!("{member} flushed"));
        }
        Cmd::Status => {
            let asg = d.assignment().await?;
            let mut owned: BTreeMap<String, u64> = BTreeMap::new();
            let mut unowned = 0u64;
            for key in asg.keys.keys() {
                match d.lookup(key).await?.owner {
                    Some(o) => *owned.entry(o).or_insert(0) += 1,
                    None => unowned += 1,
                }
            }
            let members: Vec<Value> = asg
                .members
                .iter()
                .map(|(id, (affinity, _))| json!({"id": id, "affinity": affinity, "keys": owned.get(id).copied().unwrap_or(0)}))
                .collect();
            print(
                json_out,
                json!({"divider": name, "keys": asg.keys.len(), "unowned": unowned, "members": members}),
                || {
                    let mut out = format!("{} keys, {unowned} unowned", asg.keys.len());
                    for (id, (affinity, _)) in &asg.members {
                        let n = owned.get(id).copied().unwrap_or(0);
                        out.push_str(&format!("\n  {id}: affinity {affinity}, {n} keys"));
                    }
                    out
                },
            );
        }
    }
    Ok(())
}

fn event_line(json_out: bool, event: &str, key: &str, token: u64) {
    print(json_out, json!({"event": event, "key": key, "token": token}), || format!("{event} {key} {token}"));
}

async fn watch(
    d: &ordo_client::divider::Divider,
    member: &str,
    affinity: Option<i64>,
    address: &str,
    confirm_after: Duration,
    json_out: bool,
) -> Result<()> {
    let mut me = d.join(member, affinity, address).await?;
    let control = me.control();
    let mut leaving: Option<tokio::task::JoinHandle<()>> = None;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let event = tokio::select! {
            e = me.next() => e,
            _ = &mut interrupted, if leaving.is_none() => {
                // Leave: the sidecar stops every key; keep confirming until the stream ends.
                let c = control.clone();
                leaving = Some(tokio::spawn(async move {
                    if let Err(e) = c.cancel().await {
                        eprintln!("leaving: {e}");
                    }
                }));
                continue;
            }
        };
        match event {
            None => break,
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(DividerEvent::Joined { .. })) => {}
            Some(Ok(DividerEvent::Start { key, token })) => event_line(json_out, "start", &key, token),
            Some(Ok(DividerEvent::Stop { key, token, reason })) => {
                event_line(json_out, "stop", &key, token);
                if !matches!(reason, StopReason::Timeout | StopReason::LeaseLost) {
                    tokio::time::sleep(confirm_after).await;
                    me.confirm_stop(&key, token).await?;
                }
            }
            Some(Ok(DividerEvent::LeaseExpired { keys })) => {
                for (key, token) in keys {
                    event_line(json_out, "stop", &key, token);
                }
            }
        }
    }
    if let Some(l) = leaving {
        let _ = l.await;
    }
    Ok(())
}
