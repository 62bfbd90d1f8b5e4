#!/usr/bin/env bash
# make k8s-validate: offline checks of deploy/k8s, no cluster and no network
# but the Go module proxy (for the first build of the tools).
#  1. kustomize build of the base and of every overlay, each piped to
#     kubectl-validate with its built-in schemas of Kubernetes $K8S_VERSION;
#     a manifest known to be broken must fail the same check, so a
#     validator that stopped validating cannot pass;
#  2. the policy ConfigMap's file: cortexctl policy check, and policy test
#     against its cases;
#  3. go test ./deploy/k8s/: the routing file loads, one worker Deployment
#     per pool, every flag and CORTEX_* variable is one of its command.
# kustomize and kubectl-validate are pinned in tools/k8s/*.mod (two
# modfiles: their Kubernetes libraries do not build in one module) and built
# by `go tool` on first use (about 5 min on 2 busy cores, cached after).
set -euo pipefail
cd "$(dirname "$0")/.."

GO=${GO:-go}
K8S_VERSION=${K8S_VERSION:-1.30}
kustomize() { "$GO" tool -modfile=tools/k8s/kustomize.mod kustomize "$@"; }
kubectl_validate() { "$GO" tool -modfile=tools/k8s/validate.mod kubectl-validate --version "$K8S_VERSION" "$@"; }

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

for dir in deploy/k8s/base deploy/k8s/overlays/*/; do
	dir=${dir%/}
	name=$(basename "$dir")
	kustomize build "$dir" >"$out/$name.yaml"
	echo "kustomize build $dir: $(grep -c '^kind:' "$out/$name.yaml") objects"
done
kubectl_validate "$out"

# The check must be able to fail: a Deployment with a misspelt field.
mkdir "$out/broken"
cat >"$out/broken/broken.yaml" <<'YAML'
apiVersion: apps/v1
kind: Deployment
metadata: {name: broken}
spec:
  selector: {matchLabels: {app: broken}}
  template:
    metadata: {labels: {app: broken}}
    spec:
      containers:
        - {name: c, image: x, imagePullPolcy: Always}
YAML
if kubectl_validate "$out/broken" >"$out/broken.log" 2>&1; then
	echo "kubectl-validate passed a broken manifest; the check checks nothing:" >&2
	cat "$out/broken.log" >&2
	exit 1
fi
echo "kubectl-validate refuses a broken manifest, as it should"

"$GO" build -o "$out/cortexctl" ./cmd/cortexctl
"$out/cortexctl" policy check deploy/k8s/base/config/policy.yaml
"$out/cortexctl" policy test deploy/k8s/base/config/policy.yaml deploy/k8s/base/config/policy-cases.yaml

"$GO" test -count=1 ./deploy/k8s/
