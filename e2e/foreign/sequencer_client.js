// A stock Node @grpc/grpc-js client of the sidecar's Unix socket, with default channel settings.
//
// Usage: node sequencer_client.js SOCKET PROTO_DIR SEQUENCE
//
// Calls grpc.health.v1 Check, Next (buffered and strict), Stream and Current; then Registers
// (Create, Read, CompareAndSet), Log (CreateStream, a pipelined bidirectional Append, Read, Tail, MoveStream)
// and Divider (AddKeys, Watch until every key started, Lookup, Cancel); checks what it got, and
// prints one JSON object: {"ranges": [[start, end], ...], "current": N, "health": "SERVING",
// "registers": "ok", "log": "ok", "divider": "ok"}.
// Run by e2e/tests/foreign_clients.rs; exits non-zero with a message on any failure.
'use strict';

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const health = require('grpc-health-check');

const DEADLINE_MS = 10000;

function fail(what) {
  process.stderr.write(`check failed: ${what}\n`);
  process.exit(1);
}

function check(cond, what) {
  if (!cond) fail(what);
}

function deadline() {
  return { deadline: Date.now() + DEADLINE_MS };
}

function unary(client, method, req) {
  return new Promise((resolve, reject) => {
    client[method](req, deadline(), (err, resp) => (err ? reject(err) : resolve(resp)));
  });
}

// Field names come camelCased (proto-loader's default): batch_seq is batchSeq.
function load(file, includeDirs) {
  const def = protoLoader.loadSync(file, { longs: String, enums: String, defaults: true, includeDirs });
  return grpc.loadPackageDefinition(def);
}

async function useRegisters(target, creds, protoDir, sequence) {
  const regs = new (load('ordo/v1/registers.proto', [protoDir]).ordo.v1.Registers)(target, creds);
  const key = `foreign-js/${sequence}`;
  let w = await unary(regs, 'Create', { key, value: Buffer.from('one') });
  check(w.applied && Number(w.version) === 1, `Create applied at version 1: ${JSON.stringify(w)}`);
  const r = await unary(regs, 'Read', { key });
  check(r.found && r.value.toString() === 'one', `Read sees the value: ${JSON.stringify(r)}`);
  w = await unary(regs, 'CompareAndSet', { key, version: 1, value: Buffer.from('two') });
  check(w.applied && Number(w.version) === 2, `CompareAndSet at the current version applies`);
  w = await unary(regs, 'CompareAndSet', { key, version: 1, value: Buffer.from('three') });
  check(!w.applied && w.current.value.toString() === 'two', `a stale version conflicts: ${JSON.stringify(w)}`);
  const bad = await unary(regs, 'Read', { key: '' }).then(() => null, (e) => e);
  check(bad && bad.code === grpc.status.INVALID_ARGUMENT, `an empty key is INVALID_ARGUMENT: ${bad && bad.code}`);
  regs.close();
  return 'ok';
}

async function useLog(target, creds, protoDir, sequence) {
  const log = new (load('ordo/v1/log.proto', [protoDir]).ordo.v1.Log)(target, creds);
  const name = `js-${sequence}`;
  const info = await unary(log, 'CreateStream', { name, replicationFactor: 3, ackQuorum: 2 });
  check(info.name === name && info.replicationFactor === 3, `CreateStream: ${JSON.stringify(info)}`);
  const batches = [['a', 'b'], ['c'], ['d', 'e', 'f']];
  // Every batch is written before any result is read: the stream pipelines them.
  const results = await new Promise((resolve, reject) => {
    const call = log.Append(deadline());
    const got = [];
    call.on('data', (r) => {
      got.push(r);
      if (got.length === batches.length) {
        call.end();
        resolve(got);
      }
    });
    call.on('error', reject);
    batches.forEach((b, i) =>
      call.write({
        stream: name, entries: b.map((d) => Buffer.from(d)), pipelineSize: 2,
        producerId: 9, producerEpoch: 1, batchSeq: i,
      }));
  });
  const lsns = [];
  results.forEach((r, i) => {
    check(!r.error, `batch ${i} appended: ${JSON.stringify(r.error)}`);
    check(Number(r.batchSeq) === i && r.lsns.length === batches[i].length, `result ${i} in request order`);
    lsns.push(...r.lsns.map(Number));
  });
  check(JSON.stringify(lsns) === JSON.stringify([1, 2, 3, 4, 5, 6]), `dense LSNs from 1: ${lsns}`);
  const read = await unary(log, 'Read', { stream: name, from: 1, max: 10 });
  const data = read.entries.map((e) => e.data.toString()).join('');
  check(data === 'abcdef', `Read returns the entries: ${data}`);
  const tail = await unary(log, 'Tail', { stream: name });
  check(Number(tail.lastLsn) === 6, `Tail: ${JSON.stringify(tail)}`);
  // MoveStream onto the replicas it has is a no-op that answers the stream; two replicas for a
  // replication factor of 3 is INVALID_ARGUMENT.
  const moved = await unary(log, 'MoveStream', { name, replicas: info.replicas });
  check(JSON.stringify(moved.replicas) === JSON.stringify(info.replicas) && Number(moved.lastLsn) === 6,
    `MoveStream: ${JSON.stringify(moved)}`);
  const bad = await unary(log, 'MoveStream', { name, replicas: info.replicas.slice(0, 2) }).then(() => null, (e) => e);
  check(bad && bad.code === grpc.status.INVALID_ARGUMENT, `two replicas are INVALID_ARGUMENT: ${bad && bad.code}`);
  log.close();
  return 'ok';
}

