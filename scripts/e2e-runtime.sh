#!/usr/bin/env bash
# A private containerd (CRI) for the end-to-end tests: real runc containers, driven through the
# CRI as kubelet drives it, without touching the host's own container runtime (there may be none).
#
#   e2e-runtime.sh install      apt packages + the busybox and pause images (OCI tarballs, cached)
#   e2e-runtime.sh start DIR    containerd with root, state, socket and config all under DIR;
#                               writes DIR/env (CONTAINERD_ADDRESS, CONTAINERD_PID, image names)
#   e2e-runtime.sh stop DIR     kills every container, containerd and its shims, unmounts what is
#                               left under DIR, removes the pod cgroups and the state
#
# Images come from no registry (there is none to reach): both are built from Debian's static
# busybox with umoci. The cache is DK_E2E_CACHE (default /var/cache/diffkeeper-e2e/images).
set -euo pipefail

CACHE=${DK_E2E_CACHE:-/var/cache/diffkeeper-e2e/images}
# Bump when the image recipe below changes, so cached tarballs are rebuilt.
IMAGE_RECIPE=1
# Names as CRI normalizes them; `ctr import --base-name` gives the repository, the OCI layout's
# ref name ("e2e") the tag.
BUSYBOX_REPO=docker.io/library/diffkeeper-busybox
PAUSE_REPO=docker.io/library/diffkeeper-pause
IMAGE_TAG=e2e
NAMESPACE=k8s.io
PACKAGES=(containerd runc umoci busybox-static jq)

log() { printf 'e2e-runtime: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "must run as root (containerd, runc, mounts, cgroups)"; }

# busybox-static and busybox conflict in Debian: with the former installed, /bin/busybox is static
# and runs in an empty image.
busybox_is_static() {
    [ -x /bin/busybox ] &&
        [ "$(dpkg-query -W -f='${Status}' busybox-static 2>/dev/null)" = "install ok installed" ]
}

install_packages() {
    local missing=0 tool
    for tool in containerd containerd-shim-runc-v2 ctr runc umoci jq; do
        command -v "$tool" >/dev/null || missing=1
    done
    busybox_is_static || missing=1
    [ "$missing" = 0 ] && return 0
    log "installing ${PACKAGES[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # A fresh machine may have no package lists yet; update only when the install needs it.
    if ! apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null; then
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
    fi
    busybox_is_static || die "/bin/busybox is not the static build (install busybox-static)"
}

# One OCI layout holding a busybox root filesystem, tagged $IMAGE_TAG, default command /bin/sh.
build_busybox_layout() {
    local work=$1 layout=$1/busybox bundle=$1/bundle applet
    umoci init --layout "$layout"
    umoci new --image "$layout:$IMAGE_TAG"
    umoci unpack --image "$layout:$IMAGE_TAG" "$bundle"
    local rootfs=$bundle/rootfs
    mkdir -p "$rootfs/bin" "$rootfs/etc" "$rootfs/proc" "$rootfs/sys" "$rootfs/dev" "$rootfs/root"
    install -d -m 1777 "$rootfs/tmp"
    cp /bin/busybox "$rootfs/bin/busybox"
    for applet in $(/bin/busybox --list); do
        [ "$applet" = busybox ] || ln -sf busybox "$rootfs/bin/$applet"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$rootfs/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"
    umoci repack --image "$layout:$IMAGE_TAG" "$bundle"
    umoci config --image "$layout:$IMAGE_TAG" --config.env PATH=/bin --config.workingdir / \
        --config.cmd /bin/sh
    umoci gc --layout "$layout"
}

# The pause image is the same root filesystem whose process only sleeps: containerd's CRI stops
# a sandbox with SIGKILL, so it needs no signal handling, and as pid 1 of nothing (the test pods
# give each container its own pid namespace) it needs no zombie reaping.
build_pause_layout() {
    local work=$1
    cp -a "$work/busybox" "$work/pause"
    umoci config --image "$work/pause:$IMAGE_TAG" --config.entrypoint /bin/sleep \
        --config.cmd 2147483647
    umoci gc --layout "$work/pause"
}

build_images() {
    local stamp
    stamp="recipe=$IMAGE_RECIPE busybox=$(dpkg-query -W -f='${Version}' busybox-static)"
    mkdir -p "$CACHE"
    # Two installs at once (two test runs) build once; the second waits and finds the cache.
    exec 9>"$CACHE/.lock"
    flock 9
    if [ -f "$CACHE/busybox.tar" ] && [ -f "$CACHE/pause.tar" ] &&
        [ "$(cat "$CACHE/stamp" 2>/dev/null)" = "$stamp" ]; then
        exec 9>&-
        return 0
    fi
    log "building images into $CACHE"
    local work
    work=$(mktemp -d "$CACHE/build.XXXXXX")
    build_busybox_layout "$work"
    build_pause_layout "$work"
    tar -C "$work/busybox" -cf "$work/busybox.tar" .
    tar -C "$work/pause" -cf "$work/pause.tar" .
    mv -f "$work/busybox.tar" "$CACHE/busybox.tar"
    mv -f "$work/pause.tar" "$CACHE/pause.tar"
    printf '%s\n' "$stamp" >"$CACHE/stamp"
    rm -rf "$work"
    exec 9>&-
}

cmd_install() {
    need_root
    install_packages
    build_images
    log "installed; images in $CACHE"
}

write_config() {
    local dir=$1
    mkdir -p "$dir/cni/bin" "$dir/cni/conf"
    # Everything containerd, its shims and runc keep lives under DIR: root, state, the socket,
    # the opt plugin's directory (default /opt/containerd) and runc's state (default
    # /run/containerd/runc). Snapshotters that would probe host devices are disabled.
    cat >"$dir/config.toml" <<EOF
version = 2
root = "$dir/root"
state = "$dir/state"
oom_score = 0
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "$dir/containerd.sock"

[ttrpc]
  address = ""

[debug]
  address = ""

[metrics]
  address = ""

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "$dir/opt"

  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "$PAUSE_REPO:$IMAGE_TAG"
    # The VM's root lacks CAP_SYS_RESOURCE: lowering oom_score_adj would fail every container.
    restrict_oom_score_adj = true
    disable_tcp_service = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"

    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"

        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          # cgroupfs driver: cgroup paths are /kubepods/besteffort/pod<uid>/<container id>.
          SystemdCgroup = false
          Root = "$dir/runc"

    # Test pods are host-network: no CNI plugin is ever called. An empty config dir keeps
    # containerd from reading the host's.
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "$dir/cni/bin"
      conf_dir = "$dir/cni/conf"
EOF
}

# A zombie counts as gone: processes this script orphans (containerd, shims) are reaped by pid 1,
# which here takes its time (seconds) to do so.
pid_alive() {
    local state
    [ -n "${1:-}" ] || return 1
    state=$(sed -n 's/^.*) \(.\).*$/\1/p' "/proc/$1/stat" 2>/dev/null) || return 1
    [ -n "$state" ] && [ "$state" != Z ]
}

ctr_dir() { local dir=$1; shift; ctr --address "$dir/containerd.sock" --namespace "$NAMESPACE" "$@"; }

cgroup_mountpoints() {
    # Field 5 is the mount point, the fstype follows the " - " separator.
    awk '{ for (i = 7; i <= NF; i++) if ($i == "-") break;
           if ($(i + 1) == "cgroup" || $(i + 1) == "cgroup2") print $5 }' /proc/self/mountinfo
}

