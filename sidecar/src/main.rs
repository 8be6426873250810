//! `ordo-sidecar`: see [`ordo_sidecar::server`].

use clap::Parser;

fn main() -> anyhow::Result<()> {
    ordo_sidecar::server::main_with(ordo_sidecar::config::SidecarArgs::parse())
}
