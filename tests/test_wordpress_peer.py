#!/usr/bin/python3
# ctest-labels: peer
# ctest-connector: wordpress
"""The wordpress connector against a real WordPress (Debian's `wordpress` 6.1.9 with MariaDB on a
Unix socket and PHP's built-in server on 127.0.0.1), driven through the real daemon ($CALPOST):

  1. a post with a category, two tags (one created by the connector) and a featured image with
     alt text is published; the REST API must show exactly that;
  2. the state database is removed and the daemon started again (now with api_path =
     /?rest_route=): the resend must find the post by its slug, create no second post and
     upload nothing.

Needs the Debian packages wordpress, php-cli, php-mysql and mariadb-server (CONNECTORS-NOTES
2.5); a failure when they are missing. Everything lives in one temporary folder: the database
(mariadbd --skip-networking, its socket in that folder), the site's root (WordPress's PHP files
copied, wp-admin and wp-includes linked, the config from tests/support/wordpress/), uploads.

    /usr/bin/python3 tests/test_wordpress_peer.py        (CALPOST=build/calpost)
"""

import base64
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "support"))
from daemon_harness import Event, next_second, run_tests, wait_for  # noqa: E402

SUPPORT = os.path.join(HERE, "support", "wordpress")
DATA = os.environ.get("CP_TEST_DATA") or os.path.join(HERE, "data")
WP = "/usr/share/wordpress"
NEEDED = ["/usr/sbin/mariadbd", "/usr/bin/mariadb-install-db", "/usr/bin/mariadb", "/usr/bin/php",
          WP + "/wp-settings.php"]

_no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent():
    """preexec_fn: the child gets SIGTERM if the test process dies without cleaning up."""
    _libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class WordPress:
    """A throwaway WordPress site: MariaDB on a Unix socket, `php -S` on 127.0.0.1:port."""

    def __init__(self, folder):
        self.dir = os.path.join(folder, "wp")
        self.procs = []
        self.times = {}
        self.port = free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self.env = dict(os.environ, CP_WP_DIR=self.dir, CP_WP_URL=self.url,
                        PHP_CLI_SERVER_WORKERS="4")
        self.env.pop("http_proxy", None)
        self.env.pop("https_proxy", None)

    def _spawn(self, argv, log):
        f = open(os.path.join(self.dir, log), "wb")
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=f, env=self.env,
                             cwd=self.dir, start_new_session=True, preexec_fn=_die_with_parent)
        f.close()
        self.procs.append(p)
        return p

    def _mark(self, what, t0):
        self.times[what] = time.time() - t0

    def start(self):
        os.makedirs(os.path.join(self.dir, "content", "uploads"))
        root = os.path.join(self.dir, "root")
        os.makedirs(root)
        # The entry points are copied (they find wp-config.php next to themselves); the two big
        # folders are shared read-only.
        for name in os.listdir(WP):
            if name.endswith(".php") and name != "wp-config.php":
                shutil.copy(os.path.join(WP, name), root)
        for name in ("wp-admin", "wp-includes"):
            os.symlink(os.path.join(WP, name), os.path.join(root, name))
        for name in ("wp-config.php", "router.php", "setup.php"):
            shutil.copy(os.path.join(SUPPORT, name), root)

        t0 = time.time()
        db = os.path.join(self.dir, "mysql")
        subprocess.run(["mariadb-install-db", "--no-defaults", "--datadir=" + db, "--user=root",
                        "--auth-root-authentication-method=normal", "--skip-test-db"],
                       check=True, capture_output=True, env=self.env, timeout=120)
        self._mark("mariadb-install-db", t0)
        t0 = time.time()
        self.sock = os.path.join(self.dir, "mysqld.sock")
        self.mysqld = self._spawn(["mariadbd", "--no-defaults", "--datadir=" + db,
                                   "--socket=" + self.sock, "--skip-networking", "--user=root",
                                   "--pid-file=" + os.path.join(self.dir, "mysqld.pid"),
                                   "--innodb-buffer-pool-size=16M"], "mysqld.log")

        def db_ready():
            if self.mysqld.poll() is not None:
                raise AssertionError("mariadbd exited: " + self.log("mysqld.log"))
            r = subprocess.run(["mariadb", "--no-defaults", "-S", self.sock, "-uroot", "-e",
                                "CREATE DATABASE IF NOT EXISTS wp"], capture_output=True)
            return r.returncode == 0
        wait_for(db_ready, 60, "mariadbd on " + self.sock, interval=0.1)
        self._mark("mariadbd start", t0)

        t0 = time.time()
        r = subprocess.run(["php", os.path.join(root, "setup.php")], capture_output=True,
                           env=self.env, cwd=root, timeout=120)
        if r.returncode != 0:
            raise AssertionError("WordPress setup failed: %s %s" % (r.stdout, r.stderr))
        self.setup = json.loads(r.stdout.decode().strip().splitlines()[-1])
        self._mark("wp_install", t0)

        t0 = time.time()
        self.php = self._spawn(["php", "-S", "127.0.0.1:%d" % self.port, "-t", root,
                                os.path.join(root, "router.php")], "php.log")

        def web_ready():
            if self.php.poll() is not None:
                raise AssertionError("php -S exited: " + self.log("php.log"))
            try:
                return self.get("/wp/v2/users/me", {"context": "edit"})["id"] > 0
            except (OSError, urllib.error.URLError):
                return False
        wait_for(web_ready, 60, "php -S on " + self.url, interval=0.1)
        self._mark("php -S ready", t0)

    def log(self, name):
        with open(os.path.join(self.dir, name), errors="replace") as f:
            return f.read()[-3000:]

    def get(self, route, query=None):
        """GET /wp-json<route> as the editor; the parsed JSON answer."""
        url = self.url + "/wp-json" + route
        if query:
            url += "?" + urllib.parse.urlencode(query)
        cred = base64.b64encode(("%s:%s" % (self.setup["user"], self.setup["app_password"]))
                                .encode()).decode()
        req = urllib.request.Request(url, headers={"Authorization": "Basic " + cred})
        with _no_proxy.open(req, timeout=30) as r:
            return json.loads(r.read())

    def posts(self, **query):
        q = {"status": "publish,future,draft,pending,private", "context": "edit",
             "per_page": "100"}
        q.update(query)
        return self.get("/wp/v2/posts", q)

    def close(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)  # php -S forks workers into its group
                except ProcessLookupError:
                    pass
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait(10)


