#!/bin/sh
# Regenerates the public JWKs of the test keys in this folder (see README.md).
# Needs openssl, xxd and basenc (coreutils). Run from this folder.
set -eu
b64u() { basenc --base64url -w0 | tr -d '='; }

n=$(openssl pkey -pubin -in rsa.pub.pem -outform DER | openssl rsa -pubin -inform DER -noout -modulus | cut -d= -f2 | xxd -r -p | b64u)
e_hex=$(openssl rsa -pubin -in rsa.pub.pem -noout -text | sed -n 's/^Exponent: [0-9]* (0x\([0-9a-f]*\))/\1/p')
[ $(( ${#e_hex} % 2 )) -eq 1 ] && e_hex="0$e_hex"
e=$(printf %s "$e_hex" | xxd -r -p | b64u)

ec_point=$(openssl pkey -pubin -in ec.pub.pem -outform DER | tail -c 65 | xxd -p | tr -d '\n')
ec_x=$(printf %s "$ec_point" | cut -c3-66 | xxd -r -p | b64u)
ec_y=$(printf %s "$ec_point" | cut -c67-130 | xxd -r -p | b64u)

ed_x=$(openssl pkey -pubin -in ed25519.pub.pem -outform DER | tail -c 32 | b64u)

cat > jwks.json <<JSON
{"keys":[
 {"kty":"RSA","kid":"rsa-1","use":"sig","alg":"RS256","n":"$n","e":"$e"},
 {"kty":"EC","kid":"ec-1","use":"sig","alg":"ES256","crv":"P-256","x":"$ec_x","y":"$ec_y"},
 {"kty":"OKP","kid":"ed-1","use":"sig","crv":"Ed25519","x":"$ed_x"}
]}
JSON
