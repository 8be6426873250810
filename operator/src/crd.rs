//! The `ordo.dev/v1alpha1` custom resources: [`SeqCluster`] and [`WorkDivider`].
//!
//! Validation that the API server can do lives here as CEL rules (`x-kubernetes-validations`);
//! whatever passes the schema but is still unusable is caught by each kind's `validate` step
//! and reported as a `Degraded` condition.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of Ordo's resources.
pub const GROUP: &str = "ordo.dev";
/// Default sidecar image (overridden per object with `spec.sidecar.image`).
pub const DEFAULT_SIDECAR_IMAGE: &str = "ghcr.io/ordo-dev/ordo-sidecar:0.1.0";

/// A leaderless quorum cluster of `ordo-sidecar` members (sequencer, log streams, key store).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ordo.dev",
    version = "v1alpha1",
    kind = "SeqCluster",
    namespaced,
    shortname = "seqc",
    category = "ordo",
    status = "SeqClusterStatus",
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".spec.replicas"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyMembers"}"#,
    printcolumn = r#"{"name":"Epoch","type":"integer","jsonPath":".status.membership.epoch"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.membership.phase"}"#,
    printcolumn = r#"{"name":"Available","type":"string","jsonPath":".status.conditions[?(@.type==\"Available\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.replicas >= 1 && self.replicas <= 31").message("replicas must be between 1 and 31").field_path(".replicas"),
    validation = Rule::new("!has(self.readQuorum) || (self.readQuorum >= 1 && self.readQuorum <= self.replicas)").message("readQuorum must be between 1 and replicas").field_path(".readQuorum"),
    validation = Rule::new("!has(self.writeQuorum) || (self.writeQuorum >= 1 && self.writeQuorum <= self.replicas)").message("writeQuorum must be between 1 and replicas").field_path(".writeQuorum"),
    validation = Rule::new("(has(self.readQuorum) ? self.readQuorum : self.replicas / 2 + 1) + (has(self.writeQuorum) ? self.writeQuorum : self.replicas / 2 + 1) > self.replicas").message("readQuorum + writeQuorum must exceed replicas (R + W > N), so every read quorum meets every write quorum"),
    validation = Rule::new("2 * (has(self.writeQuorum) ? self.writeQuorum : self.replicas / 2 + 1) > self.replicas").message("twice writeQuorum must exceed replicas (2W > N), so two write quorums always overlap"),
    validation = Rule::new("!has(self.logs) || !has(self.logs.replicationFactor) || self.logs.replicationFactor <= self.replicas").message("logs.replicationFactor must be at most replicas").field_path(".logs.replicationFactor"),
    validation = Rule::new("!has(self.logs) || !has(self.logs.ackQuorum) || self.logs.ackQuorum <= (has(self.logs.replicationFactor) ? self.logs.replicationFactor : (self.replicas < 3 ? self.replicas : 3))").message("logs.ackQuorum must be at most logs.replicationFactor (default: replicas, at most 3)").field_path(".logs.ackQuorum")
)]
pub struct SeqClusterSpec {
    /// Number of members (1..=31).
    #[serde(default = "default_replicas")]
    pub replicas: i32,
    /// Prepare (read) quorum size; majority when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_quorum: Option<i32>,
    /// Accept (write) quorum size; majority when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_quorum: Option<i32>,
    /// The `ordo-sidecar` container.
    #[serde(default)]
    pub sidecar: SidecarSpec,
    /// Durable storage of each member (one PersistentVolumeClaim per pod).
    #[serde(default)]
    pub storage: StorageSpec,
    /// Optional pod template with the app containers that run next to each member's sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "pod_template_schema")]
    pub template: Option<serde_json::Value>,
    /// Create a PodDisruptionBudget that keeps a write quorum up.
    #[serde(default = "default_true")]
    pub pod_disruption_budget: bool,
    /// Create a NetworkPolicy that limits the peer port to members and their WorkDividers.
    #[serde(default = "default_true")]
    pub network_policy: bool,
    /// Log streams: defaults for streams created without their own settings, limits, retention.
    #[serde(default)]
    pub logs: LogsSpec,
}