def test_publish_and_resend(ctx):
    t_start = time.time()
    env = ctx.env(channels={"blog": {}}, settings={"grace": "10m"})
    wp = WordPress(env.dir)
    try:
        wp.start()
        run(env, wp)
    finally:
        wp.close()
    times = ", ".join("%s %.1f s" % kv for kv in wp.times.items())
    print("wordpress peer: %s; whole test %.1f s" % (times, time.time() - t_start), flush=True)


def configure(env, wp, **extra):
    keys = {"type": "wordpress", "site": wp.url, "username": wp.setup["user"],
            "app_password_file": "blog.key", "create_tags": "yes", "timeout": "30s"}
    keys.update(extra)
    env.channels = {"blog": keys}
    env.write_config()


def run(env, wp):
    key = os.path.join(env.dir, "blog.key")
    with open(key, "w") as f:
        f.write(wp.setup["app_password"] + "\n")
    os.chmod(key, 0o600)
    shutil.copy(os.path.join(DATA, "media", "pixel.png"), os.path.join(env.dir, "pixel.png"))
    configure(env, wp)

    text = ("Our spring release is out: https://example.org/release\n\n"
            "Thanks to everyone who tested it.\n\n"
            "[calpost]\n"
            "categories = Releases\n"
            "tags = spring, calpost peer\n"
            "media = pixel.png | A single pixel\n")
    due = next_second(2)
    env.write_plan([Event("release@example.org", due, text, channels=["blog"],
                          summary="Spring release")])
    pid = env.pid("release@example.org", "blog")
    slug = "calpost-" + pid

    # 1. Published, with everything the plan asked for.
    t0 = time.time()
    d = env.start()
    env.wait_state(pid, "sent", timeout=60)
    wp.times["publish"] = time.time() - t0
    d.stop()
    posts = wp.posts(slug=slug)
    assert len(posts) == 1, posts
    p = posts[0]
    assert p["status"] == "publish", p["status"]
    assert p["title"]["raw"] == "Spring release", p["title"]
    content = p["content"]["raw"]
    assert ('<p>Our spring release is out: <a href="https://example.org/release">'
            'https://example.org/release</a></p>') in content, content
    assert "<p>Thanks to everyone who tested it.</p>" in content, content
    assert "<!-- calpost:%s -->" % pid in content, content
    assert "[calpost]" not in content, content
    assert p["categories"] == [wp.setup["category_id"]], p["categories"]
    tags = wp.get("/wp/v2/tags", {"include": ",".join(map(str, p["tags"])),
                                  "_fields": "id,name"})
    assert sorted(t["name"] for t in tags) == ["calpost peer", "spring"], tags
    assert p["featured_media"] > 0, p
    media = wp.get("/wp/v2/media/%d" % p["featured_media"], {"context": "edit"})
    assert media["alt_text"] == "A single pixel", media["alt_text"]
    assert media["mime_type"] == "image/png", media["mime_type"]
    row = env.query("SELECT remote_id, remote_url FROM posts WHERE id = ?", (pid,))[0]
    assert row["remote_id"] == str(p["id"]), row
    assert row["remote_url"] == p["link"], (row, p["link"])

    # 2. The state is lost; the daemon runs again (through ?rest_route= this time): the post is
    # found by its slug, nothing is created or uploaded again.
    shutil.rmtree(env.state_dir)
    configure(env, wp, api_path="/?rest_route=")
    t0 = time.time()
    d = env.start()
    env.wait_state(pid, "sent", timeout=60)
    wp.times["resend"] = time.time() - t0
    d.stop()
    assert "not sent again" in d.log(), d.log()[-3000:]
    same = wp.posts(search="Spring release")
    assert [x["id"] for x in same] == [p["id"]], [(x["id"], x["slug"]) for x in same]
    assert wp.posts(slug=slug + "-2") == []
    assert len(wp.get("/wp/v2/media", {"per_page": "100"})) == 1
    row = env.query("SELECT remote_id, remote_url FROM posts WHERE id = ?", (pid,))[0]
    assert row["remote_id"] == str(p["id"]) and row["remote_url"] == p["link"], row


if __name__ == "__main__":
    missing = [p for p in NEEDED if not os.path.exists(p)]
    if missing:
        # ./dev test installs them; a missing peer is a failure, never a silent pass.
        print("FAIL: %s missing (apt-get install wordpress php-cli php-mysql mariadb-server)"
              % ", ".join(missing))
        sys.exit(1)
    run_tests([test_publish_and_resend])
