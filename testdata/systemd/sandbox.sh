#!/usr/bin/env bash
# A private, real systemd for testing a unit: the machine's own systemd booted as PID 1 of
# private namespaces (pid, mount, net, uts, ipc, cgroup), in a unit world holding only
# journald and the unit files given.
# (Copied from the systemd-sandbox tool, whose README explains it, so that the project owns its
# real-systemd test, systemd_linux_test.go; keep the two in step.)
#
#   sandbox.sh start DIR [UNIT_FILE...]   boot it, work dir DIR (new, or without a sandbox's files)
#   sandbox.sh exec DIR CMD [ARG...]      run CMD inside; exits with CMD's status (125: no sandbox)
#   sandbox.sh check DIR                  fail if anything but the given units runs
#   sandbox.sh stop DIR                   kill it, remove its cgroup; DIR is kept
#
# Env: SYSTEMD (default /lib/systemd/systemd), SANDBOX_OWNER (a PID: the sandbox is torn down
# when it exits; default the caller of start), SANDBOX_TIMEOUT (exec's limit, default 600 s).
# Needs root, util-linux (unshare, nsenter, setpriv), iproute2, overlayfs and cgroup2. Outside
# DIR it changes nothing on the host but one cgroup2 directory, removed by stop.
set -uo pipefail

self=$(readlink -f "$0")
SYSTEMD=${SYSTEMD:-/lib/systemd/systemd}
NSPATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# Nothing in there may load modules, set the clock, do raw I/O, load MAC policies, read or
# clear the kernel log, or create device nodes.
DROP_CAPS=-sys_module,-sys_time,-sys_rawio,-mac_admin,-mac_override,-syslog,-mknod,-wake_alarm,-block_suspend,-sys_pacct

die() { echo "sandbox.sh: $*" >&2; exit "${RC:-2}"; }

# Stage 1 and 2 of PID 1 (run by unshare): join the private cgroup, unshare the cgroup
# namespace rooted there, build the private mount world, exec systemd.
if [[ ${1:-} == __ns-init ]]; then
	echo "$$" >"$3/cgroup.procs" || exit 1 # $$ is 1 here
	exec unshare --cgroup -- "$self" __ns-init2 "$2"
