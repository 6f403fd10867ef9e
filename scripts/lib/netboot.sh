# shellcheck shell=bash
# Shared pieces of scripts/demo and scripts/bench-boot: packages, building
# lazyboot, a cleanup stack run on exit (also on Ctrl-C and errors), network
# namespaces with a bridge and a tap for QEMU, a registry, `lazyboot serve`
# and QEMU boots. Source it after setting LB_NAME (used in messages).
#
# Everything runs inside network namespaces this script creates: nothing is
# bound in the machine's own namespace and no packet leaves the machine.

LB_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
LB_HELPER=$LB_ROOT/scripts/lib/netboot.py
LB_NAME=${LB_NAME:-netboot}
LB_T0=$EPOCHREALTIME
# QEMU's virtio-net option ROM (Debian `ipxe-qemu`): the PXE client.
LB_VIRTIO_ROM=/usr/lib/ipxe/qemu/efi-virtio.rom

# What the demo needs on a fresh Debian 12 (scripts/test installs a superset).
LB_DEMO_PACKAGES=(
	docker-registry skopeo umoci
	qemu-system-x86 ipxe-qemu
	busybox-static cpio kmod
	iproute2 python3 jq curl
)
# scripts/bench-boot also runs the baseline servers and converts to eStargz.
# shellcheck disable=SC2034 # used by scripts/bench-boot
LB_BENCH_PACKAGES=(
	"${LB_DEMO_PACKAGES[@]}"
	dnsmasq-base nfs-ganesha nfs-ganesha-vfs rpcbind
	containerd stargz-snapshotter
)

lb_now() { echo "$EPOCHREALTIME"; }
# lb_secs FROM [TO]: seconds between two lb_now values, one decimal.
lb_secs() { awk -v a="$1" -v b="${2:-$EPOCHREALTIME}" 'BEGIN { printf "%.1f", b - a }'; }
lb_log() { printf '[%6ss] %s\n' "$(lb_secs "$LB_T0")" "$*"; }
lb_warn() { printf '%s: warning: %s\n' "$LB_NAME" "$*" >&2; }
lb_die() {
	printf '%s: error: %s\n' "$LB_NAME" "$*" >&2
	exit 1
}

lb_need_root() {
	[ "$(id -u)" -eq 0 ] || lb_die "run me as root (network namespaces, taps, device nodes in the image)"
}

