// Starts a local PLC directory, the reference Bluesky PDS (@atproto/pds) and the Bluesky AppView
// (@atproto/bsky: API server, dataplane, and the subscription that indexes the PDS's firehose into
// PostgreSQL), all on 127.0.0.1, for tests/test_bluesky_appview.py. The three are put together by
// @atproto/dev-env's TestPlc, TestBsky and TestPds, the way its TestNetwork does (without Ozone
// and Redis, which engagement does not need). The PDS is configured with this AppView, so it
// passes app.bsky.* calls (app.bsky.feed.getPosts) on to it, as bsky.social's PDSes do.
//
//   DB_POSTGRES_URL=postgresql://... node start.js     (run with NODE_PATH at the node_modules)
//
// TMPDIR should name a folder of the test's: the PDS keeps its data and blobs below it.
// Prints one JSON line {"plc": PORT, "pds": PORT, "bsky": PORT, "bsky_did": DID} once all
// answer, then runs until SIGTERM/SIGINT or until its stdin closes (so it dies with the test that
// spawned it through a pipe).
'use strict';

const net = require('net');

// The servers call listen(port), which binds every interface: keep them on loopback.
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...a) {
  if (typeof a[0] === 'number' || (typeof a[0] === 'string' && /^\d+$/.test(a[0]))) {
    if (a.length === 1 || typeof a[1] === 'function') a.splice(1, 0, '127.0.0.1');
  } else if (a[0] && typeof a[0] === 'object' && a[0].port !== undefined && !a[0].host) {
    a[0] = { ...a[0], host: '127.0.0.1' };
  }
  return listen.apply(this, a);
};

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function main() {
  const dbUrl = process.env.DB_POSTGRES_URL;
  if (!dbUrl) throw new Error('DB_POSTGRES_URL is not set');
  const { TestPlc, TestBsky, TestPds, mockNetworkUtilities } = require('@atproto/dev-env');

  const plc = await TestPlc.create({});
  const bskyPort = await freePort();
  const pdsPort = await freePort();
  const bsky = await TestBsky.create({
    port: bskyPort,
    plcUrl: plc.url,
    pdsPort,
    repoProvider: `ws://localhost:${pdsPort}`,
    dbPostgresUrl: dbUrl,
    dbPostgresSchema: 'appview',
  });
  const pds = await TestPds.create({
    port: pdsPort,
    didPlcUrl: plc.url,
    bskyAppViewUrl: bsky.url,
    bskyAppViewDid: bsky.ctx.cfg.serverDid,
    rateLimitsEnabled: false,
  });
  // Handles end in .test: the PDS and the AppView resolve them through the PDS, not DNS.
  mockNetworkUtilities(pds, bsky);

  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    const hard = setTimeout(() => process.exit(0), 8000);
    hard.unref();
    try {
      await pds.close();
      await bsky.close();
      await plc.close();
    } finally {
      process.exit(0);
    }
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  process.stdin.on('end', stop);
  process.stdin.on('error', stop);
  process.stdin.resume();

  process.stdout.write(JSON.stringify({ plc: plc.port, pds: pdsPort, bsky: bskyPort,
                                        bsky_did: bsky.ctx.cfg.serverDid }) + '\n');
}

main().catch((err) => {
  process.stderr.write(`start.js: ${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
