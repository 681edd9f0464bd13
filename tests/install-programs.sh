#!/usr/bin/env bash
# Install the programs some tests run, when they are missing: Debian's chromium and
# chromedriver (a real browser) and curl. That needs root and apt-get (Debian, Ubuntu).
# Elsewhere this says what is missing and succeeds: the tests that need those programs
# are skipped, saying what to install. Under CI=true they must run: a missing program
# that could not be installed fails here, and fails those tests.
set -euo pipefail

programs=(chromium chromedriver curl)
packages=(chromium chromium-driver curl)

missing=()
for program in "${programs[@]}"; do
    command -v "$program" >/dev/null || missing+=("$program")
done
[ ${#missing[@]} -eq 0 ] && exit 0

case "${CI:-}" in
    1 | true | TRUE | True | yes) in_ci=1 ;;
    *) in_ci=0 ;;
esac

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "tests: ${missing[*]} missing; installing: apt-get install ${packages[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if apt-get update -qq && apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null; then
        exit 0
    fi
    echo "tests: could not install ${packages[*]}" >&2
else
    echo "tests: ${missing[*]} missing; the tests that run them are skipped." \
        "Install them as root: apt-get install ${packages[*]}" >&2
fi
[ "$in_ci" -eq 0 ]
