#!/usr/bin/env bash
# The diffkeeper container image for the end-to-end node: a `diffkeeper` binary you built, in an
# image the private containerd of scripts/e2e-runtime.sh can run (the operator's snapshot Pods
# run `diffkeeper snapshot ...` from it).
#
#   e2e-image.sh build BINARY REF DIR   build the image around BINARY and import it as REF into
#                                       the containerd that `e2e-runtime.sh start DIR` runs
#
#   e.g.  cargo build -p diffkeeper-cli
#         bash scripts/e2e-runtime.sh start /tmp/rt
#         bash scripts/e2e-image.sh build target/debug/diffkeeper diffkeeper:test /tmp/rt
#         ctr -a /tmp/rt/containerd.sock -n k8s.io run --rm docker.io/library/diffkeeper:test \
#             t1 /usr/local/bin/diffkeeper --version
#
# The image holds BINARY at /usr/local/bin/diffkeeper, the shared libraries `ldd BINARY` lists
# (the dynamic loader included) at the same paths as on this machine, and Debian's static busybox
# at /bin for looking around in a shell. No registry is involved: the image is built with umoci,
# as e2e-runtime.sh builds its busybox and pause images, and imported with `ctr images import`.
# REF is normalized as the CRI does (`diffkeeper:test` is docker.io/library/diffkeeper:test), so
# a Pod naming `diffkeeper:test` with imagePullPolicy Never finds it.
#
# The last image built is kept in the cache (DK_E2E_CACHE, default
# /var/cache/diffkeeper-e2e/images, shared with e2e-runtime.sh) and reused while the binary, its
# libraries and busybox are unchanged. Needs root and what `e2e-runtime.sh install` installs.
set -euo pipefail

CACHE=${DK_E2E_CACHE:-/var/cache/diffkeeper-e2e/images}
# Bump when the image recipe below changes, so a cached image is rebuilt.
IMAGE_RECIPE=1
NAMESPACE=k8s.io

log() { printf 'e2e-image: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "must run as root (umoci keeps file ownership only as root)"; }

# As in e2e-runtime.sh: with busybox-static installed, /bin/busybox runs in an image without libc.
busybox_is_static() {
    [ -x /bin/busybox ] &&
        [ "$(dpkg-query -W -f='${Status}' busybox-static 2>/dev/null)" = "install ok installed" ]
}

check_tools() {
    local tool
    for tool in umoci ctr ldd sha256sum; do
        command -v "$tool" >/dev/null ||
            die "$tool is missing: run 'bash scripts/e2e-runtime.sh install' (it installs umoci and containerd)"
    done
    busybox_is_static ||
        die "/bin/busybox is not the static build: run 'bash scripts/e2e-runtime.sh install'"
}

# REF as the CRI names it: docker.io/library/NAME:TAG for a bare NAME, :latest when no tag.
normalize_ref() {
    local ref=$1 name tag first
    case "$ref" in
    *@*) die "REF $ref has a digest: give NAME[:TAG]" ;;
    "" | */ | *' '*) die "REF '$ref' is not an image name: give NAME[:TAG], e.g. diffkeeper:test" ;;
    esac
    # A tag is what follows the last ':' after the last '/' (a registry may have a port).
    if [[ "${ref##*/}" == *:* ]]; then
        name=${ref%:*}
        tag=${ref##*:}
    else
        name=$ref
        tag=latest
    fi
    first=${name%%/*}
    if [[ "$name" != */* ]]; then
        name=docker.io/library/$name
    elif [[ "$first" != *.* && "$first" != *:* && "$first" != localhost ]]; then
        name=docker.io/$name
    fi
    printf '%s %s\n' "$name" "$tag"
}

# The absolute paths of the shared objects BINARY loads, one per line: `ldd` prints
# "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" for libraries, "/lib64/ld-linux-x86-64.so.2
# (0x...)" for the loader, and "linux-vdso.so.1 (0x...)" for the kernel's (no file: skipped).
shared_objects() {
    local binary=$1 out
    if ! out=$(ldd "$binary" 2>&1); then
        # A static binary needs nothing; anything else ldd refuses is a real problem.
        case "$out" in
        *"not a dynamic executable"* | *"statically linked"*) return 0 ;;
        *) die "ldd $binary failed: $out" ;;
        esac
    fi
    if grep -q "not found" <<<"$out"; then
        die "$binary needs libraries this machine lacks: $(grep 'not found' <<<"$out" | tr -s ' \t' ' ')"
    fi
    awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$out" | sort -u
}

# What the image is made of (BINARY, then the shared objects it loads); the cached image is
# reused while this is unchanged.
image_stamp() {
    local binary=$1 lib
    shift
    {
        printf 'recipe=%s busybox=%s\n' "$IMAGE_RECIPE" "$(dpkg-query -W -f='${Version}' busybox-static)"
        sha256sum <"$binary"
        for lib in "$@"; do printf '%s ' "$lib"; sha256sum <"$lib"; done
    } | sha256sum | cut -d' ' -f1
}

