#!/bin/sh
# Certificates for the TLS tests, made at test time with the openssl command:
#
#   tests/tls/mkcerts.sh DIR
#
# DIR/ca.pem           the test CA (ca.key beside it)
# DIR/node.pem, .key   a node: SAN localhost and 127.0.0.1, server and client use
# DIR/node2.pem, .key  the same with another serial (for the SIGHUP reload test)
# DIR/client.pem, .key a client certificate (CN=client) from the CA
# DIR/expired.pem,.key a node certificate that expired yesterday
# DIR/rogue.pem, .key  a node certificate from another CA (rogue-ca.pem)
# DIR/wrongname.pem,.key from the CA, but for other.example only
# P-256 keys: quick to make, and what a deployment would pick today.
set -eu
d=$1
mkdir -p "$d"
cd "$d"
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
ca() { # name subject
  key "$1.key"
  openssl req -x509 -new -key "$1.key" -out "$1.pem" -days 30 -subj "$2" \
    -addext basicConstraints=critical,CA:true -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
}
leaf() { # name ca days san
  key "$1.key"
  openssl req -new -key "$1.key" -out "$1.csr" -subj "/CN=$1" 2>/dev/null
  printf 'basicConstraints=CA:false\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=%s\n' "$4" >"$1.ext"
  openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial -days "$3" \
    -extfile "$1.ext" -out "$1.pem" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
ca ca /CN=clusterkit-test-ca
ca rogue-ca /CN=rogue-ca
leaf node ca 30 DNS:localhost,IP:127.0.0.1
leaf node2 ca 30 DNS:localhost,IP:127.0.0.1
leaf client ca 30 DNS:client
leaf expired ca -1 DNS:localhost,IP:127.0.0.1
leaf rogue rogue-ca 30 DNS:localhost,IP:127.0.0.1
leaf wrongname ca 30 DNS:other.example
