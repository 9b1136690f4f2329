#!/usr/bin/env bash
# Debian packages the tests and the demo use: dcmtk (storescu, echoscu, storescp, dsrdump),
# orthanc (the PACS the tests start) with orthanc-dicomweb, dicom3tools (dciodvfy), redis-server and openssl;
# chromium and chromium-driver for the web app's browser tests (Selenium).
# Installs only what is missing; needs root (or sudo) the first time.
set -euo pipefail
need=()
command -v storescu >/dev/null 2>&1 || need+=(dcmtk)
command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ] || need+=(orthanc)
# The DICOMweb plugin: the STOW-RS destination tests (issue 14) use Orthanc as the origin server.
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
command -v dciodvfy >/dev/null 2>&1 || need+=(dicom3tools)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# ojph_compress (OpenJPH) makes the HTJ2K test files (tests/support/syntaxes.py).
command -v ojph_compress >/dev/null 2>&1 || need+=(openjph-tools)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "install as root: apt-get install ${need[*]}" >&2; exit 1; }
  sudo="sudo"
fi
echo "installing Debian packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# policy-rc.d keeps the orthanc package from starting a system-wide server on 4242/8042.
$sudo sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d'
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
$sudo rm -f /usr/sbin/policy-rc.d