# An OCI layout at LAYOUT tagged TAG with BINARY, the shared objects given after it, and busybox.
build_layout() { # BINARY LAYOUT TAG WORK SHARED_OBJECT...
    local binary=$1 layout=$2 tag=$3 work=$4 bundle=$4/bundle lib applet
    shift 4
    umoci init --layout "$layout"
    umoci new --image "$layout:$tag"
    umoci unpack --image "$layout:$tag" "$bundle"
    local rootfs=$bundle/rootfs
    mkdir -p "$rootfs/bin" "$rootfs/usr/local/bin" "$rootfs/etc" "$rootfs/proc" "$rootfs/sys" \
        "$rootfs/dev" "$rootfs/root"
    install -d -m 1777 "$rootfs/tmp"
    install -m 0755 "$binary" "$rootfs/usr/local/bin/diffkeeper"
    # At the path ldd found them, as files (-L): the loader and the binary look for them there.
    # On this machine /lib may be a link into /usr; in the image the directory is real, which is
    # just as good for the loader.
    for lib in "$@"; do
        mkdir -p "$rootfs$(dirname "$lib")"
        cp -L "$lib" "$rootfs$lib"
    done
    cp /bin/busybox "$rootfs/bin/busybox"
    for applet in $(/bin/busybox --list); do
        [ "$applet" = busybox ] || ln -sf busybox "$rootfs/bin/$applet"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$rootfs/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"
    umoci repack --image "$layout:$tag" "$bundle"
    umoci config --image "$layout:$tag" --config.env PATH=/usr/local/bin:/bin \
        --config.workingdir / --config.cmd /usr/local/bin/diffkeeper
    umoci gc --layout "$layout"
}

cmd_build() {
    need_root
    [ $# = 3 ] || die "usage: e2e-image.sh build BINARY REF DIR"
    local binary=$1 ref=$2 dir=$3
    { [ -f "$binary" ] && [ -x "$binary" ]; } || die "$binary is not an executable file (cargo build -p diffkeeper-cli makes target/debug/diffkeeper)"
    [ -f "$dir/env" ] || die "no $dir/env: start the runtime first with 'bash scripts/e2e-runtime.sh start $dir'"
    local address
    address=$(sed -n 's/^CONTAINERD_ADDRESS=//p' "$dir/env")
    [ -S "$address" ] || die "containerd's socket $address (from $dir/env) is gone: is the runtime still running?"
    check_tools
    # (assigned alone, so that a `die` inside stops this script too)
    local normalized repo tag libs
    normalized=$(normalize_ref "$ref")
    repo=${normalized% *}
    tag=${normalized##* }
    libs=$(shared_objects "$binary")
    # Paths from ldd hold no white space on any distribution; split them into words.
    # shellcheck disable=SC2206
    local shared=($libs)

    mkdir -p "$CACHE"
    # Two test runs at once build once; the second waits, then finds the cache current.
    exec 9>"$CACHE/.diffkeeper-image.lock"
    flock 9
    local stamp tarball=$CACHE/diffkeeper-$tag.tar
    stamp=$(image_stamp "$binary" "${shared[@]}")
    if [ -f "$tarball" ] && [ "$(cat "$tarball.stamp" 2>/dev/null)" = "$stamp" ]; then
        log "the cached image is current ($tarball)"
    else
        log "building the image of $binary ($(du -h "$binary" | cut -f1))"
        local work
        work=$(mktemp -d "$CACHE/diffkeeper-build.XXXXXX")
        # shellcheck disable=SC2064 # expand $work now: the trap runs after this function returns
        trap "rm -rf $(printf %q "$work")" EXIT
        build_layout "$binary" "$work/layout" "$tag" "$work" "${shared[@]}"
        tar -C "$work/layout" -cf "$work/image.tar" .
        mv -f "$work/image.tar" "$tarball"
        printf '%s\n' "$stamp" >"$tarball.stamp"
        rm -rf "$work"
        trap - EXIT
    fi
    # The layout's ref name (the tag) completes --base-name into REPO:TAG.
    ctr --address "$address" --namespace "$NAMESPACE" images import --base-name "$repo" \
        "$tarball" >/dev/null || die "ctr images import of $tarball into $address failed"
    exec 9>&-
    # Read the whole list before searching it: `ctr ... | grep -q` under pipefail fails whenever
    # grep finds the name and exits before ctr has written the lines after it (ctr then dies of
    # SIGPIPE, exit 141). That made this check fail about 1 run in 20, on a busy machine more.
    local listed
    listed=$(ctr --address "$address" --namespace "$NAMESPACE" images ls -q) ||
        die "ctr images ls on $address failed after the import (see the containerd log in $dir)"
    grep -qxF "$repo:$tag" <<<"$listed" ||
        die "containerd does not list $repo:$tag after the import; it lists: $(tr '\n' ' ' <<<"$listed")"
    log "imported $repo:$tag into $address"
    printf '%s:%s\n' "$repo" "$tag"
}

case "${1:-}" in
build) shift; cmd_build "$@" ;;
*)
    echo "usage: $0 build BINARY REF DIR" >&2
    exit 2
    ;;
esac
