#!/usr/bin/env bash
# Start, stop or report the real components that airlock's tests and demo
# need: the Debian packages, a Docker engine and a Distribution registry.
#
# Usage: scripts/services.sh start|stop|status
#
# `start` is idempotent. It installs only the missing Debian packages, and it
# starts dockerd or the registry only when nothing responds already, so a
# daemon that someone else started is used and never restarted. `stop` ends
# only the processes whose PIDs this script recorded in its state folder.
#
# Environment:
#   AIRLOCK_SERVICES_DIR   state folder for pid files, logs, registry config
#                          and storage (default: REPO/.work/services)
#   AIRLOCK_REGISTRY_PORT  registry port on 127.0.0.1 (default: 5000)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
state_dir=${AIRLOCK_SERVICES_DIR:-$repo/.work/services}
registry_port=${AIRLOCK_REGISTRY_PORT:-5000}
registry_url="http://127.0.0.1:${registry_port}/v2/"

packages=(docker.io docker-compose docker-registry busybox-static skopeo openssl curl)

# Seconds to wait for a daemon that this script started to respond.
dockerd_timeout=60
registry_timeout=20

log() { printf '%s\n' "$*"; }
die() { printf 'services.sh: %s\n' "$*" >&2; exit 1; }

docker_responds() {
    # `docker info` can hang on a half-started daemon, hence the timeout.
    timeout 10 docker info >/dev/null 2>&1
}

registry_responds() {
    curl -fsS --max-time 5 "$registry_url" >/dev/null 2>&1
}

# Print the PID recorded in pid file $1 when that process still runs the
# program $2. A reused PID that now belongs to another program does not count.
recorded_pid() {
    local pid_file=$1 program=$2 pid
    [[ -f $pid_file ]] || return 1
    pid=$(<"$pid_file")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/cmdline ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$program" || return 1
    printf '%s\n' "$pid"
}

# Wait until command $2 succeeds, for at most $3 seconds, while the process
# with PID $1 lives.
wait_until() {
    local pid=$1 check=$2 timeout=$3 waited=0
    while ! "$check"; do
        kill -0 "$pid" 2>/dev/null || return 1
        ((waited >= timeout)) && return 1
        sleep 1
        waited=$((waited + 1))
    done
}

install_packages() {
    local missing=() package status
    for package in "${packages[@]}"; do
        status=$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)
        [[ $status == "install ok installed" ]] || missing+=("$package")
    done
    if ((${#missing[@]} == 0)); then
        log "packages: all present (${packages[*]})"
        return
    fi

    [[ $(id -u) -eq 0 ]] || die "missing Debian packages: ${missing[*]}. Run as root, or install them with apt-get."
    log "packages: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q </dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
}

start_dockerd() {
    local pid_file=$state_dir/dockerd.pid log_file=$state_dir/dockerd.log pid
    if docker_responds; then
        if pid=$(recorded_pid "$pid_file" dockerd); then
            log "dockerd: running (pid $pid, started by this script)"
        else
            log "dockerd: already responding (not started by this script)"
        fi
        return
    fi

    # NOTE: no test covers this start path, because the test machines keep
    # one dockerd running. A dockerd from an earlier run may still be
    # starting up, so wait for it rather than start a second one.
    if ! pid=$(recorded_pid "$pid_file" dockerd); then
        # --ip makes published ports bind to 127.0.0.1 unless a compose file
        # names another address, so test stacks stay off other interfaces.
        setsid nohup dockerd --iptables=false --storage-driver=vfs --ip=127.0.0.1 \
            </dev/null >"$log_file" 2>&1 &
        pid=$!
        printf '%s\n' "$pid" >"$pid_file"
    fi
    if ! wait_until "$pid" docker_responds "$dockerd_timeout"; then
        tail -n 20 "$log_file" >&2 || true
        die "dockerd (pid $pid) timed out: no response within ${dockerd_timeout}s. See $log_file"
    fi
    log "dockerd: started (pid $pid), log $log_file"
}

write_registry_config() {
    local config_file=$1
    mkdir -p "$state_dir/registry/data"
    # Plain HTTP on loopback only. Delete is enabled so that tests can remove
    # the manifests they pushed.
    cat >"$config_file" <<EOF
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: $state_dir/registry/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$registry_port
EOF
}

start_registry() {
    local pid_file=$state_dir/registry.pid log_file=$state_dir/registry.log
    local config_file=$state_dir/registry/config.yml pid
    if registry_responds; then
        if pid=$(recorded_pid "$pid_file" docker-registry); then
            log "registry: running on 127.0.0.1:$registry_port (pid $pid, started by this script)"
        else
            log "registry: already responding on 127.0.0.1:$registry_port (not started by this script)"
        fi
        return
    fi

    if ! pid=$(recorded_pid "$pid_file" docker-registry); then
        write_registry_config "$config_file"
        setsid nohup docker-registry serve "$config_file" </dev/null >"$log_file" 2>&1 &
        pid=$!
        printf '%s\n' "$pid" >"$pid_file"
    fi
    if ! wait_until "$pid" registry_responds "$registry_timeout"; then
        tail -n 20 "$log_file" >&2 || true
        die "registry (pid $pid) timed out: no response from $registry_url within ${registry_timeout}s. See $log_file"
    fi
    log "registry: started on 127.0.0.1:$registry_port (pid $pid), config $config_file, log $log_file"
}

# Send SIGTERM to the process recorded in pid file $2 (program $3) and wait
# up to 30 s for it to exit. dockerd stops its containers first, so it can be slow.
stop_recorded() {
    local name=$1 pid_file=$2 program=$3 pid waited=0
    if ! pid=$(recorded_pid "$pid_file" "$program"); then
        rm -f "$pid_file"
        log "$name: not running from this script, left alone"
        return
    fi
    kill -TERM "$pid"
    while kill -0 "$pid" 2>/dev/null && ((waited < 30)); do
        sleep 1
        waited=$((waited + 1))
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid"
        log "$name: killed (pid $pid) after ${waited}s without exiting on SIGTERM"
    else
        log "$name: stopped (pid $pid)"
    fi
    rm -f "$pid_file"
}

report_status() {
    local pid owner
    if pid=$(recorded_pid "$state_dir/dockerd.pid" dockerd); then
        owner="started by this script, pid $pid"
    else
        owner="not started by this script"
    fi
    if docker_responds; then
        log "dockerd: responding ($owner)"
    else
        log "dockerd: not responding ($owner)"
    fi

    if pid=$(recorded_pid "$state_dir/registry.pid" docker-registry); then
        owner="started by this script, pid $pid"
    else
        owner="not started by this script"
    fi
    if registry_responds; then
        log "registry: responding on 127.0.0.1:$registry_port ($owner)"
    else
        log "registry: not responding on 127.0.0.1:$registry_port ($owner)"
    fi
}

main() {
    local command=${1:-}
    case $command in
        start)
            mkdir -p "$state_dir"
            install_packages
            start_dockerd
            start_registry
            ;;
        stop)
            stop_recorded registry "$state_dir/registry.pid" docker-registry
            stop_recorded dockerd "$state_dir/dockerd.pid" dockerd
            ;;
        status)
            report_status
            ;;
        *)
            printf 'usage: %s start|stop|status\n' "$0" >&2
            exit 2
            ;;
    esac
}

main "$@"