cmd_start() {
    need_root
    local dir=${1:?usage: e2e-runtime.sh start DIR}
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd -P)
    if [ ! -f "$CACHE/busybox.tar" ] || [ ! -f "$CACHE/pause.tar" ]; then
        die "no images in $CACHE: run 'bash scripts/e2e-runtime.sh install' first"
    fi
    command -v containerd >/dev/null || die "containerd missing: run 'bash scripts/e2e-runtime.sh install'"
    if [ -f "$dir/containerd.pid" ] && pid_alive "$(cat "$dir/containerd.pid")"; then
        die "a containerd already runs for $dir (pid $(cat "$dir/containerd.pid")): stop it first"
    fi
    # A run that was never stopped (a killed test): its metadata would make containerd recover
    # sandboxes whose processes are gone. Clean up as stop does, then start afresh.
    if [ -e "$dir/root" ] || [ -e "$dir/state" ]; then
        log "cleaning up an earlier run in $dir"
        cmd_stop "$dir"
    fi
    # Remember which hierarchies had no kubepods/ yet: those are ours to remove at stop.
    : >"$dir/kubepods-created"
    local mnt
    for mnt in $(cgroup_mountpoints); do
        [ -d "$mnt/kubepods" ] || printf '%s\n' "$mnt/kubepods" >>"$dir/kubepods-created"
    done
    write_config "$dir"
    rm -f "$dir/containerd.sock"
    # setsid + closed stdio: containerd outlives this script and must not hold its caller's pipes
    # (a test reading this script's output would otherwise wait for containerd to exit).
    setsid containerd --config "$dir/config.toml" </dev/null >"$dir/containerd.log" 2>&1 &
    local pid=$!
    printf '%s\n' "$pid" >"$dir/containerd.pid"
    # A start that fails from here on leaves nothing running. (DIR is expanded now, so the trap
    # needs none of this function's locals.)
    # shellcheck disable=SC2064
    trap "log 'start failed: stopping containerd'; cmd_stop $(printf %q "$dir") || true" EXIT
    local waited=0
    until [ -S "$dir/containerd.sock" ] && ctr_dir "$dir" version >/dev/null 2>&1; do
        pid_alive "$pid" || { tail -20 "$dir/containerd.log" >&2; die "containerd exited at start"; }
        [ "$waited" -lt 200 ] || { tail -20 "$dir/containerd.log" >&2; die "no containerd socket after 20 s"; }
        sleep 0.1
        waited=$((waited + 1))
    done
    # The CRI plugin fails soft (containerd still serves): check it loaded.
    if ! ctr_dir "$dir" plugins ls | awk '$2 == "cri" && $NF == "ok" { found = 1 } END { exit !found }'; then
        grep -E 'level=(error|warning)' "$dir/containerd.log" | tail -5 >&2 || true
        die "containerd's CRI plugin did not load (see $dir/containerd.log)"
    fi
    ctr_dir "$dir" images import --base-name "$BUSYBOX_REPO" "$CACHE/busybox.tar" >/dev/null
    ctr_dir "$dir" images import --base-name "$PAUSE_REPO" "$CACHE/pause.tar" >/dev/null
    cat >"$dir/env" <<EOF
