//! `ordo-operator render`: every object the operator would apply, offline, from the same
//! validate and build steps the controllers use.

use kube::core::DynamicObject;
use ordo_contract::config::LogArgs;
use serde::Serialize;

use crate::crd::{MembershipStatus, SeqCluster, WorkDivider};
use crate::spec_error::SpecError;
use crate::{seqcluster, workdivider};

/// Token shown in a rendered Secret; the controller generates a random one on first apply.
pub const PLACEHOLDER_TOKEN: &str = "generated-by-the-operator-on-first-apply";

/// Why rendering failed.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// Input YAML does not parse.
    #[error("input does not parse: {0}")]
    Parse(#[from] serde_yaml::Error),
    /// A document is neither a SeqCluster nor a WorkDivider.
    #[error("document {index}: kind {kind:?} is not SeqCluster or WorkDivider (apiVersion ordo.dev/v1alpha1)")]
    UnknownKind {
        /// Document index.
        index: usize,
        /// Its kind.
        kind: String,
    },
    /// A spec is unusable.
    #[error("{kind} {name}: {source}")]
    Invalid {
        /// Kind.
        kind: &'static str,
        /// Name.
        name: String,
        /// Problems.
        #[source]
        source: SpecError,
    },
    /// An input file could not be read.
    #[error("reading {path}")]
    Read {
        /// The file (`-` for stdin).
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A WorkDivider references a SeqCluster not in the input.
    #[error("WorkDivider {0} references SeqCluster {1}, which is not in the input; pass it too (-f)")]
    MissingSeqCluster(String, String),
}

/// Reads `files` (`-` is stdin) as one multi-document input and renders it.
pub fn render_files(files: &[std::path::PathBuf]) -> Result<String, RenderError> {
    let mut input = String::new();
    for f in files {
        let read =
            if f.as_os_str() == "-" { std::io::read_to_string(std::io::stdin()) } else { std::fs::read_to_string(f) };
        let text = read.map_err(|source| RenderError::Read { path: f.display().to_string(), source })?;
        input.push_str(&text);
        input.push_str("\n---\n");
    }
    render(&input)
}

/// Objects give offline rendering what the API server would fill in.
fn offline<T: kube::Resource>(mut obj: T) -> T {
    let meta = obj.meta_mut();
    meta.namespace.get_or_insert_with(|| "default".into());
    meta.uid.get_or_insert_with(|| "00000000-0000-0000-0000-000000000000".into());
    meta.generation.get_or_insert(1);
    obj
}

fn push<T: Serialize>(out: &mut String, obj: &T) {
    out.push_str("---\n");
    out.push_str(&serde_yaml::to_string(obj).expect("object serializes"));
}

fn with_type<K: kube::Resource<DynamicType = ()> + Serialize>(obj: &K) -> serde_json::Value {
    let mut v = serde_json::to_value(obj).expect("object serializes");
    v["apiVersion"] = K::api_version(&()).into();
    v["kind"] = K::kind(&()).into();
    v
}

/// Renders every object for the SeqClusters and WorkDividers in `input` (multi-document YAML).
/// A SeqCluster renders as if its spec's configuration were already applied (epoch 1, or its
/// status' configuration when present).
pub fn render(input: &str) -> Result<String, RenderError> {
    let mut seqclusters = Vec::new();
    let mut dividers = Vec::new();
    for (index, doc) in serde_yaml::Deserializer::from_str(input).enumerate() {
        let value = serde_yaml::Value::deserialize(doc)?;
        if value.is_null() {
            continue;
        }
        let obj: DynamicObject = serde_yaml::from_value(value.clone())?;
        let kind = obj.types.as_ref().map(|t| t.kind.clone()).unwrap_or_default();
        match kind.as_str() {
            "SeqCluster" => seqclusters.push(offline(serde_yaml::from_value::<SeqCluster>(value)?)),
            "WorkDivider" => dividers.push(offline(serde_yaml::from_value::<WorkDivider>(value)?)),
            _ => return Err(RenderError::UnknownKind { index, kind }),
        }
    }
    let mut out = String::new();
    let mut memberships: Vec<(String, String, MembershipStatus, LogArgs)> = Vec::new();
    for sc in &seqclusters {
        let v = seqcluster::validate::validate(sc).map_err(|source| RenderError::Invalid {
            kind: "SeqCluster",
            name: sc.metadata.name.clone().unwrap_or_default(),
            source,
        })?;
        let plan = seqcluster::scaling::plan(
            &v.name,
            &seqcluster::build::desired_set(&v),
            sc.status.as_ref().and_then(|s| s.membership.as_ref()),
            &Default::default(),
        );
        let o = seqcluster::build::build(&v, &plan.membership, plan.statefulset_replicas, PLACEHOLDER_TOKEN);
        push(&mut out, &with_type(&o.service));
        push(&mut out, &with_type(&o.config_map));
        push(&mut out, &with_type(&o.secret));
        push(&mut out, &with_type(&o.statefulset));
        if let Some(p) = &o.pdb {
            push(&mut out, &with_type(p));
        }
        if let Some(n) = &o.network_policy {
            push(&mut out, &with_type(n));
        }
        memberships.push((v.namespace.clone(), v.name.clone(), plan.membership, v.logs.clone()));
    }
    for wd in &dividers {
        let v = workdivider::validate::validate(wd).map_err(|source| RenderError::Invalid {
            kind: "WorkDivider",
            name: wd.metadata.name.clone().unwrap_or_default(),
            source,
        })?;
        let (membership, logs) = memberships
            .iter()
            .find(|(ns, name, _, _)| *ns == v.namespace && *name == v.seq_cluster)
            .map(|(_, _, m, l)| (m, l))
            .ok_or_else(|| RenderError::MissingSeqCluster(v.name.clone(), v.seq_cluster.clone()))?;
        let o = workdivider::build::build(&v, membership, logs);
        push(&mut out, &with_type(&o.service));
        push(&mut out, &with_type(&o.config_map));
        push(&mut out, &with_type(&o.statefulset));
    }
    Ok(out)
}

use serde::Deserialize as _;
