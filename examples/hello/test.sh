#!/usr/bin/env bash
set -euo pipefail
echo "running the tests of job ${KICI_JOB_NAME:-?} at ${KICI_SHA:-?}"
test -f README.md
echo "all good"
