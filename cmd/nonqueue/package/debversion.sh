#!/bin/sh
# Prints the Debian package version of the checked-out commit, from git:
#   tag v1.2.3 on HEAD          -> 1.2.3
#   5 commits after v1.2.3      -> 1.2.3+git5.gabc1234  (sorts after 1.2.3)
#   no tag, 812 commits in all  -> 0.0.0~git812.gabc1234 (sorts before any release)
# and appends ".dirty" when the work tree has uncommitted changes. The
# commit count keeps versions ordered without tags, so dpkg sees each new
# build as an upgrade. Fails when git cannot describe HEAD.
set -eu
dirty=""
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
  dirty=".dirty"
fi
hash=$(git rev-parse --short=7 HEAD)
if desc=$(git describe --tags --long --match 'v[0-9]*' 2>/dev/null); then
  # vX.Y.Z-N-gHASH
  tag=${desc%-*-g*}
  rest=${desc#"$tag"-}
  n=${rest%%-*}
  base=${tag#v}
  case $base in
    [0-9]*) ;;
    *) echo "debversion: tag $tag does not start with a digit after v" >&2; exit 1 ;;
  esac
  # A Debian upstream version has no "-" here (it would start a revision).
  base=$(printf '%s' "$base" | tr '-' '~')
  if [ "$n" = 0 ]; then
    echo "${base}${dirty:++dirty}"
  else
    echo "${base}+git${n}.g${hash}${dirty}"
  fi
else
  n=$(git rev-list --count HEAD)
  echo "0.0.0~git${n}.g${hash}${dirty}"
fi
