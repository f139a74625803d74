#!/usr/bin/env bash
# PostgreSQL gateway benchmark: pgbench select-only (-S), -M prepared and
# TPC-B-like, -c 8 -j 2, scale 10, through
#   (a) direct                      pgbench -> PostgreSQL
#   (b) PgBouncer, session mode     pgbench -> pgbouncer -> PostgreSQL
#   (c) the appliance alone         pgbench -> appliance (plain bench listener) -> PostgreSQL
#   (d) the full path               pgbench -> tunnel-lite -> TLS -> appliance -> PostgreSQL
# interleaved (a b c d a b c d ...) for REPS repetitions, medians, ratios to
# direct; plus single-connection latency (-c 1) as microseconds added, and the
# CPU time the proxy processes spend per transaction (from /proc, so it holds
# even when the machine is busy). Masking (issue 4): a 100,000-row SELECT *
# (`rows_100k`, one client) direct, through the appliance alone and the full
# path, with masking off and on (two masked columns plus the email and card
# detectors scanning every text value). Guardrails (issue 4): single-client
# latency of a short and of a 10 KB statement through the appliance alone with
# and without statement classification (`classify_short`, `classify_10k`).
# Writes bench/out/pg.md and bench/out/pg.json (and prints the table).
#
#   bench/pg.sh                 # REPS=3 DURATION=10
#   REPS=1 DURATION=3 bench/pg.sh   # smoke run
#
# Builds the binaries with the `bench-quick` profile (release code, no LTO)
# and the appliance's `bench` feature (the plain listener of setup (c)) and
# `count-alloc` feature (allocations per transaction, read with SIGUSR1).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
REPS=${REPS:-3}
DURATION=${DURATION:-10}
SCALE=${SCALE:-10}

scripts/install-deps
# count-alloc: the appliance counts its heap allocations and reports them on
# SIGUSR1 (two relaxed atomic adds per allocation), for allocations per statement.
cargo build -q --profile bench-quick -p appliance --features bench,count-alloc --bins
cargo build -q --profile bench-quick -p tunnel-lite --bins
APPLIANCE=$ROOT/target/bench-quick/appliance
TUNNEL_LITE=$ROOT/target/bench-quick/tunnel-lite

D=$(mktemp -d /tmp/pg-bench.XXXXXX)
chmod 755 "$D"
PIDS=()
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  # pgbouncer runs under runuser: its own pid is not the one recorded.
  pkill -f "pgbouncer $D/bouncer/pgbouncer.ini" 2>/dev/null || true
  as_pg "$PG_BIN/pg_ctl" -D "$D/pg/data" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$D"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

PW=bench-pw
PG_PORT=$(free_port); BOUNCER_PORT=$(free_port); AP_PORT=$(free_port); PLAIN_PORT=$(free_port); DNS_PORT=$(free_port)
PLAIN_MASKED_PORT=$(free_port); PLAIN_GUARDED_PORT=$(free_port)
mkdir -p "$D/pg"; printf '%s' "$PW" > "$D/pg/pw"
[ "$(id -u)" -eq 0 ] && chown -R postgres: "$D/pg"
as_pg "$PG_BIN/initdb" -D "$D/pg/data" -U app --pwfile="$D/pg/pw" --auth=scram-sha-256 -E UTF8 --locale=C.UTF-8 -N >/dev/null
as_pg "$PG_BIN/pg_ctl" -D "$D/pg/data" -l "$D/pg/log" -w \
  -o "-p $PG_PORT -k $D/pg -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100" start >/dev/null
PGPASSWORD=$PW pgbench -q -i -s "$SCALE" -h 127.0.0.1 -p "$PG_PORT" -U app postgres >/dev/null 2>&1
PGPASSWORD=$PW psql -q -h 127.0.0.1 -p "$PG_PORT" -U app postgres -c "CREATE TABLE people AS
  SELECT i AS id, 'user' || i || '@example.com' AS email, lpad(i::text, 9, '0') AS ssn,
         'customer since ' || (2000 + i % 25) AS note, i * 7 AS score
  FROM generate_series(1, 100000) i" -c "VACUUM ANALYZE people" >/dev/null
printf 'SELECT * FROM people;\n' > "$D/rows_100k.sql"
printf 'SELECT abalance FROM pgbench_accounts WHERE aid = 1;\n' > "$D/short.sql"
python3 -c "print('SELECT count(*) FROM pgbench_branches WHERE bid IN (' + ', '.join(str(i) for i in range(1, 1990)) + ');')" > "$D/long.sql"

