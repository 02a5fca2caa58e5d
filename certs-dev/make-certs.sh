#!/usr/bin/env bash
# Remakes the development PKI of quicstrap. Development only: these keys are public.
#
#   ca.crt                     the dev CA every peer trusts
#   server.crt/key             a serving peer: localhost, 127.0.0.1, ::1, server.quicstrap.test
#   client.crt/key             a fetching node in the default allow list: client.quicstrap.test
#   intruder.crt/key           signed by the dev CA but NOT in the allow list
#   wildcard.crt/key           signed by the dev CA for *.quicstrap.test: must NOT pass for
#                              an allowed specific name (allow lists match names exactly)
#   other-ca/ca.crt            an unrelated CA
#   other-ca/rogue.crt/key     claims client.quicstrap.test, signed by the unrelated CA
set -euo pipefail
cd "$(dirname "$0")"
DAYS=3650

ca() { # dir
  openssl ecparam -name prime256v1 -genkey -noout -out "$1/ca.key.tmp"
  openssl pkcs8 -topk8 -nocrypt -in "$1/ca.key.tmp" -out "$1/ca.key"; rm "$1/ca.key.tmp"
  openssl req -x509 -new -key "$1/ca.key" -sha256 -days $DAYS -subj "/CN=$2" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$1/ca.crt"
}

leaf() { # cadir name cn san eku
  local dir=$1 name=$2
  openssl ecparam -name prime256v1 -genkey -noout -out "$dir/$name.key.tmp"
  openssl pkcs8 -topk8 -nocrypt -in "$dir/$name.key.tmp" -out "$dir/$name.key"; rm "$dir/$name.key.tmp"
  openssl req -new -key "$dir/$name.key" -subj "/CN=$3" -out "$dir/$name.csr"
  cat > "$dir/$name.ext" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=$5
subjectAltName=$4
EXT
  openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
    -days $DAYS -sha256 -extfile "$dir/$name.ext" -out "$dir/$name.crt" 2>/dev/null
  rm -f "$dir/$name.csr" "$dir/$name.ext"
}

rm -rf ./*.crt ./*.key ./*.srl other-ca
mkdir -p other-ca
ca . "quicstrap dev CA"
leaf . server "server.quicstrap.test" \
  "DNS:server.quicstrap.test,DNS:localhost,IP:127.0.0.1,IP:::1" "serverAuth,clientAuth"
leaf . client "client.quicstrap.test" "DNS:client.quicstrap.test" "clientAuth"
leaf . intruder "intruder.quicstrap.test" "DNS:intruder.quicstrap.test" "clientAuth"
leaf . wildcard "*.quicstrap.test" "DNS:*.quicstrap.test" "clientAuth"
ca other-ca "unrelated CA"
leaf other-ca rogue "client.quicstrap.test" "DNS:client.quicstrap.test" "clientAuth"
rm -f ./*.srl other-ca/*.srl other-ca/ca.key ca.key
echo "certs-dev: remade (valid $DAYS days)"
