# Sourced by hack/build-kube.sh and hack/kind/build-node-bins.sh, which build Kubernetes commands
# from the same k8s.io/kubernetes pin in two wrapper modules.
#   kube_version GO_MOD                  the k8s.io/kubernetes version a go.mod requires
#   kube_ldflags VERSION COMMIT DATE     -X flags that make the binaries report that version

kube_version() {
  sed -nE 's#^(require)?[[:space:]]*k8s.io/kubernetes (v[0-9.]+)$#\2#p' "$1" | head -1
}

kube_ldflags() {
  local kver=$1 commit=$2 date=$3 major minor pkg ld=""
  major=$(echo "$kver" | sed -E 's/^v([0-9]+)\..*/\1/')
  minor=$(echo "$kver" | sed -E 's/^v[0-9]+\.([0-9]+)\..*/\1/')
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=$kver -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ld+=" -X $pkg.gitCommit=$commit -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
  done
  echo "$ld"
}
