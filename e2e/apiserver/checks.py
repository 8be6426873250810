#!/usr/bin/env python3
"""Assertions of the real-API-server suite (e2e/apiserver/run.sh), one subcommand per check.

Each subcommand reads the cluster through kubectl (or the audit log), prints what it found and
exits non-zero with the reason when the check fails. Needs PyYAML (the project's .venv has it).
"""

import argparse
import datetime
import json
import subprocess
import sys
import time

import yaml

GROUP_VERSION = "ordo.dev/v1alpha1"
# Kinds the operator creates, as `kubectl get` resource names.
CHILD_KINDS = {
    "StatefulSet": "statefulsets.apps",
    "Service": "services",
    "ConfigMap": "configmaps",
    "Secret": "secrets",
    "PodDisruptionBudget": "poddisruptionbudgets.policy",
    "NetworkPolicy": "networkpolicies.networking.k8s.io",
}
OWNER_KINDS = {"SeqCluster": "seqclusters.ordo.dev", "WorkDivider": "workdividers.ordo.dev"}


class CheckFailed(Exception):
    pass


def ensure(cond, msg):
    if not cond:
        raise CheckFailed(msg)


class Kubectl:
    def __init__(self, path, namespace):
        self.path, self.namespace = path, namespace

    def run(self, *args, stdin=None, check=True):
        p = subprocess.run([self.path, "-n", self.namespace, *args], input=stdin, capture_output=True, text=True)
        if check and p.returncode != 0:
            raise CheckFailed(f"kubectl {' '.join(args)} failed: {p.stderr.strip()}")
        return p

    def json(self, *args):
        return json.loads(self.run("get", *args, "-o", "json", "--show-managed-fields").stdout)


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


# --- defaults --------------------------------------------------------------------------------
def walk_defaults(schema, given, stored, path, found):
    """Every `default` of `schema` whose field `given` leaves out must appear in `stored`."""
    for name, prop in (schema.get("properties") or {}).items():
        here = f"{path}.{name}"
        if isinstance(given, dict) and name in given:
            if isinstance(given[name], dict) and isinstance(stored, dict):
                walk_defaults(prop, given[name], stored.get(name), here, found)
            continue
        if "default" not in prop:
            continue
        ensure(isinstance(stored, dict) and name in stored, f"default of {here} not applied (field missing)")
        if isinstance(prop["default"], dict):
            ensure(isinstance(stored[name], dict), f"{here}: expected an object, got {stored[name]!r}")
            walk_defaults(prop, prop["default"], stored[name], here, found)
        else:
            ensure(stored[name] == prop["default"], f"{here}: default {prop['default']!r}, stored {stored[name]!r}")
        found.append(here)


def cmd_defaults(a):
    k = Kubectl(a.kubectl, a.namespace)
    schemas = {}
    for path in a.crd:
        crd = load_docs(path)[0]
        schemas[crd["spec"]["names"]["kind"]] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    import glob

    checked = 0
    for sample in sorted(glob.glob(f"{a.sample_dir}/*.yaml")):
        for doc in load_docs(sample):
            kind, name = doc["kind"], doc["metadata"]["name"]
            stored = k.json(OWNER_KINDS[kind], name)
            found = []
            walk_defaults(schemas[kind]["properties"]["spec"], doc.get("spec", {}), stored["spec"], "spec", found)
            print(f"{kind}/{name}: {len(found)} defaults applied by the API server: {', '.join(found) or '-'}")
            checked += len(found)
    ensure(checked > 0, "no sample leaves a defaulted field out: the defaults were not exercised")