/// Log stream settings of a SeqCluster, rendered into every sidecar of the cluster and of the
/// WorkDividers that use it. Rules: `1 <= ackQuorum <= replicationFactor <= replicas`,
/// `maxEntryBytes <= maxBatchBytes <= maxInflightBytes <= 48Mi`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.replicationFactor) || (self.replicationFactor >= 1 && self.replicationFactor <= 31)").message("logs.replicationFactor must be between 1 and 31").field_path(".replicationFactor"),
    validation = Rule::new("!has(self.ackQuorum) || self.ackQuorum >= 1").message("logs.ackQuorum must be at least 1").field_path(".ackQuorum"),
    validation = Rule::new("self.maxEntryBytes >= 1 && self.maxEntryBytes <= self.maxBatchBytes && self.maxBatchBytes <= self.maxInflightBytes && self.maxInflightBytes <= 50331648").message("logs limits must satisfy 1 <= maxEntryBytes <= maxBatchBytes <= maxInflightBytes <= 50331648 (48Mi)").field_path(".maxEntryBytes"),
    validation = Rule::new("self.maxBatchEntries >= 1 && self.maxBatchEntries <= 1000000").message("logs.maxBatchEntries must be between 1 and 1000000").field_path(".maxBatchEntries"),
    validation = Rule::new("self.retentionSeconds >= 0 && self.retentionBytes >= 0").message("logs.retentionSeconds and logs.retentionBytes must be 0 (no limit) or more"),
    validation = Rule::new("!has(self.rebalanceMoves) || (self.rebalanceMoves >= 0 && self.rebalanceMoves <= 16)").message("logs.rebalanceMoves must be between 0 (off) and 16").field_path(".rebalanceMoves")
)]
pub struct LogsSpec {
    /// Replicas of a stream created without its own setting; `min(3, replicas)` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_factor: Option<i32>,
    /// Replicas that must hold an entry durably before it is acknowledged; a majority of the
    /// replication factor when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_quorum: Option<i32>,
    /// Largest entry, bytes.
    #[serde(default = "default_max_entry_bytes")]
    pub max_entry_bytes: i64,
    /// Largest batch, bytes.
    #[serde(default = "default_max_batch_bytes")]
    pub max_batch_bytes: i64,
    /// Most entries in one batch.
    #[serde(default = "default_max_batch_entries")]
    pub max_batch_entries: i64,
    /// Append bytes one app connection may have in flight before the sidecar applies
    /// backpressure.
    #[serde(default = "default_max_inflight_bytes")]
    pub max_inflight_bytes: i64,
    /// Trim entries older than this many seconds; 0 keeps them until the app trims.
    #[serde(default)]
    pub retention_seconds: i64,
    /// Trim a stream's oldest entries beyond this many bytes; 0 means no limit.
    #[serde(default)]
    pub retention_bytes: i64,
    /// Create a stream on its first append, with these defaults.
    #[serde(default = "default_true")]
    pub auto_create: bool,
    /// After a membership change, move stream replicas until every member holds within one of
    /// the mean, this many streams at once; 0 switches the rebalance off.
    #[serde(default = "default_rebalance_moves")]
    pub rebalance_moves: i64,
}

impl Default for LogsSpec {
    fn default() -> Self {
        Self {
            replication_factor: None,
            ack_quorum: None,
            max_entry_bytes: default_max_entry_bytes(),
            max_batch_bytes: default_max_batch_bytes(),
            max_batch_entries: default_max_batch_entries(),
            max_inflight_bytes: default_max_inflight_bytes(),
            retention_seconds: 0,
            retention_bytes: 0,
            auto_create: true,
            rebalance_moves: default_rebalance_moves(),
        }
    }
}

/// How the sidecar joins the pod.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum SidecarMode {
    /// Init container with `restartPolicy: Always` (Kubernetes >= 1.29): starts before and stops
    /// after the app containers.
    #[default]
    Native,
    /// A plain container, for older clusters.
    Container,
}

