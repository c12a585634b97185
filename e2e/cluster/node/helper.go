package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// helperCommand is the hidden subcommand that prepares a container's mount
// namespace; it is never run by hand.
const helperCommand = "container-init"

// runHelper runs in the container's (new, private) mount namespace and, for
// pod-network pods, in the pod's network namespace. It reads its spec from
// fd 3 and reports a failure on fd 4; on success it execs setpriv, which
// closes fd 4 (close-on-exec) and execs the container's command.
func runHelper() int {
	errPipe := os.NewFile(4, "status")
	fail := func(format string, args ...any) int {
		msg := fmt.Sprintf(format, args...)
		if errPipe != nil {
			_, _ = errPipe.WriteString(msg)
			_ = errPipe.Close()
		}
		fmt.Fprintln(os.Stderr, "lanemesh-node: "+msg)
		return 128
	}
	specFile := os.NewFile(3, "spec")
	if specFile == nil || errPipe == nil {
		fmt.Fprintln(os.Stderr, "container-init is internal to lanemesh-node")
		return 2
	}
	data, err := io.ReadAll(specFile)
	_ = specFile.Close()
	if err != nil {
		return fail("reading the container spec: %v", err)
	}
	var spec helperSpec
	if err := json.Unmarshal(data, &spec); err != nil {
		return fail("decoding the container spec: %v", err)
	}
	// Nothing mounted here may propagate to the host.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fail("making the mount namespace private: %v", err)
	}
	// Other pods' network namespace handles would keep those namespaces alive
	// for as long as this container runs.
	detachNetnsMounts()
	if spec.Hostname != "" {
		if err := unix.Sethostname([]byte(spec.Hostname)); err != nil {
			return fail("setting the hostname: %v", err)
		}
	}
	mounts := append([]Mount(nil), spec.Mounts...)
	// Parents before children, so /a is mounted before /a/b hides nothing.
	sort.SliceStable(mounts, func(i, j int) bool {
		return strings.Count(filepath.Clean(mounts[i].Target), "/") < strings.Count(filepath.Clean(mounts[j].Target), "/")
	})
	for _, m := range mounts {
		if err := unix.Mount(m.Source, m.Target, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fail("bind-mounting %s at %s: %v", m.Source, m.Target, err)
		}
		if m.ReadOnly {
			if err := unix.Mount("", m.Target, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
				return fail("making %s read-only: %v", m.Target, err)
			}
		}
	}
	if spec.WorkingDir != "" {
		if err := os.Chdir(spec.WorkingDir); err != nil {
			return fail("chdir to cwd (%q) set in config.json failed: %v", spec.WorkingDir, err)
		}
	}
	unix.Umask(0o022)
	if _, err := unix.FcntlInt(4, unix.F_SETFD, unix.FD_CLOEXEC); err != nil {
		return fail("status pipe: %v", err)
	}
	if _, err := errPipe.WriteString(helperReady); err != nil {
		return fail("status pipe: %v", err)
	}
	argv := append([]string{spec.Setpriv}, spec.SetprivArg...)
	argv = append(argv, "--")
	argv = append(argv, spec.Argv...)
	err = syscall.Exec(spec.Setpriv, argv, os.Environ())
	return fail("exec %s: %v", spec.Setpriv, err)
}

func detachNetnsMounts() {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	var targets []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := unescapeMountinfo(f[4])
		if strings.HasPrefix(mp, "/run/netns/") || strings.HasPrefix(mp, "/var/run/netns/") {
			targets = append(targets, mp)
		}
	}
	for _, t := range targets {
		_ = unix.Unmount(t, unix.MNT_DETACH)
	}
}

func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v int
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &v); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
