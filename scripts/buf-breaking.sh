#!/usr/bin/env bash
# Checks the contracts (the working tree's protos, committed or not) for breaking changes under Buf's FILE
# rules, against main: what clients of main were built on is what a change must not break.
#
#   on another branch: against the tip of origin/main when there is a remote, else of the local main. A
#                      failure that comes from main having moved on (a field added there since this branch
#                      left it) means: merge main first.
#   on main itself:    nothing is ahead of main to compare, so against the last committed state. Uncommitted
#                      proto changes are checked against HEAD; commits not yet on origin/main against where
#                      they left it (git merge-base); a clean tree (CI's fresh clone of main) against HEAD~1,
#                      the change that brought main to this commit.
#
# A major-version bump (AIP-185) is breaking by design and is announced by its new package, not by this
# check: a package folder protos/stillpoint/<service>/vN that is gone while .../v(N+1) exists is excluded
# from the comparison. Every other breaking change still fails.
set -euo pipefail
cd "$(dirname "$0")/.."
buf=.venv/bin/buf

if ! git rev-parse --verify -q HEAD >/dev/null; then
  echo "buf breaking: no commit yet, nothing to compare against"; exit 0
fi

commit_of() { git rev-parse --verify -q "$1^{commit}" 2>/dev/null; }

main_ref=
for candidate in refs/remotes/origin/main refs/heads/main; do
  if commit_of "$candidate" >/dev/null; then main_ref=$candidate; break; fi
done
head_commit=$(commit_of HEAD)
branch=$(git symbolic-ref --short -q HEAD || true)
# A detached HEAD at main's tip (a CI checkout of the commit) counts as main.
if [[ "$branch" == main || ( -z "$branch" && -n "$main_ref" && "$(commit_of "$main_ref")" == "$head_commit" ) ]]; then
  on_main=1
else
  on_main=0
fi

if [[ $on_main == 0 && -n "$main_ref" ]]; then
  against=$(commit_of "$main_ref"); described=$main_ref
elif [[ $on_main == 1 && "$main_ref" == refs/remotes/origin/main && "$(commit_of "$main_ref")" != "$head_commit" ]]; then
  against=$(git merge-base HEAD "$main_ref"); described="merge-base with $main_ref"
elif [[ -n "$(git status --porcelain -- protos buf.yaml)" ]]; then
  against=$head_commit; described=HEAD
elif commit_of HEAD~1 >/dev/null; then
  against=$(commit_of HEAD~1); described=HEAD~1
else
  echo "buf breaking: HEAD has no parent, nothing to compare against"; exit 0
fi

if [[ -z "$(git ls-tree -r --name-only "$against" -- protos)" ]]; then
  echo "buf breaking: $described has no protos, nothing to compare against"; exit 0
fi

# Major-version bumps: a package folder in the baseline that is gone from the working tree while the next
# version's folder has protos. Paths are the workspace's (buf.yaml sits at the root, the module in protos/).
exclusions=()
while IFS= read -r folder; do
  [[ -n "$folder" ]] || continue
  version=${folder##*/v}
  next_folder=${folder%/v*}/v$((version + 1))
  if ! compgen -G "$folder/*.proto" >/dev/null && compgen -G "$next_folder/*.proto" >/dev/null; then
    echo "buf breaking: $folder became $next_folder, a major-version bump: not compared"
    exclusions+=(--exclude-path "$folder")
  fi
done < <(git ls-tree -r --name-only "$against" -- protos/stillpoint \
  | sed -nE 's#^(protos/stillpoint/[^/]+/v[0-9]+)/[^/]+\.proto$#\1#p' | sort -u)

echo "buf breaking: against $described ($(git rev-parse --short "$against"))"
# buf reads the baseline's objects from .git itself, so a shallow clone needs them fetched.
exec "$buf" breaking --against ".git#ref=$against" "${exclusions[@]}"
