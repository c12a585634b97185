#!/usr/bin/env bash
# Smoke test of lanemesh-node against a real etcd + kube-apiserver on loopback
# (the binaries of e2e/cluster/build.sh), as root:
#   - a Pod with a regular init container, a native sidecar (startupProbe),
#     an app (python3 http.server) with a readiness probe on a named port, an
#     env fieldRef/resourceFieldRef/$(VAR), the default kube-api-access and
#     lanemesh's projected token, a configMap, an emptyDir, a hostPath, and an
#     inspector container that prints what it sees to its log;
#   - checks Running/Ready, curl <podIP>:8080 from the host, the files, env,
#     identity and capabilities inside, kubectl logs/exec through the API server;
#   - a crashing container (CrashLoopBackOff, restartCount), an image missing
#     from the table (ErrImagePull), a missing Secret (CreateContainerConfigError);
#   - `kubectl delete pod` stops the processes within the grace period (preStop ran);
#   - SIGTERM to the node leaves no lm-* netns, veth, bridge, iptables chain,
#     process or state behind.
# Usage: sudo e2e/cluster/node/smoke.sh [--keep] [--up]
#   --keep: leave the temp dir (logs, kubeconfig, node state) behind
#   --up:   only start etcd, kube-apiserver and the node, print the kubeconfig
#           and wait (Ctrl-C stops and cleans everything)
# Needs: openssl, curl, python3 (/usr/bin/python3), iproute2, iptables, util-linux.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${LANEMESH_CACHE:-$HOME/.cache/lanemesh}"
bin="${LANEMESH_CLUSTER_BIN:-$cache/bin}"
keep=0
up=0
for arg in "$@"; do
  case "$arg" in
    --keep) keep=1 ;;
    --up) up=1 ;;
    *) echo "smoke.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done

[[ $(id -u) == 0 ]] || { echo "smoke.sh: run as root" >&2; exit 1; }
for b in etcd kube-apiserver kubectl lanemesh-node; do
  [[ -x "$bin/$b" ]] || { echo "smoke.sh: $bin/$b missing (e2e/cluster/build.sh, e2e/cluster/node/build.sh)" >&2; exit 1; }
done

node=lm-smoke-node
bridge=lmsmoke0
cidr=10.244.77.0/24
dir="$(mktemp -d /tmp/lanemesh-node-smoke.XXXXXX)"
chmod 755 "$dir"
hostdir=/tmp/lanemesh-node-smoke-hostpath.$$
pids=()
node_pid=""
failures=0
passes=0

cleanup() {
  set +e
  if [[ -n "$node_pid" ]] && kill -0 "$node_pid" 2>/dev/null; then
    kill -TERM "$node_pid"
    for _ in $(seq 1 100); do kill -0 "$node_pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$node_pid" 2>/dev/null
  fi
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  sleep 1
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
  rm -rf "$hostdir"
  if [[ $keep == 1 ]]; then echo "smoke.sh: kept $dir"; else rm -rf "$dir"; fi
}
trap cleanup EXIT

ok() { echo "PASS: $*"; passes=$((passes + 1)); }
bad() { echo "FAIL: $*"; failures=$((failures + 1)); }
check() { # check DESCRIPTION COMMAND...
  local what=$1
  shift
  if "$@" >/dev/null 2>&1; then ok "$what"; else bad "$what"; fi
}
kc() { "$bin/kubectl" --kubeconfig "$dir/kubeconfig" --cache-dir "$dir/kubectl-cache" "$@"; }
wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local t=$1 what=$2
  shift 2
  local end=$((SECONDS + t))
  while ((SECONDS < end)); do
    if "$@" >/dev/null 2>&1; then ok "$what"; return 0; fi
    sleep 0.5
  done
  bad "$what (not within ${t}s)"
  return 1
}
free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- PKI: CA, API server serving certificate, service-account key, admin token
cd "$dir"
openssl ecparam -name prime256v1 -genkey -noout -out ca.key 2>/dev/null
openssl req -x509 -new -key ca.key -subj /CN=lanemesh-smoke-ca -days 2 -out ca.crt 2>/dev/null
openssl ecparam -name prime256v1 -genkey -noout -out apiserver.key 2>/dev/null
openssl req -new -key apiserver.key -subj /CN=kube-apiserver -out apiserver.csr 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:10.96.0.1\nextendedKeyUsage=serverAuth\n' >ext.cnf
openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile ext.cnf -out apiserver.crt 2>/dev/null
openssl ecparam -name prime256v1 -genkey -noout -out sa.key 2>/dev/null
openssl ec -in sa.key -pubout -out sa.pub 2>/dev/null
token="$(head -c 30 /dev/urandom | base64 | tr -dc 'a-zA-Z0-9' | head -c 40)"
echo "$token,lanemesh-admin,lanemesh-admin,\"system:masters\"" >tokens.csv

