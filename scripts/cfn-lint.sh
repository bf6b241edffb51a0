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
