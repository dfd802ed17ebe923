#!/usr/bin/env bash
# Runs the phases behind `make run`, `make test`, `make lint` and `make bench`, timing each one.
# Kept as one script so CI, a developer and a fresh Debian 12 machine all do exactly the same steps.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PY=${PY:-python3}
DEMO_CAPTURE=${DEMO_CAPTURE:-fixtures/pcaps/demo__podshark_demo.pcap}
declare -a PHASES=()

phase() {  # phase NAME CMD...: run CMD, remember how long it took
    local name=$1; shift
    local t0; t0=$(date +%s.%N)
    echo "==> $name"
    local rc=0
    "$@" || rc=$?
    local t1; t1=$(date +%s.%N)
    PHASES+=("$(printf '%-28s %7.1fs%s' "$name" "$(echo "$t1 - $t0" | bc 2>/dev/null || $PY -c "print($t1-$t0)")" "$([ $rc -eq 0 ] || echo "  FAILED ($rc)")")")
    if [ $rc -ne 0 ]; then report; exit $rc; fi
}

report() {
    echo
    echo "phase timings:"
    for line in "${PHASES[@]}"; do echo "  $line"; done
}

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }

# Debian packages: the tests use real tshark/tcpdump/editcap, a real nginx and curl, and iproute2 for
# network namespaces. Installed only when something is missing, so a warm machine skips apt entirely.
APT_RUN=(python3-venv python3-pip)
APT_RUN_DEMO=(tcpdump iproute2 dnsmasq-base curl)
APT_TEST=(tshark tcpdump wireshark-common nginx-light curl iproute2 bc openssl nghttp2-server nghttp2-client dnsmasq-base bind9-dnsutils util-linux libbpf1 graphviz)
APT_BENCH=(wrk dnsperf tcpreplay)
system_packages() {
    local want=("$@") missing=()
    $PY -c "import venv, ensurepip" 2>/dev/null || missing+=(python3-venv python3-pip)
    for p in "${want[@]}"; do
        case $p in
            python3-venv|python3-pip) ;;
            wireshark-common) command -v editcap >/dev/null || missing+=("$p") ;;
            nginx-light) command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=("$p") ;;
            iproute2) command -v ip >/dev/null || missing+=("$p") ;;
            nghttp2-server) command -v nghttpd >/dev/null || missing+=("$p") ;;
            nghttp2-client) command -v nghttp >/dev/null || missing+=("$p") ;;
            dnsmasq-base) command -v dnsmasq >/dev/null || [ -x /usr/sbin/dnsmasq ] || missing+=("$p") ;;
            bind9-dnsutils) command -v dig >/dev/null || missing+=("$p") ;;
            util-linux) command -v setpriv >/dev/null || missing+=("$p") ;;
            libbpf1) ldconfig -p 2>/dev/null | grep -q 'libbpf\.so\.1 ' || missing+=("$p") ;;
            graphviz) command -v dot >/dev/null || missing+=("$p") ;;
            *) command -v "$p" >/dev/null || missing+=("$p") ;;
        esac
    done
    [ ${#missing[@]} -eq 0 ] && { echo "system packages already present"; return 0; }
    if ! command -v apt-get >/dev/null; then
        echo "missing system packages: ${missing[*]} (install them with your package manager)" >&2; return 1
    fi
    echo "installing: ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

python_env() {  # python_env EXTRA: a venv with podshark installed in editable mode
    local extra=$1
    [ -x "$VENV/bin/python" ] || $PY -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
    if [ -n "$extra" ]; then
        "$VENV/bin/python" -m pip install -q -e ".[$extra]"
    else
        "$VENV/bin/python" -m pip install -q -e .
    fi
}

lint() {
    "$VENV/bin/ruff" check .
    "$VENV/bin/ruff" format --check .
    "$VENV/bin/mypy"
}

k8s_lab_build() {  # the real Kubernetes control plane tests/identity runs against (built once, cached)
    if [ "$(id -u)" -ne 0 ]; then echo "not root: skipped (the identity tests skip too)"; return 0; fi
    DEBIAN_FRONTEND=noninteractive tests/k8slab/k8s-lab build
}

tests() {
    # The Hypothesis profile "ci" bounds example counts so the suite fits the 45-minute budget.
    # Tests against the Kubernetes lab run in their own phase (identity_tests) after this one.
    HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-ci} "$VENV/bin/python" -m pytest -n 2 --dist loadgroup \
        -m "not k8slab" "$@"
}

identity_tests() {
    # tests/identity against the real control plane: one process, one lab, nothing else running
    # (the lab's API server alone takes ~300 MiB and a core while it starts).
    HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-ci} "$VENV/bin/python" -m pytest -n 0 -m k8slab "$@"
}

cmd=${1:-test}; shift || true
case $cmd in
    run)
        # No arguments: the live demo as root (namespaces and capture need it); otherwise a bundled
        # capture of that demo opened in the TUI. With arguments: `podshark ARGS`.
        if [ $# -eq 0 ] && [ "$(id -u)" -eq 0 ]; then
            phase "system packages" system_packages "${APT_RUN[@]}" "${APT_RUN_DEMO[@]}"
            phase "python environment" python_env demo
            report
            exec "$VENV/bin/podshark" demo
        fi
        phase "system packages" system_packages "${APT_RUN[@]}"
        phase "python environment" python_env ""
        report
        if [ $# -eq 0 ]; then
            echo "not root: opening a recorded capture of 'podshark demo' (run as root for the live demo)"
            exec "$VENV/bin/podshark" open "$DEMO_CAPTURE"
        fi
        exec "$VENV/bin/podshark" "$@"
        ;;
    install)
        phase "system packages" system_packages "${APT_RUN[@]}"
        phase "python environment" python_env ""
        report ;;
    test)
        phase "system packages" system_packages "${APT_RUN[@]}" "${APT_TEST[@]}"
        phase "python environment" python_env dev
        phase "lint (ruff, mypy)" lint
        phase "k8s lab build" k8s_lab_build
        phase "tests (pytest)" tests "$@"
        phase "identity tests (k8s lab)" identity_tests "$@"
        report ;;
    lint)
        phase "python environment" python_env dev
        phase "lint (ruff, mypy)" lint
        report ;;
    bench)
        phase "system packages" system_packages "${APT_RUN[@]}" "${APT_TEST[@]}" "${APT_BENCH[@]}"
        phase "python environment" python_env dev
        phase "benchmarks" "$VENV/bin/python" -m bench "$@"
        report ;;
    *) echo "usage: $0 run|install|test|lint|bench [ARGS]" >&2; exit 2 ;;
esac