# (b) PgBouncer in session mode, with the password it forwards.
mkdir -p "$D/bouncer"
printf '"app" "%s"\n' "$PW" > "$D/bouncer/users.txt"
cat > "$D/bouncer/pgbouncer.ini" <<EOF
[databases]
postgres = host=127.0.0.1 port=$PG_PORT dbname=postgres user=app password=$PW
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
auth_type = trust
auth_file = $D/bouncer/users.txt
pool_mode = session
max_client_conn = 100
default_pool_size = 20
unix_socket_dir =
logfile = $D/bouncer/log
EOF
[ "$(id -u)" -eq 0 ] && chown -R postgres: "$D/bouncer"
as_pg pgbouncer "$D/bouncer/pgbouncer.ini" >/dev/null 2>&1 & PIDS+=($!)

# (c) and (d): the appliance with the password in its secret store.
"$APPLIANCE" policy keygen --out "$D/keys" >/dev/null
mkdir -p "$D/appliance/policy"
( umask 077; printf 'pg_password = "%s"\n' "$PW" > "$D/secrets.toml" )
# One plain benchmark listener, and one postgres connection (with extra TOML).
listener() {
  printf '[[bench_listener]]\nlisten = "127.0.0.1:%s"\ntarget = "%s"\nport = 5432\nuser = "bench"\ngroups = ["bench"]\n' "$1" "$2"
}
connection() {
  printf '[[connection]]\nname = "%s"\nkind = "postgres"\nupstream = "127.0.0.1:%s"\nallow_groups = ["bench"]\n' "$1" "$PG_PORT"
  printf '[connection.secrets]\npassword = "pg_password"\n[connection.postgres]\nuser = "app"\n%s\n' "${2:-}"
}
cat > "$D/appliance.toml" <<EOF
listen = "127.0.0.1:$AP_PORT"
data_dir = "appliance"
trusted_policy_keys = ["keys/policy.pub"]
secrets_file = "secrets.toml"

$(listener "$PLAIN_PORT" pg-bench)
$(listener "$PLAIN_GUARDED_PORT" pg-bench-guarded)
$(listener "$PLAIN_MASKED_PORT" pg-bench-masked)
EOF
cat > "$D/policy.toml" <<EOF
version = 1
[identity]
issuer = "https://idp.bench.invalid"
audience = "appliance"
jwks = '{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"b"}]}'

