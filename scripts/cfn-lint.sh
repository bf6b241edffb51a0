#!/usr/bin/env bash
# Lint template.yaml with a pinned cfn-lint in the project's venv.
#
# The pin is deliberate: cfn-lint 1.54+ no longer applies the SAM transform and so
# misses real mistakes in SAM templates (unknown event properties, a !Ref to a missing
# resource inside a policy template, a misspelt ReportBatchItemFailures).
# See the LOCAL-AWS.md beside the checkout ("Template checks"). Runs offline, needs no AWS credentials.
#
# Usage: scripts/cfn-lint.sh [extra cfn-lint args...]
# Env:   KIRIM_VENV  venv directory (default: .venv at the workspace root)
set -euo pipefail

CFN_LINT_VERSION="1.53.3"

cd "$(dirname "${BASH_SOURCE[0]}")/.."

venv="${KIRIM_VENV:-.venv}"

# Run alone, the venv's setup takes turns with other runs on the lock file scripts/test
# uses (flock, from util-linux); scripts/test, already holding it, says so
# (KIRIM_VENV_LOCK_HELD=1): a second lock on the same file from here would wait for ever.
if [[ -z "${KIRIM_VENV_LOCK_HELD:-}" ]] && command -v flock >/dev/null 2>&1; then
    mkdir -p "$(dirname "${venv}")"
    exec {lock_fd}>"${venv}.lock"
    if ! flock -n "${lock_fd}"; then
        echo "cfn-lint.sh: waiting for another run's python tool setup (${venv}.lock)" >&2
        flock "${lock_fd}"
    fi
fi

if ! "${venv}/bin/python" -m pip --version >/dev/null 2>&1; then
    echo "cfn-lint.sh: creating venv at ${venv}" >&2
    python3 -m venv --clear "${venv}" || {
        echo "cfn-lint.sh: python3 cannot make a venv: install python3-venv (sudo apt-get install python3-venv)" >&2
        exit 1
    }
fi

installed="$("${venv}/bin/cfn-lint" --version 2>/dev/null || true)"
if [[ "${installed}" != *"${CFN_LINT_VERSION}"* ]]; then
    echo "cfn-lint.sh: installing cfn-lint==${CFN_LINT_VERSION} into ${venv}" >&2
    "${venv}/bin/python" -m pip install --quiet --disable-pip-version-check \
        "cfn-lint==${CFN_LINT_VERSION}"
fi

exec "${venv}/bin/cfn-lint" template.yaml "$@"