/// Log format of the sidecar.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// Human-readable lines.
    Text,
}

/// Settings of the `ordo-sidecar` container, shared by both kinds.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.rangeSize >= 1 && self.rangeSize <= 1000000").message("rangeSize must be between 1 and 1000000").field_path(".rangeSize"),
    validation = Rule::new("self.sequenceRanges.all(k, k.matches('^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$') && self.sequenceRanges[k] >= 1 && self.sequenceRanges[k] <= 1000000)").message("sequenceRanges keys must be sequence names ([A-Za-z0-9._-], at most 128 characters) and values between 1 and 1000000").field_path(".sequenceRanges"),
    validation = Rule::new("self.requestTimeoutMs >= 10 && self.requestTimeoutMs <= 600000").message("requestTimeoutMs must be between 10 and 600000").field_path(".requestTimeoutMs"),
    validation = Rule::new("self.drainTimeoutMs >= 0 && self.drainTimeoutMs <= 600000").message("drainTimeoutMs must be between 0 and 600000").field_path(".drainTimeoutMs")
)]
pub struct SidecarSpec {
    /// Sidecar image.
    #[serde(default = "default_sidecar_image")]
    pub image: String,
    /// Image pull policy (Always, IfNotPresent, Never); Kubernetes' default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    /// Native sidecar (default) or plain container.
    #[serde(default)]
    pub mode: SidecarMode,
    /// Compute resources of the sidecar container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// IDs leased per buffer refill, for sequences without their own setting.
    #[serde(default = "default_range_size")]
    pub range_size: i64,
    /// Per-sequence range sizes, for at most 1024 sequences.
    #[serde(default)]
    // The bound keeps the CEL rule on the keys within the API server's cost budget.
    #[schemars(extend("maxProperties" = 1024))]
    pub sequence_ranges: BTreeMap<String, i64>,
    /// Deadline of one app request, in milliseconds.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: i64,
    /// How long SIGTERM waits for in-flight requests (and, in a WorkDivider, for key handoff).
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: i64,
    /// Log format.
    #[serde(default)]
    pub log_format: LogFormat,
}

impl Default for SidecarSpec {
    fn default() -> Self {
        Self {
            image: default_sidecar_image(),
            image_pull_policy: None,
            mode: SidecarMode::default(),
            resources: None,
            range_size: default_range_size(),
            sequence_ranges: BTreeMap::new(),
            request_timeout_ms: default_request_timeout_ms(),
            drain_timeout_ms: default_drain_timeout_ms(),
            log_format: LogFormat::default(),
        }
    }
}

/// Per-member storage.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.size.matches('^[0-9]+(\\\\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$')").message("size must be a storage quantity such as 1Gi or 500Mi").field_path(".size")
)]
pub struct StorageSpec {
    /// Size of each member's volume.
    #[serde(default = "default_storage_size")]
    pub size: String,
    /// Storage class; the cluster default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self { size: default_storage_size(), storage_class_name: None }
    }
}

/// Observed state of a SeqCluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SeqClusterStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Members that are ready (caught up, quorum reachable).
    #[serde(default)]
    pub ready_members: i32,
    /// The member configuration the operator has written, and how far a change has got.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub membership: Option<MembershipStatus>,
    /// Per-member state as reported by each sidecar's `/status`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberState>,
    /// `Available`, `Progressing`, `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Phase of the member configuration.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum MembershipPhase {
    /// One configuration; nothing in flight.
    #[default]
    Stable,
    /// Joint configuration written (new members with `previous`); waiting for every new member
    /// to report it has migrated.
    Joint,
    /// New configuration alone written; waiting for every member to load it before shrinking.
    Finalizing,
}

/// The applied member configuration. Members are the StatefulSet ordinals `0..members`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MembershipStatus {
    /// Epoch of the members file in the ConfigMap.
    pub epoch: i64,
    /// The current configuration.
    pub current: MemberSetStatus,
    /// The configuration being left while a change is in flight (`Joint`, `Finalizing`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<MemberSetStatus>,
    /// Where the change stands.
    #[serde(default)]
    pub phase: MembershipPhase,
}

