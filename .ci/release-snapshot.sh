#!/usr/bin/env bash
# A release without publishing: goreleaser release --snapshot --clean, then
# a look at what it made, as a user would see it (make release-snapshot).
#   bash .ci/release-snapshot.sh        this machine's platform only (CI)
#   bash .ci/release-snapshot.sh --all  every platform of .goreleaser.yaml
# Needs GORELEASER (the Makefile sets it to the pinned goreleaser).
# Images (dockers_v2) need a Docker engine with buildx: without one they
# are skipped, and the script says so.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${GORELEASER:?set GORELEASER to the goreleaser command (make release-snapshot does)}"

say() { printf '==> %s\n' "$*"; }
fail() {
	echo "release-snapshot: $*" >&2
	exit 1
}

config=.goreleaser.yaml
if [ "${1:-}" != "--all" ]; then
	# goreleaser release has no --single-target: build from a copy of the
	# config whose only target is this machine's (cold, one target takes
	# minutes on two cores; six take six times that).
	goos=$(go env GOOS)
	goarch=$(go env GOARCH)
	mkdir -p build
	config=build/goreleaser-host.yaml
	sed -e "s|^    goos: \[linux, darwin, windows\]\$|    goos: [$goos]|" \
		-e "s|^    goarch: \[amd64, arm64\]\$|    goarch: [$goarch]|" \
		-e "s|^    platforms: \[linux/amd64, linux/arm64\]\$|    platforms: [linux/$goarch]|" .goreleaser.yaml >"$config"
	# The goos and goarch lines, and each image's platforms line.
	images=$(grep -c '^    platforms: \[linux/amd64, linux/arm64\]$' .goreleaser.yaml || true)
	[ "$images" -ge 1 ] && [ "$(diff .goreleaser.yaml "$config" | grep -c '^>')" = $((2 + images)) ] ||
		fail "could not narrow the goos/goarch lines of .goreleaser.yaml to $goos/$goarch (changed their form?)"
	say "snapshot for $goos/$goarch only (--all for every platform)"
fi

skip=()
if [ "$config" != .goreleaser.yaml ] && [ "$goos" != linux ]; then
	say "images hold linux binaries, and this snapshot builds $goos ones only: --skip=docker"
	skip=(--skip=docker)
elif docker info >/dev/null 2>&1 && docker buildx version >/dev/null 2>&1; then
	say "docker engine and buildx found: images are built (not pushed)"
else
	say "no docker engine with buildx here: --skip=docker (dockers_v2 images are not built)"
	skip=(--skip=docker)
fi

# goreleaser reads the commit only where git names a remote; a checkout
# without one (a worktree) gets one for this command alone, never pushed to.
if [ -z "$(git remote)" ]; then
	say "no git remote: goreleaser gets remote.origin.url for this run only"
	export GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=remote.origin.url GIT_CONFIG_VALUE_0=https://github.com/cortex-os/core.git
fi

$GORELEASER release --snapshot --clean --config "$config" "${skip[@]}"

# --- what a user gets ---------------------------------------------------------
say "dist/"
ls -l dist
version=$(sed -n 's/.*"version":"\([^"]*\)".*/\1/p' dist/metadata.json)
[ -n "$version" ] || fail "no version in dist/metadata.json"
commit=$(git rev-parse HEAD)
(cd dist && sha256sum --quiet -c checksums.txt) || fail "dist/checksums.txt does not match the artifacts"

host="$(go env GOOS)_$(go env GOARCH)"
archive="dist/cortexctl_${version}_${host}.tar.gz"
[ -f "$archive" ] || fail "no archive $archive"
unpacked=$(mktemp -d)
trap 'rm -rf "$unpacked"' EXIT
tar -xzf "$archive" -C "$unpacked"
for f in cortexctl README.md completions/cortexctl.bash completions/cortexctl.zsh completions/cortexctl.fish \
	completions/cortexctl.powershell manpages/cortexctl.1.gz manpages/cortexctl-submit.1.gz; do
	[ -f "$unpacked/$f" ] || fail "$archive has no $f"
done
got=$("$unpacked/cortexctl" version)
say "$archive: cortexctl version: $got"
case "$got" in
"cortexctl $version (commit $commit, built "*) ;;
*) fail "cortexctl version does not show version $version, commit $commit and a build date" ;;
esac

if [ "$(go env GOOS)" = linux ]; then
	deb=$(ls dist/*_"$(go env GOARCH)".deb)
	compgen -G 'dist/*.rpm' >/dev/null || fail "no .rpm in dist/"
	if command -v dpkg-deb >/dev/null; then
		listing=$(dpkg-deb -c "$deb")
		for f in ./usr/bin/cortexctl ./usr/share/bash-completion/completions/cortexctl \
			./usr/share/zsh/vendor-completions/_cortexctl ./usr/share/fish/vendor_completions.d/cortexctl.fish \
			./usr/share/man/man1/cortexctl.1.gz; do
			grep -q " $f\$" <<<"$listing" || fail "$deb has no $f"
		done
		say "$deb: $(dpkg-deb -f "$deb" Package Version Architecture | tr '\n' ' ')($(wc -l <<<"$listing") entries)"
	fi
fi

cask=dist/homebrew/Casks/cortexctl.rb
[ -f "$cask" ] || fail "no cask $cask"
for stanza in 'binary "cortexctl"' 'manpage "manpages/cortexctl.1.gz"' 'bash_completion "completions/cortexctl.bash"' \
	'zsh_completion "completions/cortexctl.zsh"' 'fish_completion "completions/cortexctl.fish"'; do
	grep -qF "$stanza" "$cask" || fail "$cask has no $stanza"
done
say "$cask: $(grep -c 'url "' "$cask") download(s), $(grep -c '^  manpage ' "$cask") man pages, 3 completions"
say "release snapshot $version: ok"
