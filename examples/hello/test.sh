#!/usr/bin/env bash
set -euo pipefail
echo "testing with flavour=${KICI_MATRIX_FLAVOUR:-unknown}"
test -f README.md
echo "all good"
