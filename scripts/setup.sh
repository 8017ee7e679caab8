#!/usr/bin/env bash
# Installs what pg_causal needs to build and test, idempotently: Debian packages,
# cargo-pgrx (pinned in pgrx.toml) and pgrx's registration of the system PostgreSQL.
source "$(dirname "$0")/common.sh"
ensure_setup
say "Setup complete"
