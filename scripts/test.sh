#!/usr/bin/env bash
# README's test command: installs what is missing, builds, runs the whole suite
# (unit, property, simulation, and real-process tests on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
swift build --build-tests
swift test --skip-build "$@"
