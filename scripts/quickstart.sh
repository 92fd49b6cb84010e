#!/usr/bin/env bash
# Quick start, step 1: set up .venv and run the main job on the embedded `local` device: compile resnet18 for
# CIFAR-10 and ImageNet input sizes, ship each to a freshly spawned local agent, time it, check it against
# torch, store the results and print a table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/dlas-host quickstart "$@"
