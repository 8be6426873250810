//! The Helm chart, rendered and linted by Helm's own engine (PyPI `helm-python-sdk`, installed
//! into `.venv` by `scripts/test-deps.sh`): every rendered object parses into its k8s-openapi
//! type, RBAC grants exactly what operator/src/rbac.rs says the code uses, values.schema.json
//! rejects bad values, and the chart ships the generated CRDs.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use ordo_operator::rbac::REQUIRED;
use serde_json::Value;

/// Runs the render script; `None` (test skipped) when the venv is missing and not required.
fn helm_output() -> Option<Value> {
    let python = common::venv_python()?;
    let script = common::root().join("operator/tests/py/helm_render.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(common::root().join("charts/ordo"))
        .output()
        .expect("run helm_render.py");
    assert!(out.status.success(), "helm_render.py failed: {}", String::from_utf8_lossy(&out.stderr));
    Some(serde_json::from_slice(&out.stdout).expect("helm_render.py prints JSON"))
}

/// Every object of one render, by kind.
#[derive(Default)]
struct Rendered {
    deployments: Vec<Deployment>,
    service_accounts: Vec<ServiceAccount>,
    services: Vec<Service>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    roles: Vec<Role>,
    role_bindings: Vec<RoleBinding>,
}

fn parse_render(manifests: &serde_json::Map<String, Value>) -> Rendered {
    let mut r = Rendered::default();
    for (path, text) in manifests {
        if path.ends_with("NOTES.txt") {
            continue;
        }
        for doc in serde_yaml::Deserializer::from_str(text.as_str().unwrap()) {
            let v: Value = serde::Deserialize::deserialize(doc).unwrap();
            if v.is_null() {
                continue;
            }
            let kind = v["kind"].as_str().unwrap_or_default().to_string();
            let ctx = format!("{path}: {kind}");
            fn typed<T: serde::de::DeserializeOwned>(v: Value, ctx: &str) -> T {
                serde_json::from_value(v).unwrap_or_else(|e| panic!("{ctx} does not parse: {e}"))
            }
            match kind.as_str() {
                "Deployment" => r.deployments.push(typed(v, &ctx)),
                "ServiceAccount" => r.service_accounts.push(typed(v, &ctx)),
                "Service" => r.services.push(typed(v, &ctx)),
                "ClusterRole" => r.cluster_roles.push(typed(v, &ctx)),
                "ClusterRoleBinding" => r.cluster_role_bindings.push(typed(v, &ctx)),
                "Role" => r.roles.push(typed(v, &ctx)),
                "RoleBinding" => r.role_bindings.push(typed(v, &ctx)),
                other => panic!("{path}: unexpected kind {other:?}; add it to this test"),
            }
        }
    }
    r
}

/// (group, resource, verb) triples granted by some rules.
fn grants(rules: &[PolicyRule]) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for rule in rules {
        for g in rule.api_groups.iter().flatten() {
            for res in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    out.insert((g.clone(), res.clone(), verb.clone()));
                }
            }
        }
    }
    out
}

