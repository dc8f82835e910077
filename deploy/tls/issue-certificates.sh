#!/bin/sh
# Issues Nephilia's mTLS certificates without cert-manager: a CA, the server's certificate
# and one client certificate per node, each naming its node (its one DNS name and its
# common name), so the server can bind every agent's stream to its node. Writes the PEM
# files and `secrets.yaml`, the Secrets the Helm chart mounts (tls.enabled=true,
# tls.agentNodes=<the same nodes>), into DIR:
#
#   deploy/tls/issue-certificates.sh [-r RELEASE] [-n NAMESPACE] [-d DIR] [-days N] NODE...
#   kubectl apply -f DIR/secrets.yaml
#
# NODE is a Kubernetes node name (`kubectl get nodes -o jsonpath='{.items[*].metadata.name}'`).
# An existing DIR/ca.key is reused, so adding a node later keeps the CA the server and the
# other agents trust; every run rewrites secrets.yaml with the nodes given. Keep ca.key
# off the cluster. Needs openssl (1.1.1 or newer) and base64.
set -eu

release=nephilia
namespace=nephilia-system
dir=nephilia-tls
days=365
while [ $# -gt 0 ]; do
    case "$1" in
        -r) release=$2; shift 2 ;;
        -n) namespace=$2; shift 2 ;;
        -d) dir=$2; shift 2 ;;
        -days) days=$2; shift 2 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        -*) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
        *) break ;;
    esac
done
if [ $# -eq 0 ]; then
    echo "no node given: name every node an agent runs on (see --help)" >&2
    exit 2
fi
for node in "$@"; do
    # A DNS subdomain (RFC 1123), as Kubernetes node names are: it goes into file names,
    # secret names and the certificate unquoted.
    if ! printf '%s' "$node" | grep -Eq '^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$'; then
        echo "$node is not a Kubernetes node name" >&2
        exit 2
    fi
done

mkdir -p "$dir"
umask 077
server="$release-server.$namespace.svc"

if [ ! -f "$dir/ca.key" ]; then
    openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$dir/ca.key" -out "$dir/ca.crt" -days "$days" -subj "/CN=$release mTLS CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi

# issue NAME CN DNS USAGE: NAME.key and NAME.crt, signed by the CA.
issue() {
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$dir/$1.key" -out "$dir/$1.csr" -subj "/CN=$2" 2>/dev/null
    printf 'subjectAltName=DNS:%s\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=%s\nbasicConstraints=critical,CA:FALSE\n' \
        "$3" "$4" >"$dir/$1.ext"
    openssl x509 -req -in "$dir/$1.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
        -CAcreateserial -days "$days" -extfile "$dir/$1.ext" -out "$dir/$1.crt" 2>/dev/null
    rm -f "$dir/$1.csr" "$dir/$1.ext"
}

# secret NAME FILE: a kubernetes.io/tls Secret with FILE.crt, FILE.key and the CA.
secret() {
    cat <<YAML
---
apiVersion: v1
kind: Secret
metadata:
  name: $1
  namespace: $namespace
type: kubernetes.io/tls
data:
  tls.crt: $(base64 <"$dir/$2.crt" | tr -d '\n')
  tls.key: $(base64 <"$dir/$2.key" | tr -d '\n')
  ca.crt: $(base64 <"$dir/ca.crt" | tr -d '\n')
YAML
}

issue server "$server" "$server" serverAuth
secret "$release-tls" server >"$dir/secrets.yaml"
for node in "$@"; do
    issue "agent-$node" "$node" "$node" clientAuth
    secret "$release-agent-$node" "agent-$node" >>"$dir/secrets.yaml"
done
echo "wrote $dir/secrets.yaml: $release-tls (server) and $# agent secrets; apply it with" >&2
echo "  kubectl apply -f $dir/secrets.yaml" >&2
