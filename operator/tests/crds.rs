//! Generated CRDs: no drift from the types, every CEL rule rejects a violating object, and the
//! samples under examples/k8s are valid against the generated schemas.

mod common;

use kube::core::cel::Validator;
use ordo_operator::crdgen;
use serde_json::{json, Value};

#[test]
fn committed_crds_match_the_types() {
    for dir in crdgen::output_dirs(&common::root()) {
        for (name, yaml) in crdgen::crd_documents() {
            let path = dir.join(name);
            let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(
                committed == yaml,
                "{} differs from the Rust types; run `cargo run -p ordo-operator -- crdgen` and commit",
                path.display()
            );
        }
    }
}

fn crd_schema(file: &str) -> Value {
    let text = std::fs::read_to_string(common::root().join("crds").join(file)).unwrap();
    let crd: Value = serde_yaml::from_str(&text).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

fn seqc_schema() -> Value {
    crd_schema("seqclusters.ordo.dev.yaml")
}
fn wdiv_schema() -> Value {
    crd_schema("workdividers.ordo.dev.yaml")
}

fn cel(schema: &Value, obj: &Value) -> Result<(), String> {
    Validator::new().validate(schema, obj, None).map_err(|e| e.to_string())
}

fn seqc(spec: Value) -> Value {
    json!({"apiVersion": "ordo.dev/v1alpha1", "kind": "SeqCluster", "metadata": {"name": "s"}, "spec": spec})
}

/// Violating objects per CEL rule, shared with the real-API-server suite (e2e/apiserver).
const CEL_VIOLATIONS: &str = "cel-violations.yaml";

/// A WorkDivider whose spec is the fixture's base with `spec`'s fields replaced.
fn wdiv(spec: Value) -> Value {
    let fixture: Value = common::fixture(CEL_VIOLATIONS);
    let mut base = fixture["workDividerBase"].clone();
    for (k, v) in spec.as_object().unwrap() {
        base[k] = v.clone();
    }
    json!({"apiVersion": "ordo.dev/v1alpha1", "kind": "WorkDivider", "metadata": {"name": "w"}, "spec": base})
}

/// Asserts `obj` is rejected with a message containing `expected`.
fn rejects(schema: &Value, obj: Value, expected: &str) {
    match cel(schema, &obj) {
        Ok(()) => panic!("accepted {obj}, expected a rejection mentioning {expected:?}"),
        Err(e) => assert!(e.contains(expected), "rejection of {obj} was {e:?}, expected {expected:?}"),
    }
}

#[test]
fn valid_objects_pass_every_rule() {
    cel(&seqc_schema(), &seqc(json!({}))).unwrap();
    cel(&seqc_schema(), &seqc(json!({"replicas": 5, "readQuorum": 2, "writeQuorum": 4}))).unwrap();
    cel(&wdiv_schema(), &wdiv(json!({}))).unwrap();
    cel(&wdiv_schema(), &wdiv(json!({"keys": {"names": ["a", "b/c"]}}))).unwrap();
}

/// Every case of `tests/fixtures/cel-violations.yaml` (shared with the real-API-server suite,
/// e2e/apiserver) is rejected with its message.
#[test]
fn each_cel_rule_rejects_its_violating_object() {
    let fixture: Value = common::fixture(CEL_VIOLATIONS);
    let cases = fixture["cases"].as_array().unwrap();
    for kind in ["SeqCluster", "WorkDivider"] {
        assert!(cases.iter().any(|c| c["kind"] == kind), "no {kind} case in the fixture");
    }
    for case in cases {
        let message = case["message"].as_str().unwrap();
        match case["kind"].as_str().unwrap() {
            "SeqCluster" => rejects(&seqc_schema(), seqc(case["spec"].clone()), message),
            "WorkDivider" => rejects(&wdiv_schema(), wdiv(case["spec"].clone()), message),
            other => panic!("unknown kind {other} in cel-violations.yaml"),
        }
    }
}

/// Structural check of an object against an OpenAPI v3 schema: types, required fields, enums,
/// and no unknown fields (the API server would prune them silently).
fn structural(schema: &Value, obj: &Value, path: &str, errors: &mut Vec<String>) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true)) && schema.get("properties").is_none() {
        return;
    }
    if obj.is_null() && schema.get("nullable") == Some(&json!(true)) {
        return;
    }
    if schema.get("x-kubernetes-int-or-string") == Some(&json!(true)) {
        if !(obj.is_string() || obj.is_i64()) {
            errors.push(format!("{path}: expected int or string"));
        }
        return;
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        if !values.contains(obj) {
            errors.push(format!("{path}: {obj} not in {values:?}"));
        }
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => {
            let Some(map) = obj.as_object() else {
                return errors.push(format!("{path}: expected an object"));
            };
            for r in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
                if !map.contains_key(r.as_str().unwrap()) {
                    errors.push(format!("{path}: missing required {r}"));
                }
            }
            let props = schema.get("properties").and_then(Value::as_object);
            for (k, v) in map {
                match (props.and_then(|p| p.get(k)), schema.get("additionalProperties")) {
                    (Some(s), _) => structural(s, v, &format!("{path}.{k}"), errors),
                    (None, Some(s)) if s.is_object() => structural(s, v, &format!("{path}.{k}"), errors),
                    _ if path.is_empty() && ["apiVersion", "kind", "metadata"].contains(&k.as_str()) => {}
                    _ => errors.push(format!("{path}.{k}: unknown field (would be pruned)")),
                }
            }
        }
        Some("array") => match obj.as_array() {
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    structural(&schema["items"], item, &format!("{path}[{i}]"), errors);
                }
            }
            None => errors.push(format!("{path}: expected an array")),
        },
        Some("integer") if !obj.is_i64() => errors.push(format!("{path}: expected an integer")),
        Some("string") if !obj.is_string() => errors.push(format!("{path}: expected a string")),
        Some("boolean") if !obj.is_boolean() => errors.push(format!("{path}: expected a boolean")),
        _ => {}
    }
}

