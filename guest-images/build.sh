#!/bin/bash
# Build the Linux guest images the launcher's tests boot, from Debian packages.
#
#   guest-images/build.sh [CACHE_DIR]
#
# CACHE_DIR defaults to $XDG_CACHE_HOME/launcher-guest-images (or
# ~/.cache/launcher-guest-images). It receives:
#   vmlinux            Linux 6.1, minimal config, uncompressed ELF (64-bit entry)
#   bzImage            the same kernel as a small LZ4 bzImage
#   linux-6.1.config   the kernel's full .config
#   initramfs.cpio     newc cpio: static busybox + src/init (as /init) + src/checks
#   initramfs.cpio.gz  the same, gzip'd (the kernel has RD_GZIP)
#   rootfs.ext4        16 MiB ext4, same busybox, src/init as /sbin/init
#
# Artefacts are reused: the kernel is rebuilt only when src/linux-6.1.fragment,
# src/syscall-on-nested-hosts.patch or the installed linux-source-6.1 version
# changed (or a kernel artefact is missing); the initramfs/rootfs only when
# src/init, src/checks/* or busybox changed. Each group records a hash of its
# inputs in CACHE_DIR/.stamp-*. FORCE=1 rebuilds everything.
# Missing Debian packages are installed with apt-get (as root, or via sudo).
# Progress goes to stderr; the last line on stdout is GUEST_IMAGES=<cache dir>.
set -euo pipefail

KERNEL_RECIPE=1   # bump when the kernel steps below change (forces a rebuild)
IMAGES_RECIPE=2   # same for the initramfs/rootfs steps
KVER=6.1
LINUX_PKG=linux-source-$KVER
LINUX_TARBALL=/usr/src/linux-source-$KVER.tar.xz
KERNEL_CPU_MINUTES=17   # measured: make took 8 min 14 s wall (16 CPU-min) on 2 cores

log() { printf 'guest-images: %s\n' "$*" >&2; }
die() { printf 'guest-images: error: %s\n' "$*" >&2; exit 1; }

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SRC=$HERE/src
CACHE=${1:-${XDG_CACHE_HOME:-${HOME:?HOME is not set; pass CACHE_DIR}/.cache}/launcher-guest-images}
FORCE=${FORCE:-0}

for f in linux-$KVER.fragment syscall-on-nested-hosts.patch init; do
  [ -f "$SRC/$f" ] || die "missing $SRC/$f"
done
[ "$(uname -m)" = x86_64 ] || die "only x86_64 hosts are supported (the guest kernel is built natively)"

mkdir -p "$CACHE" || die "cannot create cache dir $CACHE"
CACHE=$(cd "$CACHE" && pwd)
BUILD=$CACHE/build
mkdir -p "$BUILD"

# One build.sh at a time per cache dir.
if command -v flock >/dev/null; then
  exec 9>"$CACHE/.lock"
  if ! flock -n 9; then
    log "another build.sh is using $CACHE; waiting for it..."
    flock 9
  fi
fi

# ---------------------------------------------------------------- packages
# (sed, not grep -q: grep -q would exit early, and with pipefail dpkg's SIGPIPE
# would make an installed package look missing)
installed() { [ "$(dpkg -s "$1" 2>/dev/null | sed -n 's/^Status: //p')" = 'install ok installed' ]; }

if ! command -v dpkg >/dev/null || ! command -v apt-get >/dev/null || [ ! -e /etc/debian_version ]; then
  die "this script needs Debian 12 (bookworm) with dpkg/apt-get: it builds from the Debian packages
  $LINUX_PKG and busybox-static. On other systems point LAUNCHER_GUEST_IMAGES at
  prebuilt images, or build a Linux 6.1 kernel with src/linux-$KVER.fragment and
  src/syscall-on-nested-hosts.patch by hand (see guest-images/README.md)."
fi

# busybox-static conflicts with the (dynamic) busybox package: if that one is
# installed, don't replace it; unpack busybox-static's .deb into the cache instead.
PKGS=("$LINUX_PKG" gcc libc6-dev binutils make flex bison bc libelf-dev libssl-dev
      patch cpio e2fsprogs lz4 xz-utils gzip)
BUSYBOX_FROM_DEB=0
if installed busybox-static; then
  :
elif installed busybox; then
  BUSYBOX_FROM_DEB=1
else
  PKGS+=(busybox-static)
fi
[ "$(id -u)" = 0 ] || PKGS+=(fakeroot)   # device nodes in the images without root

missing=()
for p in "${PKGS[@]}"; do installed "$p" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=()
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null ||
      die "missing packages: ${missing[*]}; install them as root: apt-get install ${missing[*]}"
    SUDO=(sudo)
  fi
  log "installing missing packages: ${missing[*]}"
  log "running apt-get update..."
  "${SUDO[@]}" apt-get -q update >&2 || die "apt-get update failed"
  if ! apt-cache show "$LINUX_PKG" >/dev/null 2>&1; then
    die "$LINUX_PKG is not available from your apt sources (it is in Debian 12 bookworm)"
  fi
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q -y --no-install-recommends \
    -o DPkg::Lock::Timeout=600 install "${missing[@]}" >&2 ||
    die "apt-get install ${missing[*]} failed"
  for p in "${missing[@]}"; do installed "$p" || die "package $p is still not installed"; done