CONTAINERD_ADDRESS=$dir/containerd.sock
CONTAINERD_NAMESPACE=$NAMESPACE
CONTAINER_RUNTIME_ENDPOINT=unix://$dir/containerd.sock
CONTAINERD_PID=$pid
DK_E2E_BUSYBOX_IMAGE=$BUSYBOX_REPO:$IMAGE_TAG
DK_E2E_PAUSE_IMAGE=$PAUSE_REPO:$IMAGE_TAG
EOF
    trap - EXIT
    log "containerd $pid serving $dir/containerd.sock"
}

# Every cgroup path (relative to a hierarchy's root) of a container containerd still knows.
record_cgroup_paths() {
    local dir=$1 id
    for id in $(ctr_dir "$dir" containers ls -q 2>/dev/null); do
        ctr_dir "$dir" containers info "$id" 2>/dev/null |
            jq -r '.Spec.linux.cgroupsPath // empty' >>"$dir/cgroup-paths" || true
    done
}

kill_tasks() {
    local dir=$1 id
    for id in $(ctr_dir "$dir" tasks ls -q 2>/dev/null); do
        ctr_dir "$dir" tasks kill --all --signal SIGKILL "$id" >/dev/null 2>&1 || true
    done
    # Deleting a task is what makes its shim unmount the root filesystem and exit.
    for id in $(ctr_dir "$dir" tasks ls -q 2>/dev/null); do
        ctr_dir "$dir" tasks delete --force "$id" >/dev/null 2>&1 || true
    done
}

delete_runc_containers() {
    local dir=$1 state id
    for state in "$dir"/runc/*/*/state.json; do
        [ -f "$state" ] || continue
        jq -r '.config.cgroups.path // empty' "$state" >>"$dir/cgroup-paths" || true
        id=$(basename "$(dirname "$state")")
        runc --root "$(dirname "$(dirname "$state")")" delete --force "$id" >/dev/null 2>&1 ||
            log "runc could not delete container $id"
    done
}

# The one thing containerd 1.6 keeps outside DIR: each shim's socket, in /run/containerd/s/ (a
# fixed path). A killed shim leaves its socket; the shim's bundle directory names it.
remove_shim_sockets() {
    local dir=$1 address socket
    for address in "$dir"/state/io.containerd.runtime.v2.task/*/*/address; do
        [ -f "$address" ] || continue
        socket=$(sed 's|^unix://||' "$address")
        case "$socket" in
        /run/containerd/s/*) rm -f "$socket" ;;
        esac
    done
}

# Pids of the shims serving this containerd: their command line names its socket (-address).
shim_pids() {
    local dir=$1
    grep -lasF -- "$dir/containerd.sock" /proc/[0-9]*/cmdline 2>/dev/null |
        sed -n 's|^/proc/\([0-9]*\)/cmdline$|\1|p' || true
}

wait_gone() {
    local pid=$1 tries=$2
    while pid_alive "$pid" && [ "$tries" -gt 0 ]; do
        sleep 0.1
        tries=$((tries - 1))
    done
    ! pid_alive "$pid"
}

mounts_under() {
    # Mount points are octal-escaped in mountinfo (space is \040); print them deepest first.
    awk -v d="$1/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo |
        while IFS= read -r m; do printf '%b\n' "$m"; done | awk '{ print length, $0 }' |
        sort -rn | cut -d' ' -f2-
}

