#!/usr/bin/env python3
"""Cluster figures on loopback, side by side with serf in the same run.

Join convergence of N agents, failure detection, catch-up of a node that missed
~100k changes, and RSS idle and under ~1,000 writes/s. Usage:
    N=20 scripts/bench-cluster.py [path/to/patina]
Needs a built patina (default: the release build). Runs on 127.0.0.1 only and
cleans up on exit. Then runs ../shared/tools/anchor-serf.sh with the same N.
"""
import http.client, json, os, shutil, signal, socket, subprocess, sys, tempfile, time

N = int(os.environ.get("N", "20"))
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
binary = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    subprocess.check_output(["swift", "build", "-c", "release", "--show-bin-path"], cwd=root, text=True).strip(), "patina")
work = tempfile.mkdtemp(prefix="patina-bench-cluster-")
procs = {}

def api(i): return 18100 + i
def gossip(i): return 18300 + i

def cleanup():
    for p in procs.values():
        if p.poll() is None: p.kill()
    for p in procs.values(): p.wait()
    shutil.rmtree(work, ignore_errors=True)

def request(port, method, path, body=None, unix=None):
    if unix:
        class UnixConnection(http.client.HTTPConnection):
            def connect(self):
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); self.sock.connect(unix)
        c = UnixConnection("localhost", timeout=5)
    else:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request(method, path, body, {"content-type": "application/json"})
        r = c.getresponse(); return r.status, r.read().decode()
    finally:
        c.close()

def members(i):
    try: return json.loads(request(api(i), "GET", "/v1/health")[1])["response"]["members"]
    except Exception: return 0

def start(i):
    log = open(os.path.join(work, f"n{i}", "log"), "ab")
    procs[i] = subprocess.Popen([binary, "agent", "--config", os.path.join(work, f"n{i}.toml")], stdout=log, stderr=log)

def rss_mib(i): return int(open(f"/proc/{procs[i].pid}/status").read().split("VmRSS:")[1].split()[0]) / 1024

def until(timeout, predicate, poll=0.01):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if predicate(): return time.time() - t0
        time.sleep(poll)
    return None

try:
    run = lambda *a: subprocess.run([binary, *a], check=True, capture_output=True)
    run("certs", "ca", "--dir", f"{work}/certs")
    os.makedirs(f"{work}/schema")
    open(f"{work}/schema/s.sql", "w").write("CREATE TABLE kv (k INTEGER NOT NULL PRIMARY KEY, v TEXT, n INTEGER);\n")
    for i in range(1, N + 1):
        run("certs", "node", f"n{i}", "--dir", f"{work}/certs", "--ip", "127.0.0.1")
        os.makedirs(f"{work}/n{i}")
        open(f"{work}/n{i}.toml", "w").write(f"""[db]
path = "{work}/n{i}/state.db"
schema_paths = ["{work}/schema"]
[api]
addr = "127.0.0.1:{api(i)}"
[admin]
path = "{work}/n{i}/admin.sock"
[gossip]
addr = "127.0.0.1:{gossip(i)}"
bootstrap = ["127.0.0.1:{gossip(1)}"]
[gossip.tls]
cert_file = "{work}/certs/n{i}.pem"
key_file = "{work}/certs/n{i}.key"
ca_file = "{work}/certs/ca.pem"
""")
    # Join convergence: start every node, all join through n1; the clock starts once
    # every API answers (process start-up is not membership).
    spawned = time.time()
    for i in range(1, N + 1): start(i)
    up = until(60, lambda: all(members(i) >= 1 for i in range(1, N + 1)))
    t = until(120, lambda: all(members(i) >= N for i in range(1, N + 1)))
    print(f"patina: {N} agents spawned at once: every API up after {up:.3f} s; every node sees all {N} "
          f"{time.time() - spawned:.3f} s after spawn ({t:.3f} s after the last API came up)")
    time.sleep(2)
    print(f"patina: RSS of an idle node in a {N}-node cluster: {rss_mib(3):.1f} MiB")

    # Failure detection: SIGKILL n{N}; until n1 reports it down.
    procs[N].kill(); procs[N].wait()
    down = lambda: f'"addr":"127.0.0.1:{gossip(N)}","state":"down"' in request(0, "GET", "/cluster/members", unix=f"{work}/n1/admin.sock")[1]
    t = until(60, down)
    print(f"patina: SIGKILLed member reported down by n1 after {t:.3f} s" if t is not None else "patina: not detected in 60 s")

    # Catch-up: n2 stops, n1 commits 34 x 1000 rows (102,000 changes), n2 restarts.
    procs[2].send_signal(signal.SIGTERM); procs[2].wait()
    for b in range(34):
        sql = ("WITH RECURSIVE c(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM c WHERE x < 999) "
               f"INSERT INTO kv (k, v, n) SELECT {b} * 1000 + x, 'row', x FROM c")
        assert request(api(1), "POST", "/v1/transactions", json.dumps([sql]))[0] == 200
    t0 = time.time(); start(2)
    def caught_up():
        try: return '"row":[1,[34000]]' in request(api(2), "POST", "/v1/queries", json.dumps("SELECT count(*) FROM kv"))[1]
        except Exception: return False
    t = until(120, caught_up, poll=0.05)
    print(f"patina: a node that missed 102,000 changes reached parity {t:.3f} s after its restart" if t is not None else "patina: no catch-up in 120 s")

    # RSS under ~1,000 writes/s for 10 s (kept-alive client on n1; RSS of n2, which applies them).
    c = http.client.HTTPConnection("127.0.0.1", api(1)); c.connect()
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # headers and body go in two writes
    start_t = time.time(); i = 0; peak = 0
    while time.time() - start_t < 10:
        body = json.dumps([["INSERT OR REPLACE INTO kv (k, v, n) VALUES (?, ?, ?)", [100000 + i % 5000, "load", i]]])
        c.request("POST", "/v1/transactions", body, {"content-type": "application/json"}); c.getresponse().read()
        i += 1
        if i % 200 == 0: peak = max(peak, rss_mib(2))
        time.sleep(max(0, start_t + i / 1000 - time.time()))
    print(f"patina: {i / (time.time() - start_t):.0f} writes/s on n1; RSS of n2 (applying them) under that load: peak {peak:.1f} MiB")
finally:
    cleanup()

anchor = os.path.join(root, "..", "shared", "tools", "anchor-serf.sh")
if os.path.exists(anchor):
    if not shutil.which("serf"): subprocess.run(["apt-get", "install", "-y", "-q", "serf"], capture_output=True)
    print("--- serf (memberlist SWIM), same machine, same run ---", flush=True)
    subprocess.run(["bash", anchor], env={**os.environ, "N": str(N)})
