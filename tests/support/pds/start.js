// Starts a local PLC directory (@did-plc/server, in memory) and the reference Bluesky PDS
// (@atproto/pds) on 127.0.0.1, for tests/test_bluesky_pds.py.
//
//   node start.js DATA_DIR        (run from the folder whose node_modules hold the packages)
//
// Prints one JSON line {"plc": PORT, "pds": PORT, "admin": PASSWORD} once both answer, then
// runs until SIGTERM/SIGINT or until its stdin closes (so it dies with the test that spawned it
// through a pipe). Both servers bind 127.0.0.1 only.
//
// CP_PDS_ACCESS_TTL (e.g. "6s") makes the PDS issue access tokens that expire after that long
// instead of 2 hours, so that a test sees a real ExpiredToken from the PDS's own verifier. The
// PDS has no setting for it: the token helper is wrapped here, nothing else changes.
'use strict';

const net = require('net');
const crypto = require('crypto');
const path = require('path');
const fs = require('fs');

// Both servers call listen(port), which binds every interface: keep them on loopback.
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
  const dataDir = path.resolve(process.argv[2] || 'pds-data');
  fs.mkdirSync(path.join(dataDir, 'blobs'), { recursive: true });

  const ttl = process.env.CP_PDS_ACCESS_TTL;
  if (ttl) {
    const auth = require('@atproto/pds/dist/account-manager/helpers/auth');
    const create = auth.createAccessToken;
    auth.createAccessToken = (opts) => create({ ...opts, expiresIn: ttl });
  }

  const { PlcServer, Database } = require('@did-plc/server');
  const plc = PlcServer.create({ db: Database.mock(), port: 0 });
  const plcServer = await plc.start();
  const plcPort = plcServer.address().port;

  const pdsPort = await freePort();
  const admin = crypto.randomBytes(12).toString('hex');
  Object.assign(process.env, {
    PDS_HOSTNAME: 'localhost',
    PDS_PORT: String(pdsPort),
    PDS_DEV_MODE: 'true',
    PDS_DATA_DIRECTORY: dataDir,
    PDS_BLOBSTORE_DISK_LOCATION: path.join(dataDir, 'blobs'),
    PDS_PLC_ROTATION_KEY_K256_PRIVATE_KEY_HEX: crypto.randomBytes(32).toString('hex'),
    PDS_JWT_SECRET: crypto.randomBytes(16).toString('hex'),
    PDS_DPOP_SECRET: crypto.randomBytes(32).toString('hex'),
    PDS_ADMIN_PASSWORD: admin,
    PDS_DID_PLC_URL: `http://127.0.0.1:${plcPort}`,
    PDS_SERVICE_HANDLE_DOMAINS: '.test',
    PDS_INVITE_REQUIRED: 'false',
    PDS_RATE_LIMITS_ENABLED: 'true',
    PDS_CRAWLERS: '',
    LOG_ENABLED: process.env.LOG_ENABLED || 'false',
  });
  const { PDS, envToCfg, envToSecrets, readEnv } = require('@atproto/pds');
  const env = readEnv();
  const pds = await PDS.create(envToCfg(env), envToSecrets(env));
  await pds.start();

  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    const hard = setTimeout(() => process.exit(0), 5000);
    hard.unref();
    try {
      await pds.destroy();
      await plc.destroy();
    } finally {
      process.exit(0);
    }
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  process.stdin.on('end', stop);
  process.stdin.on('error', stop);
  process.stdin.resume();

  process.stdout.write(JSON.stringify({ plc: plcPort, pds: pdsPort, admin }) + '\n');
}

main().catch((err) => {
  process.stderr.write(`start.js: ${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
