package vm

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// BootModules are loaded by the initramfs before it can reach the host's
// filesystem; everything else autoloads later through busybox modprobe.
var BootModules = []string{"virtio_pci", "9pnet_virtio", "9p", "overlay", "virtio_console"}

// PreloadModules are loaded right after the host filesystem is mounted:
// libcrc32c needs crc32c_generic present first, and ip_vs is what the tests
// are about.
var PreloadModules = []string{"crc32c_generic", "ip_vs"}

// bootModulePaths asks the host's kmod for the load order of BootModules; a
// hand-written order breaks (virtio needs virtio_ring first).
func bootModulePaths(k *Kernel) ([]string, error) {
	args := append([]string{"-d", filepath.Join(k.Dir, "root"), "-S", k.Release, "--show-depends", "-a"}, BootModules...)
	out, err := exec.Command("modprobe", args...).Output()
	if err != nil {
		return nil, fmt.Errorf("modprobe --show-depends: %w", err)
	}
	var paths []string
	seen := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[0] != "insmod" || seen[f[1]] {
			continue // "builtin x" lines need nothing
		}
		seen[f[1]] = true
		paths = append(paths, f[1])
	}
	if len(paths) == 0 {
		return nil, fmt.Errorf("modprobe --show-depends listed no modules for %v", BootModules)
	}
	return paths, nil
}

// buildInitramfs writes a newc cpio archive with busybox, the boot modules
// and the init script.
func buildInitramfs(w io.Writer, k *Kernel, busybox string) error {
	mods, err := bootModulePaths(k)
	if err != nil {
		return err
	}
	bb, err := os.ReadFile(busybox)
	if err != nil {
		return fmt.Errorf("read busybox: %w", err)
	}
	cw := &cpioWriter{w: w}
	for _, d := range []string{"bin", "sbin", "dev", "proc", "sys", "host", "job", "newroot", "upper", "modules", "lib", "lib/modules", "lib/modules/" + k.Release, "tmp"} {
		cw.dir(d)
	}
	cw.file("bin/busybox", 0o755, bb)
	cw.symlink("bin/sh", "busybox")
	cw.symlink("sbin/modprobe", "../bin/busybox")
	for i, m := range mods {
		data, err := os.ReadFile(m)
		if err != nil {
			return fmt.Errorf("read module: %w", err)
		}
		cw.file(fmt.Sprintf("modules/%02d-%s", i, filepath.Base(m)), 0o644, data)
	}
	cw.file("init", 0o755, []byte(strings.ReplaceAll(initScript, "@PRELOAD@", strings.Join(PreloadModules, " "))))
	cw.trailer()
	return cw.err
}