$(connection pg-bench)
$(connection pg-bench-masked '[connection.postgres.masking]
columns = ["people.email", "people.ssn"]
detectors = ["email", "credit_card"]')
$(connection pg-bench-guarded '[connection.postgres.guardrails]
deny = ["drop", "truncate", "delete_without_where"]')
EOF
"$APPLIANCE" policy sign --key "$D/keys/policy.key" "$D/policy.toml" >/dev/null
cp "$D/policy.toml" "$D/policy.toml.minisig" "$D/appliance/policy/"
"$APPLIANCE" serve --config "$D/appliance.toml" >"$D/appliance.out" 2>"$D/appliance.log" & PIDS+=($!)
for _ in $(seq 100); do grep -q "TLS fingerprint" "$D/appliance.out" 2>/dev/null && break; sleep 0.1; done
FP=$("$APPLIANCE" fingerprint --config "$D/appliance.toml")
"$APPLIANCE" token issue --user bench --groups bench --ttl 2h --config "$D/appliance.toml" > "$D/token"
export TUNNEL_LITE_CONFIG_DIR=$D/tl
"$TUNNEL_LITE" login --appliance "127.0.0.1:$AP_PORT" --fingerprint "$FP" --session-token-file "$D/token" >/dev/null
TUNNEL_LITE_LOG=warn "$TUNNEL_LITE" up --dns-listen "127.0.0.1:$DNS_PORT" 2>"$D/tl.log" & PIDS+=($!)
# The loopback address tunnel-lite gives NAME.hoop, once it accepts connections.
tunnel_addr() {
  local a=""
  for _ in $(seq 100); do a=$(dig +short -p "$DNS_PORT" @127.0.0.1 "$1.hoop" 2>/dev/null); [ -n "$a" ] && break; sleep 0.1; done
  for _ in $(seq 100); do (echo > "/dev/tcp/$a/5432") 2>/dev/null && break; sleep 0.1; done
  echo "$a"
}
ADDR=$(tunnel_addr pg-bench)
MADDR=$(tunnel_addr pg-bench-masked)

# CPU time (user + system, in clock ticks) of the proxy processes of a setup.
AP_PID=${PIDS[-2]}; TL_PID=${PIDS[-1]}
BOUNCER_PID=$(pgrep -u postgres -f "^pgbouncer $D/bouncer/pgbouncer.ini" | head -n1)
ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
# The appliance's allocation count so far (SIGUSR1, then its new log line).
allocs() {
  local before; before=$(grep -c '^alloc-count' "$D/appliance.log" || true)
  kill -USR1 "$AP_PID"
  for _ in $(seq 100); do
    [ "$(grep -c '^alloc-count' "$D/appliance.log" || true)" -gt "$before" ] && break; sleep 0.02
  done
  grep '^alloc-count' "$D/appliance.log" | tail -n1 | sed 's/.*allocations=\([0-9]*\).*/\1/'
}
declare -A PROXY
PROXY[direct]=""; PROXY[pgbouncer]=$BOUNCER_PID
PROXY[appliance]=$AP_PID; PROXY[appliance_masked]=$AP_PID; PROXY[appliance_guarded]=$AP_PID
PROXY[full]="$AP_PID $TL_PID"; PROXY[full_masked]="$AP_PID $TL_PID"
TCK=$(getconf CLK_TCK)

declare -A HOST PORT
HOST[direct]=127.0.0.1; PORT[direct]=$PG_PORT
HOST[pgbouncer]=127.0.0.1; PORT[pgbouncer]=$BOUNCER_PORT
HOST[appliance]=127.0.0.1; PORT[appliance]=$PLAIN_PORT
HOST[full]=$ADDR; PORT[full]=5432
HOST[appliance_masked]=127.0.0.1; PORT[appliance_masked]=$PLAIN_MASKED_PORT
HOST[appliance_guarded]=127.0.0.1; PORT[appliance_guarded]=$PLAIN_GUARDED_PORT
HOST[full_masked]=$MADDR; PORT[full_masked]=5432

# workload name -> pgbench arguments, and the setups it runs through
declare -A ARGS SETUPS
ARGS[select_only]="-S -c 8 -j 2"
ARGS[prepared_select]="-S -M prepared -c 8 -j 2"
ARGS[tpcb]="-c 8 -j 2"
ARGS[latency_c1]="-S -c 1 -j 1"
ARGS[rows_100k]="-f $D/rows_100k.sql -c 1 -j 1"
ARGS[classify_short]="-f $D/short.sql -c 1 -j 1"
ARGS[classify_10k]="-f $D/long.sql -c 1 -j 1"
for w in select_only prepared_select tpcb latency_c1; do SETUPS[$w]="direct pgbouncer appliance full"; done
SETUPS[rows_100k]="direct appliance appliance_masked full full_masked"
SETUPS[classify_short]="direct appliance appliance_guarded"
SETUPS[classify_10k]="direct appliance appliance_guarded"
WORKLOADS=(select_only prepared_select tpcb latency_c1 rows_100k classify_short classify_10k)

RESULTS=$D/results.tsv
: > "$RESULTS"
for rep in $(seq "$REPS"); do
  for w in "${WORKLOADS[@]}"; do
    for s in ${SETUPS[$w]}; do
      before=$(ticks ${PROXY[$s]}); a0=$(allocs)
      out=$(PGPASSWORD=$PW pgbench -n -T "$DURATION" ${ARGS[$w]} -h "${HOST[$s]}" -p "${PORT[$s]}" -U app postgres 2>&1) || {
        echo "pgbench failed for $s/$w:"; echo "$out"; exit 1; }
      after=$(ticks ${PROXY[$s]}); a1=$(allocs)
      tps=$(awk '/^tps = / {print $3; exit}' <<<"$out")
      lat=$(awk '/^latency average = / {print $4; exit}' <<<"$out")
      failed=$(awk -F': ' '/number of failed transactions/ {print $2+0; exit}' <<<"$out")
      txns=$(awk '/number of transactions actually processed/ {split($NF, a, "/"); print a[1]; exit}' <<<"$out")
      cpu_us=$(python3 -c "print(round(($after - $before) / $TCK * 1e6 / max(1, $txns), 1))")
      # Appliance allocations per transaction (only meaningful where the appliance is on the path).
      apt=$(python3 -c "print(round(($a1 - $a0) / max(1, $txns), 1))")
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$rep" "$w" "$s" "$tps" "$lat" "${failed:-0}" "$cpu_us" "$apt" >> "$RESULTS"
      printf 'rep %s  %-16s %-17s tps %10s  latency %8s ms  proxy cpu %8s us/txn\n' "$rep" "$w" "$s" "$tps" "$lat" "$cpu_us"
    done
  done
done

mkdir -p bench/out
python3 - "$RESULTS" "$REPS" "$DURATION" "$SCALE" <<'PY'
import json, statistics, sys, subprocess, datetime, platform
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
reps, duration, scale = sys.argv[2], sys.argv[3], sys.argv[4]
data = {}
for rep, w, s, tps, lat, failed, cpu, apt in rows:
    d = data.setdefault(w, {}).setdefault(s, {"tps": [], "latency_ms": [], "failed": 0, "cpu": [], "allocs": []})
    d["tps"].append(float(tps)); d["latency_ms"].append(float(lat)); d["failed"] += int(failed)
    d["cpu"].append(float(cpu)); d["allocs"].append(float(apt))
summary = {}
for w, per in data.items():
    direct = statistics.median(per["direct"]["tps"])
    direct_lat = statistics.median(per["direct"]["latency_ms"])
    summary[w] = {}
    for s, d in per.items():
        t = statistics.median(d["tps"]); l = statistics.median(d["latency_ms"])
        summary[w][s] = {"tps_median": t, "tps_runs": d["tps"], "ratio_to_direct": round(t / direct, 3),
                         "latency_ms_median": l, "latency_added_us": round((l - direct_lat) * 1000, 1),
                         "failed_transactions": d["failed"],
                         "proxy_cpu_us_per_txn": statistics.median(d["cpu"]),
                         "appliance_allocations_per_txn": statistics.median(d["allocs"])}
def sh(c):
    try: return subprocess.run(c, shell=True, capture_output=True, text=True).stdout.strip()
    except Exception: return ""
meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"nproc": sh("nproc"), "cpu": sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip(),
                    "kernel": platform.release()},
        "versions": {"rustc": sh("rustc --version"), "postgres": sh("pgbench --version"), "pgbouncer": sh("pgbouncer --version | head -1"),
                     "commit": sh("git rev-parse --short HEAD")},
        "reps": int(reps), "duration_s": int(duration), "scale": int(scale),
        "command": f"REPS={reps} DURATION={duration} SCALE={scale} bench/pg.sh"}
