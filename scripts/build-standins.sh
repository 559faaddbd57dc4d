#!/usr/bin/env bash
# Build busybox stand-ins for the images authentik's compose files use, and
# push them to the local registry under the upstream repository paths.
#
# No image can be pulled from the internet here, so the tests and the demo
# run these instead: postgres, redis, the authentik server and its outposts.
# Each behaves enough like the real image for authentik's compose file to
# come up healthy (see the Dockerfiles under scripts/standins/).
#
# Method: a rootfs tar with /bin/busybox and its applet links is imported as
# the base image, and each stand-in is a `docker build` FROM it. The server
# and the outposts share a second layer, so bundles can deduplicate them.
#
# An image whose inputs (the files under scripts/standins/, this script,
# busybox, the options and its parent image) are unchanged is not built
# again. Every image is pushed on each run, which costs little when the
# registry already has its layers.
#
# Progress goes to stderr. Stdout gets one line per image:
#   UPSTREAM_REFERENCE REGISTRY_REFERENCE
set -euo pipefail

usage() {
    cat <<'EOF'
usage: build-standins.sh [options]

  --registry HOST:PORT        registry to push to (default 127.0.0.1:5000)
  --authentik-version VERSION tag of the server and outposts; repeat the option
                              to build several (default 2026.2.2)
  --tag-suffix SUFFIX         append SUFFIX to every tag, e.g. -broken
  --fail MODE                 bake a failure mode into the images: exit (the
                              main process exits 1) or unhealthy (health checks
                              fail); STANDIN_FAIL in the container overrides it
  --only NAMES                comma-separated subset of postgres, redis, server,
                              outposts (default: all)
  --payload-mb N              size in MiB of the incompressible file in the layer
                              that the server and outposts share (default 0)
  --tag-upstream              also tag each image locally with its upstream name,
                              e.g. ghcr.io/goauthentik/server:2026.2.2
  -h, --help                  show this help
EOF
}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
standins_dir=$repo/scripts/standins
busybox=/bin/busybox
label=airlock.standin.inputs

registry=127.0.0.1:${AIRLOCK_REGISTRY_PORT:-5000}
versions=()
tag_suffix=""
fail_mode=""
only="postgres,redis,server,outposts"
payload_mb=0
tag_upstream=false

progress() { printf 'build-standins: %s\n' "$*" >&2; }
die() { printf 'build-standins: error: %s\n' "$*" >&2; exit 1; }

# The legacy builder needs no buildx plugin, which Debian's docker.io lacks,
# and it takes FROM images from the local image store.
export DOCKER_BUILDKIT=0

parse_options() {
    while (($# > 0)); do
        case $1 in
            --registry) registry=${2:?--registry needs HOST:PORT}; shift ;;
            --authentik-version) versions+=("${2:?--authentik-version needs a version}"); shift ;;
            --tag-suffix) tag_suffix=${2?--tag-suffix needs a suffix}; shift ;;
            --fail) fail_mode=${2:?--fail needs exit or unhealthy}; shift ;;
            --only) only=${2:?--only needs a list of names}; shift ;;
            --payload-mb) payload_mb=${2:?--payload-mb needs a number}; shift ;;
            --tag-upstream) tag_upstream=true ;;
            -h | --help) usage; exit 0 ;;
            *) usage >&2; exit 2 ;;
        esac
        shift
    done

    ((${#versions[@]} > 0)) || versions=(2026.2.2)
    case $fail_mode in
        "" | exit | unhealthy) ;;
        *) die "invalid --fail '$fail_mode'; use exit or unhealthy" ;;
    esac
    [[ $payload_mb =~ ^[0-9]+$ ]] || die "invalid --payload-mb '$payload_mb'; use a whole number of MiB"
    [[ $tag_suffix =~ ^[A-Za-z0-9_.-]*$ ]] || die "invalid --tag-suffix '$tag_suffix'; use letters, digits, '_', '.' or '-'"
    local name
    for name in ${only//,/ }; do
        case $name in
            postgres | redis | server | outposts) ;;
            *) die "invalid --only name '$name'; use postgres, redis, server or outposts" ;;
        esac
    done
}