# --- CEL ----------------------------------------------------------------------------------------
def cmd_cel(a):
    k = Kubectl(a.kubectl, a.namespace)
    fixture = load_docs(a.cases)[0]
    base = fixture["workDividerBase"]

    def obj(kind, spec, i):
        if kind == "WorkDivider":
            spec = {**base, **spec}
        return {"apiVersion": GROUP_VERSION, "kind": kind, "metadata": {"name": f"cel-case-{i}"}, "spec": spec}

    # Every CEL rule of the CRDs has a case (a case's message is a part of its rule's message).
    def rules(node):
        if isinstance(node, dict):
            for r in node.get("x-kubernetes-validations") or []:
                yield r["message"]
            for v in node.values():
                yield from rules(v)
        elif isinstance(node, list):
            for v in node:
                yield from rules(v)

    for path in a.crd:
        for message in rules(load_docs(path)[0]["spec"]["versions"]):
            ensure(any(c["message"] in message for c in fixture["cases"]), f"{path}: no case for the rule {message!r}")
    # The bases themselves are accepted, so each refusal below is the case's own rule.
    for i, kind in enumerate(["SeqCluster", "WorkDivider"]):
        k.run("apply", "--dry-run=server", "-f", "-", stdin=json.dumps(obj(kind, {}, f"base-{i}")))
    cases = fixture["cases"] + fixture["schemaCases"]
    for i, case in enumerate(cases):
        p = k.run("apply", "--dry-run=server", "-f", "-", stdin=json.dumps(obj(case["kind"], case["spec"], i)), check=False)
        ensure(p.returncode != 0, f"the API server accepted {case['kind']} {case['spec']} (expected {case['message']!r})")
        ensure(case["message"] in p.stderr, f"{case['kind']} {case['spec']}: refused with {p.stderr.strip()!r}, expected {case['message']!r}")
        if i == 0:
            print(f"what a user sees, e.g.: {p.stderr.strip()}")
    print(f"{len(fixture['cases'])} CEL rule and {len(fixture['schemaCases'])} schema violations refused with their messages")


# --- children -----------------------------------------------------------------------------------
def cmd_children(a):
    k = Kubectl(a.kubectl, a.namespace)
    owners = {}
    for ref in a.owner:
        kind, name = ref.split("/")
        owners[k.json(OWNER_KINDS[kind], name)["metadata"]["uid"]] = ref
    children = {ref: [] for ref in owners.values()}
    for kind, resource in CHILD_KINDS.items():
        for item in k.json(resource)["items"]:
            meta = item["metadata"]
            for o in meta.get("ownerReferences") or []:
                if o["uid"] in owners:
                    ref = owners[o["uid"]]
                    ensure(o.get("controller") is True, f"{kind}/{meta['name']}: owner reference to {ref} is not controller")
                    ensure(o.get("blockOwnerDeletion") in (None, True), f"{kind}/{meta['name']}: blockOwnerDeletion false")
                    applied = [
                        m
                        for m in meta.get("managedFields") or []
                        if m.get("manager") == a.field_manager and m.get("operation") == "Apply"
                    ]
                    managers = [(m.get("manager"), m.get("operation"), m.get("subresource")) for m in meta.get("managedFields") or []]
                    ensure(applied, f"{kind}/{meta['name']}: no Apply by field manager {a.field_manager}; managers: {managers}")
                    others = sorted(
                        {m.get("manager") for m in meta.get("managedFields") or [] if m.get("operation") == "Apply"}
                        - {a.field_manager}
                    )
                    ensure(not others, f"{kind}/{meta['name']}: also applied by {others}")
                    children[ref].append(f"{kind}/{meta['name']}")
    for ref, objs in children.items():
        kind = ref.split("/")[0]
        want = {"StatefulSet", "Service", "ConfigMap"} | ({"Secret"} if kind == "SeqCluster" else set())
        have = {o.split("/")[0] for o in objs}
        ensure(want <= have, f"{ref}: missing children {sorted(want - have)} (has {objs})")
        print(f"{ref}: {', '.join(sorted(objs))} (owner reference, applied by {a.field_manager})")


# --- printer columns --------------------------------------------------------------------------------
def cmd_columns(a):
    k = Kubectl(a.kubectl, a.namespace)
    for crd_path, spec in zip(a.crd, a.object):
        crd = load_docs(crd_path)[0]
        name, _, expects = spec.partition(":")
        resource = f"{crd['spec']['names']['plural']}.{crd['spec']['group']}"
        columns = [c["name"].upper() for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]]
        out = k.run("get", resource, name).stdout.splitlines()
        ensure(len(out) == 2, f"kubectl get {resource} {name}: unexpected output {out}")
        header = out[0].split()
        ensure(header == ["NAME", *columns], f"{resource}: columns {header}, CRD says {columns}")
        # Cells by the header's column offsets: kubectl leaves an unset integer column blank,
        # which splitting on whitespace would shift.
        starts = [out[0].index(f"{h} " if i + 1 < len(header) else h) for i, h in enumerate(header)]
        ends = starts[1:] + [None]
        cells = {h: out[1][a:b].strip() for h, a, b in zip(header, starts, ends)}
        print(f"{resource}/{name}: {cells}")
        wants = dict(kv.split("=") for kv in filter(None, expects.split(",")))
        for col in columns:
            # A column may be empty only where the check expects it ("COL=<none>").
            if wants.get(col) != "<none>":
                ensure(cells.get(col) not in (None, "", "<none>"), f"{resource}/{name}: column {col} is empty")
        for col, want in wants.items():
            got = cells.get(col)
            ok = got in ("", "<none>") if want == "<none>" else got == want
            ensure(ok, f"{resource}/{name}: column {col} is {got!r}, expected {want!r}")


