#!/usr/bin/env bash
# Builds the edge Worker (see build-worker.sh).
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/build-worker.sh" edge