etcd_port=$(free_port)
peer_port=$(free_port)
api_port=$(free_port)
server="https://127.0.0.1:$api_port"
cat >kubeconfig <<EOF
apiVersion: v1
kind: Config
clusters:
- name: smoke
  cluster: {server: $server, certificate-authority: $dir/ca.crt}
users:
- name: admin
  user: {token: $token}
contexts:
- name: smoke
  context: {cluster: smoke, user: admin, namespace: default}
current-context: smoke
EOF

setpriv --pdeathsig KILL -- "$bin/etcd" --name=smoke --data-dir="$dir/etcd-data" \
  --listen-client-urls="http://127.0.0.1:$etcd_port" --advertise-client-urls="http://127.0.0.1:$etcd_port" \
  --listen-peer-urls="http://127.0.0.1:$peer_port" --initial-advertise-peer-urls="http://127.0.0.1:$peer_port" \
  --initial-cluster="smoke=http://127.0.0.1:$peer_port" --unsafe-no-fsync=true --log-level=warn >etcd.log 2>&1 &
pids+=($!)
setpriv --pdeathsig KILL -- "$bin/kube-apiserver" --etcd-servers="http://127.0.0.1:$etcd_port" \
  --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$api_port" \
  --tls-cert-file=apiserver.crt --tls-private-key-file=apiserver.key --client-ca-file=ca.crt \
  --token-auth-file=tokens.csv --authorization-mode=RBAC \
  --service-account-issuer="$server" --service-account-key-file=sa.pub --service-account-signing-key-file=sa.key \
  --service-cluster-ip-range=10.96.0.0/16 --disable-admission-plugins=ServiceAccount \
  --endpoint-reconciler-type=none --allow-privileged=true --profiling=false >kube-apiserver.log 2>&1 &
pids+=($!)
wait_for 120 "kube-apiserver serves" kc get --raw /readyz
wait_for 60 "namespace default exists" kc get namespace default

# --- the node
mkdir -p "$hostdir"
cat >images.yaml <<EOF
images:
  smoke/python: {entrypoint: [/usr/bin/python3]}
  smoke/http-server: {entrypoint: [/usr/bin/python3, -m, http.server], cmd: ["8080"], env: {PYTHONUNBUFFERED: "1"}}
  busybox: {entrypoint: [], cmd: [sh]}
EOF
"$bin/lanemesh-node" --kubeconfig "$dir/kubeconfig" --node-name "$node" --pod-cidr "$cidr" --bridge "$bridge" \
  --images "$dir/images.yaml" --state-dir "$dir/node-state" >node.log 2>&1 &
node_pid=$!
wait_for 60 "node registered and Ready" sh -c "$(declare -f kc); bin='$bin' dir='$dir'; kc get node $node -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
check "node has podCIDR $cidr" sh -c "'$bin/kubectl' --kubeconfig '$dir/kubeconfig' get node $node -o jsonpath='{.spec.podCIDR}' | grep -qx '$cidr'"
kc get node "$node" -o json >"$dir/node.json"
check "node has no taints" jq -e '.spec.taints == null' "$dir/node.json"
check "node lease exists" kc get lease -n kube-node-lease "$node"

if [[ $up == 1 ]]; then
  echo "smoke.sh: cluster up; node log: $dir/node.log"
  echo "export KUBECONFIG=$dir/kubeconfig   # kubectl: $bin/kubectl"
  trap 'exit 0' INT TERM
  while kill -0 "$node_pid" 2>/dev/null; do sleep 1; done
  exit 0
fi

# kube-root-ca.crt is normally published by the controller-manager, absent here.
kc create configmap kube-root-ca.crt --from-file=ca.crt="$dir/ca.crt" >/dev/null
kc create serviceaccount web >/dev/null
kc create configmap web-config --from-literal=greeting=hello --from-literal=mode=fast >/dev/null

