#!/usr/bin/env bash
# A test CA and a server certificate for the fake Telegram Bot API, made with the openssl CLI.
#
#   images/fake-telegram/make-certs.sh DIR
#
# Writes into DIR (created when missing):
#   ca.crt ca.key           the test CA (bots trust ca.crt; ca.key 0600)
#   server.crt server.key   the fake's certificate, signed by the CA (server.key 0600), valid for
#                           DNS:api.telegram.org, DNS:fake-telegram, IP:127.0.0.1 and FAKE_TELEGRAM_EXTRA_SANS
#                           (e.g. "DNS:fake.test,IP:10.0.0.5")
# Idempotent: existing files are kept. A missing CA makes a new CA and a new server certificate; a missing or
# no longer matching server certificate is issued again from the existing CA. Prints the paths it made or kept.
set -euo pipefail

DIR="${1:?usage: $0 DIR}"
DAYS="${FAKE_TELEGRAM_CERT_DAYS:-3650}"
SANS="DNS:api.telegram.org,DNS:fake-telegram,IP:127.0.0.1${FAKE_TELEGRAM_EXTRA_SANS:+,$FAKE_TELEGRAM_EXTRA_SANS}"

command -v openssl >/dev/null 2>&1 || { echo "make-certs: openssl not found. Fix: apt-get install openssl" >&2; exit 1; }
mkdir -p "$DIR"
cd "$DIR"
umask 077
# One run at a time per directory (two test sessions starting together).
exec 9>.make-certs.lock
flock 9

made=()
if [ ! -s ca.crt ] || [ ! -s ca.key ]; then
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key.tmp 2>/dev/null
    openssl req -x509 -new -key ca.key.tmp -sha256 -days "$DAYS" -subj "/CN=SoulNear fake Telegram test CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -addext "subjectKeyIdentifier=hash" -out ca.crt.tmp
    mv -f ca.key.tmp ca.key
    mv -f ca.crt.tmp ca.crt
    rm -f server.crt server.key   # issued by a CA that is gone
    made+=(ca.crt ca.key)
fi

# The server certificate must come from this CA and carry today's list of names.
server_ok() {
    [ -s server.crt ] && [ -s server.key ] || return 1
    openssl verify -CAfile ca.crt server.crt >/dev/null 2>&1 || return 1
    local have want
    have="$(openssl x509 -in server.crt -noout -ext subjectAltName 2>/dev/null | tail -n +2 | tr -d ' ' \
            | sed 's/IPAddress:/IP:/g')"
    want="$SANS"
    [ "$have" = "$want" ] || return 1
    # the key belongs to the certificate
    [ "$(openssl x509 -in server.crt -noout -pubkey)" = "$(openssl pkey -in server.key -pubout)" ]
}

if ! server_ok; then
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out server.key.tmp 2>/dev/null
    openssl req -new -key server.key.tmp -subj "/CN=api.telegram.org" -out server.csr.tmp
    cat >server.ext.tmp <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=$SANS
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid,issuer
EOF
    openssl x509 -req -in server.csr.tmp -CA ca.crt -CAkey ca.key -CAcreateserial -CAserial ca.srl -sha256 \
        -days "$DAYS" -extfile server.ext.tmp -out server.crt.tmp 2>/dev/null
    rm -f server.csr.tmp server.ext.tmp
    mv -f server.key.tmp server.key
    mv -f server.crt.tmp server.crt
    made+=(server.crt server.key)
fi

chmod 0600 ca.key server.key
chmod 0644 ca.crt server.crt
for f in ca.crt ca.key server.crt server.key; do
    case " ${made[*]:-} " in
        *" $f "*) echo "made $DIR/$f" ;;
        *) echo "kept $DIR/$f" ;;
    esac
done
