#!/usr/bin/env bash
# Private inference across two hosts. Run the server on the host that holds the model and the
# client on the host that holds the input. Here both run on this machine (loopback).
#
#   server host:  secmoe serve --model bundled --listen 0.0.0.0:9000
#   client host:  secmoe infer --connect SERVER_IP:9000 --samples 2 --strategy select
#
# Add --tls-cert/--tls-key (both) and --tls-ca (both; on the server it requires client
# certificates from that CA) to encrypt and authenticate the link.
set -euo pipefail
PORT=${PORT:-9000}
secmoe serve --model bundled --listen 127.0.0.1:$PORT --sessions 1 &
SERVER=$!
secmoe infer --connect 127.0.0.1:$PORT --samples 2 --strategy select --transcript client.jsonl
wait $SERVER
