#!/usr/bin/env bash
# Other branches' files, to time them beside this tree on one GPU machine, which gets a copy of the working tree
# without git's history: for each BRANCH, DIR/BRANCH holds every file under kotomamba/, bench/ and tests/ that BRANCH
# changed since it parted from HEAD's history (as BRANCH has it: merge the branch first where HEAD changed the same
# file since), at its repository path, and DIR/HEAD holds this tree's version of each of those files.
# On the machine, `cp -r DIR/HEAD/. . && cp -r DIR/NAME/. .` puts variant NAME in place of whichever came before
# it, for the bench/gpu_session.sh steps after it, and `cp -r DIR/HEAD/. .` puts this tree back (a file that only a
# branch has stays, unused by this tree's code).
# DIR must not be ignored by git, so that the machine's copy carries it; delete it once the call is done.
#   bash bench/variant_files.sh DIR BRANCH...
set -euo pipefail
dir=${1:?usage: variant_files.sh DIR BRANCH...}; shift
[ $# -gt 0 ] || { echo "usage: variant_files.sh DIR BRANCH..." >&2; exit 2; }
for branch in "$@"; do
  git rev-parse --verify --quiet "$branch^{commit}" > /dev/null || { echo "no branch or commit $branch" >&2; exit 2; }
done
mkdir -p "$dir/HEAD"
for branch in "$@"; do
  mkdir -p "$dir/$branch"
  git diff --name-only --diff-filter=AM "HEAD...$branch" -- kotomamba bench tests | while read -r path; do
    mkdir -p "$dir/$branch/$(dirname "$path")"
    git show "$branch:$path" > "$dir/$branch/$path"
    if git cat-file -e "HEAD:$path" 2> /dev/null; then
      mkdir -p "$dir/HEAD/$(dirname "$path")"
      git show "HEAD:$path" > "$dir/HEAD/$path"
    fi
  done
  echo "$branch: $(cd "$dir/$branch" && find . -type f | sort | tr '\n' ' ')"
done
