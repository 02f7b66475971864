# Sourced by the sled scripts: fetch_published_sled DIR puts the published
# sled 0.34.7, as the registry serves it, in DIR/sled (through `cargo vendor`
# in a throwaway project, so cargo's own download and checksum are used).
fetch_published_sled() {
  local dir=$1
  mkdir -p "$dir/fetch/src"
  cat >"$dir/fetch/Cargo.toml" <<'TOML'
[package]
name = "fetch-published-sled"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
sled = "=0.34.7"

[workspace]
TOML
  : >"$dir/fetch/src/lib.rs"
  (cd "$dir/fetch" && cargo vendor --quiet --versioned-dirs "$dir/crates" >/dev/null)
  mv "$dir/crates/sled-0.34.7" "$dir/sled"
  rm -rf "$dir/fetch" "$dir/crates" "$dir/sled/.cargo-checksum.json"
}
