#!/usr/bin/env bash
# The shell steps of .github/workflows/{pr,gpu}.yml, one subcommand each, so that the tests run
# exactly what CI runs. Usage: ci/steps.sh <step> [args]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${TAILSYNTH_BIN:-.venv/bin}
step=${1:?usage: ci/steps.sh install|remote|reproduce|report BASE|comment PR|gpu-exp [OVERRIDES]}
shift

case "$step" in
  install)  # the venv and the package, as `make test` and `make run` build it
    make install
    ;;
  remote)  # point the default remote at $DVC_REMOTE_URL (CI variable); credentials stay in the env
    if [ -z "${DVC_REMOTE_URL:-}" ]; then
      echo "DVC_REMOTE_URL is not set: no remote, every stage is recomputed"
    else
      "$BIN/dvc" remote modify --local storage url "$DVC_REMOTE_URL"
      echo "DVC remote storage -> $DVC_REMOTE_URL"
    fi
    ;;
  reproduce)  # committed results must come out of the committed code
    "$BIN/python" ci/reproduce.py "$@"
    ;;
  report)  # the PR report against a base ref, appended to the job summary when there is one
    base=${1:?usage: ci/steps.sh report BASE}
    status=0
    "$BIN/python" ci/pr_report.py --base "$base" --out pr_report || status=$?
    if [ -n "${GITHUB_STEP_SUMMARY:-}" ] && [ -f pr_report/report.md ]; then
      cat pr_report/report.md >> "$GITHUB_STEP_SUMMARY"
    fi
    exit "$status"
    ;;
  comment)  # post (or update) the report as a PR comment; needs gh and a token with pull-requests: write
    pr=${1:?usage: ci/steps.sh comment PR}
    if [ -z "${GH_TOKEN:-}" ]; then
      echo "no GH_TOKEN: the report stays in the job summary"
      exit 0
    fi
    gh pr comment "$pr" --body-file pr_report/report.md --edit-last --create-if-none
    ;;
  gpu-exp)  # an experiment on a GPU runner: pull what the remote has, compute the rest, push it back
    sets=()
    for override in "$@"; do sets+=(--set "$override"); done
    # dvc exp run commits the experiment: a fresh runner has no git identity.
    git config user.email >/dev/null || git config user.email "ci@tailsynth.invalid"
    git config user.name >/dev/null || git config user.name "tailsynth CI"
    # The overrides go into params.yaml first, so the folders that stages read through manifests are
    # pulled too (`--pull` alone fetches the manifests only); exp run records the workspace change.
    "$BIN/python" ci/fetch_inputs.py ${sets[@]+"${sets[@]}"}
    "$BIN/dvc" exp run --pull --allow-missing
    "$BIN/dvc" push --run-cache
    ;;
  *)
    echo "ci/steps.sh: unknown step '$step'" >&2
    exit 2
    ;;
esac
