#!/usr/bin/env bash
# Prints the first Python interpreter that imports every module named as an argument: $PYTHON
# alone when it is set, else python3 from the PATH, then /usr/bin/python3 (where the
# distribution's python3-* packages install, e.g. python3-torch, which another python3 first on
# the PATH, such as pyenv's, does not see). When none does: one line on stderr naming the
# interpreters tried and the modules, and exit status 1.
set -uo pipefail
if [[ -n ${PYTHON:-} ]]; then
  candidates=("$PYTHON")
else
  candidates=(python3 /usr/bin/python3)
fi
imports=$(IFS=,; echo "$*")
tried=()
for py in "${candidates[@]}"; do
  where=$(command -v "$py") || { tried+=("$py (not found)"); continue; }
  if "$where" -c "import $imports" 2>/dev/null; then
    echo "$where"
    exit 0
  fi
  tried+=("$where")
done
hint="scripts/setup.sh --test-extras installs python3-torch, python3-matplotlib and python3-pil"
echo "no Python with $* (tried ${tried[*]}; PYTHON picks one; $hint)" >&2
exit 1
