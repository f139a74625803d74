#!/usr/bin/env bash
# HTTP gateway small-response benchmark: wrk against nginx directly, through
# nginx proxy_pass (keep-alive upstream), and through the full path
# (wrk -> tunnel-lite -> TLS tunnel -> appliance kind=http -> nginx), and, for
# reference, the same tunnel as a kind=tcp byte relay; same machine, one run,
# ratios to direct.
#
#   APPLIANCE=target/release/appliance TUNNEL_LITE=target/release/tunnel-lite \
#   WRK_ARGS="-t1 -c16 -d10s" bench/http.sh
#
# Needs: nginx, wrk, dig (Debian: nginx wrk dnsutils), python3. Root (tunnel-lite
# binds port 80 on 127.77.x.y). Prints one line per setup and a JSON summary.
set -euo pipefail
APPLIANCE=${APPLIANCE:-target/release/appliance}
TUNNEL_LITE=${TUNNEL_LITE:-target/release/tunnel-lite}
WRK_ARGS=${WRK_ARGS:--t1 -c16 -d10s}
APPLIANCE=$(readlink -f "$APPLIANCE"); TUNNEL_LITE=$(readlink -f "$TUNNEL_LITE")
D=$(mktemp -d /tmp/http-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$D"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# nginx: /small on N1, proxy_pass to itself on N2 (one process: nothing outlives the run).
N1=$(free_port); N2=$(free_port)
mkdir -p "$D/nginx"
cat > "$D/nginx/nginx.conf" <<EOF
$( [ "$(id -u)" -eq 0 ] && echo "user root;" )
daemon off; master_process off; worker_processes 1; pid $D/nginx/pid; error_log $D/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off; keepalive_requests 1000000;
  client_body_temp_path $D/nginx/b; proxy_temp_path $D/nginx/p; fastcgi_temp_path $D/nginx/f;
  uwsgi_temp_path $D/nginx/u; scgi_temp_path $D/nginx/s;
  upstream origin { server 127.0.0.1:$N1; keepalive 64; }
  server { listen 127.0.0.1:$N1; location = /small { default_type text/plain; return 200 "hello\n"; } }
  server { listen 127.0.0.1:$N2; location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
EOF
nginx -p "$D/nginx" -e "$D/nginx/error.log" -c "$D/nginx/nginx.conf" & PIDS+=($!)

# Appliance with one http connection "web" -> nginx, signed policy.
"$APPLIANCE" policy keygen --out "$D/keys" >/dev/null
AP=$(free_port); DNS=$(free_port)
mkdir -p "$D/appliance/policy"
cat > "$D/appliance.toml" <<EOF
listen = "127.0.0.1:$AP"
data_dir = "appliance"
trusted_policy_keys = ["keys/policy.pub"]
EOF
cat > "$D/policy.toml" <<EOF
version = 1
[identity]
issuer = "https://idp.bench.invalid"
audience = "appliance"
jwks = '{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"b"}]}'
[[connection]]
name = "web"
kind = "http"
upstream = "127.0.0.1:$N1"
allow_groups = ["bench"]

# The same origin as a plain byte relay: the tunnel's own cost, for reference.
[[connection]]
name = "web-tcp"
kind = "tcp"
upstream = "127.0.0.1:$N1"
ports = [8080]
allow_groups = ["bench"]
EOF
"$APPLIANCE" policy sign --key "$D/keys/policy.key" "$D/policy.toml" >/dev/null
cp "$D/policy.toml" "$D/policy.toml.minisig" "$D/appliance/policy/"
"$APPLIANCE" serve --config "$D/appliance.toml" >"$D/appliance.out" 2>"$D/appliance.log" & PIDS+=($!)
for _ in $(seq 100); do grep -q "TLS fingerprint" "$D/appliance.out" 2>/dev/null && break; sleep 0.1; done
FP=$("$APPLIANCE" fingerprint --config "$D/appliance.toml")
"$APPLIANCE" token issue --user bench --groups bench --ttl 1h --config "$D/appliance.toml" > "$D/token"
export TUNNEL_LITE_CONFIG_DIR=$D/tl
"$TUNNEL_LITE" login --appliance "127.0.0.1:$AP" --fingerprint "$FP" --session-token-file "$D/token" >/dev/null
"$TUNNEL_LITE" up --dns-listen "127.0.0.1:$DNS" 2>"$D/tl.log" & PIDS+=($!)
for _ in $(seq 100); do grep -q "web.hoop:80 ready" "$D/tl.log" 2>/dev/null && grep -q "web-tcp.hoop:8080 ready" "$D/tl.log" && break; sleep 0.1; done
ADDR=$(dig +short -p "$DNS" @127.0.0.1 web.hoop)
ADDR_TCP=$(dig +short -p "$DNS" @127.0.0.1 web-tcp.hoop)
curl -fsS "http://$ADDR/small" >/dev/null   # through the gateway once

run() { # name url -> "requests/s p50 p99"
  local out rps p50 p99
  out=$(wrk $WRK_ARGS --latency "$2")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  echo "$1 $rps $p50 $p99"
}
results=()
for s in "direct http://127.0.0.1:$N1/small" "nginx-proxy http://127.0.0.1:$N2/small" "tunnel-tcp-relay http://$ADDR_TCP:8080/small" "gateway http://$ADDR/small"; do
  set -- $s
  r=$(run "$1" "$2"); echo "$r"; results+=("$r")
done
python3 - "${results[@]}" <<'PY'
import json, sys
def ms(v): return float(v[:-2]) if v.endswith("ms") else float(v[:-2])/1000 if v.endswith("us") else float(v[:-1])*1000
rows = {}
for line in sys.argv[1:]:
    name, rps, p50, p99 = line.split()
    rows[name] = {"rps": float(rps), "p50_ms": ms(p50), "p99_ms": ms(p99)}
d = rows["direct"]["rps"]
for r in rows.values(): r["ratio_to_direct"] = round(r["rps"] / d, 3)
print(json.dumps(rows, indent=1))
PY
