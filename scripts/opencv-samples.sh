#!/usr/bin/env bash
# OpenCV's sample photos (Debian package opencv-doc, Apache-2.0/BSD) for the `fresh` held-out split of
# calibration_data/make_calibration.py: downloads the .deb from the Debian mirror and extracts only
# examples/data into ~/.cache/edgepack/opencv-samples (22 MB; no root, nothing installed system-wide).
set -euo pipefail
dest="${HOME}/.cache/edgepack/opencv-samples"
if [ -f "${dest}/messi5.jpg" ]; then echo "OpenCV samples already in ${dest}"; exit 0; fi
work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT
(cd "${work}" && apt-get download opencv-doc >/dev/null)
mkdir -p "${dest}"
dpkg-deb --fsys-tarfile "${work}"/opencv-doc_*.deb \
  | tar -x -C "${dest}" --strip-components=7 --wildcards './usr/share/doc/opencv-doc/examples/data/*'
echo "OpenCV samples in ${dest}"