cat >pod.yaml <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web, lane: gray}
spec:
  nodeName: $node
  serviceAccountName: web
  terminationGracePeriodSeconds: 8
  securityContext: {fsGroup: 2000}
  volumes:
  - name: www
    emptyDir: {}
  - name: config
    configMap: {name: web-config, items: [{key: greeting, path: greeting.txt}]}
  - name: host
    hostPath: {path: $hostdir, type: DirectoryOrCreate}
  - name: lanemesh-token
    projected:
      sources:
      - serviceAccountToken: {audience: lanemesh, expirationSeconds: 3600, path: lanemesh-token}
  - name: kube-api-access
    projected:
      defaultMode: 420
      sources:
      - serviceAccountToken: {expirationSeconds: 3607, path: token}
      - configMap: {name: kube-root-ca.crt, items: [{key: ca.crt, path: ca.crt}]}
      - downwardAPI: {items: [{path: namespace, fieldRef: {apiVersion: v1, fieldPath: metadata.namespace}}]}
  initContainers:
  - name: setup
    image: busybox:1.36
    command: [sh, -c, 'echo "hello from \$(POD_NAME)" > /srv/www/index.html']
    env: [{name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}]
    volumeMounts: [{name: www, mountPath: /srv/www}]
  - name: netinit
    image: busybox
    command: [sh, -c, 'grep -E "^Cap(Eff|Bnd)" /proc/self/status > /srv/www/caps.txt && iptables -w -t nat -N LM_SMOKE && echo iptables-ok >> /srv/www/caps.txt']
    securityContext: {runAsUser: 0, capabilities: {add: [NET_ADMIN, NET_RAW], drop: [ALL]}}
    volumeMounts: [{name: www, mountPath: /srv/www}]
  - name: proxy
    image: smoke/python
    restartPolicy: Always
    args: [-m, http.server, "15021", --directory, /etc]
    startupProbe: {httpGet: {path: /hostname, port: 15021}, periodSeconds: 1, failureThreshold: 30}
    readinessProbe: {tcpSocket: {port: 15021}, periodSeconds: 2}
    securityContext: {runAsUser: 1337, runAsGroup: 1337, allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
    volumeMounts: [{name: lanemesh-token, mountPath: /var/run/secrets/lanemesh/tokens, readOnly: true}]
  containers:
  - name: app
    image: docker.io/smoke/http-server:latest
    workingDir: /srv/www
    ports: [{name: http, containerPort: 8080}]
    env:
    - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    - {name: LANE, valueFrom: {fieldRef: {fieldPath: "metadata.labels['lane']"}}}
    - {name: MEM_MI, valueFrom: {resourceFieldRef: {resource: limits.memory, divisor: 1Mi}}}
    - {name: URL, value: "http://\$(POD_IP):8080/"}
    resources: {limits: {memory: 64Mi}}
    readinessProbe: {httpGet: {path: /, port: http}, periodSeconds: 1}
    livenessProbe: {tcpSocket: {port: 8080}, periodSeconds: 5}
    lifecycle:
      preStop: {exec: {command: [sh, -c, 'echo "prestop \$(date +%s)" > /host/prestop.txt']}}
    volumeMounts:
    - {name: www, mountPath: /srv/www}
    - {name: host, mountPath: /host}
    - {name: kube-api-access, mountPath: /var/run/secrets/kubernetes.io/serviceaccount, readOnly: true}
  - name: inspector
    image: busybox
    command:
    - sh
    - -c
    - |
      echo "ID \$(id -u):\$(id -g) groups=\$(id -G)"
      echo "HOSTNAME \$(hostname)"
      grep -E '^Cap(Bnd|Eff)|^NoNewPrivs' /proc/self/status
      echo "RESOLV"; cat /etc/resolv.conf
      echo "HOSTS"; grep web /etc/hosts
      echo "ENV LANE=\$LANE URL=\$URL CPU=\$CPU KSH=\$KUBERNETES_SERVICE_HOST"
      echo "GREETING \$(cat /config/greeting.txt)"
      echo "NAMESPACE \$(cat /sa/namespace)"
      echo "CA \$(head -1 /sa/ca.crt)"
      echo "TOKEN \$(cut -c1-20 /sa/token)"
      ls -ln /sa/..data/
      echo "WRITE-RO \$(touch /sa/x 2>&1 | head -1)"
      echo "INSPECTED"
      exec sleep 3600
    env:
    - {name: LANE, valueFrom: {fieldRef: {fieldPath: "metadata.labels['lane']"}}}
    - {name: URL, value: "\$(LANE)-\$\$(LANE)"}
    - {name: CPU, valueFrom: {resourceFieldRef: {resource: limits.cpu, divisor: 1m}}}
    securityContext: {runAsUser: 1000, runAsGroup: 1000, capabilities: {add: [NET_BIND_SERVICE], drop: [ALL]}}
    volumeMounts:
    - {name: config, mountPath: /config}
    - {name: kube-api-access, mountPath: /sa, readOnly: true}
EOF
kc apply -f pod.yaml >/dev/null
podjson() { kc get pod "$1" -o json; }
wait_for 90 "pod web Running and Ready" sh -c "'$bin/kubectl' --kubeconfig '$dir/kubeconfig' get pod web -o jsonpath='{.status.phase} {.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx 'Running True'"
kc get pod web -o wide || true
ip="$(kc get pod web -o jsonpath='{.status.podIP}')"
echo "pod IP: $ip"
check "pod IP is in $cidr" sh -c "echo '$ip' | grep -q '^10\.244\.77\.'"
check "hostIP is the bridge address" sh -c "'$bin/kubectl' --kubeconfig '$dir/kubeconfig' get pod web -o jsonpath='{.status.hostIP}' | grep -qx 10.244.77.1"
check "curl http://$ip:8080/ from the host serves the init container's file" sh -c "curl -fsS --max-time 5 http://$ip:8080/ | grep -qx 'hello from web'"
check "the sidecar listens on :15021 as well" curl -fsS --max-time 5 "http://$ip:15021/hostname"
check "netns lm-* exists for the pod" sh -c "ip netns list | grep -q '^lm-'"
podjson web >"$dir/web.json"
check "initContainerStatuses: setup, netinit Completed, proxy running+ready" sh -c "cat '$dir/web.json' | jq -e '.status.initContainerStatuses | (.[0].state.terminated.reason==\"Completed\") and (.[1].state.terminated.reason==\"Completed\") and (.[2].state.running!=null) and .[2].ready and .[2].started'"
check "containerStatuses carry containerID lanemesh://<pid> and imageID" sh -c "cat '$dir/web.json' | jq -e '.status.containerStatuses[0] | (.containerID|startswith(\"lanemesh://\")) and (.imageID|test(\"smoke/http-server@sha256:\"))'"
check "conditions Initialized/ContainersReady/Ready/PodScheduled True" sh -c "cat '$dir/web.json' | jq -e '[.status.conditions[] | select(.type==\"Initialized\" or .type==\"ContainersReady\" or .type==\"Ready\" or .type==\"PodScheduled\") | .status] | length==4 and all(.==\"True\")'"
curl -fsS --max-time 5 "http://$ip:8080/caps.txt" >"$dir/caps.txt" || true
check "root init with drop ALL + add NET_ADMIN,NET_RAW: exactly those caps, iptables works in the pod netns" sh -c "grep -qP '^CapEff:\t0000000000003000' '$dir/caps.txt' && grep -qP '^CapBnd:\t0000000000003000' '$dir/caps.txt' && grep -qx iptables-ok '$dir/caps.txt'"
check "no LM_SMOKE chain leaked into the host" sh -c "! iptables -w -t nat -S LM_SMOKE"
proxy_pid="$(kc get pod web -o jsonpath='{.status.initContainerStatuses[2].containerID}' | sed 's|lanemesh://||')"
check "sidecar process: uid 1337, no_new_privs, empty bounding set" sh -c "grep -qP '^Uid:\t1337\t' /proc/$proxy_pid/status && grep -qP '^NoNewPrivs:\t1' /proc/$proxy_pid/status && grep -qP '^CapBnd:\t0000000000000000' /proc/$proxy_pid/status"
check "sidecar process is in the pod netns" sh -c "ip netns identify $proxy_pid | grep -q '^lm-'"
wait_for 30 "inspector printed its view" sh -c "grep -q INSPECTED '$dir'/node-state/pods/default_web_*/logs/inspector.log"
cp "$dir"/node-state/pods/default_web_*/logs/inspector.log "$dir/inspector.log"
echo "----- inspector log"; cat "$dir/inspector.log"; echo "-----"
check "inspector runs as 1000:1000 with fsGroup 2000" sh -c "cat '$dir/inspector.log' | grep -q '^ID 1000:1000 groups=1000 2000'"
check "inspector hostname is the pod name" sh -c "cat '$dir/inspector.log' | grep -qx 'HOSTNAME web'"
check "inspector bounding set is only NET_BIND_SERVICE" sh -c "cat '$dir/inspector.log' | grep -qP '^CapBnd:\t0000000000000400'"
check "resolv.conf is the cluster one" sh -c "cat '$dir/inspector.log' | grep -qx 'search default.svc.cluster.local svc.cluster.local cluster.local' && cat '$dir/inspector.log' | grep -qx 'nameserver 10.96.0.10' && cat '$dir/inspector.log' | grep -qx 'options ndots:5'"
check "/etc/hosts maps web to the pod IP" sh -c "cat '$dir/inspector.log' | grep -qP '^$ip\tweb'"
check "env: fieldRef label, \$(VAR) and \$\$ escape, resourceFieldRef, service env" sh -c "cat '$dir/inspector.log' | grep -qx 'ENV LANE=gray URL=gray-\$(LANE) CPU=8000 KSH=10.96.0.1'"
check "configMap item" sh -c "cat '$dir/inspector.log' | grep -qx 'GREETING hello'"
check "kube-api-access: namespace, ca.crt, token" sh -c "cat '$dir/inspector.log' | grep -qx 'NAMESPACE default' && cat '$dir/inspector.log' | grep -q '^CA -----BEGIN CERTIFICATE' && cat '$dir/inspector.log' | grep -q '^TOKEN eyJ'"
check "readOnly volume is read-only" sh -c "cat '$dir/inspector.log' | grep -q 'WRITE-RO.*Read-only file system'"
check "projected files are group fsGroup" sh -c "cat '$dir/inspector.log' | grep -qE ' 0 +2000 .* token'"
tok="$(cat "$dir"/node-state/pods/default_web_*/volumes/lanemesh-token/lanemesh-token)"
payload="$(echo "$tok" | cut -d. -f2 | tr '_-' '/+')"
while (( ${#payload} % 4 )); do payload+="="; done
echo "$payload" | base64 -d >"$dir/claims.json" 2>/dev/null || true
echo "lanemesh token claims: $(cat "$dir/claims.json")"
check "lanemesh token: audience lanemesh, bound to the pod" sh -c "cat '$dir/claims.json' | jq -e '(.aud==[\"lanemesh\"]) and (.\"kubernetes.io\".pod.name==\"web\") and (.\"kubernetes.io\".serviceaccount.name==\"web\")'"
check "kubectl logs through the API server" sh -c "'$bin/kubectl' --kubeconfig '$dir/kubeconfig' logs web -c inspector | grep -q INSPECTED"
check "kubectl exec through the API server" sh -c "'$bin/kubectl' --kubeconfig '$dir/kubeconfig' exec web -c app -- sh -c 'echo \$POD_IP; id -u' | tr '\n' ' ' | grep -q '$ip 0'"

# --- failures are reported, not fatal
cat >bad.yaml <<EOF
apiVersion: v1
kind: Pod
metadata: {name: crasher}
spec:
  nodeName: $node
  terminationGracePeriodSeconds: 1
  containers:
  - {name: c, image: busybox, command: [sh, -c, 'echo crash; exit 3']}
---
apiVersion: v1
kind: Pod
metadata: {name: noimage}
spec:
  nodeName: $node
  containers:
  - {name: c, image: nginx:1.27}
---
apiVersion: v1
kind: Pod
metadata: {name: nosecret}
spec:
  nodeName: $node
  containers:
  - name: c
    image: busybox
    env: [{name: X, valueFrom: {secretKeyRef: {name: absent, key: k}}}]
---
apiVersion: v1
kind: Pod
metadata: {name: nocommand}
spec:
  nodeName: $node
  restartPolicy: Never
  containers:
  - {name: c, image: busybox, command: [/does/not/exist]}
EOF
kc apply -f bad.yaml >/dev/null
wait_for 60 "crasher: CrashLoopBackOff with restartCount >= 1 and lastState exit 3" sh -c "'$bin/kubectl' --kubeconfig '$dir/kubeconfig' get pod crasher -o json | jq -e '.status.containerStatuses[0] | (.state.waiting.reason==\"CrashLoopBackOff\") and (.restartCount>=1) and (.lastState.terminated.exitCode==3)'"
wait_for 30 "noimage: ErrImagePull naming the image and the table" sh -c "'$bin/kubectl' --kubeconfig '$dir/kubeconfig' get pod noimage -o json | jq -e '.status.containerStatuses[0].state.waiting | (.reason==\"ErrImagePull\") and (.message|contains(\"nginx:1.27\")) and (.message|contains(\"images.yaml\"))'"
wait_for 30 "nosecret: CreateContainerConfigError" sh -c "'$bin/kubectl' --kubeconfig '$dir/kubeconfig' get pod nosecret -o json | jq -e '.status.containerStatuses[0].state.waiting.reason==\"CreateContainerConfigError\"'"
wait_for 30 "nocommand: Failed with StartError exit 128" sh -c "'$bin/kubectl' --kubeconfig '$dir/kubeconfig' get pod nocommand -o json | jq -e '(.status.phase==\"Failed\") and (.status.containerStatuses[0].state.terminated.reason==\"StartError\") and (.status.containerStatuses[0].state.terminated.exitCode==128)'"
kc delete pod crasher noimage nosecret nocommand --wait=false >/dev/null

# --- lifecycle behaviours
cat >more.yaml <<EOF
apiVersion: v1
kind: Pod
metadata: {name: ordered}
spec:
  nodeName: $node
  terminationGracePeriodSeconds: 2
  volumes: [{name: shared, emptyDir: {}}]
  containers:
  - name: first
    image: busybox
    command: [sh, -c, 'exec sleep 3600']
    lifecycle:
      postStart: {exec: {command: [sh, -c, 'sleep 2; touch /shared/hooked']}}
    volumeMounts: [{name: shared, mountPath: /shared}]
  - name: second
    image: busybox
    command: [sh, -c, 'if [ -e /shared/hooked ]; then echo ORDER-OK; else echo ORDER-BAD; fi; exec sleep 3600']
    volumeMounts: [{name: shared, mountPath: /shared}]
---
apiVersion: v1
kind: Pod
metadata: {name: liveness}
spec:
  nodeName: $node
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: busybox
    command: [sh, -c, 'exec sleep 3600']
    livenessProbe: {tcpSocket: {port: 9999}, periodSeconds: 1, failureThreshold: 2}
---
apiVersion: v1
kind: Pod
metadata: {name: badprobe}
spec:
  nodeName: $node
  containers:
  - name: c
    image: busybox
    command: [sh, -c, 'exec sleep 3600']
    readinessProbe: {httpGet: {port: no-such-port}, periodSeconds: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: job}
spec:
  nodeName: $node
  restartPolicy: OnFailure
  initContainers:
  - {name: side, image: busybox, restartPolicy: Always, command: [sh, -c, 'exec sleep 3600']}
  containers:
  - {name: c, image: busybox, command: [sh, -c, 'echo done']}
---
apiVersion: v1
kind: Pod
metadata: {name: initfail}
spec:
  nodeName: $node
  terminationGracePeriodSeconds: 1
  initContainers:
  - {name: i, image: busybox, command: [sh, -c, 'exit 7']}
  containers:
  - {name: c, image: busybox, command: [sh, -c, 'exec sleep 3600']}
---
apiVersion: v1
kind: Pod
metadata: {name: hostnet}
spec:
  nodeName: $node
  hostNetwork: true
  containers:
  - {name: c, image: busybox, command: [sh, -c, 'exec sleep 3600']}
---
apiVersion: v1
kind: Pod
metadata: {name: nocm}
spec:
  nodeName: $node
  volumes: [{name: v, configMap: {name: absent}}]
  containers:
  - {name: c, image: busybox, command: [sh, -c, 'exec sleep 3600'], volumeMounts: [{name: v, mountPath: /v}]}
EOF
kc apply -f more.yaml >/dev/null
wait_for 30 "postStart hook holds the next container (ORDER-OK)" sh -c "'$bin/kubectl' --kubeconfig '$dir/kubeconfig' logs ordered -c second | grep -qx ORDER-OK"
wait_for 30 "liveness failure restarts the container" sh -c "'$bin/kubectl' --kubeconfig '$dir/kubeconfig' get pod liveness -o json | jq -e '.status.containerStatuses[0] | (.restartCount>=1) and (.lastState.terminated.exitCode==143 or .lastState.terminated.exitCode==137)'"
wait_for 30 "probe on an unknown named port: Running, not Ready" sh -c "'$bin/kubectl' --kubeconfig '$dir/kubeconfig' get pod badprobe -o json | jq -e '(.status.phase==\"Running\") and (.status.containerStatuses[0].ready==false)'"
wait_for 30 "OnFailure pod with a sidecar ends Succeeded, sidecar stopped" sh -c "'$bin/kubectl' --kubeconfig '$dir/kubeconfig' get pod job -o json | jq -e '(.status.phase==\"Succeeded\") and (.status.initContainerStatuses[0].state.terminated!=null)'"
wait_for 30 "failing init container under Always: Pending, retried with backoff, app not started" sh -c "'$bin/kubectl' --kubeconfig '$dir/kubeconfig' get pod initfail -o json | jq -e '(.status.phase==\"Pending\") and (.status.initContainerStatuses[0].restartCount>=1) and (.status.initContainerStatuses[0].lastState.terminated.exitCode==7) and (.status.containerStatuses[0].state.waiting.reason==\"PodInitializing\")'"
wait_for 30 "hostNetwork pod: podIP is the node IP" sh -c "'$bin/kubectl' --kubeconfig '$dir/kubeconfig' get pod hostnet -o json | jq -e '(.status.phase==\"Running\") and (.status.podIP==\"10.244.77.1\")'"
wait_for 30 "missing ConfigMap volume: ContainerCreating with the reason" sh -c "'$bin/kubectl' --kubeconfig '$dir/kubeconfig' get pod nocm -o json | jq -e '.status.containerStatuses[0].state.waiting | (.reason==\"ContainerCreating\") and (.message|contains(\"absent\"))'"
kc create configmap absent --from-literal=k=v >/dev/null
wait_for 30 "nocm starts once the ConfigMap exists" sh -c "'$bin/kubectl' --kubeconfig '$dir/kubeconfig' get pod nocm -o jsonpath='{.status.phase}' | grep -qx Running"
kc label pod web lane=base --overwrite >/dev/null
sleep 2
check "a relabel is not reverted by status writes" sh -c "'$bin/kubectl' --kubeconfig '$dir/kubeconfig' get pod web -o jsonpath='{.metadata.labels.lane}' | grep -qx base"
kc delete pod ordered liveness badprobe job initfail hostnet nocm --wait=false >/dev/null

# --- deletion: preStop, SIGTERM, processes gone within the grace period
app_pid="$(kc get pod web -o jsonpath='{.status.containerStatuses[0].containerID}' | sed 's|lanemesh://||')"
echo "app pid $app_pid"
start=$SECONDS
kc delete pod web --wait=true --timeout=60s >/dev/null
took=$((SECONDS - start))
echo "kubectl delete pod web took ${took}s (grace 8s)"
check "pod deleted within the grace period (+2s)" test "$took" -le 10
check "preStop hook ran" test -s "$hostdir/prestop.txt"
check "app process is gone" sh -c "! kill -0 $app_pid"
wait_for 20 "the other pods are gone too" sh -c "[ -z \"\$('$bin/kubectl' --kubeconfig '$dir/kubeconfig' get pods -o name)\" ]"
check "no pod netns left while the node runs" sh -c "! ip netns list | grep -q '^lm-'"
check "no pod directories left" sh -c "[ -z \"\$(ls '$dir/node-state/pods')\" ]"

# --- a pod recreated under the same name while the old one is still stopping
cat >again.yaml <<EOF
apiVersion: v1
kind: Pod
metadata: {name: again}
spec:
  nodeName: $node
  terminationGracePeriodSeconds: 3
  containers:
  - {name: c, image: busybox, command: [sh, -c, 'trap "" TERM; while :; do sleep 1; done']}
EOF
kc apply -f again.yaml >/dev/null
wait_for 30 "pod again Running" sh -c "'$bin/kubectl' --kubeconfig '$dir/kubeconfig' get pod again -o jsonpath='{.status.phase}' | grep -qx Running"
first_uid="$(kc get pod again -o jsonpath='{.metadata.uid}')"
kc delete pod again --wait=false >/dev/null
kc delete pod again --grace-period=0 --force >/dev/null 2>&1 || true
kc apply -f again.yaml >/dev/null
wait_for 30 "the new pod of the same name runs after the old one stopped" sh -c "'$bin/kubectl' --kubeconfig '$dir/kubeconfig' get pod again -o json | jq -e '(.metadata.uid != \"$first_uid\") and (.status.phase==\"Running\") and (.status.containerStatuses[0].state.running != null)'"
kc delete pod again --wait=false >/dev/null

# --- crash: SIGKILL the node, start it again on the same state dir
cat >survivor.yaml <<EOF
apiVersion: v1
kind: Pod
metadata: {name: survivor}
spec:
  nodeName: $node
  terminationGracePeriodSeconds: 2
  containers:
  - {name: c, image: busybox, command: [sh, -c, 'exec sleep 3600']}
EOF
kc apply -f survivor.yaml >/dev/null
wait_for 60 "pod survivor Running" sh -c "'$bin/kubectl' --kubeconfig '$dir/kubeconfig' get pod survivor -o jsonpath='{.status.phase}' | grep -qx Running"
old_pid="$(kc get pod survivor -o jsonpath='{.status.containerStatuses[0].containerID}' | sed 's|lanemesh://||')"
kill -KILL "$node_pid"
wait "$node_pid" || true
check "after SIGKILL the pod's process and netns are still there" sh -c "kill -0 $old_pid && ip netns list | grep -q '^lm-'"
"$bin/lanemesh-node" --kubeconfig "$dir/kubeconfig" --node-name "$node" --pod-cidr "$cidr" --bridge "$bridge" \
  --images "$dir/images.yaml" --state-dir "$dir/node-state" >>node.log 2>&1 &
node_pid=$!
wait_for 30 "the restarted node killed the previous run's container" sh -c "! kill -0 $old_pid"
wait_for 60 "pod survivor Running again with a new process" sh -c "'$bin/kubectl' --kubeconfig '$dir/kubeconfig' get pod survivor -o json | jq -e '(.status.phase==\"Running\") and (.status.containerStatuses[0].containerID != \"lanemesh://$old_pid\") and (.status.containerStatuses[0].state.running != null)'"
check "one pod netns after the restart" sh -c "[ \$(ip netns list | grep -c '^lm-') -eq 1 ]"
kc delete pod survivor --wait=true --timeout=30s >/dev/null

# --- node shutdown with a running pod
cat >late.yaml <<EOF
apiVersion: v1
kind: Pod
metadata: {name: late}
spec:
  nodeName: $node
  terminationGracePeriodSeconds: 3
  containers:
  - {name: c, image: smoke/python, args: [-m, http.server, "8080"]}
  - {name: d, image: busybox, command: [sh, -c, 'trap "" TERM; while :; do sleep 1; done']}
EOF
kc apply -f late.yaml >/dev/null
wait_for 60 "pod late Running" sh -c "'$bin/kubectl' --kubeconfig '$dir/kubeconfig' get pod late -o jsonpath='{.status.phase}' | grep -qx Running"
late_pids="$(pgrep -f 'http.server 8080' || true) $(pgrep -f 'trap "" TERM' || true)"
start=$SECONDS
kill -TERM "$node_pid"
wait "$node_pid"
rc=$?
node_pid=""
echo "node exited with $rc after $((SECONDS - start))s"
check "node exits 0 on SIGTERM" test "$rc" -eq 0
check "no lm-* netns left" sh -c "! ip netns list | grep -q '^lm-'"
check "no lmv* veth left" sh -c "! ip -o link | grep -q ': lmv'"
check "bridge $bridge removed" sh -c "! ip link show $bridge"
check "iptables chain removed" sh -c "! iptables -w -S LMNODE-$bridge"
check "pod processes gone" sh -c "for p in $late_pids; do ! kill -0 \$p 2>/dev/null || exit 1; done"
check "no state left but node.json and the lock" sh -c "[ -z \"\$(ls '$dir/node-state/pods')\" ]"
check "mount points created on the host removed" sh -c "[ ! -e /srv/www ] || [ -n \"\$(ls -A /srv/www)\" ]"
check "pod late reported Failed/terminated" sh -c "'$bin/kubectl' --kubeconfig '$dir/kubeconfig' get pod late -o json | jq -e '(.status.phase==\"Failed\") and all(.status.containerStatuses[]; .state.terminated!=null)'"
check "node marked NotReady" sh -c "'$bin/kubectl' --kubeconfig '$dir/kubeconfig' get node $node -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx False"

echo "smoke.sh: $passes passed, $failures failed"
[[ $failures == 0 ]]