wants() { [[ ,$only, == *,$1,* ]]; }

check_environment() {
    [[ -x $busybox ]] || die "$busybox not found; install busybox-static (scripts/services.sh start does)"
    timeout 10 docker info >/dev/null 2>&1 || die "the Docker engine does not respond; run scripts/services.sh start"
    curl -fsS --max-time 5 "http://$registry/v2/" >/dev/null 2>&1 \
        || die "no registry responds at http://$registry/v2/; run scripts/services.sh start"
}

# Print a digest of everything the images are built from, so that a change to
# any stand-in file, to this script or to busybox rebuilds them.
source_digest() {
    (
        cd "$standins_dir"
        find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
        # Git does not keep the mode bits beyond +x, so only they count.
        find . -type f -perm -u+x -print0 | LC_ALL=C sort -z | xargs -0 -r printf 'executable %s\n'
        # Contents only: the checkout's path must not change the digest, or
        # two clones on one machine would rebuild each other's images.
        sha256sum <"$busybox"
        sha256sum <"$repo/scripts/build-standins.sh"
    ) | sha256sum | cut -d' ' -f1
}

# Print the inputs label of local image $1, or nothing when it is missing.
image_inputs() {
    docker image inspect -f "{{index .Config.Labels \"$label\"}}" "$1" 2>/dev/null || true
}

image_id() {
    docker image inspect -f '{{.Id}}' "$1"
}

inputs_digest() {
    printf '%s\n' "$@" | sha256sum | cut -d' ' -f1
}

# Build the base image from a rootfs tar with busybox, its applet links,
# /etc/passwd, /etc/group and a world-writable /tmp.
build_base() {
    local ref=$1 inputs rootfs applet
    inputs=$(inputs_digest "$sources" base)
    if [[ $(image_inputs "$ref") == "$inputs" ]]; then
        progress "$ref: unchanged"
        return
    fi

    progress "$ref: importing a busybox rootfs"
    rootfs="$work_dir/rootfs"
    mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,root,tmp,run,var,etc/airlock-standin}
    cp -R "$standins_dir/base/." "$rootfs/"
    cp "$busybox" "$rootfs/bin/busybox"
    while read -r applet; do
        [[ $applet == bin/busybox ]] && continue
        ln -sf /bin/busybox "$rootfs/$applet"
    done < <("$busybox" --list-full)
    ln -s ../run "$rootfs/var/run"
    chmod 1777 "$rootfs/tmp"
    chmod 0700 "$rootfs/root"
    chmod -R go-w "$rootfs/etc" "$rootfs/bin" "$rootfs/usr"

    # Sorted members with fixed owners and mtimes give the same layer digest
    # on every machine for the same busybox.
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
        -C "$rootfs" -cf "$work_dir/rootfs.tar" .
    docker import \
        --change "LABEL $label=$inputs" \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/sh"]' \
        "$work_dir/rootfs.tar" "$ref" >/dev/null
}

# Build image $1 from the folder scripts/standins/$2 on top of local image $3,
# with version $4 in /etc/airlock-standin/version. Further arguments are
# KEY=VALUE build arguments.
build_image() {
    local ref=$1 folder=$2 parent=$3 version=$4
    shift 4
    local inputs context build_args=() argument image_fail_mode=$fail_mode old_id
    # The shared layer holds no failure mode, so that building a broken
    # release leaves it, and the healthy images on it, as they are.
    [[ $folder == authentik-common ]] && image_fail_mode=""
    inputs=$(inputs_digest "$sources" "$folder" "$(image_id "$parent")" "$version" \
        "$image_fail_mode" "$@")
    if [[ $(image_inputs "$ref") == "$inputs" ]]; then
        progress "$ref: unchanged"
        return
    fi

    progress "$ref: building from scripts/standins/$folder"
    old_id=$(docker image inspect -f '{{.Id}}' "$ref" 2>/dev/null || true)
    context=$(mktemp -d "$work_dir/context.XXXXXX")
    cp -pR "$standins_dir/$folder/." "$context/"
    printf '%s\n' "$image_fail_mode" >"$context/fail"
    # The version file makes the top layer of each version differ.
    printf '%s\n' "$version" >"$context/version"
    for argument in "$@"; do
        build_args+=(--build-arg "$argument")
    done
    if [[ $folder == authentik-common ]]; then
        write_payload "$context/payload"
    fi

    # The build output goes to a log file because the Docker 28 client prints
    # a deprecation notice for the legacy builder on every build.
    if ! docker build -q --build-arg "BASE=$parent" "${build_args[@]}" \
        --label "$label=$inputs" -t "$ref" "$context" >"$context.log" 2>&1; then
        cat "$context.log" >&2
        die "building $ref failed"
    fi
    # Remove the image this build replaced. Docker refuses while a container
    # or another tag still uses it, and then the image stays.
    if [[ -n $old_id ]]; then
        docker image rm "$old_id" >/dev/null 2>&1 || true
    fi
    progress "$ref: built"
}

