# Shared by image/build, image/test and scripts/test-aarch64: a
# private APT configuration (own sources list, lists and cache dirs; /etc/apt
# is left alone) that sees bookworm, its updates, security and backports, for
# either architecture.
#
#   apt_private ARCH     -> prints the path of an apt.conf for amd64 or arm64
#   deb_fetch ARCH DIR PKG...   -> downloads PKG .debs (no install) into DIR
IMAGE_CACHE=${IMAGE_CACHE:-${HOOP_CACHE:-$HOME/.cache/hoop-static}/image}

apt_private() {
  local arch=$1 d=$IMAGE_CACHE/apt-$1
  if [ ! -f "$d/apt.conf" ]; then
    mkdir -p "$d/lists/partial" "$d/cache/archives/partial" "$d/sources.list.d"
    local k=/usr/share/keyrings/debian-archive-keyring.gpg m=http://deb.debian.org
    cat > "$d/sources.list" <<SRC
deb [signed-by=$k] $m/debian bookworm main
deb [signed-by=$k] $m/debian bookworm-updates main
deb [signed-by=$k] $m/debian-security bookworm-security main
deb [signed-by=$k] $m/debian bookworm-backports main
SRC
    cat > "$d/apt.conf" <<CONF
Dir::Etc::SourceList "$d/sources.list";
Dir::Etc::SourceParts "$d/sources.list.d";
Dir::State::Lists "$d/lists";
Dir::Cache "$d/cache";
APT::Architecture "$arch";
APT::Architectures { "$arch"; };
APT::Sandbox::User "root";
Acquire::Retries "3";
CONF
  fi
  # Refresh the lists at most once a day (CI reruns stay offline-fast).
  if [ -z "$(find "$d/lists" -maxdepth 1 -name '*Packages*' -mmin -1440 -print -quit)" ]; then
    APT_CONFIG=$d/apt.conf apt-get update -qq >&2
  fi
  echo "$d/apt.conf"
}

deb_fetch() {
  local arch=$1 dir=$2; shift 2
  local conf; conf=$(apt_private "$arch")
  mkdir -p "$dir"
  local missing=()
  for p in "$@"; do ls "$dir/${p}_"*.deb >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  (cd "$dir" && APT_CONFIG=$conf apt-get download -qq "${missing[@]}" >&2)
}