/// One member configuration: ordinals `0..members` and its quorum sizes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberSetStatus {
    /// Number of members.
    pub members: i32,
    /// Read quorum; majority when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_quorum: Option<i32>,
    /// Write quorum; majority when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_quorum: Option<i32>,
}

/// One member's state.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberState {
    /// Member id (pod name).
    pub id: String,
    /// Whether its `/status` answered.
    pub reachable: bool,
    /// Ready: caught up and a quorum reachable.
    pub ready: bool,
    /// Members-file epoch it runs with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<i64>,
    /// Highest epoch whose registers it has migrated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrated_epoch: Option<i64>,
    /// Caught up with the quorum.
    pub caught_up: bool,
}

/// A group of pods among which work keys are divided in proportion to affinity; their sidecars
/// are clients of a SeqCluster.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ordo.dev",
    version = "v1alpha1",
    kind = "WorkDivider",
    namespaced,
    shortname = "wdiv",
    category = "ordo",
    status = "WorkDividerStatus",
    printcolumn = r#"{"name":"SeqCluster","type":"string","jsonPath":".spec.seqClusterRef.name"}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".spec.replicas"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyReplicas"}"#,
    printcolumn = r#"{"name":"Keys","type":"integer","jsonPath":".status.keys"}"#,
    printcolumn = r#"{"name":"Unowned","type":"integer","jsonPath":".status.unownedKeys"}"#,
    printcolumn = r#"{"name":"Available","type":"string","jsonPath":".status.conditions[?(@.type==\"Available\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.replicas >= 0 && self.replicas <= 1000").message("replicas must be between 0 and 1000").field_path(".replicas"),
    validation = Rule::new("self.defaultAffinity >= 0 && self.defaultAffinity <= 1000000").message("defaultAffinity must be between 0 (no work) and 1000000").field_path(".defaultAffinity"),
    validation = Rule::new("self.leaseMs >= 1000 && self.leaseMs <= 600000").message("leaseMs must be between 1000 and 600000").field_path(".leaseMs"),
    validation = Rule::new("self.stopTimeoutMs >= 0 && self.stopTimeoutMs <= 3600000").message("stopTimeoutMs must be between 0 and 3600000").field_path(".stopTimeoutMs")
)]
pub struct WorkDividerSpec {
    /// The SeqCluster (same namespace) whose quorum store holds the keys and leases.
    pub seq_cluster_ref: SeqClusterRef,
    /// Number of pods.
    #[serde(default = "default_divider_replicas")]
    pub replicas: i32,
    /// Keys to divide (more can be added by apps at run time).
    pub keys: KeySpec,
    /// Affinity of each pod until it sets its own; higher means proportionally more keys, 0 none.
    #[serde(default = "default_affinity")]
    pub default_affinity: i64,
    /// Length of a member's lease on its keys, ms. A member that cannot renew it stops its keys
    /// before it expires; once it expires, its keys move to other members.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: i64,
    /// How long a key's old owner has to confirm a stop before the key moves without it (its
    /// token is then dead). A leaving pod's grace period covers this plus the drain timeout.
    #[serde(default = "default_stop_timeout_ms")]
    pub stop_timeout_ms: i64,
    /// The `ordo-sidecar` container.
    #[serde(default)]
    pub sidecar: SidecarSpec,
    /// Pod template with the app containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "pod_template_schema")]
    pub template: Option<serde_json::Value>,
}

/// Reference to a SeqCluster in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("size(self.name) <= 52 && self.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("seqClusterRef.name must be the name of a SeqCluster: a DNS label of at most 52 characters").field_path(".name")
)]
pub struct SeqClusterRef {
    /// Name of the SeqCluster.
    #[schemars(length(max = 52))]
    pub name: String,
}

