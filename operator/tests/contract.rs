//! The sidecar contract: the arguments, environment and mounted files (members file, peer token,
//! divider config) the operator renders are accepted by the parsers the sidecar itself runs at
//! startup (`ordo_contract`), for both roles and for every fixture.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Parser;
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodTemplateSpec, Secret};
use ordo_contract::config::{Role, SidecarArgs};
use ordo_contract::membership::MembersFile;
use ordo_operator::crd::{MemberSetStatus, MembershipPhase, MembershipStatus};
use ordo_operator::pod::SIDECAR_CONTAINER;
use ordo_operator::seqcluster::{build as sc_build, scaling, validate as sc_validate};
use ordo_operator::workdivider::{build as wd_build, validate as wd_validate};

/// Writes what the kubelet would mount for the sidecar under `root`, and returns the sidecar's
/// arguments with mount paths rewritten into `root`.
fn materialize(
    root: &Path,
    template: &PodTemplateSpec,
    config_maps: &[&ConfigMap],
    secrets: &[&Secret],
) -> (Container, Vec<String>) {
    let spec = template.spec.as_ref().unwrap();
    let sidecar = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == SIDECAR_CONTAINER)
        .unwrap()
        .clone();
    let mut rewrites: Vec<(String, PathBuf)> = Vec::new();
    for m in sidecar.volume_mounts.iter().flatten() {
        let volume = spec.volumes.iter().flatten().find(|v| v.name == m.name);
        let dir = root.join(m.mount_path.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).unwrap();
        let files: BTreeMap<String, Vec<u8>> = match volume {
            Some(v) if v.config_map.is_some() => {
                let name = &v.config_map.as_ref().unwrap().name;
                let cm = config_maps
                    .iter()
                    .find(|c| c.metadata.name.as_ref() == Some(name))
                    .unwrap_or_else(|| panic!("pod mounts ConfigMap {name} that the operator does not build"));
                cm.data.clone().unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())).collect()
            }
            Some(v) if v.secret.is_some() => {
                let name = v.secret.as_ref().unwrap().secret_name.clone().unwrap();
                let s = secrets
                    .iter()
                    .find(|s| s.metadata.name.as_ref() == Some(&name))
                    .unwrap_or_else(|| panic!("pod mounts Secret {name} that the operator does not build"));
                s.data.clone().unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect()
            }
            // emptyDir or a volume claim template: an empty directory.
            _ => BTreeMap::new(),
        };
        for (k, v) in files {
            std::fs::write(dir.join(k), v).unwrap();
        }
        rewrites.push((m.mount_path.clone(), dir));
    }
    let args = sidecar
        .args
        .clone()
        .unwrap()
        .into_iter()
        .map(|a| {
            rewrites.iter().fold(a, |a, (from, to)| a.replace(&format!("={from}/"), &format!("={}/", to.display())))
        })
        .collect();
    (sidecar, args)
}

fn parse(args: &[String]) -> SidecarArgs {
    let mut argv = vec!["ordo-sidecar".to_string()];
    argv.extend_from_slice(args);
    SidecarArgs::try_parse_from(&argv).unwrap_or_else(|e| panic!("sidecar rejects {argv:?}: {e}"))
}

fn members_of(args: &SidecarArgs) -> MembersFile {
    MembersFile::load(&args.members_file).expect("sidecar loads the mounted members file")
}

