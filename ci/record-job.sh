#!/usr/bin/env bash
# Run a CI job's command under `diffkeeper record`, and keep the recording only when the job
# failed: what the GitHub Action (action.yml at the repository's root) and the GitLab CI template
# (ci/gitlab/diffkeeper.gitlab-ci.yml) run. Every setting comes from the environment, never
# from text pasted into this script, so a job's command cannot inject into it.
#
#   record-job.sh install   put diffkeeper on PATH: DK_BIN if set, else the release DK_VERSION
#                           from DK_RELEASE_URL, checked against its .sha256
#   record-job.sh run       run DK_RUN (a bash script) under `record`; always exits 0 and writes
#                           exit-code, failed and state-dir to $GITHUB_OUTPUT (when set)
#   record-job.sh pack      pack the recording into DK_PACK; writes pack= to $GITHUB_OUTPUT
#   record-job.sh all       run, pack if the job failed (or DK_KEEP=always), exit with the
#                           job's code (what GitLab runs: its artifacts:when does the rest)
#
# DK_RUN          the job's command (bash; -e and pipefail are on)
# DK_STATE_DIR    where the recording goes (default: $RUNNER_TEMP or /tmp, diffkeeper-state)
# DK_PACK         the pack file to upload (default: diffkeeper-trace.dkpack in the cwd)
# DK_KEEP         on-failure (default) or always: when to pack
# DK_VERSION      release to install (default: latest)
# DK_RELEASE_URL  where releases live (default: the project's GitHub releases)
# DK_INSTALL_DIR  where install puts the binary (default: $RUNNER_TEMP/diffkeeper/bin)
# DK_BIN          an existing diffkeeper binary: install uses it instead of downloading
set -euo pipefail

log() { printf 'diffkeeper-ci: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

tmp_root=${RUNNER_TEMP:-${TMPDIR:-/tmp}}
state_dir=${DK_STATE_DIR:-$tmp_root/diffkeeper-state}
pack_file=${DK_PACK:-$PWD/diffkeeper-trace.dkpack}
keep=${DK_KEEP:-on-failure}
case "$keep" in on-failure | always) ;; *) die "DK_KEEP is '$keep': give on-failure or always" ;; esac

# Writes KEY=VALUE for the following steps (GitHub), and to stderr for a person reading the log.
output() {
    [ -z "${GITHUB_OUTPUT:-}" ] || printf '%s=%s\n' "$1" "$2" >>"$GITHUB_OUTPUT"
}

# eBPF needs root; CI runners (GitHub's included) have password-less sudo.
as_root() {
    if [ "$(id -u)" = 0 ]; then
        "$@"
    else
        command -v sudo >/dev/null || die "recording needs root and there is no sudo: run the job as root"
        sudo --preserve-env=DK_RUN,PATH,HOME "$@"
    fi
}

diffkeeper_bin() {
    command -v diffkeeper 2>/dev/null ||
        die "diffkeeper is not on PATH: run 'record-job.sh install' first (the action's first step does)"
}

