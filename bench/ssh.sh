#!/bin/bash
# Quick SSH gateway benchmark: scp of 1 GiB through tunnel-lite + appliance vs
# direct, and time to a finished `ssh host true` / first shell prompt.
set -euo pipefail
B=${B:-$(cd "$(dirname "$0")/.." && pwd)/target/release}
D=$(mktemp -d /dev/shm/sshbench.XXXX)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf $D' EXIT
mkdir -p /run/sshd
ssh-keygen -q -t ed25519 -N "" -f $D/host_key
ssh-keygen -q -t ed25519 -N "" -f $D/client_key
cp $D/client_key.pub $D/authorized_keys
PORT=$((20000 + RANDOM % 10000))
cat > $D/sshd_config <<EOF
Port $PORT
ListenAddress 127.0.0.1
HostKey $D/host_key
PidFile $D/sshd.pid
AuthorizedKeysFile $D/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
EOF
/usr/sbin/sshd -D -e -f $D/sshd_config 2>$D/sshd.log &
FP=$(ssh-keygen -lf $D/host_key.pub | awk '{print $2}')
$B/appliance policy keygen --out $D/keys >/dev/null
APORT=$((30000 + RANDOM % 10000))
cat > $D/appliance.toml <<EOF
listen = "127.0.0.1:$APORT"
data_dir = "data"
trusted_policy_keys = ["$D/keys/policy.pub"]
secrets_file = "$D/secrets.toml"
EOF
{ echo "web_key = '''"; cat $D/client_key; echo "'''"; } > $D/secrets.toml
chmod 600 $D/secrets.toml
ME=$(whoami)
cat > $D/policy.toml <<EOF
version = 1
[identity]
issuer = "https://idp.test"
audience = "appliance"
jwks = '{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"test"}]}'
[[connection]]
name = "bench"
kind = "ssh"
upstream = "127.0.0.1:$PORT"
allow_users = ["bench@example.com"]
[connection.secrets]
private_key = "web_key"
[connection.ssh]
user = "$ME"
host_key = "$FP"
EOF
mkdir -p $D/data/policy
$B/appliance policy sign --key $D/keys/policy.key $D/policy.toml >/dev/null
cp $D/policy.toml $D/policy.toml.minisig $D/data/policy/
$B/appliance serve --config $D/appliance.toml > $D/appliance.log 2>&1 &
sleep 1
TLSFP=$($B/appliance fingerprint --config $D/appliance.toml)
$B/appliance token issue --user bench@example.com --config $D/appliance.toml > $D/token
$B/tunnel-lite --config-dir $D/tl login --appliance 127.0.0.1:$APORT --fingerprint "$TLSFP" --session-token-file $D/token >/dev/null
TUNNEL_LITE_LOG=warn $B/tunnel-lite --config-dir $D/tl up --dns-listen off 2>$D/tl.log &
sleep 1
ADDR=$($B/tunnel-lite --config-dir $D/tl status | awk '/bench.hoop/ {print $2}')
O="-F /dev/null -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR"
DIRECT="$O -i $D/client_key -o IdentitiesOnly=yes"
head -c ${SIZE_MB:-1024}M /dev/urandom > $D/big
now() { date +%s.%N; }
for round in $(seq ${ROUNDS:-3}); do
  t0=$(now); scp $DIRECT -q -P $PORT $D/big $ME@127.0.0.1:$D/direct.bin; t1=$(now)
  scp $DIRECT -c aes128-gcm@openssh.com -q -P $PORT $D/big $ME@127.0.0.1:$D/direct2.bin; t2=$(now)
  scp $O -q -P 22 $D/big x@$ADDR:$D/gw.bin; t3=$(now)
  cmp -s $D/big $D/gw.bin || { echo "gateway copy differs"; exit 1; }
  rm -f $D/direct.bin $D/direct2.bin $D/gw.bin
  d=$(echo "$t1 - $t0" | bc); g2=$(echo "$t2 - $t1" | bc); g=$(echo "$t3 - $t2" | bc)
  echo "round $round: scp ${SIZE_MB:-1024} MiB: direct $d s, direct with aes128-gcm $g2 s, gateway $g s; gateway throughput / direct: $(echo "scale=2; $d / $g" | bc) (vs direct aes-gcm: $(echo "scale=2; $g2 / $g" | bc))"
done
N=20
t0=$(now); for i in $(seq $N); do ssh $DIRECT -p $PORT $ME@127.0.0.1 true; done; t1=$(now)
for i in $(seq $N); do ssh $O -p 22 x@$ADDR true; done; t2=$(now)
echo "ssh host true (connect, log in, run, exit), mean of $N: direct $(echo "scale=1; ($t1 - $t0) * 1000 / $N" | bc) ms, gateway $(echo "scale=1; ($t2 - $t1) * 1000 / $N" | bc) ms"
# First prompt: time until the shell prints a marker PS1.
prompt() { python3 - "$@" <<'PY'
import os, pty, sys, time, select
t=time.time()
pid, fd = pty.fork()
if pid == 0:
    os.execvp("ssh", ["ssh"] + sys.argv[1:])
buf=b""
while b"PROMPT>" not in buf:
    r,_,_ = select.select([fd],[],[],10)
    if not r: break
    try: buf += os.read(fd, 4096)
    except OSError: break
el=time.time()-t
os.write(fd, b"exit\n")
os.waitpid(pid, 0)
print(f"{el*1000:.1f}")
PY
}
SETPS="-o SetEnv=LANG=C"
dsum=0; gsum=0
for i in $(seq 10); do
  d=$(prompt $DIRECT -tt -p $PORT $ME@127.0.0.1 "PS1='PROMPT> ' exec sh -i")
  g=$(prompt $O -tt -p 22 x@$ADDR "PS1='PROMPT> ' exec sh -i")
  dsum=$(echo "$dsum + $d" | bc); gsum=$(echo "$gsum + $g" | bc)
done
echo "first shell prompt, mean of 10: direct $(echo "scale=1; $dsum / 10" | bc) ms, gateway $(echo "scale=1; $gsum / 10" | bc) ms"