# --- conditions ------------------------------------------------------------------------------------
def cmd_conditions(a):
    k = Kubectl(a.kubectl, a.namespace)
    for ref in a.object:
        obj = k.json(ref)
        status, gen = obj.get("status") or {}, obj["metadata"]["generation"]
        ensure(status.get("observedGeneration") == gen, f"{ref}: observedGeneration {status.get('observedGeneration')} != generation {gen}")
        conds = {c["type"]: c for c in status.get("conditions") or []}
        want = {"Available": "True", "Progressing": "False", "Degraded": "False"}
        for t, s in want.items():
            ensure(t in conds, f"{ref}: no {t} condition ({sorted(conds)})")
            c = conds[t]
            ensure(c["status"] == s, f"{ref}: {t} is {c['status']} ({c.get('reason')}: {c.get('message')}), expected {s}")
            for field in ("reason", "message", "lastTransitionTime"):
                ensure(c.get(field), f"{ref}: {t} has no {field}")
            ensure(c.get("observedGeneration") in (None, gen), f"{ref}: {t} observedGeneration {c.get('observedGeneration')} != {gen}")
        print(f"{ref}: " + "; ".join(f"{t}={c['status']} ({c['reason']})" for t, c in conds.items()))


# --- idle writes ------------------------------------------------------------------------------------
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}
# The API server names the ServiceAccount token of each request in the audit event's user extra.
CREDENTIAL_ID = "authentication.kubernetes.io/credential-id"


def token_credential(token_file):
    """`JTI=<jti>` of a ServiceAccount token (a JWT), as the audit log names it."""
    import base64

    with open(token_file) as f:
        payload = f.read().strip().split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return f"JTI={claims['jti']}"


def cmd_wrote(a):
    start = parse_time(a.__dict__["from"])
    credential = token_credential(a.token_file)
    writes = [w for w in operator_writes(a.audit, start, datetime.datetime.now(datetime.timezone.utc), credential) if w[0] == a.resource]
    print(f"writes to {a.resource} with the token {credential} since {a.__dict__['from']}: {len(writes)}")
    ensure(writes, f"no write to {a.resource} with that token: someone else did it")


def cmd_standby(a):
    start, end = parse_time(a.__dict__["from"]), parse_time(a.to)
    credential = token_credential(a.token_file)
    requests = 0
    with open(a.audit) as f:
        for line in f:
            e = json.loads(line)
            if credential in (e.get("user", {}).get("extra", {}).get(CREDENTIAL_ID) or []):
                requests += 1
    ensure(requests > 0, f"no request with the standby's token ({credential}) in the audit log: cannot attribute")
    writes = operator_writes(a.audit, start, end, credential)
    print(f"standby ({credential}): {requests} requests in all, {len(writes)} writes while it was standby")
    ensure(not writes, f"the standby wrote while another replica led: {writes[:10]}")


def parse_time(s):
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00"))


def operator_writes(audit, start, end, credential=None):
    """(resource, subresource, verb, requestURI) of every operator write received in [start, end),
    only those made with `credential` (a ServiceAccount token's credential id) when given."""
    out = []
    with open(audit) as f:
        for line in f:
            e = json.loads(line)
            if e.get("verb") not in WRITE_VERBS or e.get("stage") != "ResponseComplete":
                continue
            if credential and credential not in (e.get("user", {}).get("extra", {}).get(CREDENTIAL_ID) or []):
                continue
            t = parse_time(e["requestReceivedTimestamp"])
            if start <= t < end:
                ref = e.get("objectRef") or {}
                out.append((ref.get("resource"), ref.get("subresource"), e["verb"], e["requestURI"]))
    return out