// initScript runs as PID 1. Parameters come from the kernel command line
// (merlin.*) and from files in the job share.
const initScript = `#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for a in $(cat /proc/cmdline); do
  case "$a" in
    merlin.kver=*) KVER=${a#merlin.kver=} ;;
    merlin.moddir=*) MODDIR=${a#merlin.moddir=} ;;
    merlin.jobdir=*) JOBDIR=${a#merlin.jobdir=} ;;
    merlin.tmpfs=*) TMPFS=${a#merlin.tmpfs=} ;;
    merlin.systemd=*) SYSTEMD=${a#merlin.systemd=} ;;
    merlin.rootfs=*) ROOTFS=${a#merlin.rootfs=} ;;
  esac
done
fail() { echo "MERLIN-VM-INIT-FAILED: $*"; echo "MERLIN-EXIT=125"; poweroff -f; }
for m in /modules/*; do insmod "$m" || fail "insmod $m"; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 hostroot /host || fail "mount host root"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 job /job || fail "mount job share"
# Module autoloading runs /sbin/modprobe of this root: give it the whole tree.
mount --bind "/host$MODDIR" "/lib/modules/$KVER" || fail "bind modules"
for m in @PRELOAD@; do modprobe "$m" || fail "modprobe $m"; done
mount -t tmpfs -o "size=$TMPFS" upper /upper
mkdir -p /upper/u /upper/w
mount -t overlay overlay -o "lowerdir=/host$ROOTFS,upperdir=/upper/u,workdir=/upper/w" /newroot || fail "overlay"
# On a root filesystem of its own, the host directories the program needs.
while read -r path; do
  [ -n "$path" ] && [ -n "$ROOTFS" ] || continue
  mkdir -p "/newroot$path"
  mount --bind "/host$path" "/newroot$path" || fail "bind $path"
done < /job/host-dirs
mkdir -p "/newroot/lib/modules/$KVER"
mount --bind "/host$MODDIR" "/newroot/lib/modules/$KVER"
mount -t proc proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
mount -t devtmpfs devtmpfs /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs tmpfs /newroot/dev/shm
mount -t tmpfs tmpfs /newroot/run
mount -t bpf bpf /newroot/sys/fs/bpf 2>/dev/null
mount -t cgroup2 cgroup2 /newroot/sys/fs/cgroup 2>/dev/null
mount -t debugfs debugfs /newroot/sys/kernel/debug 2>/dev/null
# /tmp stays the overlay's: a checkout or build under the host's /tmp must
# be visible in the guest; writes land in the tmpfs upper layer.
mkdir -p "/newroot$JOBDIR"
mount --bind /job "/newroot$JOBDIR"
# Writable host directories (e.g. the test binary's, for -coverprofile).
i=0
while read -r path; do
  [ -n "$path" ] || continue
  mkdir -p "/newroot$path"
  mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 "rw$i" "/newroot$path" || fail "mount rw$i at $path"
  i=$((i+1))
done < /job/rw-shares
ip link set lo up
chroot /newroot ip link set lo up
port=
for p in /sys/class/virtio-ports/*; do
  [ "$(cat "$p/name" 2>/dev/null)" = out ] && port=/dev/$(basename "$p")
done
[ -n "$port" ] || fail "no virtio output port"
echo "MERLIN-VM-READY"
if [ "$SYSTEMD" = 1 ]; then
  # systemd as PID 1 on the same root; the job is its one unit (nothing
  # else the root has enabled starts), which writes its status and powers
  # the guest off.
  umount /newroot/proc /newroot/sys/fs/bpf /newroot/sys/fs/cgroup /newroot/sys/kernel/debug 2>/dev/null
  mkdir -p /newroot/run/systemd/system
  # On the host's root (a container image's, here) systemd would take the
  # guest for a container (/.dockerenv: no bpffs, private mount
  # propagation) and policy-rc.d would keep maintainer scripts from
  # touching services: vmrun boots systemd on a root filesystem of its own.
  [ -n "$ROOTFS" ] || fail "systemd needs a root filesystem of its own (merlin.rootfs)"
  cat > /newroot/run/systemd/system/merlin-vmjob.service <<UNIT
[Unit]
Description=merlin VM job
DefaultDependencies=no
# After the early boot, as any service: the first unit with default
# dependencies would otherwise start sysinit.target in the middle of a
# test (systemd-tmpfiles empties /tmp, …).
Wants=sysinit.target
After=sysinit.target
[Service]
Type=oneshot
StandardInput=null
StandardOutput=file:$port
StandardError=inherit
ExecStart=/bin/sh $JOBDIR/job.sh
ExecStopPost=/bin/sh -c 'echo \$\$EXIT_STATUS > $JOBDIR/rc; sync; echo MERLIN-EXIT=\$\$EXIT_STATUS > /dev/ttyS0; /bin/systemctl poweroff -ff'
UNIT
  exec switch_root /newroot /lib/systemd/systemd --unit=merlin-vmjob.service
fi
chroot /newroot /bin/sh "$JOBDIR/job.sh" >"$port" 2>&1 </dev/null
rc=$?
echo "$rc" > /job/rc
sync
echo "MERLIN-EXIT=$rc"
poweroff -f
`

// cpioWriter writes the "newc" cpio format the kernel unpacks.
type cpioWriter struct {
	w   io.Writer
	ino int
	err error
}

func (c *cpioWriter) entry(name string, mode uint32, data []byte) {
	if c.err != nil {
		return
	}
	c.ino++
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
	var b bytes.Buffer
	b.WriteString(hdr)
	b.WriteString(name)
	b.WriteByte(0)
	pad4(&b)
	b.Write(data)
	pad4(&b)
	_, c.err = c.w.Write(b.Bytes())
}

func pad4(b *bytes.Buffer) {
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
}

func (c *cpioWriter) dir(name string)                         { c.entry(name, 0o040755, nil) }
func (c *cpioWriter) file(name string, perm uint32, d []byte) { c.entry(name, 0o100000|perm, d) }
func (c *cpioWriter) symlink(name, target string)             { c.entry(name, 0o120777, []byte(target)) }
func (c *cpioWriter) trailer()                                { c.entry("TRAILER!!!", 0, nil) }
