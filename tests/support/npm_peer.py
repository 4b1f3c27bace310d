"""Installs a reference peer's pinned npm packages (tests/support/<peer>/package.json and
package-lock.json) with `npm ci` into .cache/<peer>, once: a stamp with the lock's digest marks
a current install, and a file lock lets two builds run the peer tests at once."""

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time

# npm's words for a registry it cannot reach (no answer, as opposed to a "no").
UNREACHABLE = re.compile(r"\b(ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENETUNREACH|"
                         r"EHOSTUNREACH|network request to .* failed)\b")


class NpmError(Exception):
    """npm is missing or `npm ci` failed; unreachable says the registry could not be reached."""

    def __init__(self, msg, unreachable=False):
        super().__init__(msg)
        self.unreachable = unreachable


def _digest(*paths):
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def install(pkg, cache, what):
    """npm ci of the packages pinned in folder pkg into cache, unless that install is current.
    what names them in messages ("@atproto/pds"). Raises NpmError."""
    if not shutil.which("node") or not shutil.which("npm"):
        raise NpmError("node and npm are needed for %s (Debian: apt-get install nodejs npm)" % what)
    os.makedirs(cache, exist_ok=True)
    want = _digest(os.path.join(pkg, "package.json"), os.path.join(pkg, "package-lock.json"))
    stamp = os.path.join(cache, ".installed")
    with open(os.path.join(cache, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two builds may run this test at once
        try:
            with open(stamp) as f:
                if f.read().strip() == want and os.path.isdir(os.path.join(cache, "node_modules")):
                    return
        except OSError:
            pass
        for name in ("package.json", "package-lock.json"):
            shutil.copy(os.path.join(pkg, name), os.path.join(cache, name))
        sys.stderr.write("installing %s into %s (npm ci; minutes: better-sqlite3 is compiled)\n"
                         % (what, cache))
        t = time.time()
        env = dict(os.environ)
        # better-sqlite3 is compiled with node-gyp, which would download node's headers: use the
        # installed ones (Debian's nodejs ships them in /usr/include/node).
        if "npm_config_nodedir" not in env and os.path.isdir("/usr/include/node"):
            env["npm_config_nodedir"] = "/usr"
        p = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=cache, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=1800)
        if p.returncode != 0:
            if UNREACHABLE.search(p.stdout):
                raise NpmError("the npm registry cannot be reached:\n%s" % p.stdout[-2000:],
                               unreachable=True)
            raise NpmError("npm ci in %s failed (exit %d):\n%s"
                           % (cache, p.returncode, p.stdout[-4000:]))
        sys.stderr.write("npm ci took %.0f s\n" % (time.time() - t))
        with open(stamp, "w") as f:
            f.write(want + "\n")
