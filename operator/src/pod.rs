//! The pod both kinds run: the user's app containers plus the `ordo-sidecar` container, and the
//! arguments that make up the operator's side of the sidecar contract (`ordo_contract::config`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile,
    SecretVolumeSource, SecurityContext, TopologySpreadConstraint, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use ordo_contract::config::{LogArgs, DEFAULT_ADMIN_PORT, DEFAULT_PEER_PORT, DEFAULT_SOCKET};

use crate::crd::{LogFormat, SidecarMode, SidecarSpec};

/// Name of the sidecar container.
pub const SIDECAR_CONTAINER: &str = "ordo-sidecar";
/// Directory the members ConfigMap is mounted at (a directory mount, so updates propagate).
pub const CONFIG_DIR: &str = "/etc/ordo";
/// Key of the members file in the ConfigMap.
pub const MEMBERS_KEY: &str = "members.yaml";
/// Key of the divider config file in a WorkDivider's ConfigMap.
pub const DIVIDER_KEY: &str = "divider.yaml";
/// Directory the peer-token Secret is mounted at.
pub const TOKEN_DIR: &str = "/etc/ordo-token";
/// Key of the token in the Secret.
pub const TOKEN_KEY: &str = "token";
/// Data directory of a member (its PersistentVolumeClaim).
pub const DATA_DIR: &str = "/var/lib/ordo";
/// Directory of the app socket, an `emptyDir` shared by every container.
pub const SOCKET_DIR: &str = "/run/ordo";
/// Volume names the operator owns; app templates must not use them.
pub const RESERVED_VOLUMES: [&str; 4] = [SOCKET_VOLUME, CONFIG_VOLUME, TOKEN_VOLUME, DATA_VOLUME];
/// Ports of the sidecar; app containers must not use them.
pub const RESERVED_PORTS: [u16; 2] = [DEFAULT_PEER_PORT, DEFAULT_ADMIN_PORT];

/// Volume holding the app socket.
pub const SOCKET_VOLUME: &str = "ordo-socket";
/// Volume holding the members file.
pub const CONFIG_VOLUME: &str = "ordo-config";
/// Volume holding the peer token.
pub const TOKEN_VOLUME: &str = "ordo-peer-token";
/// Volume (claim template) holding a member's data.
pub const DATA_VOLUME: &str = "data";
/// UID/GID the sidecar runs as (distroless `nonroot`).
pub const SIDECAR_UID: i64 = 65532;

/// The sidecar's role, as its `--role` flag spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SidecarRole {
    /// SeqCluster member: stores data, votes.
    Member,
    /// WorkDivider pod: proposes to a SeqCluster's members; reads the divider config.
    Client,
}

impl SidecarRole {
    fn flag(self) -> &'static str {
        match self {
            SidecarRole::Member => "member",
            SidecarRole::Client => "client",
        }
    }
}

/// Command-line arguments of the sidecar. The id comes from `POD_NAME` (see [`sidecar_env`]);
/// the log stream settings are the SeqCluster's, rendered by the contract ([`LogArgs::to_args`]).
pub fn sidecar_args(role: SidecarRole, spec: &SidecarSpec, logs: &LogArgs) -> Vec<String> {
    let mut args = vec![
        format!("--role={}", role.flag()),
        format!("--members-file={CONFIG_DIR}/{MEMBERS_KEY}"),
        format!("--peer-token-file={TOKEN_DIR}/{TOKEN_KEY}"),
        format!("--socket={DEFAULT_SOCKET}"),
        format!("--admin-listen=0.0.0.0:{DEFAULT_ADMIN_PORT}"),
        format!("--range-size={}", spec.range_size),
        format!("--request-timeout-ms={}", spec.request_timeout_ms),
        format!("--drain-timeout-ms={}", spec.drain_timeout_ms),
        format!(
            "--log-format={}",
            match spec.log_format {
                LogFormat::Json => "json",
                LogFormat::Text => "text",
            }
        ),
    ];
    match role {
        SidecarRole::Member => {
            args.push(format!("--data-dir={DATA_DIR}"));
            args.push(format!("--peer-listen=0.0.0.0:{DEFAULT_PEER_PORT}"));
        }
        SidecarRole::Client => args.push(format!("--divider-config={CONFIG_DIR}/{DIVIDER_KEY}")),
    }
    for (name, size) in &spec.sequence_ranges {
        args.push(format!("--sequence-range={name}={size}"));
    }
    args.extend(logs.to_args());
    args
}

