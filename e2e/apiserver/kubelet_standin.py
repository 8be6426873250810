#!/usr/bin/env python3
"""Kubelet stand-in for one SeqCluster in the real-API-server suite (e2e/apiserver/run.sh).

kwok marks the SeqCluster's pods Running and Ready but runs nothing. This process does for the
member sidecars what a kubelet would: for every pod of the SeqCluster that exists (scheduled, not
being deleted) it runs a real `ordo-sidecar` on its own loopback address (ordinal i gets
PREFIX.(i+1), default ports), projects the members ConfigMap and the peer-token Secret into files
(rewriting the members' DNS names to those addresses, since nothing resolves them here), and
stops the sidecar with SIGTERM when the pod goes away. A member's data directory is keyed by the
uid of its PersistentVolumeClaim, so a claim deleted on scale-down (whenScaled: Delete) starts
empty when the ordinal comes back, as it would on a real cluster.

It writes one line per projected members file (`EPOCH <epoch> members=<n> previous=<n|->`) to
--epochs-log, so the suite can check the configurations the operator went through. Stdlib only;
every loop is bounded by --max-seconds.
"""

import argparse
import base64
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


def log(msg):
    print(f"[kubelet-standin {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Api:
    """Minimal authenticated GET client for the API server."""

    def __init__(self, server, token, ca_file):
        self.server = server.rstrip("/")
        self.token = token
        self.ctx = ssl.create_default_context(cafile=ca_file)

    def get(self, path, params=None):
        url = self.server + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=5) as resp:
                return json.load(resp)
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise


def write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def members_summary(text):
    """(epoch, current member count, previous member count or None) of a members file."""
    epoch = re.search(r"^epoch:\s*(\d+)", text, re.M)
    # Top-level `members:` is the current set; `previous:` holds an indented `members:` list.
    head, _, prev = text.partition("\nprevious:")
    count = lambda part: len(re.findall(r"^\s*-\s*id:", part, re.M))
    return (int(epoch.group(1)) if epoch else -1, count(head), count(prev) if prev else None)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--server", required=True)
    p.add_argument("--token-file", required=True)
    p.add_argument("--ca-file", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--seqcluster", required=True)
    p.add_argument("--sidecar", required=True, help="path of the ordo-sidecar binary")
    p.add_argument("--ip-prefix", required=True, help="first three octets, e.g. 127.1.7")
    p.add_argument("--dir", required=True, help="work directory (data, files, logs)")
    p.add_argument("--epochs-log", required=True)
    p.add_argument("--max-seconds", type=float, default=1800)
    a = p.parse_args()

    with open(a.token_file) as f:
        api = Api(a.server, f.read().strip(), a.ca_file)
    ns, name = a.namespace, a.seqcluster
    os.makedirs(a.dir, exist_ok=True)
    members_file = os.path.join(a.dir, "members.yaml")
    token_file = os.path.join(a.dir, "peer-token")
    running = {}  # pod name -> Popen
    last_members = None
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    signal.signal(signal.SIGINT, lambda *_: stop.update(now=True))

    def address(ordinal):
        return f"{a.ip_prefix}.{ordinal + 1}"

    def terminate(pod):
        proc = running.pop(pod)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log(f"stopped sidecar of {pod} (exit {proc.returncode})")

    deadline = time.monotonic() + a.max_seconds
    while not stop["now"] and time.monotonic() < deadline:
        try:
            cm = api.get(f"/api/v1/namespaces/{ns}/configmaps/{name}-members")
            secret = api.get(f"/api/v1/namespaces/{ns}/secrets/{name}-peer-token")
            pods = api.get(f"/api/v1/namespaces/{ns}/pods", {"labelSelector": f"ordo.dev/seqcluster={name},ordo.dev/role=member"})
        except (urllib.error.URLError, OSError, ValueError) as e:
            log(f"API read failed: {e}")
            time.sleep(1)
            continue

        if secret and "token" in (secret.get("data") or {}):
            token = base64.b64decode(secret["data"]["token"]).decode()
            if not os.path.exists(token_file) or open(token_file).read() != token:
                write_atomic(token_file, token)
        if cm and "members.yaml" in (cm.get("data") or {}):
            text = cm["data"]["members.yaml"]
            # <name>-<i>.<name>-peers.<ns>.svc -> loopback address of ordinal i.
            text = re.sub(
                rf"\b{re.escape(name)}-(\d+)\.{re.escape(name)}-peers\.{re.escape(ns)}\.svc\b",
                lambda m: address(int(m.group(1))),
                text,
            )
            if text != last_members:
                write_atomic(members_file, text)
                last_members = text
                epoch, members, previous = members_summary(text)
                with open(a.epochs_log, "a") as f:
                    f.write(f"EPOCH {epoch} members={members} previous={previous if previous is not None else '-'}\n")
                log(f"projected members file epoch {epoch}: {members} members, previous {previous}")

        wanted = {}
        for pod in (pods or {}).get("items", []):
            meta, spec = pod["metadata"], pod.get("spec", {})
            if meta.get("deletionTimestamp") or not spec.get("nodeName"):
                continue
            m = re.fullmatch(rf"{re.escape(name)}-(\d+)", meta["name"])
            if m:
                wanted[meta["name"]] = int(m.group(1))
        for pod in sorted(set(running) - set(wanted)):
            terminate(pod)
        for pod in sorted(set(wanted) - set(running)):
            if not (os.path.exists(members_file) and os.path.exists(token_file)):
                break
            claim = api.get(f"/api/v1/namespaces/{ns}/persistentvolumeclaims/data-{pod}")
            if not claim:
                continue
            data = os.path.join(a.dir, "data", f"{pod}-{claim['metadata']['uid']}")
            os.makedirs(data, exist_ok=True)
            ip = address(wanted[pod])
            args = [
                a.sidecar,
                "--role=member",
                f"--id={pod}",
                f"--data-dir={data}",
                f"--members-file={members_file}",
                f"--peer-token-file={token_file}",
                f"--peer-listen={ip}:7071",
                f"--app-listen={ip}:7070",
                f"--admin-listen={ip}:7072",
                f"--socket={os.path.join(a.dir, pod + '.sock')}",
                "--log-format=text",
            ]
            logf = open(os.path.join(a.dir, f"{pod}.log"), "a")
            running[pod] = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT)
            log(f"started sidecar of {pod} on {ip} (data {os.path.basename(data)})")
        time.sleep(0.5)

    for pod in sorted(running):
        terminate(pod)
    return 0


if __name__ == "__main__":
    sys.exit(main())