async function useDivider(target, creds, protoDir, sequence) {
  const div = new (load('ordo/v1/divider.proto', [protoDir]).ordo.v1.Divider)(target, creds);
  const [name, member] = [`js-${sequence}`, 'js-app'];
  const keys = [0, 1, 2, 3].map((i) => `k${i}`);
  await unary(div, 'AddKeys', { divider: name, keys });
  const watch = div.Watch({ divider: name, member, address: 'js:0' }, { deadline: Date.now() + 30000 });
  const started = await new Promise((resolve, reject) => {
    const got = {};
    watch.on('data', (ev) => {
      if (ev.start) got[ev.start.key] = Number(ev.start.token);
      if (keys.every((k) => k in got)) resolve(got);
      // Cancel stops every key: confirming each stop lets it return at once.
      if (ev.stop) div.ConfirmStop({ divider: name, member, key: ev.stop.key, token: ev.stop.token }, deadline(), () => {});
    });
    watch.on('error', (e) => (e.code === grpc.status.CANCELLED ? null : reject(e)));
  });
  const owner = await unary(div, 'Lookup', { divider: name, key: keys[0] });
  check(owner.owner === member && Number(owner.token) === started[keys[0]], `Lookup names the member and token`);
  await unary(div, 'Cancel', { divider: name, member });
  watch.cancel();
  div.close();
  return 'ok';
}

async function main() {
  const [socket, protoDir, sequence] = process.argv.slice(2);
  const target = `unix://${socket}`;
  const creds = grpc.credentials.createInsecure();
  const ordo = load('ordo/v1/sequencer.proto', [protoDir]).ordo.v1;
  const healthPkg = load(health.protoPath, [path.dirname(health.protoPath)]).grpc.health.v1;

  const healthClient = new healthPkg.Health(target, creds);
  const status = (await unary(healthClient, 'Check', { service: '' })).status;
  check(status === 'SERVING', `health is SERVING, got ${status}`);

  const seq = new ordo.Sequencer(target, creds);
  const ranges = [];
  for (const [count, strict] of [[1, false], [5, false], [3, true], [7, false], [2, true], [1, false]]) {
    const r = await unary(seq, 'Next', { sequence, count, strict });
    const [start, end] = [Number(r.start), Number(r.end)];
    check(r.sequence === sequence, `Next names the sequence: ${r.sequence}`);
    check(end - start === count, `Next(${count}) returned ${count} IDs: [${start}, ${end})`);
    ranges.push([start, end]);
  }
  await new Promise((resolve, reject) => {
    const call = seq.Stream({ sequence, batch: 4 }, deadline());
    let got = 0;
    call.on('data', (r) => {
      const [start, end] = [Number(r.start), Number(r.end)];
      check(end - start === 4, `Stream(batch=4) sent 4 IDs: [${start}, ${end})`);
      ranges.push([start, end]);
      got += 1;
      if (got === 5) {
        call.cancel();
        resolve();
      }
    });
    call.on('error', (e) => (e.code === grpc.status.CANCELLED ? resolve() : reject(e)));
  });
  check(ranges.length === 11, `Stream sent 5 messages (${ranges.length - 6})`);
  for (let i = 1; i < ranges.length; i++) {
    check(ranges[i][0] >= ranges[i - 1][1], `IDs increase through one sidecar: ${ranges[i - 1]} then ${ranges[i]}`);
  }
  check(ranges[0][0] >= 1, `IDs start at 1 or above: ${ranges[0]}`);
  const current = Number((await unary(seq, 'Current', { sequence })).next);
  check(current >= ranges[ranges.length - 1][1], `Current ${current} is above every ID handed out`);

  const registers = await useRegisters(target, creds, protoDir, sequence);
  const log = await useLog(target, creds, protoDir, sequence);
  const divider = await useDivider(target, creds, protoDir, sequence);

  healthClient.close();
  seq.close();
  process.stdout.write(JSON.stringify({ ranges, current, health: status, registers, log, divider }) + '\n');
}

main().catch((e) => fail(`RPC failed: ${e.code}: ${e.details || e.message}`));