/// Environment of the sidecar: its id defaults to the pod name.
pub fn sidecar_env() -> Vec<EnvVar> {
    vec![EnvVar {
        name: "POD_NAME".into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: "metadata.name".into(), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    }]
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("admin".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

/// The sidecar container.
pub fn sidecar_container(role: SidecarRole, spec: &SidecarSpec, logs: &LogArgs) -> Container {
    let mut ports = vec![ContainerPort {
        name: Some("admin".into()),
        container_port: DEFAULT_ADMIN_PORT.into(),
        ..Default::default()
    }];
    let mut mounts = vec![
        mount(SOCKET_VOLUME, SOCKET_DIR, false),
        mount(CONFIG_VOLUME, CONFIG_DIR, true),
        mount(TOKEN_VOLUME, TOKEN_DIR, true),
    ];
    if role == SidecarRole::Member {
        ports.insert(
            0,
            ContainerPort { name: Some("peer".into()), container_port: DEFAULT_PEER_PORT.into(), ..Default::default() },
        );
        mounts.push(mount(DATA_VOLUME, DATA_DIR, false));
    }
    Container {
        name: SIDECAR_CONTAINER.into(),
        image: Some(spec.image.clone()),
        image_pull_policy: spec.image_pull_policy.clone(),
        args: Some(sidecar_args(role, spec, logs)),
        env: Some(sidecar_env()),
        ports: Some(ports),
        volume_mounts: Some(mounts),
        resources: spec.resources.clone(),
        startup_probe: Some(http_probe("/live", 2, 30)),
        liveness_probe: Some(http_probe("/live", 10, 3)),
        readiness_probe: Some(http_probe("/ready", 5, 2)),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(SIDECAR_UID),
            run_as_group: Some(SIDECAR_UID),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Default::default() }),
            ..Default::default()
        }),
        restart_policy: (spec.mode == SidecarMode::Native).then(|| "Always".to_string()),
        ..Default::default()
    }
}

/// Everything that varies between the two kinds' pods.
pub struct PodParts<'a> {
    /// The user's template (app containers), possibly empty.
    pub app: &'a PodTemplateSpec,
    /// Sidecar settings.
    pub sidecar: &'a SidecarSpec,
    /// Member or client.
    pub role: SidecarRole,
    /// Labels the pods carry (selector labels included).
    pub labels: BTreeMap<String, String>,
    /// Selector labels, for topology spread.
    pub selector: BTreeMap<String, String>,
    /// ConfigMap with the members file.
    pub config_map: String,
    /// Secret with the peer token.
    pub secret: String,
    /// Annotations that roll the pods when they change (e.g. a config hash), if any.
    pub annotations: BTreeMap<String, String>,
    /// Log stream settings of the SeqCluster.
    pub logs: &'a LogArgs,
    /// `terminationGracePeriodSeconds`, when the pod needs longer than Kubernetes' default to
    /// leave (a WorkDivider pod hands its keys over first).
    pub grace_period_seconds: Option<i64>,
}

/// The pod template: app containers with the socket mounted and `ORDO_SOCKET` set, plus the
/// sidecar as a native sidecar (or a plain container by option, or when there is no app).
pub fn pod_template(parts: PodParts<'_>) -> PodTemplateSpec {
    let mut spec: PodSpec = parts.app.spec.clone().unwrap_or_default();
    let mut meta: ObjectMeta = parts.app.metadata.clone().unwrap_or_default();
    let mut labels = meta.labels.take().unwrap_or_default();
    labels.extend(parts.labels);
    meta.labels = Some(labels);
    if !parts.annotations.is_empty() {
        let mut annotations = meta.annotations.take().unwrap_or_default();
        annotations.extend(parts.annotations);
        meta.annotations = Some(annotations);
    }

    for c in &mut spec.containers {
        let mounts = c.volume_mounts.get_or_insert_with(Vec::new);
        mounts.push(mount(SOCKET_VOLUME, SOCKET_DIR, false));
        let env = c.env.get_or_insert_with(Vec::new);
        if !env.iter().any(|e| e.name == "ORDO_SOCKET") {
            env.push(EnvVar { name: "ORDO_SOCKET".into(), value: Some(DEFAULT_SOCKET.into()), ..Default::default() });
        }
    }

    let mut sidecar = sidecar_container(parts.role, parts.sidecar, parts.logs);
    if parts.sidecar.mode == SidecarMode::Native && !spec.containers.is_empty() {
        spec.init_containers.get_or_insert_with(Vec::new).push(sidecar);
    } else {
        sidecar.restart_policy = None;
        spec.containers.push(sidecar);
    }

    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    volumes.push(Volume {
        name: SOCKET_VOLUME.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    });
    volumes.push(Volume {
        name: CONFIG_VOLUME.into(),
        config_map: Some(ConfigMapVolumeSource { name: parts.config_map, ..Default::default() }),
        ..Default::default()
    });
    volumes.push(Volume {
        name: TOKEN_VOLUME.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(parts.secret),
            default_mode: Some(0o440),
            ..Default::default()
        }),
        ..Default::default()
    });

    // The sidecar container itself runs non-root with a read-only root filesystem; the app
    // containers' identity stays the user's choice. fsGroup makes the data volume writable.
    let security = spec.security_context.get_or_insert_with(PodSecurityContext::default);
    security.fs_group.get_or_insert(SIDECAR_UID);
    security.seccomp_profile.get_or_insert(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() });
    if spec.topology_spread_constraints.is_none() {
        spec.topology_spread_constraints = Some(vec![TopologySpreadConstraint {
            max_skew: 1,
            topology_key: "kubernetes.io/hostname".into(),
            when_unsatisfiable: "ScheduleAnyway".into(),
            label_selector: Some(LabelSelector { match_labels: Some(parts.selector), ..Default::default() }),
            ..Default::default()
        }]);
    }
    // SIGTERM drains the sidecar (and hands keys off in a WorkDivider) before the kill.
    let drain_s = (parts.sidecar.drain_timeout_ms / 1000) + 10;
    let grace =
        spec.termination_grace_period_seconds.unwrap_or(30).max(drain_s).max(parts.grace_period_seconds.unwrap_or(0));
    spec.termination_grace_period_seconds = Some(grace);

    PodTemplateSpec { metadata: Some(meta), spec: Some(spec) }
}
