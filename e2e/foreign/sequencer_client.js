// A stock Node @grpc/grpc-js client of the sidecar's Unix socket, with default channel settings.
//
// Usage: node sequencer_client.js SOCKET PROTO_DIR SEQUENCE
//
// Calls grpc.health.v1 Check, Next (buffered and strict), Stream and Current, checks what it
// got, and prints one JSON object: {"ranges": [[start, end], ...], "current": N, "health": "SERVING"}.
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

function load(file, includeDirs) {
  const def = protoLoader.loadSync(file, { longs: String, enums: String, defaults: true, includeDirs });
  return grpc.loadPackageDefinition(def);
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

  healthClient.close();
  seq.close();
  process.stdout.write(JSON.stringify({ ranges, current, health: status }) + '\n');
}

main().catch((e) => fail(`RPC failed: ${e.code}: ${e.details || e.message}`));
