"""A stock Python grpcio client of the sidecar's Unix socket, with default channel settings.

Usage: sequencer_client.py SOCKET PROTO_DIR SEQUENCE

grpcio sends the socket path as `:authority` (unlike grpc-go and grpc-js); this script shows
that the sidecar accepts it. It calls grpc.health.v1 Check, Next (buffered and strict), Stream
and Current, lists services through server reflection v1alpha (what grpcio-reflection,
grpcui, Postman and older grpcurl ask), checks what it got, and prints one JSON object:
{"ranges": [[start, end], ...], "current": N, "health": "SERVING", "services": [...],
"registers": "ok", "log": "ok", "divider": "ok"} (Create, Read and CompareAndSet on ordo.v1.Registers
when the sidecar serves it; CreateStream, a pipelined Append stream, Read, Tail and MoveStream on ordo.v1.Log;
AddKeys, Watch until every key started, Lookup and Cancel on ordo.v1.Divider).
Run by e2e/tests/foreign_clients.rs; exits non-zero with a message on any failure.
"""

import json
import os
import sys
import tempfile

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_tools import protoc

DEADLINE_S = 10


def load_stubs(proto_dir, out_dir):
    """Compiles the app-facing protos with grpcio-tools' bundled compiler and imports the stubs."""
    rc = protoc.main(
        ["protoc", f"-I{proto_dir}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}",
         "ordo/v1/sequencer.proto", "ordo/v1/registers.proto", "ordo/v1/log.proto", "ordo/v1/divider.proto"]
    )
    if rc != 0:
        sys.exit(f"compiling the protos failed ({rc})")
    sys.path.insert(0, out_dir)
    from ordo.v1 import sequencer_pb2, sequencer_pb2_grpc  # noqa: E402 (generated just now)

    return sequencer_pb2, sequencer_pb2_grpc


def use_registers(channel, sequence):
    """Create, Read, CompareAndSet (current and stale version) on ordo.v1.Registers."""
    from ordo.v1 import registers_pb2 as rp, registers_pb2_grpc as rg  # noqa: E402

    regs = rg.RegistersStub(channel)
    key = f"foreign/{sequence}"
    w = regs.Create(rp.RegisterCreateRequest(key=key, value=b"one"), timeout=DEADLINE_S)
    check(w.applied and w.version == 1, f"Create applied at version 1: {w}")
    r = regs.Read(rp.RegisterReadRequest(key=key), timeout=DEADLINE_S)
    check(r.found and r.value == b"one" and r.version == 1, f"Read sees the value: {r}")
    w = regs.CompareAndSet(rp.CompareAndSetRequest(key=key, version=1, value=b"two"), timeout=DEADLINE_S)
    check(w.applied and w.version == 2, f"CompareAndSet at the current version applies: {w}")
    w = regs.CompareAndSet(rp.CompareAndSetRequest(key=key, version=1, value=b"three"), timeout=DEADLINE_S)
    check(not w.applied and w.current.value == b"two", f"a stale version conflicts: {w}")
    try:
        regs.Read(rp.RegisterReadRequest(key=""), timeout=DEADLINE_S)
        sys.exit("an empty key was accepted")
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.INVALID_ARGUMENT, f"an empty key is INVALID_ARGUMENT: {e.code()}")
    return "ok"


def use_log(channel, sequence):
    """CreateStream, three batches on one pipelined Append stream (results in order, dense LSNs),
    Read them back, Tail."""
    from ordo.v1 import log_pb2 as lp, log_pb2_grpc as lg  # noqa: E402

    log = lg.LogStub(channel)
    name = f"py-{sequence}"
    info = log.CreateStream(lp.CreateStreamRequest(name=name, replication_factor=3, ack_quorum=2), timeout=DEADLINE_S)
    check(info.name == name and info.replication_factor == 3, f"CreateStream: {info}")
    batches = [[b"a", b"b"], [b"c"], [b"d", b"e", b"f"]]
    requests = (lp.AppendRequest(stream=name, entries=b, pipeline_size=2, producer_id=7, producer_epoch=1,
                                 batch_seq=i) for i, b in enumerate(batches))
    lsns = []
    for i, r in enumerate(log.Append(requests, timeout=DEADLINE_S)):
        check(not r.HasField("error"), f"batch {i} appended: {r}")
        check(r.batch_seq == i and len(r.lsns) == len(batches[i]), f"result {i} in request order: {r}")
        lsns.extend(r.lsns)
    check(lsns == list(range(1, 7)), f"dense LSNs from 1: {lsns}")
    read = log.Read(lp.ReadRequest(stream=name, **{"from": 1}, max=10), timeout=DEADLINE_S)
    check([e.data for e in read.entries] == [d for b in batches for d in b], f"Read returns the entries: {read}")
    tail = log.Tail(lp.TailRequest(stream=name), timeout=DEADLINE_S)
    check(tail.last_lsn == 6, f"Tail: {tail}")
    # MoveStream onto the replicas it has is a no-op that answers the stream; two replicas for a
    # replication factor of 3 is INVALID_ARGUMENT.
    moved = log.MoveStream(lp.MoveStreamRequest(name=name, replicas=list(info.replicas)), timeout=DEADLINE_S)
    check(list(moved.replicas) == list(info.replicas) and moved.last_lsn == 6, f"MoveStream: {moved}")
    try:
        log.MoveStream(lp.MoveStreamRequest(name=name, replicas=list(info.replicas)[:2]), timeout=DEADLINE_S)
        check(False, "MoveStream with two replicas was accepted")
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.INVALID_ARGUMENT, f"two replicas are INVALID_ARGUMENT: {e.code()}")
    return "ok"


