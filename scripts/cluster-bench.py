#!/usr/bin/env python3
"""Cluster-mode measurements (docs/cluster.md): takeover time over repeated kill -9,
forwarded-request overhead against a local answer, and order throughput of 1, 2 and 3
nodes on disjoint SKUs. Real processes (target/release/emporium), the local MariaDB
(root@127.0.0.1:3306, a fresh database per run), wrk as the load generator.

    cargo build --release --bins
    scripts/cluster-bench.py takeover [KILLS]   # default 10
    scripts/cluster-bench.py blackhole [TIMES]  # the owner's database link frozen, default 10
    scripts/cluster-bench.py forward
    scripts/cluster-bench.py throughput

On this machine server, database and wrk share 2 cores: the total is capped by them,
whatever the node count. Numbers are for comparing within one run.
"""
import json
import os
import signal
import socket
import threading
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "emporium")
LUA = os.path.join(ROOT, "bench", "wrk", "requests.lua")
SECRET = "cluster-bench-secret-0123456789abcdef"
SHARDS = 256
MYSQL = ["mariadb", "-uroot", "-h127.0.0.1", "-N", "-B"]


def shard_of(sku, shards=SHARDS):
    """domain::cluster::shard_of: FNV-1a 64 over the bytes, modulo the shard count."""
    h = 0xCBF29CE484222325
    for b in sku.encode():
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h % shards


def sql(db, statement):
    return subprocess.run(MYSQL + ([db] if db else []) + ["-e", statement], check=True,
                          capture_output=True, text=True).stdout.strip()


def fresh_db():
    name = "emporium_cb_" + uuid.uuid4().hex[:12]
    sql(None, f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
    return name


class Proxy:
    """A TCP proxy to MariaDB that can be frozen: sockets stay open, bytes stop (a silent
    partition, what a dropped-packet firewall rule does), until it is thawed."""

    def __init__(self, port=3306):
        self.target = ("127.0.0.1", port)
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.port = self.listener.getsockname()[1]
        self.frozen = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            client, _ = self.listener.accept()
            server = socket.create_connection(self.target)
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                while self.frozen.is_set():
                    time.sleep(0.005)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def env(db, name, ttl_ms, db_port=3306):
    e = dict(os.environ)
    e.update({
        "EMPORIUM__STORE__URL": f"mysql://root@127.0.0.1:{db_port}/{db}",
        "EMPORIUM__CLUSTER__ENABLED": "true",
        "EMPORIUM__CLUSTER__NODE_ID": name,
        "EMPORIUM__CLUSTER__LEASE_TTL_MS": str(ttl_ms),
        "EMPORIUM__AUTH__JWT_SECRET": SECRET,
        "EMPORIUM__LIMITS__ORDERS_PER_USER_PER_SEC": "0",
        "EMPORIUM__SERVER__WORKERS": "1",
        "EMPORIUM__TELEMETRY__LOG_LEVEL": "error",
    })
    return e


class Node:
    def __init__(self, db, name, ttl_ms=5000, db_port=3306):
        self.dir = tempfile.mkdtemp(prefix="emporium-cb-")
        self.name = name
        self.proc = subprocess.Popen(
            [BIN, "serve", "--listen", "127.0.0.1:0", "--data-dir", self.dir],
            env=env(db, name, ttl_ms, db_port), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.base = self.proc.stdout.readline().strip().rsplit(" ", 1)[-1]

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


def token(sub, admin=False):
    e = dict(os.environ, EMPORIUM__AUTH__JWT_SECRET=SECRET, EMPORIUM__TELEMETRY__LOG_LEVEL="error")
    args = [BIN, "token", "--sub", sub, "--data-dir", tempfile.mkdtemp()] + (["--admin"] if admin else [])
    return subprocess.run(args, env=e, capture_output=True, text=True, check=True).stdout.strip()


def call(method, url, token=None, body=None, timeout=10):
    req = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body else None)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if body:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, None
    except OSError:
        return 599, None


def wait_split(nodes, within=30):
    deadline = time.time() + within
    while time.time() < deadline:
        owned = []
        for n in nodes:
            status, body = call("GET", f"{n.base}/health/cluster")
            owned.append(body["shards_owned"] if status == 200 else 0)
        low = SHARDS // len(nodes)
        if sum(owned) == SHARDS and all(o in (low, low + 1) for o in owned):
            return
        time.sleep(0.1)
    raise SystemExit(f"no fair split: {owned}")


def product(node, admin, skus, stock):
    status, _ = call("POST", f"{node.base}/v1/products", admin, {
        "name": skus[0].lower(), "price": {"amount": 10, "currency": "KRW"},
        "variants": [{"sku": s, "stock": stock} for s in skus]})
    assert status == 201, status


def owner(db, sku):
    return sql(db, f"SELECT owner FROM shard_leases WHERE shard = {shard_of(sku)}")


def tokens_file(n=20):
    path = tempfile.mktemp(suffix=".tokens")
    with open(path, "w") as f:
        for i in range(n):
            f.write(token(f"bench-{i}") + "\n")
    return path


def wrk(base, tokens, method, path, body="", seconds=8, conns=16):
    args = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "-s", LUA, base, "--", tokens, method, path, body]
    return subprocess.Popen(args, stdout=subprocess.PIPE, text=True)


