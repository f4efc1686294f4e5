#!/usr/bin/env bash
# Benchmark: push and pull a file (1 GiB by default) through a local hub on loopback, beside
# `sha256sum` of the same file in the same run (hashing bounds a content-addressed upload), and
# the hub's peak RSS. Usage: scripts/bench-hub.sh [SIZE_MIB]
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib="${1:-1024}"
cargo build --release --locked -p cairn-cli >&2
bin="${CARGO_TARGET_DIR:-target}/release/cairn"
work="$(mktemp -d /tmp/cairn-bench.XXXXXX)"
hub_pid=""
cleanup() { [ -n "$hub_pid" ] && kill "$hub_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

file="$work/blob.bin"
head -c "$((size_mib << 20))" /dev/urandom >"$file"
bytes=$(stat -c %s "$file")

now() { date +%s.%N; }
rate() { python3 -c "print(f'{$bytes / ($2 - $1) / 1e6:.0f}')"; }

"$bin" devnet --listen 127.0.0.1:0 --data-dir "$work/data" >"$work/devnet.out" 2>"$work/devnet.err" &
hub_pid=$!
for _ in $(seq 100); do grep -q '  hub:' "$work/devnet.out" 2>/dev/null && break; sleep 0.1; done
url="$(awk '/  hub:/ {print $2}' "$work/devnet.out")"
export CAIRN_HUB="$url" CAIRN_KEY_FILE="$work/key"
"$bin" key address >/dev/null 2>&1

cat "$file" >/dev/null  # same page-cache state for every reader
t0=$(now); sha256sum "$file" >/dev/null; t1=$(now)
sha=$(rate "$t0" "$t1")
t0=$(now); "$bin" hub id "$file" >/dev/null; t1=$(now)
id_rate=$(rate "$t0" "$t1")
t0=$(now); "$bin" hub push "$file" --repo bench --version 1.0 >/dev/null; t1=$(now)
push=$(rate "$t0" "$t1")
t0=$(now); "$bin" hub pull bench@1.0 -o "$work/out.bin" >/dev/null; t1=$(now)
pull=$(rate "$t0" "$t1")
cmp -s "$file" "$work/out.bin" || { echo "pulled bytes differ" >&2; exit 1; }
rss_kib=$(awk '/VmHWM/ {print $2}' "/proc/$hub_pid/status")

ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }
echo "file: $size_mib MiB, loopback, $(nproc) cores"
printf '%-34s %8s MB/s  %s\n' "sha256sum (baseline)" "$sha" "1.00x"
printf '%-34s %8s MB/s  %sx\n' "cairn hub id (client hashing)" "$id_rate" "$(ratio "$id_rate" "$sha")"
printf '%-34s %8s MB/s  %sx\n' "push (hash + upload + verify)" "$push" "$(ratio "$push" "$sha")"
printf '%-34s %8s MB/s  %sx\n' "pull (download + verify)" "$pull" "$(ratio "$pull" "$sha")"
echo "hub peak RSS: $((rss_kib / 1024)) MiB"