fi
if [[ ${1:-} == __ns-init2 ]]; then
	set -e
	W=$2
	mount -t sysfs -o ro,nosuid,nodev,noexec sysfs /sys
	mount -t cgroup2 -o rw,nosuid,nodev,noexec cgroup2 /sys/fs/cgroup
	for p in /proc/sys /proc/sysrq-trigger /proc/irq /proc/bus /proc/fs /proc/kcore; do
		[[ -e $p ]] || continue
		mount --bind "$p" "$p"
		mount -o remount,bind,ro,nosuid,nodev,noexec "$p"
	done
	# A private /dev with the harmless nodes only; /dev/console is a log file.
	mkdir -p "$W/ns/dev"
	mount -t tmpfs -o mode=755,nosuid,size=4m tmpfs "$W/ns/dev"
	for n in null zero full random urandom tty; do
		touch "$W/ns/dev/$n"
		mount --bind "/dev/$n" "$W/ns/dev/$n"
	done
	touch "$W/ns/dev/console" "$W/console.log"
	mount --bind "$W/console.log" "$W/ns/dev/console"
	mount --move "$W/ns/dev" /dev
	mkdir /dev/pts /dev/shm /dev/mqueue
	mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5,nosuid,noexec devpts /dev/pts
	ln -s pts/ptmx /dev/ptmx
	mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
	mount -t mqueue -o nosuid,nodev,noexec mqueue /dev/mqueue
	ln -s /proc/self/fd /dev/fd
	for i in 0:stdin 1:stdout 2:stderr; do ln -s "/proc/self/fd/${i%%:*}" "/dev/${i#*:}"; done
	# Copy-on-write /etc, /var, /usr/local: writes land in $W/ov.
	for d in etc var usr/local; do
		n=${d//\//-}
		mkdir -p "$W/ov/$n/u" "$W/ov/$n/w"
		mount -t overlay overlay -o "lowerdir=/$d,upperdir=$W/ov/$n/u,workdir=$W/ov/$n/w" "/$d"
	done
	# Fresh /run and /tmp; $W stays reachable at its own path.
	mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /run
	mkdir /run/sandbox-stage /run/sandbox-home
	mount --bind "$W" /run/sandbox-stage
	mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
	mkdir -p "$W"
	mount --move /run/sandbox-stage "$W"
	rmdir /run/sandbox-stage
	# The private unit world: our unit dir, no generators, an empty /etc/systemd/system.
	mount --bind "$W/units" /usr/lib/systemd/system
	mount -o remount,bind,ro /usr/lib/systemd/system
	for g in system-generators system-environment-generators; do
		[[ -d /usr/lib/systemd/$g ]] || continue
		mount --bind "$W/empty" "/usr/lib/systemd/$g"
		mount -o remount,bind,ro "/usr/lib/systemd/$g"
	done
	mount --bind "$W/etc-systemd-system" /etc/systemd/system
	mount -o remount,bind,ro / # the rest of the host: read-only in here
	hostname sandbox
	ip link set lo up
	exec env -i container=systemd-sandbox PATH="$NSPATH" LANG=C.UTF-8 \
		setpriv --bounding-set "$DROP_CAPS" "$SYSTEMD" --unit=sandbox.target --show-status=no --log-level=info
fi

# ---------------------------------------------------------------------------------------
usage() { sed -n '2,15p' "$self" >&2; exit 2; }
(($# >= 2)) || usage
verb=$1 W=$2
shift 2
[[ $(id -u) == 0 ]] || die "needs root"
[[ $W =~ ^[A-Za-z0-9._/-]+$ ]] || die "DIR may hold only A-Z a-z 0-9 . _ / -"
W=$(readlink -m "$W")
P=$W/pid # keeper, unshare, nspid, cgroup: one PID or path a file
rd() { cat "$P/$1" 2>/dev/null; }

# is_ours PID: PID is the sandbox's systemd (not a reused PID).
is_ours() {
	local rel now
	rel=$(rd cgroup) && rel=${rel#"$(rd cg2)"} && [[ -n $1 && -n $rel ]] || return 1
	[[ $(readlink "/proc/$1/exe" 2>/dev/null) == */systemd ]] || return 1
	now=$(sed -n 's/^0:://p' "/proc/$1/cgroup" 2>/dev/null)
	[[ $now == "$rel" || $now == "$rel"/* ]]
}

# ns CMD...: run CMD in the sandbox's namespaces, with a clean environment and a time limit.
ns() {
	local n
	n=$(rd nspid)
	is_ours "$n" || RC=125 die "no sandbox running in $W"
	timeout -k 5 "${SANDBOX_TIMEOUT:-600}" nsenter -t "$n" -m -u -i -n -p -C --wd=/ -- \
		env -i PATH="$NSPATH" HOME=/run/sandbox-home LANG=C.UTF-8 TERM=dumb SYSTEMD_PAGER=cat \
		SYSTEMD_COLORS=0 SYSTEMD_LESS= "$@"
}

# teardown: SIGKILL to PID 1 in there (all its processes and mounts die with it), then the
# cgroup tree. Safe to run twice.
teardown() {
	local n u cg bad=0
	n=$(rd nspid) u=$(rd unshare) cg=$(rd cgroup)
	is_ours "$n" && kill -KILL "$n"
	for _ in $(seq 100); do [[ -n $u && -d /proc/$u ]] || break; sleep 0.1; done
	[[ -n $u && $(cat "/proc/$u/comm" 2>/dev/null) == unshare ]] && kill -KILL "$u"
	for _ in $(seq 50); do
		[[ -n $cg && -d $cg ]] || break
		find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null
		sleep 0.1
	done
	[[ -n $cg && -d $cg ]] && { echo "sandbox.sh: could not remove $cg" >&2; bad=1; }
	grep -qF " $W/" /proc/self/mountinfo && { echo "sandbox.sh: a mount under $W leaked to the host" >&2; bad=1; }
	rm -f "$P/nspid"
	return $bad
}

# check: only init.scope, journald and the given units run, in our cgroup tree only.
check() {
	local bad= u f cg
	cg=$(rd cgroup)
	allowed() { local a; while read -r a; do [[ $1 == $a ]] && return 0; done <"$W/allowed"; return 1; }
	for u in $(ns systemctl --no-pager list-units --all --plain --no-legend \
		--state=active,activating,deactivating,reloading,failed | awk '{print $1}'); do
		[[ $u == *.mount || $u == *.scope || $u == *.slice || $u == *.target ]] || allowed "$u" || bad+=" $u"
	done
	while read -r f; do
		[[ -s $f ]] || continue
		u=$(sed -nE 's,^.*/([^/]+\.(service|socket|scope|mount|swap))(/.*)?/cgroup\.procs$,\1,p' <<<"${f#"$cg"}")
		[[ $f == "$cg/cgroup.procs" || $u == init.scope ]] || allowed "${u:-?}" || bad+=" cgroup:${f#"$cg"/}"
	done < <(find "$cg" -name cgroup.procs 2>/dev/null)
	[[ -z $bad ]] || { echo "sandbox.sh: not in the private world:$bad" >&2; return 1; }
}

case $verb in
__keeper) # the sandbox's keeper: holds unshare (which dies with it), tears down when SANDBOX_OWNER exits
	owner=$1
	echo $$ >"$P/keeper"
	trap 'teardown; exit 0' TERM INT HUP
	setpriv --pdeathsig KILL -- unshare --pid --fork --kill-child --mount --propagation private \
		--mount-proc --net --uts --ipc -- "$self" __ns-init "$W" "$(rd cgroup)" </dev/null &
	echo $! >"$P/unshare"
	for _ in $(seq 100); do
		n=$(awk '{print $1}' "/proc/$!/task/$!/children" 2>/dev/null)
		[[ -n $n && $(readlink "/proc/$n/exe" 2>/dev/null) == */systemd ]] && { echo "$n" >"$P/nspid"; break; }
		sleep 0.1
	done
	while kill -0 "$owner" 2>/dev/null && [[ -d /proc/$(rd unshare) ]]; do sleep 1; done
	teardown
	;;
start)
	for t in unshare nsenter setpriv ip timeout; do command -v $t >/dev/null || die "needs $t"; done
	[[ -x $SYSTEMD ]] || die "no systemd at $SYSTEMD"
	grep -qw overlay /proc/filesystems || die "needs overlayfs"
	case $W/ in / | /run/* | /etc/* | /var/* | /usr/local/* | /dev/* | /proc/* | /sys/*) die "DIR must not be / or under /run, /etc, /var, /usr/local, /dev, /proc, /sys" ;; esac
	for d in pid units ov ns; do [[ ! -e $W/$d ]] || die "$W/$d exists: a sandbox was there (stop it, remove DIR)"; done
	for f in "$@"; do [[ -f $f ]] || die "no unit file $f"; done
	if [[ $(stat -fc %T /sys/fs/cgroup) == cgroup2fs ]]; then cg2=/sys/fs/cgroup
	elif [[ $(stat -fc %T /sys/fs/cgroup/unified 2>/dev/null) == cgroup2fs ]]; then cg2=/sys/fs/cgroup/unified
	else die "no cgroup2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified"; fi
	mycg=$(sed -n 's/^0:://p' /proc/self/cgroup)
	for d in "$cg2${mycg%/}"/sandbox.*; do # empty trees left by killed keepers
		[[ -d $d ]] && ! kill -0 "${d##*.}" 2>/dev/null && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
	done
	mkdir -p "$P" "$W/units" "$W/empty" "$W/etc-systemd-system" "$W/ov/etc/u/systemd/journald.conf.d"
	printf '%s\n' systemd-journald.service systemd-journald.socket systemd-journald-dev-log.socket >"$W/allowed"
	for u in $(cat "$W/allowed"); do cp "/usr/lib/systemd/system/$u" "$W/units/" || die "no $u on this machine"; done
	for t in sysinit basic sockets timers paths local-fs remote-fs network network-online multi-user shutdown; do
		printf '[Unit]\nDescription=%s (empty stub)\nDefaultDependencies=no\n' "$t.target" >"$W/units/$t.target"
	done
	printf '[Unit]\nDescription=systemd-sandbox boot target\nDefaultDependencies=no\nWants=%s multi-user.target\n' \
		"$(tr '\n' ' ' <"$W/allowed")" >"$W/units/sandbox.target"
	for f in "$@"; do
		cp "$f" "$W/units/"
		b=$(basename "$f")
		echo "${b/@./@*.}" >>"$W/allowed" # a template allows its instances
	done
	printf '[Journal]\nStorage=volatile\n' >"$W/ov/etc/u/systemd/journald.conf.d/sandbox.conf"
	echo sandbox >"$W/ov/etc/u/hostname"
	echo "$cg2" >"$P/cg2"
	owner=${SANDBOX_OWNER:-$PPID}
	while [[ $(cat "/proc/$owner/comm" 2>/dev/null) =~ ^(sudo|su|doas)$ ]]; do owner=$(awk '{print $4}' "/proc/$owner/stat"); done
	kill -0 "$owner" 2>/dev/null || die "no process $owner (SANDBOX_OWNER)"
	# The chain: the keeper watches the owner; unshare dies with the keeper (--pdeathsig), and
	# PID 1 with unshare (--kill-child).
	setsid bash -c 'echo "$1/sandbox.$$" >"$2/cgroup" && mkdir "$1/sandbox.$$" && exec "$3" __keeper "$4" "$5"' \
		- "$cg2${mycg%/}" "$P" "$self" "$W" "$owner" </dev/null >"$W/boot.log" 2>&1 &
	for _ in $(seq 100); do is_ours "$(rd nspid)" && break; sleep 0.1; done
	fail() { echo "sandbox.sh: $*; boot.log:" >&2; cat "$W/boot.log" "$W/console.log" >&2 2>/dev/null; teardown; exit 1; }
	is_ours "$(rd nspid)" || fail "systemd did not start"
	for _ in $(seq 200); do ns test -S /run/systemd/private 2>/dev/null && break; sleep 0.1; done
	st=$(SANDBOX_TIMEOUT=30 ns systemctl is-system-running --wait 2>&1)
	[[ $st == running ]] || fail "is-system-running: $st; $(ns systemctl --no-pager --failed --plain --no-legend 2>&1)"
	check || fail "stopped"
	n=$(rd nspid)
	cat <<EOF
systemd $("$SYSTEMD" --version | awk 'NR==1 {print $2}') is PID 1 of a sandbox (host pid $n, cgroup $(rd cgroup)), torn down when pid $owner exits
units: $(tail -n +4 "$W/allowed" | tr '\n' ' ')(and journald); work dir $W, same path inside
  $self exec $W systemctl --no-pager status UNIT
  nsenter -t $n -m -u -i -n -p -C -- journalctl --no-pager -u UNIT
  $self stop $W
EOF
	;;
exec) (($#)) || usage; ns "$@" ;;
check) check ;;
stop)
	k=$(rd keeper)
	[[ -n $k && $(cat "/proc/$k/cmdline" 2>/dev/null | tr '\0' ' ') == *" __keeper $W "* ]] && kill -TERM "$k"
	for _ in $(seq 150); do [[ -n $k && -d /proc/$k ]] || break; sleep 0.1; done
	teardown
	;;
*) usage ;;
esac
