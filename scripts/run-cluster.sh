#!/usr/bin/env bash
# README's first command: a local three-node Patina cluster on loopback, in the
# foreground. Installs what is missing, builds, makes dev certificates on first
# run (certs/dev/, never committed), starts n1..n3 from config/, and stops them
# all on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
echo "building patina (release; the first build takes a few minutes)..."
swift build -c release --product patina 2>&1 | grep -E "error|warning: unre|Compiling patina|Build" || true
bin="$(swift build -c release --show-bin-path)/patina"
[ -x "$bin" ] || { echo "build failed"; exit 1; }

if [ ! -f certs/dev/ca.pem ]; then
  "$bin" certs ca --dir certs/dev >/dev/null
  for n in n1 n2 n3; do "$bin" certs node "$n" --dir certs/dev --ip 127.0.0.1 --dns localhost >/dev/null; done
  echo "dev certificates written to certs/dev/"
fi

pids=()
cleanup() {
  trap - INT TERM EXIT
  echo; echo "stopping the cluster..."
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup INT TERM EXIT

for i in 1 2 3; do
  mkdir -p "data/n$i"
  "$bin" agent --config "config/n$i.toml" > "data/n$i/agent.log" 2>&1 &
  pids+=($!)
done

for i in 1 2 3; do
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:808$i/v1/health" >/dev/null 2>&1 && break
    kill -0 "${pids[$((i-1))]}" 2>/dev/null || { echo "n$i failed to start:"; cat "data/n$i/agent.log"; exit 1; }
    sleep 0.1
  done
done

cat <<MSG
Patina cluster running (logs in data/n*/agent.log):
  n1  API http://127.0.0.1:8081   metrics http://127.0.0.1:9091/metrics
  n2  API http://127.0.0.1:8082   metrics http://127.0.0.1:9092/metrics
  n3  API http://127.0.0.1:8083   metrics http://127.0.0.1:9093/metrics

Try, in another terminal:
  $bin exec --api-addr 127.0.0.1:8081 "INSERT INTO todos (id, title) VALUES ('1', 'hello')"
  $bin query --api-addr 127.0.0.1:8082 "SELECT * FROM todos"
  $bin subscribe --api-addr 127.0.0.1:8083 "SELECT id, title, done FROM todos"

Ctrl-C stops all three nodes.
MSG
wait "${pids[@]}"
