#!/usr/bin/env bash
# The channel benchmark as two processes over TCP loopback; both print the same figures.
set -euo pipefail
PORT=${PORT:-9400}
secmoe bench channel --party server --listen 127.0.0.1:$PORT --json > server.json &
secmoe bench channel --party client --connect 127.0.0.1:$PORT --json > client.json
wait
echo "client: $(tail -1 client.json)"
echo "server: $(tail -1 server.json)"