#[test]
fn chart_renders_lints_and_grants_exactly_what_the_code_uses() {
    let Some(out) = helm_output() else { return };
    let lint = &out["lint"];
    assert_eq!(lint["errors"], serde_json::json!([]), "helm lint errors: {lint}");
    for m in lint["messages"].as_array().unwrap() {
        assert!(m["severity"].as_i64().unwrap() < 2, "helm lint warning or error: {m}");
    }

    let required: BTreeSet<(String, String, String)> = REQUIRED
        .iter()
        .flat_map(|p| p.verbs.iter().map(move |v| (p.group.to_string(), p.resource.to_string(), v.to_string())))
        .collect();

    for (case, manifests) in out["renders"].as_object().unwrap() {
        let r = parse_render(manifests.as_object().unwrap());
        assert_eq!(r.deployments.len(), 1, "{case}");
        let d = &r.deployments[0];
        let labels = d.metadata.labels.as_ref().unwrap();
        for key in [
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/version",
            "app.kubernetes.io/managed-by",
            "helm.sh/chart",
        ] {
            assert!(labels.contains_key(key), "{case}: Deployment lacks label {key}");
        }
        let pod = d.spec.template.spec.as_ref().unwrap();
        let c = &pod.containers[0];
        let env: BTreeMap<_, _> = c.env.iter().flatten().map(|e| (e.name.as_str(), e)).collect();
        // The env names main.rs reads (clap `env =`).
        for name in [
            "POD_NAME",
            "POD_NAMESPACE",
            "ORDO_OPERATOR_LEASE",
            "ORDO_OPERATOR_ADMIN_LISTEN",
            "ORDO_OPERATOR_LOG_FORMAT",
        ] {
            assert!(env.contains_key(name), "{case}: operator env lacks {name}");
        }
        let port = c.ports.as_ref().unwrap()[0].container_port;
        assert_eq!(env["ORDO_OPERATOR_ADMIN_LISTEN"].value.as_deref(), Some(format!("0.0.0.0:{port}").as_str()));
        let sec = c.security_context.as_ref().unwrap();
        assert_eq!((sec.read_only_root_filesystem, sec.allow_privilege_escalation), (Some(true), Some(false)));
        assert_eq!(c.args.as_deref(), Some(&["run".to_string()][..]));

        // RBAC: the ClusterRole plus the namespaced lease Role grant exactly REQUIRED.
        let mut granted = BTreeSet::new();
        for cr in &r.cluster_roles {
            granted.extend(grants(cr.rules.as_deref().unwrap_or_default()));
        }
        for role in &r.roles {
            granted.extend(grants(role.rules.as_deref().unwrap_or_default()));
        }
        let missing: Vec<_> = required.difference(&granted).collect();
        let extra: Vec<_> = granted.difference(&required).collect();
        assert!(missing.is_empty(), "{case}: chart RBAC lacks {missing:?}");
        assert!(extra.is_empty(), "{case}: chart RBAC grants more than the code uses: {extra:?}");
        let sa = pod.service_account_name.clone().unwrap();
        for b in &r.cluster_role_bindings {
            assert!(b.subjects.iter().flatten().any(|s| s.name == sa), "{case}: binding misses {sa}");
        }
        for b in &r.role_bindings {
            assert!(b.subjects.iter().flatten().any(|s| s.name == sa), "{case}: binding misses {sa}");
        }
        match case.as_str() {
            "existing-sa" => {
                assert!(r.service_accounts.is_empty());
                assert_eq!(sa, "prebuilt");
            }
            "ha-custom" => {
                assert_eq!(d.spec.replicas, Some(2));
                assert_eq!(c.image.as_deref(), Some("registry.example/ordo-operator:1.2.3"));
                assert_eq!(port, 9090);
                assert_eq!(sa, "ordo-op");
                assert_eq!(r.service_accounts[0].metadata.name.as_deref(), Some("ordo-op"));
            }
            _ => {
                assert_eq!(c.image.as_deref(), Some("ghcr.io/ordo-dev/ordo-operator:0.1.0"));
                assert_eq!(r.service_accounts.len(), 1);
            }
        }
    }

    for (case, err) in out["schema_rejects"].as_object().unwrap() {
        assert!(err.is_string(), "values.schema.json accepted the bad values of case {case}");
    }

    let crds = out["crds"].as_array().unwrap();
    let generated = ordo_operator::crdgen::crd_documents();
    assert_eq!(crds.len(), generated.len());
    for (name, yaml) in generated {
        let shipped = crds.iter().find(|c| c["name"].as_str().unwrap().ends_with(name)).expect("chart ships the CRD");
        assert!(
            shipped["data"].as_str().unwrap() == yaml,
            "chart CRD {name} drifted; run `cargo run -p ordo-operator -- crdgen`"
        );
    }
}