json.dump({"meta": meta, "results": summary}, open("bench/out/pg.json", "w"), indent=1)
names = {"direct": "(a) direct", "pgbouncer": "(b) PgBouncer session", "appliance": "(c) appliance alone", "full": "(d) full path",
         "appliance_masked": "(c) appliance alone, masking on", "full_masked": "(d) full path, masking on",
         "appliance_guarded": "(c) appliance alone, guardrails on"}
lines = [f"PostgreSQL gateway, pgbench scale {scale}, {duration} s runs, medians of {reps} interleaved repetitions",
         f"({meta['date']}, {meta['machine']['nproc']} cores {meta['machine']['cpu']}, {meta['versions']['postgres']}, commit {meta['versions']['commit']})", "",
         "| workload | setup | tps (median) | x direct | latency avg (ms) | added (us) | proxy CPU (us/txn) | appliance allocations/txn | failed |", "|---|---|---|---|---|---|---|---|---|"]
for w in ["select_only", "prepared_select", "tpcb", "latency_c1", "rows_100k", "classify_short", "classify_10k"]:
    for s in ["direct", "pgbouncer", "appliance", "appliance_guarded", "appliance_masked", "full", "full_masked"]:
        r = summary[w].get(s)
        if r is None: continue
        cpu = f"{r['proxy_cpu_us_per_txn']:.1f}" if s != "direct" else "-"
        al = f"{r['appliance_allocations_per_txn']:.1f}" if s.startswith(("appliance", "full")) else "-"
        lines.append(f"| {w} | {names[s]} | {r['tps_median']:.0f} | {r['ratio_to_direct']:.2f}x | {r['latency_ms_median']:.3f} | {r['latency_added_us']:+.0f} | {cpu} | {al} | {r['failed_transactions']} |")
lines += ["", "rows_100k: one transaction is one `SELECT * FROM people` of 100,000 rows (5 columns); rows/s = tps x 100,000.",
          "classify_short / classify_10k: one client, a 52-byte SELECT / a 10.9 KB SELECT (an IN list of 1,989 numbers); guardrails on = statement classification (deny drop, truncate, delete_without_where)."]
open("bench/out/pg.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