#[test]
fn samples_validate_against_the_generated_schemas() {
    let dir = common::root().join("examples/k8s");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let obj: Value = serde::Deserialize::deserialize(doc).unwrap();
            let schema = match obj["kind"].as_str() {
                Some("SeqCluster") => seqc_schema(),
                Some("WorkDivider") => wdiv_schema(),
                _ => continue,
            };
            let mut errors = Vec::new();
            structural(&schema, &obj, "", &mut errors);
            assert!(errors.is_empty(), "{}: {errors:?}", path.display());
            cel(&schema, &obj).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            // And the operator itself accepts it.
            match obj["kind"].as_str() {
                Some("SeqCluster") => {
                    let mut sc: ordo_operator::crd::SeqCluster = serde_json::from_value(obj.clone()).unwrap();
                    sc.metadata.uid = Some("u".into());
                    ordo_operator::seqcluster::validate::validate(&sc).unwrap();
                }
                _ => {
                    let mut wd: ordo_operator::crd::WorkDivider = serde_json::from_value(obj.clone()).unwrap();
                    wd.metadata.uid = Some("u".into());
                    ordo_operator::workdivider::validate::validate(&wd).unwrap();
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 3, "only {checked} samples found in {}", dir.display());
}

#[test]
fn the_structural_check_catches_what_it_claims() {
    let mut errors = Vec::new();
    structural(
        &seqc_schema(),
        &seqc(json!({"replicas": "three", "sidecar": {"mode": "Sideways"}, "bogus": 1})),
        "",
        &mut errors,
    );
    let all = errors.join("\n");
    assert!(all.contains(".spec.replicas: expected an integer"), "{all}");
    assert!(all.contains(".spec.sidecar.mode"), "{all}");
    assert!(all.contains(".spec.bogus: unknown field"), "{all}");
}