# Wait for the background jobs whose PIDs are in the array named $1, and fail
# when any of them failed (each has already printed its own error).
wait_for_jobs() {
    local -n job_pids=$1
    local pid failed=0
    for pid in "${job_pids[@]}"; do
        wait "$pid" || failed=1
    done
    job_pids=()
    ((failed == 0)) || die "some images failed to build"
}

# Write $payload_mb MiB of AES-CTR keystream with a fixed key: the same bytes
# on every run, and incompressible, so its layer costs its full size.
write_payload() {
    head -c "$((payload_mb * 1024 * 1024))" /dev/zero \
        | openssl enc -aes-128-ctr -nosalt -K 00000000000000000000000000000000 \
            -iv 00000000000000000000000000000000 >"$1"
}

# Push local image $2 (already tagged for the registry) and report it under
# upstream reference $1.
publish() {
    local upstream=$1 ref=$2
    progress "$ref: pushing"
    docker push "$ref" >/dev/null
    if $tag_upstream; then
        docker tag "$ref" "$upstream"
    fi
    printf '%s %s\n' "$upstream" "$ref"
}

main() {
    parse_options "$@"
    check_environment

    work_dir=$(mktemp -d)
    trap 'rm -rf "$work_dir"' EXIT
    sources=$(source_digest)

    local base=airlock-standin/base:latest common=airlock-standin/authentik-common:latest
    local version ref outpost index jobs=() upstreams=() refs=()
    build_base "$base"

    # Each Dockerfile instruction took about 1 s on Docker 20.10 with the vfs
    # storage driver, so independent builds run in parallel, in two rounds:
    # the images on the base, then those on the shared authentik layer.
    if wants postgres; then
        ref=$registry/library/postgres:16-alpine$tag_suffix
        build_image "$ref" postgres "$base" 16-alpine &
        jobs+=($!)
        upstreams+=("docker.io/library/postgres:16-alpine$tag_suffix")
        refs+=("$ref")
    fi
    if wants redis; then
        ref=$registry/library/redis:alpine$tag_suffix
        build_image "$ref" redis "$base" alpine &
        jobs+=($!)
        upstreams+=("docker.io/library/redis:alpine$tag_suffix")
        refs+=("$ref")
    fi
    if wants server || wants outposts; then
        build_image "$common" authentik-common "$base" "payload-${payload_mb}MiB" &
        jobs+=($!)
    fi
    wait_for_jobs jobs

    for version in "${versions[@]}"; do
        if wants server; then
            ref=$registry/goauthentik/server:$version$tag_suffix
            build_image "$ref" server "$common" "$version" &
            jobs+=($!)
            upstreams+=("ghcr.io/goauthentik/server:$version$tag_suffix")
            refs+=("$ref")
        fi
        if wants outposts; then
            for outpost in ldap proxy rac radius; do
                ref=$registry/goauthentik/$outpost:$version$tag_suffix
                build_image "$ref" outpost "$common" "$version" "OUTPOST_TYPE=$outpost" &
                jobs+=($!)
                upstreams+=("ghcr.io/goauthentik/$outpost:$version$tag_suffix")
                refs+=("$ref")
            done
        fi
    done
    wait_for_jobs jobs

    for index in "${!refs[@]}"; do
        publish "${upstreams[$index]}" "${refs[$index]}"
    done
    progress "done"
}

main "$@"