fi
[ -f "$LINUX_TARBALL" ] || die "$LINUX_TARBALL missing (reinstall $LINUX_PKG)"

if [ "$BUSYBOX_FROM_DEB" = 1 ]; then
  BUSYBOX=$BUILD/busybox-static/bin/busybox
  if [ ! -x "$BUSYBOX" ]; then
    log "package busybox is installed (conflicts with busybox-static): unpacking busybox-static's .deb"
    rm -rf "$BUILD/debs" "$BUILD/busybox-static"; mkdir -p "$BUILD/debs"
    (cd "$BUILD/debs" && apt-get -q download busybox-static >&2) || die "apt-get download busybox-static failed"
    dpkg-deb -x "$BUILD"/debs/busybox-static_*.deb "$BUILD/busybox-static"
    rm -rf "$BUILD/debs"
  fi
else
  BUSYBOX=/bin/busybox
fi
[ -x "$BUSYBOX" ] || die "no busybox at $BUSYBOX"
if readelf -l "$BUSYBOX" | grep 'Requesting program interpreter' >/dev/null; then
  die "$BUSYBOX is dynamically linked; the images need busybox-static's"
fi

# ---------------------------------------------------------------- helpers
# run LOG CMD...: run CMD with its output appended to LOG; on failure show the tail.
run() {
  local logf=$1; shift
  if ! "$@" >>"$logf" 2>&1; then
    tail -n 40 "$logf" >&2
    die "failed: $* (full log: $logf)"
  fi
}
# fresh STAMP KEY FILES...: true if every FILE exists and STAMP holds KEY.
fresh() {
  local stamp=$1 key=$2; shift 2
  [ "$FORCE" = 1 ] && return 1
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ] || return 1
  local f; for f in "$@"; do [ -s "$f" ] || return 1; done
}

# ---------------------------------------------------------------- kernel
LINUX_VERSION=$(dpkg-query -W -f='${Version}' "$LINUX_PKG")
FRAG=$SRC/linux-$KVER.fragment
PATCH=$SRC/syscall-on-nested-hosts.patch
KERNEL_KEY=$({ echo "recipe=$KERNEL_RECIPE $LINUX_PKG=$LINUX_VERSION"
               echo "--- fragment"; cat "$FRAG"; echo "--- patch"; cat "$PATCH"; } | sha256sum | cut -d' ' -f1)
KERNEL_OUT=("$CACHE/vmlinux" "$CACHE/bzImage" "$CACHE/linux-$KVER.config")

if fresh "$CACHE/.stamp-kernel" "$KERNEL_KEY" "${KERNEL_OUT[@]}"; then
  log "kernel is up to date ($LINUX_PKG $LINUX_VERSION), reusing it"
