//! The API permissions the operator needs: the Helm chart's ClusterRole must grant exactly
//! these (a chart test checks it), and the mocked-API tests check every request the
//! reconcilers make is covered.

/// One RBAC rule: API group, resource, verbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permission {
    /// API group (`""` for core).
    pub group: &'static str,
    /// Resource (plural, with `/subresource`).
    pub resource: &'static str,
    /// Verbs.
    pub verbs: &'static [&'static str],
}

// Server-side apply creates an object that does not exist yet, and the API server then
// authorizes `create` as well as `patch` (found by e2e/apiserver: the chart could create nothing).
const WATCHED_OWNED: &[&str] = &["get", "list", "watch", "create", "patch"];

/// Everything the operator does with the API.
pub const REQUIRED: &[Permission] = &[
    Permission { group: "ordo.dev", resource: "seqclusters", verbs: &["get", "list", "watch"] },
    Permission { group: "ordo.dev", resource: "seqclusters/status", verbs: &["get", "patch"] },
    Permission { group: "ordo.dev", resource: "workdividers", verbs: &["get", "list", "watch"] },
    Permission { group: "ordo.dev", resource: "workdividers/status", verbs: &["get", "patch"] },
    Permission { group: "apps", resource: "statefulsets", verbs: WATCHED_OWNED },
    Permission { group: "", resource: "services", verbs: WATCHED_OWNED },
    Permission { group: "", resource: "configmaps", verbs: WATCHED_OWNED },
    // Only the peer-token Secrets, by name: no list/watch of every Secret.
    Permission { group: "", resource: "secrets", verbs: &["get", "create", "patch"] },
    Permission {
        group: "policy",
        resource: "poddisruptionbudgets",
        verbs: &["get", "list", "watch", "create", "patch", "delete"],
    },
    Permission {
        group: "networking.k8s.io",
        resource: "networkpolicies",
        verbs: &["get", "list", "watch", "create", "patch", "delete"],
    },
    Permission { group: "events.k8s.io", resource: "events", verbs: &["create", "patch"] },
    Permission { group: "apiextensions.k8s.io", resource: "customresourcedefinitions", verbs: &["get"] },
    Permission { group: "coordination.k8s.io", resource: "leases", verbs: &["get", "create", "update"] },
];

/// Maps an API request to the permission it needs: `(group, resource, verb)`.
pub fn request_permission(method: &str, path: &str, query: &str) -> Option<(String, String, String)> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match segments.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return None,
    };
    let rest: Vec<&str> = match rest {
        ["namespaces", _ns, tail @ ..] if !tail.is_empty() => tail.to_vec(),
        other => other.to_vec(),
    };
    let (resource, named) = match rest.as_slice() {
        [resource] => (resource.to_string(), false),
        [resource, _name] => (resource.to_string(), true),
        [resource, _name, sub] => (format!("{resource}/{sub}"), true),
        _ => return None,
    };
    let watch = query.split('&').any(|kv| kv == "watch=true" || kv == "watch=1");
    let verb = match (method, named) {
        ("GET", _) if watch => "watch",
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => return None,
    };
    Some((group.to_string(), resource, verb.to_string()))
}

/// Every permission an API request needs: [`request_permission`]'s, plus `create` for a
/// server-side apply (`PATCH ...?force=true`, as every apply of the operator is) to a resource
/// itself, which creates the object when it does not exist (applies to subresources never do).
pub fn request_permissions(method: &str, path: &str, query: &str) -> Option<Vec<(String, String, String)>> {
    let (group, resource, verb) = request_permission(method, path, query)?;
    let apply = method == "PATCH" && query.split('&').any(|kv| kv == "force=true");
    let mut needed = vec![(group.clone(), resource.clone(), verb)];
    if apply && !resource.contains('/') {
        needed.push((group, resource, "create".to_string()));
    }
    Some(needed)
}

/// True when [`REQUIRED`] grants `(group, resource, verb)`.
pub fn covers(group: &str, resource: &str, verb: &str) -> bool {
    REQUIRED.iter().any(|p| p.group == group && p.resource == resource && p.verbs.contains(&verb))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_requests_to_verbs() {
        let p = |m, path, q| request_permission(m, path, q).unwrap();
        assert_eq!(
            p("PATCH", "/apis/apps/v1/namespaces/ns/statefulsets/s", "fieldManager=ordo-operator"),
            ("apps".into(), "statefulsets".into(), "patch".into())
        );
        assert_eq!(
            p("PATCH", "/apis/ordo.dev/v1alpha1/namespaces/ns/seqclusters/s/status", ""),
            ("ordo.dev".into(), "seqclusters/status".into(), "patch".into())
        );
        assert_eq!(
            p("GET", "/api/v1/secrets", "watch=true&labelSelector=x"),
            ("".into(), "secrets".into(), "watch".into())
        );
        assert_eq!(p("GET", "/api/v1/namespaces/ns/secrets", ""), ("".into(), "secrets".into(), "list".into()));
        let apply =
            request_permissions("PATCH", "/api/v1/namespaces/ns/secrets/s", "fieldManager=ordo-operator&force=true");
        assert_eq!(apply.unwrap().iter().map(|(_, _, v)| v.as_str()).collect::<Vec<_>>(), ["patch", "create"]);
        let status = request_permissions(
            "PATCH",
            "/apis/ordo.dev/v1alpha1/namespaces/ns/seqclusters/s/status",
            "fieldManager=ordo-operator&force=true",
        );
        assert_eq!(status.unwrap().len(), 1, "an apply to a subresource never creates");
        assert!(covers("", "secrets", "get"));
        assert!(!covers("", "secrets", "delete"));
    }
}