def wrk_result(proc):
    out = proc.communicate()[0]
    return json.loads(out.strip().splitlines()[-1])


def takeover(kills=10):
    admin = token("admin", True)
    user = token("buyer")
    times = []
    for i in range(kills):
        db = fresh_db()
        nodes = [Node(db, f"node-{c}") for c in "abc"]
        try:
            wait_split(nodes)
            product(nodes[0], admin, ["TAKE"], 1_000_000)
            victim = next(n for n in nodes if n.name == owner(db, "TAKE"))
            survivor = next(n for n in nodes if n is not victim)
            assert call("POST", f"{survivor.base}/v1/orders", user, {"items": [{"sku": "TAKE", "qty": 1}]})[0] == 201
            victim.kill()
            killed = time.time()
            while call("POST", f"{survivor.base}/v1/orders", user, {"items": [{"sku": "TAKE", "qty": 1}]})[0] != 201:
                time.sleep(0.01)
            times.append(time.time() - killed)
            print(f"kill {i + 1}: orders on the dead node's SKU succeed again after {times[-1]:.2f} s", flush=True)
        finally:
            for n in nodes:
                n.kill()
            sql(None, f"DROP DATABASE {db}")
    print(json.dumps({"kills": kills, "lease_ttl_ms": 5000, "p50_s": round(statistics.median(times), 2),
                      "max_s": round(max(times), 2), "min_s": round(min(times), 2)}))