else
  N=$(nproc)
  LOG=$BUILD/kernel.log
  TREE=$BUILD/linux-source-$KVER
  : >"$LOG"
  rm -f "$CACHE/.stamp-kernel"
  log "unpacking $LINUX_PKG $LINUX_VERSION into $BUILD..."
  rm -rf "$TREE"
  run "$LOG" tar -C "$BUILD" -xf "$LINUX_TARBALL"
  [ -d "$TREE" ] || die "$LINUX_TARBALL did not unpack to $TREE"
  log "applying syscall-on-nested-hosts.patch"
  (cd "$TREE" && run "$LOG" patch -p1 --batch --forward -i "$PATCH") ||
    die "the patch does not apply to $LINUX_PKG $LINUX_VERSION"
  log "configuring (tinyconfig + linux-$KVER.fragment)"
  KMAKE=(make -C "$TREE" ARCH=x86_64 KBUILD_BUILD_USER=launcher KBUILD_BUILD_HOST=guest-images)
  run "$LOG" "${KMAKE[@]}" tinyconfig
  (cd "$TREE" && run "$LOG" ./scripts/kconfig/merge_config.sh -m .config "$FRAG")
  run "$LOG" "${KMAKE[@]}" olddefconfig
  # Every CONFIG_X=y of the fragment must have survived; "is not set" lines
  # that something else re-enabled only get a warning.
  bad=()
  while IFS= read -r line; do
    case $line in
      CONFIG_*=*) grep -qxF "$line" "$TREE/.config" || bad+=("$line") ;;
      "# CONFIG_"*" is not set")
        sym=${line#\# }; sym=${sym%% *}
        if grep -q "^$sym=" "$TREE/.config"; then
          log "warning: fragment says '$line', but the config has $(grep "^$sym=" "$TREE/.config")"
        fi ;;
    esac
  done <"$FRAG"
  [ ${#bad[@]} -eq 0 ] || die "kernel config lost fragment settings (unmet dependencies?): ${bad[*]}"
  log "building kernel (takes ~$(( (KERNEL_CPU_MINUTES + N - 1) / N )) minutes on $N cores; log: $LOG)..."
  t0=$SECONDS
  run "$LOG" "${KMAKE[@]}" -j"$N" vmlinux bzImage
  log "kernel built in $(( (SECONDS - t0) / 60 )) min $(( (SECONDS - t0) % 60 )) s"
  cp "$TREE/vmlinux" "$CACHE/vmlinux.tmp" && mv -f "$CACHE/vmlinux.tmp" "$CACHE/vmlinux"
  cp "$TREE/arch/x86/boot/bzImage" "$CACHE/bzImage.tmp" && mv -f "$CACHE/bzImage.tmp" "$CACHE/bzImage"
  cp "$TREE/.config" "$CACHE/linux-$KVER.config"
  echo "$KERNEL_KEY" >"$CACHE/.stamp-kernel"
  if [ "${KEEP_KERNEL_TREE:-0}" != 1 ]; then
    log "removing the kernel build tree (KEEP_KERNEL_TREE=1 keeps it)"
    rm -rf "$TREE"
  fi
fi

# ---------------------------------------------------------------- initramfs + rootfs
CHECKS=()
for c in "$SRC"/checks/*; do [ -f "$c" ] && CHECKS+=("$c"); done
IMAGES_KEY=$({ echo "recipe=$IMAGES_RECIPE"
               echo "busybox $(sha256sum <"$BUSYBOX")"
               echo "--- init"; cat "$SRC/init"
               for c in "${CHECKS[@]}"; do echo "--- check $(basename "$c")"; cat "$c"; done
             } | sha256sum | cut -d' ' -f1)
IMAGES_OUT=("$CACHE/initramfs.cpio" "$CACHE/initramfs.cpio.gz" "$CACHE/rootfs.ext4")

if fresh "$CACHE/.stamp-images" "$IMAGES_KEY" "${IMAGES_OUT[@]}"; then
  log "initramfs and rootfs are up to date, reusing them"
else
  log "building initramfs.cpio(.gz) and rootfs.ext4"
  rm -f "$CACHE/.stamp-images"
  ROOT=$BUILD/root
  rm -rf "$ROOT"
  mkdir -p "$ROOT"/{bin,sbin,dev,proc,sys,tmp,etc,checks}
  install -m 0755 "$BUSYBOX" "$ROOT/bin/busybox"
  install -m 0755 "$SRC/init" "$ROOT/init"
  install -m 0755 "$SRC/init" "$ROOT/sbin/init"
  for c in "${CHECKS[@]}"; do install -m 0755 "$c" "$ROOT/checks/"; done
  rm -f "$CACHE"/initramfs.cpio.tmp "$CACHE"/rootfs.ext4.tmp
  # Device nodes need root; as a normal user fakeroot fakes them (and uid 0).
  PACK='set -euo pipefail
    cd "$1"
    mknod -m 0600 dev/console c 5 1
    mknod -m 0666 dev/null c 1 3
    find . -exec touch -h -d @1672531200 {} +      # fixed mtimes: reproducible cpio
    find . -mindepth 1 -printf "%P\n" | LC_ALL=C sort |
      cpio --quiet -o -H newc -R 0:0 --renumber-inodes --ignore-devno >"$2"
    truncate -s 16M "$3"
    mkfs.ext4 -q -F -L rootfs -E root_owner=0:0 -d . "$3"'
  if [ "$(id -u)" = 0 ]; then PACKER=(bash -c); else PACKER=(fakeroot -- bash -c); fi
  "${PACKER[@]}" "$PACK" pack "$ROOT" "$CACHE/initramfs.cpio.tmp" "$CACHE/rootfs.ext4.tmp" ||
    die "packing the initramfs/rootfs failed"
  gzip -9 -n <"$CACHE/initramfs.cpio.tmp" >"$CACHE/initramfs.cpio.gz.tmp"
  mv -f "$CACHE/initramfs.cpio.tmp" "$CACHE/initramfs.cpio"
  mv -f "$CACHE/initramfs.cpio.gz.tmp" "$CACHE/initramfs.cpio.gz"
  mv -f "$CACHE/rootfs.ext4.tmp" "$CACHE/rootfs.ext4"
  rm -rf "$ROOT"
  echo "$IMAGES_KEY" >"$CACHE/.stamp-images"
fi

# ---------------------------------------------------------------- sanity checks (cheap)
[ "$(head -c 4 "$CACHE/vmlinux" | od -An -c | tr -d ' ')" = '177ELF' ] || die "$CACHE/vmlinux is not an ELF file"
[ "$(dd if="$CACHE/bzImage" bs=1 skip=514 count=4 2>/dev/null)" = HdrS ] || die "$CACHE/bzImage has no HdrS header"
list=$(cpio --quiet -t <"$CACHE/initramfs.cpio")
for f in init bin/busybox dev/console; do
  grep -qx "$f" <<<"$list" || die "$CACHE/initramfs.cpio lacks /$f"
done

log "done: $CACHE"
echo "GUEST_IMAGES=$CACHE"
