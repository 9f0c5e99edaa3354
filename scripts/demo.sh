#!/usr/bin/env bash
# The main job, end to end: build DiffKeeper, record a small workload that writes files for a few
# seconds and then fails, rewind to a moment in the middle, and show where to look.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --bin diffkeeper
dk="$PWD/target/release/diffkeeper"

demo=${DEMO_DIR:-/tmp/diffkeeper-demo}
rm -rf "$demo"
mkdir -p "$demo/work"
cd "$demo/work"
printf 'retries = 3\nmode = safe\n' > app.conf   # exists before recording: the baseline keeps it

cat > ../workload.sh <<'SH'
# A flaky job: it logs progress, rewrites its config atomically, keeps a small database and a
# results file, and finally crashes, leaving things half-done.
set -e
mkdir -p results
for i in 1 2 3 4 5 6; do
  echo "step $i: ok" >> job.log
  printf 'retries = 3\nmode = %s\nstep = %s\n' "$([ $i -gt 3 ] && echo fast || echo safe)" "$i" > app.conf.tmp
  mv app.conf.tmp app.conf
  sqlite3 state.db "create table if not exists steps(n integer, at text); insert into steps values($i, datetime('now'));"
  echo "result $i" > "results/r$i.txt"
  [ $i -eq 4 ] && rm results/r1.txt
  sleep 0.5
done
echo "step 7: corrupting results" >> job.log
truncate -s 0 results/r6.txt
exit 1
SH

echo "== recording: diffkeeper record --state-dir=$demo/state -- sh ../workload.sh"
set +e
"$dk" record --state-dir="$demo/state" -- sh ../workload.sh
code=$?
set -e
echo "== the workload exited with $code (passed through by diffkeeper)"

echo "== what changed, when, by whom (diffkeeper log, last 12 lines):"
"$dk" log --state-dir="$demo/state" | tail -n 12

echo "== rewinding to 1.6s into the run: diffkeeper export --time=1.6s"
"$dk" export --state-dir="$demo/state" --out="$demo/at-1.6s" --time=1.6s
echo "== and to the end"
"$dk" export --state-dir="$demo/state" --out="$demo/at-end" --time=end

echo "== app.conf at 1.6s:"; cat "$demo/at-1.6s$demo/work/app.conf"
echo "== job.log at 1.6s:"; cat "$demo/at-1.6s$demo/work/job.log"
echo "== steps in state.db at 1.6s: $(sqlite3 "$demo/at-1.6s$demo/work/state.db" 'select count(*) from steps')"
echo "== what differs between 1.6s and the end (diffkeeper diff):"
"$dk" diff --state-dir="$demo/state" --from=1.6s --to=end --path="$demo/work/results/**"

echo
echo "Look around:"
echo "  the files at 1.6s:   $demo/at-1.6s$demo/work"
echo "  the files at the end: $demo/at-end$demo/work"
echo "  the recording:        $demo/state   (try: $dk log --state-dir=$demo/state --path='**/app.conf')"