/// The sidecar's id comes from `POD_NAME` (a fieldRef on metadata.name): the rendered env must
/// say so, and that value must be a valid id. One test sets it, so there is no env race.
#[test]
fn rendered_pods_start_the_sidecar() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    for fixture in ["seqcluster-minimal.yaml", "seqcluster-full.yaml"] {
        let sc = common::seqcluster(fixture);
        let v = sc_validate::validate(&sc).unwrap();
        let plan = scaling::plan(&v.name, &sc_build::desired_set(&v), None, &Default::default());
        let o = sc_build::build(
            &v,
            &plan.membership,
            plan.statefulset_replicas,
            &ordo_operator::seqcluster::apply::new_token(),
        );
        let root = tmp.path().join(fixture);
        let (sidecar, args) = materialize(&root, &o.statefulset.spec.template, &[&o.config_map], &[&o.secret]);
        let pod_name = sidecar.env.iter().flatten().find(|e| e.name == "POD_NAME").expect("POD_NAME env");
        let field = pod_name.value_from.as_ref().unwrap().field_ref.as_ref().unwrap();
        assert_eq!(field.field_path, "metadata.name");
        std::env::set_var("POD_NAME", format!("{}-0", v.name));

        let parsed = parse(&args);
        assert_eq!(parsed.role, Role::Member);
        parsed.validate().unwrap_or_else(|e| panic!("{fixture}: sidecar config invalid: {e}"));
        assert_eq!(
            parsed.app_socket,
            root.join(ordo_contract::config::DEFAULT_SOCKET.trim_start_matches('/')),
            "the socket is on the shared mount"
        );
        assert_eq!(parsed.peer_listen.port(), ordo_contract::config::DEFAULT_PEER_PORT);
        assert_eq!(parsed.admin_listen.port(), ordo_contract::config::DEFAULT_ADMIN_PORT);
        assert_eq!(parsed.sequencer.range_size, v.sidecar.range_size as u64);
        for (name, size) in &v.sidecar.sequence_ranges {
            assert_eq!(parsed.sequencer.range_overrides().get(name), Some(&(*size as u64)));
        }
        assert_eq!(parsed.divider.load(), Ok(None), "members run no divider");
        assert_eq!(parsed.log, v.logs, "the log stream settings reach the sidecar as rendered");
        let members = members_of(&parsed);
        assert!(members.contains(&parsed.resolved_id().unwrap()), "the pod is in the members file");
        // The readiness and liveness probes hit paths the admin server serves, on its port.
        for probe in [&sidecar.readiness_probe, &sidecar.liveness_probe, &sidecar.startup_probe] {
            let http = probe.as_ref().unwrap().http_get.as_ref().unwrap();
            assert!(matches!(http.path.as_deref(), Some("/ready") | Some("/live")));
        }
        let admin = sidecar.ports.iter().flatten().find(|p| p.name.as_deref() == Some("admin")).unwrap();
        assert_eq!(admin.container_port, i32::from(parsed.admin_listen.port()));

        // WorkDivider pods referencing this SeqCluster: client role, same token, members copy.
        let joint = MembershipStatus {
            epoch: 2,
            current: MemberSetStatus { members: 5, ..Default::default() },
            previous: Some(MemberSetStatus { members: 3, ..Default::default() }),
            phase: MembershipPhase::Joint,
        };
        for wd_fixture in ["workdivider-minimal.yaml", "workdivider-full.yaml"] {
            let mut wd = common::workdivider(wd_fixture);
            wd.spec.seq_cluster_ref.name = v.name.clone();
            let wv = wd_validate::validate(&wd).unwrap();
            let wo = wd_build::build(&wv, &joint, &v.logs);
            let root = tmp.path().join(format!("{fixture}-{wd_fixture}"));
            let (_, args) = materialize(&root, &wo.statefulset.spec.template, &[&wo.config_map], &[&o.secret]);
            std::env::set_var("POD_NAME", format!("{}-1", wv.name));
            let parsed = parse(&args);
            assert_eq!(parsed.role, Role::Client);
            parsed.validate().unwrap_or_else(|e| panic!("{wd_fixture}: client config invalid: {e}"));
            let members = members_of(&parsed);
            assert_eq!((members.epoch, members.current.len()), (2, 5));
            assert_eq!(members.previous.as_ref().map(|p| p.len()), Some(3));
            assert_eq!(
                parsed.resolved_token().unwrap(),
                String::from_utf8(o.secret.data.as_ref().unwrap()["token"].0.clone()).unwrap()
            );
            // The divider config the sidecar loads at startup is the one the operator rendered.
            let divider = parsed.divider.load().unwrap_or_else(|e| panic!("{wd_fixture}: {e}")).expect("a config");
            assert_eq!((divider.divider.as_str(), divider.seq_cluster.as_str()), (wv.name.as_str(), v.name.as_str()));
            assert_eq!(divider.seq_cluster_epoch, members.epoch);
            assert_eq!(divider.keys, wv.keys);
            assert_eq!((divider.lease_ms, divider.stop_timeout_ms), (wv.lease_ms, wv.stop_timeout_ms));
            assert_eq!(parsed.log, v.logs, "divider pods get their SeqCluster's log stream settings");
        }
    }
}