/// Static keys of a WorkDivider: `partitions` numbered keys with a `prefix`, or explicit `names`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.partitions) != has(self.names)").message("keys needs exactly one of partitions or names"),
    validation = Rule::new("!has(self.partitions) || (self.partitions >= 1 && self.partitions <= 65536)").message("keys.partitions must be between 1 and 65536").field_path(".partitions"),
    validation = Rule::new("!has(self.prefix) || has(self.partitions)").message("keys.prefix only applies to keys.partitions").field_path(".prefix"),
    validation = Rule::new("!has(self.prefix) || self.prefix.matches('^[A-Za-z0-9._/-]{0,64}$')").message("keys.prefix must be at most 64 characters of [A-Za-z0-9._/-]").field_path(".prefix")
)]
pub struct KeySpec {
    /// Number of numbered keys `<prefix><i>`, `i` in `0..partitions`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<i32>,
    /// Prefix of numbered keys; `p-` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub prefix: Option<String>,
    /// Explicit key names: 1 to 65536 names of `[A-Za-z0-9._/-]`, at most 128 characters each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    // Checked by the schema, not CEL: a CEL rule over 65536 strings exceeds the API server's cost
    // budget, and the API server refuses the CRD (e2e/apiserver check 1).
    #[schemars(
        length(min = 1, max = 65536),
        inner(length(max = 128), regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$"))
    )]
    pub names: Option<Vec<String>>,
}

/// A live member of a WorkDivider's divider, as its pods report it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkDividerMember {
    /// Member id (by default the pod's name).
    pub id: String,
    /// Its affinity.
    pub affinity: i64,
    /// Keys the assignment gives it.
    pub assigned_keys: i64,
    /// Keys it holds now.
    pub keys: i64,
}

/// Observed state of a WorkDivider.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkDividerStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pods that are ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Epoch of the SeqCluster member list copied into this WorkDivider's ConfigMap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq_cluster_epoch: Option<i64>,
    /// Keys in the divider's key set (unset until a pod reported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<i64>,
    /// Keys that no answering pod's member holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unowned_keys: Option<i64>,
    /// Live members: affinity, keys assigned and keys held (as the pods report them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<WorkDividerMember>,
    /// `Available`, `Progressing`, `Degraded`, `KeysOwned`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

fn pod_template_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "A PodTemplateSpec (metadata and spec) with the app containers; checked by the operator.",
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

fn default_replicas() -> i32 {
    3
}
fn default_divider_replicas() -> i32 {
    2
}
fn default_true() -> bool {
    true
}
fn default_affinity() -> i64 {
    1
}
fn default_sidecar_image() -> String {
    DEFAULT_SIDECAR_IMAGE.to_string()
}
fn default_range_size() -> i64 {
    ordo_contract::config::DEFAULT_RANGE_SIZE as i64
}
fn default_request_timeout_ms() -> i64 {
    2000
}
fn default_drain_timeout_ms() -> i64 {
    5000
}
fn default_max_entry_bytes() -> i64 {
    ordo_contract::config::DEFAULT_MAX_ENTRY_BYTES as i64
}
fn default_max_batch_bytes() -> i64 {
    ordo_contract::config::DEFAULT_MAX_BATCH_BYTES as i64
}
fn default_max_batch_entries() -> i64 {
    i64::from(ordo_contract::config::DEFAULT_MAX_BATCH_ENTRIES)
}
fn default_rebalance_moves() -> i64 {
    i64::from(ordo_contract::config::DEFAULT_REBALANCE_MOVES)
}
fn default_max_inflight_bytes() -> i64 {
    ordo_contract::config::DEFAULT_MAX_INFLIGHT_BYTES as i64
}
fn default_lease_ms() -> i64 {
    ordo_contract::divider::DEFAULT_LEASE_MS as i64
}
fn default_stop_timeout_ms() -> i64 {
    ordo_contract::divider::DEFAULT_STOP_TIMEOUT_MS as i64
}
fn default_storage_size() -> String {
    "1Gi".to_string()
}