# --- cleanup stack ---------------------------------------------------------
LB_CLEANUP=()
# lb_on_exit 'COMMAND': run COMMAND on exit, last registered first.
lb_on_exit() { LB_CLEANUP+=("$1"); }
lb_cleanup() {
	local i
	for ((i = ${#LB_CLEANUP[@]} - 1; i >= 0; i--)); do
		eval "${LB_CLEANUP[i]}" || true
	done
	LB_CLEANUP=()
}
lb_traps() {
	trap 'rc=$?; trap - EXIT INT TERM; [ $rc -eq 0 ] || echo "$LB_NAME: cleaning up" >&2; lb_stop_pid "$LB_FG_PID"; lb_cleanup; exit $rc' EXIT
	trap 'echo "$LB_NAME: interrupted" >&2; exit 130' INT
	trap 'echo "$LB_NAME: terminated" >&2; exit 143' TERM
}

# lb_stop_pid PID: SIGTERM, up to 5 s, then SIGKILL. Only our own children.
lb_stop_pid() {
	local pid=$1 i
	[ -n "$pid" ] || return 0
	kill -TERM "$pid" 2>/dev/null || return 0
	for i in $(seq 50); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}

# lb_wait_for COMMAND...: run COMMAND in the background and wait for it, so
# that a SIGTERM to this script is handled at once (bash runs traps only
# after a foreground command ends); the cleanup stops it.
LB_FG_PID=
lb_wait_for() {
	"$@" &
	LB_FG_PID=$!
	local rc=0
	wait "$LB_FG_PID" || rc=$?
	LB_FG_PID=
	return $rc
}

# --- packages and the build ------------------------------------------------
# lb_install_packages PKG...: apt-get install what is missing (services of the
# new packages are not started: policy-rc.d says no while installing).
lb_install_packages() {
	local missing=() pkg
	for pkg in "$@"; do
		dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
	done
	if ((${#missing[@]})); then
		command -v apt-get >/dev/null || lb_die "missing packages and no apt-get: ${missing[*]}"
		lb_log "installing ${missing[*]}"
		apt-get -o DPkg::Lock::Timeout=300 update -qq || lb_die "apt-get update failed"
		local made_policy=0
		if [ ! -e /usr/sbin/policy-rc.d ]; then
			printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
			chmod 0755 /usr/sbin/policy-rc.d
			made_policy=1
		fi
		DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
			--no-install-recommends "${missing[@]}" >/dev/null ||
			{ [ $made_policy = 0 ] || rm -f /usr/sbin/policy-rc.d; lb_die "apt-get install ${missing[*]} failed"; }
		[ $made_policy = 0 ] || rm -f /usr/sbin/policy-rc.d
	elif ! ls /var/lib/apt/lists/*Packages* >/dev/null 2>&1; then
		# build-boot-image.sh downloads the kernel with apt-get download.
		lb_log "apt-get update (package lists are empty)"
		apt-get -o DPkg::Lock::Timeout=300 update -qq || lb_die "apt-get update failed"
	fi
	[ -e "$LB_VIRTIO_ROM" ] || lb_die "$LB_VIRTIO_ROM missing (Debian package ipxe-qemu)"
}

# lb_build_lazyboot: sets LB_BIN. LAZYBOOT_BIN=PATH uses that binary instead.
lb_build_lazyboot() {
	if [ -n "${LAZYBOOT_BIN:-}" ]; then
		[ -x "$LAZYBOOT_BIN" ] || lb_die "LAZYBOOT_BIN=$LAZYBOOT_BIN is not an executable"
		LB_BIN=$LAZYBOOT_BIN
		lb_log "using $LB_BIN (LAZYBOOT_BIN)"
		return
	fi
	if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
		export PATH="$HOME/.cargo/bin:$PATH"
	fi
	command -v cargo >/dev/null || lb_die "cargo not found (install Rust with rustup, or set LAZYBOOT_BIN)"
	lb_log "building lazyboot (cargo build --release; cargo's progress follows)"
	(cd "$LB_ROOT" && cargo build --release --bin lazyboot) || lb_die "cargo build --release failed"
	LB_BIN=$(cd "$LB_ROOT" && cargo metadata --format-version 1 --no-deps 2>/dev/null |
		jq -r .target_directory)/release/lazyboot
	[ -x "$LB_BIN" ] || LB_BIN=$LB_ROOT/target/release/lazyboot
	[ -x "$LB_BIN" ] || lb_die "no binary at $LB_BIN after the build"
}

# Whether this lazyboot records boot profiles (`lazyboot profile` exists).
lb_has_profile() { "$LB_BIN" profile --help >/dev/null 2>&1; }

# lb_build_boot_image OUT TAG: the test boot image (amd64) as an OCI layout
# in OUT/layout, Debian packages kept where the tests keep theirs.
lb_build_boot_image() {
	local out=$1 tag=$2
	local debs=$LB_ROOT/target/tmp/lazyboot-boot-image/debs
	mkdir -p "$debs"
	ARCH=amd64 DEB_CACHE=$debs bash "$LB_ROOT/integration/fixtures/build-boot-image.sh" "$out" "$tag" \
		>"$out.build.log" 2>&1 || {
		tail -n 30 "$out.build.log" >&2
		lb_die "integration/fixtures/build-boot-image.sh failed (log above)"
	}
}

# lb_debian_image FLAVOUR LOG: the Debian 12 root of integration/fixtures/
# build-debian-image.sh (FLAVOUR: initramfs-tools | dracut) as an OCI layout
# (tag FLAVOUR), from the cache the QEMU tests use (integration/common/
# debian.rs): LAZYBOOT_DEBIAN_CACHE or /var/cache/lazyboot-test/debian,
# KEY/layout with KEY = the first 16 hex digits of sha256(FLAVOUR, NUL, the
# script), KEY/complete marking a finished build. Built there when missing
# (2-4 minutes, mmdebstrap and deb.debian.org; output in LOG) the way the
# tests do: older builds of FLAVOUR and unfinished ones removed, debs/ kept.
# Sets LB_DEBIAN_LAYOUT and keeps the tests' lock (flock on BASE/lock) until
# lb_debian_done (or exit), so no test replaces the layout while it is read.
lb_debian_image() {
	local flavour=$1 log=$2 script=$LB_ROOT/integration/fixtures/build-debian-image.sh
	local base=${LAZYBOOT_DEBIAN_CACHE:-/var/cache/lazyboot-test/debian} key dir d
	key=$({ printf '%s\0' "$flavour"; cat "$script"; } | sha256sum | cut -c1-16)
	dir=$base/$key
	mkdir -p "$base"
	exec {LB_DEBIAN_LOCK}>"$base/lock"
	if ! flock -n "$LB_DEBIAN_LOCK"; then
		lb_log "waiting for $base/lock (a test is building or reading a Debian image)"
		flock "$LB_DEBIAN_LOCK"
	fi
	if [ -e "$dir/complete" ]; then
		lb_log "Debian image ($flavour): reusing $dir"
	else
		for d in "$base"/*/; do
			d=${d%/}
			[ "${d##*/}" != debs ] || continue
			if [ "$(cat "$d/flavour" 2>/dev/null)" = "$flavour" ] || [ ! -e "$d/complete" ]; then
				rm -rf --one-file-system "$d"
			fi
		done
		command -v mmdebstrap >/dev/null || lb_install_packages mmdebstrap
		mkdir -p "$dir"
		echo "$flavour" >"$dir/flavour"
		lb_log "Debian image ($flavour): building $dir (2-4 minutes; log $log)"
		DEB_CACHE=$base/debs bash "$script" "$dir" "$flavour" >"$log" 2>&1 </dev/null || {
			tail -n 30 "$log" >&2
			lb_die "integration/fixtures/build-debian-image.sh $dir $flavour failed (log above)"
		}
		echo ok >"$dir/complete"
	fi
	# shellcheck disable=SC2034 # used by scripts/bench-boot
	LB_DEBIAN_LAYOUT=$dir/layout
}
lb_debian_done() {
	[ -z "${LB_DEBIAN_LOCK:-}" ] || exec {LB_DEBIAN_LOCK}>&-
	LB_DEBIAN_LOCK=
}

# lb_add_filler LAYOUT TAG NAME HOST_BYTES DATA_MB [OPTION...]: layers the
# boot never reads, added to LAYOUT:TAG under /usr/share/NAME-filler: with
# HOST_BYTES > 0, one layer of copies of this machine's /usr/share and
# /usr/lib files (sorted by path, up to HOST_BYTES); with DATA_MB > 0, one
# layer of DATA_MB MiB of random data (incompressible) in 16 MiB files.
# Options, for the last layer added:
#   tree         the image's /etc/lazyboot-tree (the tree walk of the
#                --checks boot, build-boot-image.sh) gets the new paths
lb_add_filler() {
	local layout=$1 tag=$2 name=$3 host_bytes=$4 data_mb=$5
	shift 5
	local bundle list dest i n left opt tree=0
	for opt in "$@"; do
		case "$opt" in
		tree) tree=1 ;;
		*) lb_die "lb_add_filler: unknown option $opt" ;;
		esac
	done
	bundle=$(mktemp -d "${TMPDIR:-/tmp}/lazyboot-filler.XXXXXX")
	rmdir "$bundle"
	list=$bundle.list
	lb_on_exit "rm -rf '$bundle' '$list' '$bundle.before' '$bundle.tree'"
	umoci unpack --image "$layout:$tag" "$bundle" >/dev/null || lb_die "umoci unpack $layout:$tag failed"
	[ $tree = 0 ] || (cd "$bundle/rootfs" && find . | LC_ALL=C sort) >"$bundle.before"
	if [ "$host_bytes" -gt 0 ]; then
		dest=$bundle/rootfs/usr/share/$name-filler/host
		mkdir -p "$dest"
		find /usr/share /usr/lib -xdev -type f -size -64M -printf '%s\t%p\n' 2>/dev/null |
			grep -v -e "/$name-filler/" | LC_ALL=C sort -t$'\t' -k2 |
			awk -F'\t' -v budget="$host_bytes" '!full && sum + $1 <= budget { sum += $1; print $2; next } { full = 1 }' >"$list"
		tar -C / -cf - --no-recursion -T <(sed 's|^/||' "$list") 2>/dev/null | tar -C "$dest" -xf -
		[ "$data_mb" -gt 0 ] || lb_filler_last "$bundle" $tree
		umoci repack --refresh-bundle --history.created_by "$name filler: host files" \
			--image "$layout:$tag" "$bundle" >/dev/null || lb_die "umoci repack (host files) failed"
	fi
	if [ "$data_mb" -gt 0 ]; then
		dest=$bundle/rootfs/usr/share/$name-filler/data
		mkdir -p "$dest"
		n=$(((data_mb + 15) / 16))
		for i in $(seq -w 1 "$n"); do
			left=$((data_mb - (10#$i - 1) * 16))
			head -c $(((left < 16 ? left : 16) << 20)) /dev/urandom >"$dest/blob-$i.bin"
		done
		lb_filler_last "$bundle" $tree
		umoci repack --refresh-bundle --history.created_by "$name filler: data" \
			--image "$layout:$tag" "$bundle" >/dev/null || lb_die "umoci repack (data) failed"
	fi
	umoci gc --layout "$layout"
	rm -rf "$bundle" "$list" "$bundle.before"
}
# lb_filler_last BUNDLE TREE(0|1): the options of lb_add_filler.
lb_filler_last() {
	local b=$1 r=$1/rootfs tree=$2
	[ "$tree" = 1 ] && [ -f "$r/etc/lazyboot-tree" ] || return 0
	{
		cat "$r/etc/lazyboot-tree"
		(cd "$r" && find . | LC_ALL=C sort) | LC_ALL=C comm -13 "$b.before" - | sed 's|^\.||'
	} | LC_ALL=C sort -u >"$b.tree"
	mv "$b.tree" "$r/etc/lazyboot-tree"
}

# --- network ---------------------------------------------------------------
# lb_netns NAME: a fresh namespace with lo up. On exit every process left in
# it (all started by this script) is stopped and the namespace deleted: the
# servers, registry and QEMU all run in such namespaces, so that is how they
# are cleaned up.
lb_netns() {
	local ns=$1
	ip netns add "$ns" || lb_die "ip netns add $ns failed (left over from a killed run? ip netns del $ns)"
	lb_on_exit "lb_netns_del $ns"
	ip -n "$ns" link set lo up
}
lb_netns_del() {
	local ns=$1 pid
	for pid in $(ip netns pids "$ns" 2>/dev/null); do lb_stop_pid "$pid"; done
	ip netns del "$ns" 2>/dev/null || true
}

# lb_bridge_tap NS ADDR/PREFIX: bridge br0 with ADDR and tap0 on it (QEMU's
# end) in NS. IPv6 stays on for the router advertisements, with no DAD.
lb_bridge_tap() {
	local ns=$1 addr=$2 dev
	ip -n "$ns" link add br0 type bridge
	ip -n "$ns" tuntap add dev tap0 mode tap
	for dev in br0 tap0; do
		ip netns exec "$ns" sysctl -qw "net.ipv6.conf.$dev.disable_ipv6=0" \
			"net.ipv6.conf.$dev.accept_dad=0" "net.ipv6.conf.$dev.accept_ra=0" >/dev/null
	done
	ip -n "$ns" link set tap0 master br0
	ip -n "$ns" addr add "$addr" dev br0
	ip -n "$ns" link set br0 up
	ip -n "$ns" link set tap0 up
}

# lb_router_adverts NS IFACE: RAs on IFACE until exit (see netboot.py).
lb_router_adverts() {
	ip netns exec "$1" python3 "$LB_HELPER" ra "$2" &
}

# lb_link_bytes NS IFACE rx|tx: the interface's byte counter.
lb_link_bytes() {
	ip -n "$1" -s -j link show dev "$2" | jq -r ".[0].stats64.$3.bytes"
}

# --- registry --------------------------------------------------------------
# lb_start_registry NS ADDR:PORT DIR: Debian's docker-registry with storage
# in DIR, started inside NS; waits until /v2/ answers.
lb_start_registry() {
	local ns=$1 addr=$2 dir=$3 i
	mkdir -p "$dir/storage"
	cat >"$dir/config.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/storage
  delete:
    enabled: true
http:
  addr: $addr
  secret: lazyboot-$LB_NAME
health:
  storagedriver:
    enabled: false
EOF
	ip netns exec "$ns" docker-registry serve "$dir/config.yml" >"$dir/registry.log" 2>&1 &
	LB_REGISTRY_PID=$!
	for i in $(seq 100); do
		ip netns exec "$ns" curl -fs -o /dev/null "http://$addr/v2/" && return 0
		kill -0 "$LB_REGISTRY_PID" 2>/dev/null || break
		sleep 0.1
	done
	cat "$dir/registry.log" >&2
	lb_die "docker-registry did not come up on $addr in $ns"
}

# lb_shaped_registry NSN NSR RATE DIR: a namespace NSR (made here, removed on
# exit) with a registry behind a link NSN cannot outrun: veth vnode
# 10.231.2.1/24 in NSN, vreg 10.231.2.2/24 in NSR, docker-registry in NSR
# on 0.0.0.0:5000 (storage in DIR). Push over NSR's loopback
# (127.0.0.1:5000), then call lb_shape_registry: from then on what the
# registry sends to NSN (10.231.2.2:5000) goes through `tc qdisc tbf rate
# RATE` on vreg; `lb_link_bytes NSR vreg tx` counts it.
lb_shaped_registry() {
	local nsn=$1 nsr=$2 rate=$3 dir=$4
	lb_netns "$nsr"
	ip -n "$nsn" link add vnode type veth peer name vreg netns "$nsr"
	ip -n "$nsn" addr add 10.231.2.1/24 dev vnode
	ip -n "$nsr" addr add 10.231.2.2/24 dev vreg
	ip -n "$nsn" link set vnode up
	ip -n "$nsr" link set vreg up
	lb_start_registry "$nsr" 0.0.0.0:5000 "$dir"
	LB_SHAPED_NS=$nsr LB_SHAPED_RATE=$rate
}
# lb_shape_registry: the tbf of lb_shaped_registry (once the pushes are done).
lb_shape_registry() {
	ip netns exec "$LB_SHAPED_NS" tc qdisc add dev vreg root tbf rate "$LB_SHAPED_RATE" burst 256kb latency 100ms ||
		lb_die "tc qdisc tbf on vreg failed"
}

# lb_push NS LAYOUT TAG REF: skopeo copy, blobs and digests unchanged.
lb_push() {
	ip netns exec "$1" skopeo --insecure-policy copy --quiet --preserve-digests \
		--dest-tls-verify=false --dest-no-creds "oci:$2:$3" "docker://$4" ||
		lb_die "skopeo copy oci:$2:$3 docker://$4 failed"
}

# lb_json FILE FILTER: one value out of a JSON file.
lb_json() { jq -r "$2" "$1"; }

# --- lazyboot serve --------------------------------------------------------
# lb_start_serve NS CONFIG LOG [GLOBAL_OPTION...]: `lazyboot [GLOBAL_OPTION...]
# serve` inside NS (debug log in LOG); waits for its "serving" line. Sets
# LB_SERVE_PID.
lb_start_serve() {
	local ns=$1 config=$2 log=$3 i
	shift 3
	ip netns exec "$ns" env RUST_LOG=lazyboot=debug NO_COLOR=1 \
		"$LB_BIN" "$@" serve --config "$config" >"$log.out" 2>"$log" </dev/null &
	LB_SERVE_PID=$!
	for i in $(seq 300); do
		grep -q '^serving' "$log.out" 2>/dev/null && return 0
		kill -0 "$LB_SERVE_PID" 2>/dev/null || break
		sleep 0.1
	done
	tail -n 30 "$log" >&2
	lb_die "lazyboot serve did not start (log: $log)"
}
lb_stop_serve() {
	lb_stop_pid "${LB_SERVE_PID:-}"
	LB_SERVE_PID=
}

# lb_boot NS MAC CONSOLE MARKER SHOW RESULT [OPTION VALUE...]: boot one QEMU
# x86_64 guest (TCG, PXE through QEMU's iPXE ROM on tap0 in NS) until MARKER
# shows on its serial console. SHOW: all | milestones | none. RESULT gets
# JSON: "seconds" from QEMU's start to the marker, and the milestones. More
# options (--attempts N, --counter NS/IFACE/tx) go to `netboot.py boot`.
# LB_QEMU_MEM (MiB, default 512) and LB_BOOT_TIMEOUT (s, default 300).
lb_boot() {
	local ns=$1 mac=$2 console=$3 marker=$4 show=$5 result=$6
	shift 6
	lb_wait_for python3 "$LB_HELPER" boot --console "$console" --marker "$marker" \
		--timeout "${LB_BOOT_TIMEOUT:-300}" --show "$show" --result "$result" "$@" -- \
		ip netns exec "$ns" qemu-system-x86_64 -accel tcg -m "${LB_QEMU_MEM:-512}" -smp 1 \
		-nographic -no-reboot -boot n \
		-netdev tap,id=n0,ifname=tap0,script=no,downscript=no \
		-device "virtio-net-pci,netdev=n0,mac=$mac"
}
