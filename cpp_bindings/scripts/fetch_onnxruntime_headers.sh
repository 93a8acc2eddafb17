#!/usr/bin/env bash
# Fetch ONNX Runtime's C/C++ headers for building jzi's C++ runtime on Debian 12.
#
#   cpp_bindings/scripts/fetch_onnxruntime_headers.sh [DEST]      (default: build/onnxruntime-headers)
#
# Debian 12 does not package the headers; the next release (trixie) does, as libonnxruntime-dev. The
# archive is the one this machine already uses: its apt sources are read and only the suite changes.
# apt-get works in a private state folder (nothing is added to the system's sources) and downloads
# that one .deb, checked against Debian's archive keyring; its headers are unpacked into DEST. The
# library itself comes from the onnxruntime Python wheel (CMake finds it); the C API is versioned,
# so newer library, older headers is fine (CMake checks ORT_API_VERSION against the library).
set -euo pipefail
DEST=$(realpath -m "${1:-build/onnxruntime-headers}")
SUITE=${JZI_ORT_SUITE:-trixie}
PACKAGE=libonnxruntime-dev

if [ -f "$DEST/include/onnxruntime_c_api.h" ]; then
    echo "ONNX Runtime headers already in $DEST"
    exit 0
fi

# The first Debian archive URI among the machine's sources (deb822 .sources files or sources.list lines).
uri=""
for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    uri=$(awk 'tolower($1)=="uris:" {for (i = 2; i <= NF; i++) if ($i !~ /security/) {print $i; exit}}' "$f")
    [ -n "$uri" ] && break
done
if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(awk '$1=="deb" {for (i = 2; i <= NF; i++) if ($i ~ /:\/\// && $i !~ /security/) {print $i; exit}}' /etc/apt/sources.list)
fi
if [ -z "$uri" ]; then
    echo "fetch_onnxruntime_headers: no Debian archive found in this machine's apt sources" >&2
    exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/archives/partial" "$work/parts" "$work/prefs"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
echo "deb [signed-by=$keyring] $uri $SUITE main" > "$work/sources.list"
apt_opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o "Dir::Etc::SourceParts=$work/parts"
          -o "Dir::Etc::PreferencesParts=$work/prefs" -o "Dir::State::Lists=$work/lists"
          -o "Dir::State::Status=/dev/null" -o "Dir::Cache=$work" -o "Dir::Cache::Archives=$work/archives"
          -o "APT::Get::List-Cleanup=0" -o "Acquire::Languages=none")
echo "fetching $PACKAGE from the $SUITE suite of this machine's Debian archive"
apt-get -qq "${apt_opts[@]}" update
(cd "$work" && apt-get -qq "${apt_opts[@]}" download "$PACKAGE")
deb=$(ls "$work"/${PACKAGE}_*.deb)
dpkg-deb -x "$deb" "$work/root"
header=$(find "$work/root" -name onnxruntime_c_api.h | head -n 1)
if [ -z "$header" ]; then
    echo "fetch_onnxruntime_headers: $(basename "$deb") holds no onnxruntime_c_api.h" >&2
    exit 1
fi
rm -rf "$DEST.partial"
mkdir -p "$DEST.partial/include"
cp "$(dirname "$header")"/*.h "$DEST.partial/include/"
basename "$deb" > "$DEST.partial/SOURCE"
rm -rf "$DEST"
mv "$DEST.partial" "$DEST"
echo "ONNX Runtime headers from $(basename "$deb") in $DEST/include"