remove_cgroup_tree() {
    # cgroupfs directories go with rmdir only, leaves first; a busy one stays.
    local top=$1
    [ -d "$top" ] || return 0
    find "$top" -depth -type d -exec rmdir {} \; 2>/dev/null || true
}

cmd_stop() {
    need_root
    local dir=${1:?usage: e2e-runtime.sh stop DIR}
    [ -d "$dir" ] || die "no such directory: $dir"
    dir=$(cd "$dir" && pwd -P)
    local pid="" p
    [ -f "$dir/containerd.pid" ] && pid=$(cat "$dir/containerd.pid")
    touch "$dir/cgroup-paths"
    if pid_alive "$pid" && [ -S "$dir/containerd.sock" ]; then
        record_cgroup_paths "$dir"
        kill_tasks "$dir"
    fi
    if pid_alive "$pid"; then
        kill -TERM "$pid"
        wait_gone "$pid" 100 || { kill -KILL "$pid" 2>/dev/null || true; wait_gone "$pid" 50 || true; }
    fi
    # Shims outlive containerd by design; any left serve containers nothing will stop now.
    for p in $(shim_pids "$dir"); do kill -KILL "$p" 2>/dev/null || true; done
    for p in $(shim_pids "$dir"); do wait_gone "$p" 50 || true; done
    remove_shim_sockets "$dir"
    # Containers containerd could not stop (it had crashed, or its shim was killed): runc's own
    # state still knows them. `runc delete --force` kills them and removes their cgroups.
    delete_runc_containers "$dir"
    # Container processes that escaped all of the above are still in their cgroups: kill them
    # there, and wait for the cgroups to empty (a cgroup with members cannot be removed).
    local cg mnt tries
    while IFS= read -r cg; do
        [ -n "$cg" ] || continue
        for mnt in $(cgroup_mountpoints); do
            [ -f "$mnt$cg/cgroup.procs" ] || continue
            tries=50
            while [ -s "$mnt$cg/cgroup.procs" ] && [ "$tries" -gt 0 ]; do
                while IFS= read -r p; do kill -KILL "$p" 2>/dev/null || true; done <"$mnt$cg/cgroup.procs"
                sleep 0.1
                tries=$((tries - 1))
            done
        done
    done < <(sort -u "$dir/cgroup-paths")
    local m
    while IFS= read -r m; do
        [ -n "$m" ] || continue
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "could not unmount $m"
    done < <(mounts_under "$dir")
    # Pod cgroups: runc removes a container's own directory but leaves the pod's (kubelet removes
    # those). Remove the pod directories of every container containerd knew, in every hierarchy.
    while IFS= read -r cg; do
        [ -n "$cg" ] || continue
        for mnt in $(cgroup_mountpoints); do
            remove_cgroup_tree "$mnt$cg"
            rmdir "$mnt$(dirname "$cg")" 2>/dev/null || true
        done
    done < <(sort -u "$dir/cgroup-paths")
    # kubepods/ trees that start created: whatever is empty in them is ours (pods already removed
    # through the CRI, whose paths containerd no longer knew).
    if [ -f "$dir/kubepods-created" ]; then
        while IFS= read -r cg; do remove_cgroup_tree "$cg"; done <"$dir/kubepods-created"
    fi
    local leftover
    leftover=$(mounts_under "$dir")
    [ -z "$leftover" ] || die "mounts still under $dir: $leftover"
    local busy=""
    while IFS= read -r cg; do
        [ -n "$cg" ] || continue
        for mnt in $(cgroup_mountpoints); do
            [ ! -d "$mnt$(dirname "$cg")" ] || busy="$busy $mnt$(dirname "$cg")"
        done
    done < <(sort -u "$dir/cgroup-paths")
    # --one-file-system: never recurse into something still mounted (a pod's hostPath bind).
    rm -rf --one-file-system "$dir/root" "$dir/state" "$dir/runc" "$dir/opt" "$dir/cni" \
        "$dir/config.toml" "$dir/containerd.sock" "$dir/containerd.sock.ttrpc" "$dir/env" \
        "$dir/containerd.pid" "$dir/cgroup-paths" "$dir/kubepods-created"
    [ -z "$busy" ] || die "pod cgroups could not be removed (still in use?):$busy"
    log "stopped containerd for $dir"
}

case "${1:-}" in
install) cmd_install ;;
start) shift; cmd_start "$@" ;;
stop) shift; cmd_stop "$@" ;;
*)
    echo "usage: $0 install | start DIR | stop DIR" >&2
    exit 2
    ;;
esac