def use_divider(channel, sequence):
    """AddKeys, Watch as a member until every key started, Lookup names it, Cancel (its stops
    confirmed with ConfirmStops)."""
    from ordo.v1 import divider_pb2 as dp, divider_pb2_grpc as dg  # noqa: E402

    div = dg.DividerStub(channel)
    name, member = f"py-{sequence}", "py-app"
    keys = [f"k{i}" for i in range(4)]
    div.AddKeys(dp.KeysRequest(divider=name, keys=keys), timeout=DEADLINE_S)
    events = div.Watch(dp.WatchRequest(divider=name, member=member, address="py:0"), timeout=30)
    started = {}
    for ev in events:
        if ev.HasField("start"):
            started[ev.start.key] = ev.start.token
        if set(started) == set(keys):
            break
    check(set(started) == set(keys), f"every key started: {started}")
    owner = div.Lookup(dp.LookupRequest(divider=name, key=keys[0]), timeout=DEADLINE_S)
    check(owner.owner == member and owner.token == started[keys[0]], f"Lookup names the member and token: {owner}")
    # Cancel stops every key: confirming each stop while it runs lets it return at once.
    leaving = div.Cancel.future(dp.MemberRequest(divider=name, member=member), timeout=30)
    for ev in events:
        if ev.HasField("stop"):
            # ConfirmStops (the Node client uses ConfirmStop): refused keys come back in the reply.
            stop = dp.KeyToken(key=ev.stop.key, token=ev.stop.token)
            r = div.ConfirmStops(dp.ConfirmStopsRequest(divider=name, member=member, stops=[stop]), timeout=DEADLINE_S)
            check(not r.refused, f"ConfirmStops refused nothing: {list(r.refused)}")
        if leaving.done():
            break
    leaving.result()
    events.cancel()
    return "ok"


def check(cond, what):
    if not cond:
        sys.exit(f"check failed: {what}")


def main():
    socket, proto_dir, sequence = sys.argv[1:4]
    with tempfile.TemporaryDirectory() as out_dir:
        for pkg in ("ordo", "ordo/v1"):
            os.makedirs(os.path.join(out_dir, pkg), exist_ok=True)
            open(os.path.join(out_dir, pkg, "__init__.py"), "w").close()
        pb, pb_grpc = load_stubs(proto_dir, out_dir)
        # Default settings: no authority override, no options.
        with grpc.insecure_channel(f"unix://{socket}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=DEADLINE_S).status
            status_name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
            check(status_name == "SERVING", f"health is SERVING, got {status_name}")

            seq = pb_grpc.SequencerStub(channel)
            ranges = []
            for count, strict in [(1, False), (5, False), (3, True), (7, False), (2, True), (1, False)]:
                r = seq.Next(pb.NextRequest(sequence=sequence, count=count, strict=strict), timeout=DEADLINE_S)
                check(r.sequence == sequence, f"Next names the sequence: {r.sequence!r}")
                check(r.end - r.start == count, f"Next({count}) returned {count} IDs: [{r.start}, {r.end})")
                ranges.append([r.start, r.end])
            stream = seq.Stream(pb.StreamRequest(sequence=sequence, batch=4), timeout=DEADLINE_S)
            for _ in range(5):
                r = next(stream)
                check(r.end - r.start == 4, f"Stream(batch=4) sent 4 IDs: [{r.start}, {r.end})")
                ranges.append([r.start, r.end])
            stream.cancel()
            for (a, b) in zip(ranges, ranges[1:]):
                check(b[0] >= a[1], f"IDs increase through one sidecar: {a} then {b}")
            check(ranges[0][0] >= 1, f"IDs start at 1 or above: {ranges[0]}")

            current = seq.Current(pb.CurrentRequest(sequence=sequence), timeout=DEADLINE_S).next
            check(current >= ranges[-1][1], f"Current {current} is above every ID handed out ({ranges[-1]})")

            refl = reflection_pb2_grpc.ServerReflectionStub(channel)
            req = reflection_pb2.ServerReflectionRequest(list_services="")
            resp = next(refl.ServerReflectionInfo(iter([req]), timeout=DEADLINE_S))
            services = sorted(s.name for s in resp.list_services_response.service)
            check("ordo.v1.Sequencer" in services, f"reflection v1alpha lists ordo.v1.Sequencer: {services}")
            registers = use_registers(channel, sequence) if "ordo.v1.Registers" in services else "not served"
            log = use_log(channel, sequence)
            divider = use_divider(channel, sequence)

    print(json.dumps({"ranges": ranges, "current": current, "health": status_name, "services": services,
                      "registers": registers, "log": log, "divider": divider}))


if __name__ == "__main__":
    try:
        main()
    except grpc.RpcError as e:
        sys.exit(f"RPC failed: {e.code()}: {e.details()}")