def blackhole(times=10):
    """The owner of a SKU loses its database silently (its proxy freezes): how long until
    orders on that SKU succeed again through another node, and until the frozen node
    stops acting on its shards (its /health/cluster shows none)."""
    admin = token("admin", True)
    user = token("buyer")
    takeovers, dropped = [], []
    for i in range(times):
        db = fresh_db()
        proxies = {c: Proxy() for c in "abc"}
        nodes = [Node(db, f"node-{c}", db_port=proxies[c].port) for c in "abc"]
        try:
            wait_split(nodes)
            product(nodes[0], admin, ["HOLE"], 1_000_000)
            victim = next(n for n in nodes if n.name == owner(db, "HOLE"))
            survivor = next(n for n in nodes if n is not victim)
            assert call("POST", f"{survivor.base}/v1/orders", user, {"items": [{"sku": "HOLE", "qty": 1}]})[0] == 201
            proxies[victim.name[-1]].frozen.set()
            frozen = time.time()
            gave_up = None
            while True:
                if gave_up is None:
                    status, body = call("GET", f"{victim.base}/health/cluster", timeout=2)
                    if status == 200 and body["shards_owned"] == 0:
                        gave_up = time.time() - frozen
                # A short client timeout: an order stuck at the frozen owner must not hide
                # the moment new ones succeed (a real client's timeout is its own choice).
                status, _ = call("POST", f"{survivor.base}/v1/orders", user,
                                 {"items": [{"sku": "HOLE", "qty": 1}]}, timeout=0.5)
                if status == 201:
                    break
                time.sleep(0.01)
            takeovers.append(time.time() - frozen)
            while gave_up is None:
                status, body = call("GET", f"{victim.base}/health/cluster", timeout=2)
                if status == 200 and body["shards_owned"] == 0:
                    gave_up = time.time() - frozen
                time.sleep(0.01)
            dropped.append(gave_up)
            print(f"blackhole {i + 1}: the frozen owner dropped its shards after {gave_up:.2f} s, "
                  f"its SKU sells through another node after {takeovers[-1]:.2f} s", flush=True)
        finally:
            for n in nodes:
                n.kill()
            sql(None, f"DROP DATABASE {db}")
    print(json.dumps({"blackholes": times, "lease_ttl_ms": 5000,
                      "takeover_p50_s": round(statistics.median(takeovers), 2), "takeover_max_s": round(max(takeovers), 2),
                      "dropped_p50_s": round(statistics.median(dropped), 2), "dropped_max_s": round(max(dropped), 2)}))


def forward():
    db = fresh_db()
    nodes = [Node(db, f"node-{c}") for c in "abc"]
    try:
        wait_split(nodes)
        admin = token("admin", True)
        product(nodes[0], admin, ["FWD"], 1_000_000)
        home = next(n for n in nodes if n.name == owner(db, "FWD"))
        away = next(n for n in nodes if n is not home)
        tokens = tokens_file(4)
        for label, node in (("local", home), ("forwarded", away), ("local", home), ("forwarded", away)):
            r = wrk_result(wrk(node.base, tokens, "GET", "/v1/inventory/FWD", seconds=5, conns=8))
            print(json.dumps({"answer": label, "requests_per_s": round(r["requests"] / (r["duration_us"] / 1e6)),
                              "p50_ms": r["p50_us"] / 1000, "p99_ms": r["p99_us"] / 1000,
                              "errors": r["status_errors"] + r["timeouts"]}), flush=True)
    finally:
        for n in nodes:
            n.kill()
        sql(None, f"DROP DATABASE {db}")


def throughput():
    admin = token("admin", True)
    tokens = tokens_file(20)
    body = None
    for count in (1, 2, 3):
        db = fresh_db()
        nodes = [Node(db, f"node-{c}") for c in "abc"[:count]]
        try:
            wait_split(nodes)
            skus = [f"TP-{i}" for i in range(64)]
            product(nodes[0], admin, skus, 100_000_000)
            owned = {n.name: [s for s in skus if owner(db, s) == n.name] for n in nodes}
            procs = []
            for n in nodes:
                body = json.dumps({"items": [{"sku": owned[n.name][0], "qty": 1}]})
                procs.append(wrk(n.base, tokens, "POST", "/v1/orders", body, seconds=8, conns=32 // count))
            results = [wrk_result(p) for p in procs]
            total = sum(r["requests"] / (r["duration_us"] / 1e6) for r in results)
            errors = sum(r["status_errors"] + r["timeouts"] for r in results)
            print(json.dumps({"nodes": count, "orders_per_s": round(total), "non_2xx_or_timeouts": errors,
                              "p99_ms": max(r["p99_us"] for r in results) / 1000}), flush=True)
        finally:
            for n in nodes:
                n.kill()
            sql(None, f"DROP DATABASE {db}")


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    if what in ("takeover", "all"):
        takeover(int(sys.argv[2]) if len(sys.argv) > 2 else 10)
    if what in ("blackhole", "all"):
        blackhole(int(sys.argv[2]) if len(sys.argv) > 2 else 10)
    if what in ("forward", "all"):
        forward()
    if what in ("throughput", "all"):
        throughput()