cmd_install() {
    local dir=${DK_INSTALL_DIR:-$tmp_root/diffkeeper/bin}
    mkdir -p "$dir"
    if [ -n "${DK_BIN:-}" ]; then
        [ -x "$DK_BIN" ] || die "DK_BIN=$DK_BIN is not an executable file"
        install -m 0755 "$DK_BIN" "$dir/diffkeeper"
    else
        local version=${DK_VERSION:-latest} arch url work
        case "$(uname -m)" in
        x86_64 | amd64) arch=x86_64 ;;
        aarch64 | arm64) arch=aarch64 ;;
        *) die "no diffkeeper release for $(uname -m); build it (cargo build --release -p diffkeeper-cli) and set DK_BIN" ;;
        esac
        local base=${DK_RELEASE_URL:-https://github.com/diffkeeper/diffkeeper/releases}
        if [ "$version" = latest ]; then
            url=$base/latest/download/diffkeeper-$arch-unknown-linux-gnu.tar.gz
        else
            url=$base/download/$version/diffkeeper-$arch-unknown-linux-gnu.tar.gz
        fi
        work=$(mktemp -d)
        # shellcheck disable=SC2064 # expand now: the trap runs after locals are gone
        trap "rm -rf $(printf %q "$work")" EXIT
        log "downloading $url"
        curl -fsSL --retry 3 -o "$work/release.tar.gz" "$url" || die "could not download $url (is DK_VERSION=$version released?)"
        curl -fsSL --retry 3 -o "$work/release.tar.gz.sha256" "$url.sha256" || die "could not download $url.sha256"
        local want got
        want=$(cut -d' ' -f1 <"$work/release.tar.gz.sha256")
        got=$(sha256sum <"$work/release.tar.gz" | cut -d' ' -f1)
        [ -n "$want" ] && [ "$want" = "$got" ] ||
            die "checksum mismatch for $url: the .sha256 says '$want', the download is $got; not installing it"
        tar -xzf "$work/release.tar.gz" -C "$work"
        [ -f "$work/diffkeeper" ] || die "$url holds no 'diffkeeper' at its top level"
        install -m 0755 "$work/diffkeeper" "$dir/diffkeeper"
    fi
    [ -z "${GITHUB_PATH:-}" ] || printf '%s\n' "$dir" >>"$GITHUB_PATH"
    output bin "$dir/diffkeeper"
    log "installed $("$dir/diffkeeper" --version) at $dir/diffkeeper"
}

# Runs the job; sets $code.
run_job() {
    [ -n "${DK_RUN:-}" ] || die "DK_RUN is empty: give the job's command (the action's 'run' input)"
    local dk
    dk=$(diffkeeper_bin)
    if [ -e "$state_dir" ] && [ -n "$(ls -A "$state_dir" 2>/dev/null)" ]; then
        die "$state_dir already holds files; give each job its own DK_STATE_DIR"
    fi
    log "recording into $state_dir: $DK_RUN"
    set +e
    # shellcheck disable=SC2016 # $DK_RUN is expanded by the inner bash, from its environment
    as_root "$dk" record --state-dir="$state_dir" -- bash -e -o pipefail -c "$DK_RUN"
    code=$?
    set -e
    output exit-code "$code"
    output state-dir "$state_dir"
    if [ "$code" = 0 ]; then
        output failed false
        log "the job passed"
    else
        output failed true
        log "the job failed with exit code $code; its recording is in $state_dir"
    fi
    if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then
        {
            printf '### diffkeeper\n\nThe job exited with **%s**.' "$code"
            [ "$code" = 0 ] || printf ' Its file history is kept as the artifact with %s.' "$(basename "$pack_file")"
            printf '\n\n'
        } >>"$GITHUB_STEP_SUMMARY"
    fi
}

cmd_run() {
    local code
    run_job
    # The job's code travels in the output; the action's last step passes it on, so the pack
    # and upload steps still run after a failure.
    exit 0
}

cmd_pack() {
    local dk
    dk=$(diffkeeper_bin)
    [ -d "$state_dir" ] || die "no recording at $state_dir: run 'record-job.sh run' first"
    as_root "$dk" pack --state-dir="$state_dir" --out="$pack_file" --force
    # The pack is the job user's to upload, whoever recorded it.
    as_root chown "$(id -u):$(id -g)" "$pack_file"
    output pack "$pack_file"
    log "packed the recording into $pack_file; rewind it with: diffkeeper unpack --in=$(basename "$pack_file") --state-dir=trace && diffkeeper log --state-dir=trace"
}

cmd_all() {
    local code
    run_job
    if [ "$code" != 0 ] || [ "$keep" = always ]; then
        cmd_pack
    fi
    exit "$code"
}

case "${1:-}" in
install) cmd_install ;;
run) cmd_run ;;
pack) cmd_pack ;;
all) cmd_all ;;
*)
    echo "usage: $0 install|run|pack|all (settings in DK_* variables; see the top of this file)" >&2
    exit 2
    ;;
esac