def cmd_idle(a):
    start, end = parse_time(a.__dict__["from"]), parse_time(a.to)
    writes = operator_writes(a.audit, start, end)
    leases = [w for w in writes if w[0] == "leases"]
    status = [w for w in writes if w[1] == "status"]
    events = [w for w in writes if w[0] == "events"]
    other = [w for w in writes if w[0] != "leases" and w[1] != "status" and w[0] != "events"]
    by_resource = {}
    for w in other:
        by_resource[w[0]] = by_resource.get(w[0], 0) + 1
    print(
        f"operator writes over the idle {a.seconds:.0f}s: {len(writes)} in all; lease renewals {len(leases)}, "
        f"status {len(status)}, events {len(events)}, objects {len(other)} {by_resource}"
    )
    # One leader renews every renew period; a standby never writes a held lease.
    max_leases = int(a.seconds // a.lease_renew_seconds) + 1
    ensure(len(leases) <= max_leases, f"{len(leases)} lease writes in {a.seconds}s (at most {max_leases} expected)")
    ensure(not status, f"status written while nothing changed: {status}")
    ensure(not events, f"events published while nothing changed: {events}")
    # A settled object is re-applied by the periodic resync (60 s) only: at most one round of
    # its children per object in the window.
    rounds = int(a.seconds // 60) + 1
    max_other = rounds * a.resync_objects * len(CHILD_KINDS)
    ensure(len(other) <= max_other, f"{len(other)} object writes while idle (at most {max_other}): {other[:10]}")


def cmd_unready(a):
    """An object polled every few seconds because it is not ready re-sends none of its unchanged
    children: only the peer-token Secret (not watched, always applied) may be written."""
    start, end = parse_time(a.__dict__["from"]), parse_time(a.to)
    mine = [w for w in operator_writes(a.audit, start, end) if f"/{a.name}" in w[3]]
    children = [w for w in mine if w[0] not in ("secrets", "events") and w[1] != "status"]
    secrets = [w for w in mine if w[0] == "secrets"]
    print(
        f"operator writes for {a.name} over {a.seconds:.0f}s while it is not ready: {len(mine)} in all; "
        f"peer-token Secret {len(secrets)}, other children {len(children)}"
    )
    # The polls happened (the Secret is applied on each): otherwise the window proves nothing.
    ensure(len(secrets) >= 2, f"only {len(secrets)} reconciles of {a.name} in {a.seconds}s: is it polled?")
    # A resync of every child may fall in the window once; a poll re-sending them would be 5 each.
    ensure(len(children) <= len(CHILD_KINDS), f"{len(children)} child writes while nothing changed: {children[:10]}")


# --- PodDisruptionBudget ----------------------------------------------------------------------------
def cmd_pdb(a):
    k = Kubectl(a.kubectl, a.namespace)
    deadline = time.monotonic() + a.timeout
    while True:
        pdb = k.json("poddisruptionbudgets.policy", a.name)
        spec, st = pdb["spec"], pdb.get("status") or {}
        got = (
            spec.get("minAvailable"),
            st.get("expectedPods"),
            st.get("currentHealthy"),
            st.get("desiredHealthy"),
            st.get("disruptionsAllowed"),
            st.get("observedGeneration") == pdb["metadata"]["generation"],
        )
        want = (a.min_available, a.pods, a.pods, a.min_available, a.pods - a.min_available, True)
        if got == want:
            print(
                f"PodDisruptionBudget {a.name} (disruption controller): minAvailable {got[0]}, expectedPods {got[1]}, "
                f"currentHealthy {got[2]}, desiredHealthy {got[3]}, disruptionsAllowed {got[4]}"
            )
            return
        if time.monotonic() > deadline:
            raise CheckFailed(
                f"PodDisruptionBudget {a.name}: (minAvailable, expected, healthy, desired, allowed, observed) = {got}, want {want}"
            )
        time.sleep(0.5)


# --- epochs -----------------------------------------------------------------------------------------
def cmd_epochs(a):
    def read(path):
        with open(path) as f:
            return [line.split() for line in f if line.startswith("EPOCH ")]

    before = read(a.before)
    seen = read(a.log)[len(before) :]
    ensure(before, "no members file was projected before scaling")
    steps = [(int(e), int(m.split("=")[1]), p.split("=")[1]) for _, e, m, p in [before[-1], *seen]]
    print("members files the operator wrote: " + " -> ".join(f"epoch {e}: {m}{'' if p == '-' else f' (joint with {p})'}" for e, m, p in steps))
    sizes = [int(n) for n in a.path.split(",")]
    want, epoch = [], steps[0][0]
    want.append((epoch, sizes[0], "-"))
    for prev, nxt in zip(sizes, sizes[1:]):
        want += [(epoch + 1, nxt, str(prev)), (epoch + 2, nxt, "-")]
        epoch += 2
    ensure(steps == want, f"configurations {steps}, expected the joint path {want}")


# --- lease ------------------------------------------------------------------------------------------
def cmd_lease(a):
    k = Kubectl(a.kubectl, a.namespace)
    spec = k.json("leases.coordination.k8s.io", a.name)["spec"]
    ensure(spec.get("holderIdentity") == a.holder, f"lease held by {spec.get('holderIdentity')}")
    expiry = parse_time(a.previous_renew) + datetime.timedelta(seconds=a.lease_seconds)
    acquired = parse_time(spec["acquireTime"])
    late = (acquired - expiry).total_seconds()
    print(
        f"lease {a.name}: old leader's lease expired at {expiry.isoformat()}, {a.holder} acquired it "
        f"{late:+.1f}s after that (transitions {spec.get('leaseTransitions')})"
    )
    ensure(late >= 0, f"{a.holder} took the lease {-late:.1f}s before it expired")
    # It polls every renew period, so it normally takes over within one; the bound is the issue's
    # "within the lease duration", loose enough for a loaded machine.
    ensure(late <= a.lease_seconds, f"{a.holder} took the lease {late:.1f}s after it expired (lease {a.lease_seconds}s)")
    ensure((spec.get("leaseTransitions") or 0) >= 1, "leaseTransitions did not count the change of holder")


# --- garbage collection -----------------------------------------------------------------------------
def cmd_gc(a):
    k = Kubectl(a.kubectl, a.namespace)
    owned = {}
    for ref in a.delete:
        kind, name = ref.split("/")
        uid = k.json(OWNER_KINDS[kind], name)["metadata"]["uid"]
        owned[uid] = ref
    children = []
    for kind, resource in CHILD_KINDS.items():
        for item in k.json(resource)["items"]:
            if any(o["uid"] in owned for o in item["metadata"].get("ownerReferences") or []):
                children.append((resource, item["metadata"]["name"], item["metadata"]["uid"]))
    sets = {uid for r, _, uid in children if r == "statefulsets.apps"}
    owned_pods = lambda: [
        p["metadata"]["name"]
        for p in k.json("pods")["items"]
        if any(o["uid"] in sets for o in p["metadata"].get("ownerReferences") or [])
    ]
    pods = owned_pods()
    ensure(children, "nothing owned by the deleted objects: nothing to collect")
    for ref in a.delete:
        kind, name = ref.split("/")
        k.run("delete", OWNER_KINDS[kind], name, "--wait=false")
    deadline = time.monotonic() + a.timeout
    while True:
        left = [
            f"{r}/{n}"
            for r, n, uid in children
            if (o := k.run("get", r, n, "-o", "jsonpath={.metadata.uid}", check=False)).returncode == 0 and o.stdout == uid
        ]
        left_pods = owned_pods()
        if not left and not left_pods:
            break
        if time.monotonic() > deadline:
            raise CheckFailed(f"garbage collector left {left} and pods {left_pods}")
        time.sleep(1)
    print(f"deleted {', '.join(a.delete)}: the garbage collector removed {len(children)} children and {len(pods)} pods")
    claims = [c["metadata"]["name"] for c in k.json("persistentvolumeclaims")["items"]]
    print(f"claims kept by whenDeleted: Retain: {', '.join(sorted(claims)) or '-'}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    def add(name, fn, spec):
        """Subcommand `name`; `spec` lists its flags: `flag` (required), `flag+` (repeated),
        `flag:f` / `flag:i` (float / int), `flag=VALUE` (optional float with a default)."""
        s = sub.add_parser(name)
        for word in spec.split():
            flag, _, default = word.partition("=")
            flag, _, kind = flag.partition(":")
            kw = {"required": not default}
            if flag.endswith("+"):
                flag, kw["action"] = flag[:-1], "append"
            if kind or default:
                kw["type"] = {"i": int}.get(kind, float)
            if default:
                kw["default"] = float(default)
            s.add_argument(f"--{flag}", **kw)
        s.set_defaults(fn=fn)

    kube = "kubectl namespace "
    add("defaults", cmd_defaults, kube + "crd+ sample-dir")
    add("cel", cmd_cel, kube + "cases crd+")
    add("children", cmd_children, kube + "owner+ field-manager")
    add("columns", cmd_columns, kube + "crd+ object+")
    add("conditions", cmd_conditions, kube + "object+")
    add("idle", cmd_idle, "audit from to seconds:f lease-renew-seconds:f resync-objects:i")
    add("unready", cmd_unready, "audit from to seconds:f name")
    add("pdb", cmd_pdb, kube + "name pods:i min-available:i timeout=60")
    add("standby", cmd_standby, "audit token-file from to")
    add("wrote", cmd_wrote, "audit token-file from resource")
    add("epochs", cmd_epochs, "before log path")
    add("lease", cmd_lease, kube + "name holder previous-renew lease-seconds:f renew-seconds:f")
    add("gc", cmd_gc, kube + "delete+ timeout=120")
    a = p.parse_args()
    try:
        a.fn(a)
    except CheckFailed as e:
        print(f"CHECK FAILED ({a.cmd}): {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
