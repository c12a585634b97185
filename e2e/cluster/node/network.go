package main

import (
	"bytes"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const (
	sysctlIPForward   = "/proc/sys/net/ipv4/ip_forward"
	sysctlBridgeNFIPT = "/proc/sys/net/bridge/bridge-nf-call-iptables"
)

func run(name string, args ...string) error {
	cmd := exec.Command(name, args...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %v: %s", filepath.Base(name), strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}

func runQuiet(name string, args ...string) error {
	cmd := exec.Command(name, args...)
	return cmd.Run()
}

func linkExists(name string) bool {
	_, err := net.InterfaceByName(name)
	return err == nil
}

func chainName(bridge string) string { return "LMNODE-" + bridge }

// SetupHost creates the bridge with the gateway address, enables forwarding
// and bridge netfilter (kube-proxy's hairpin needs both), and installs a
// FORWARD chain that lets pods talk to each other and to the host but sends
// nothing they forward beyond the host (no NAT, no egress: this node is for
// tests). Everything it changes is recorded first in node.json.
func SetupHost(s *StateStore, t Tools, cfg *Config, log *slog.Logger) error {
	bridge := cfg.Bridge
	if linkExists(bridge) {
		return fmt.Errorf("network interface %s already exists and was not created by this node's state dir %s; choose another --bridge or delete it", bridge, s.dir)
	}
	if err := s.UpdateNode(func(r *NodeRecord) { r.Bridge = bridge; r.BridgeCreated = true }); err != nil {
		return err
	}
	prefix, _ := cfg.PodNet.Mask.Size()
	for _, args := range [][]string{
		{"link", "add", bridge, "type", "bridge"},
		{"addr", "add", fmt.Sprintf("%s/%d", cfg.BridgeIP, prefix), "dev", bridge},
		{"link", "set", bridge, "up"},
	} {
		if err := run(t.IP, args...); err != nil {
			return err
		}
	}
	if cfg.NodeIP != nil && !cfg.NodeIP.Equal(cfg.BridgeIP) {
		log.Info("node IP differs from the bridge address", "nodeIP", cfg.NodeIP, "bridgeIP", cfg.BridgeIP)
	}

	if _, err := os.Stat(sysctlBridgeNFIPT); err != nil && t.Modprobe != "" {
		if err := run(t.Modprobe, "br_netfilter"); err != nil {
			log.Warn("modprobe br_netfilter failed; kube-proxy hairpin traffic may not work", "err", err)
		}
	}
	for _, sc := range []string{sysctlIPForward, sysctlBridgeNFIPT} {
		if err := setSysctl(s, sc, "1"); err != nil {
			log.Warn("sysctl", "path", sc, "err", err)
		}
	}

	chain := chainName(bridge)
	if err := s.UpdateNode(func(r *NodeRecord) { r.IptablesChain = chain }); err != nil {
		return err
	}
	_ = runQuiet(t.Iptables, "-w", "-N", chain)
	if err := run(t.Iptables, "-w", "-F", chain); err != nil {
		return err
	}
	for _, rule := range [][]string{
		{"-i", bridge, "-o", bridge, "-j", "ACCEPT"},
		{"-o", bridge, "-j", "ACCEPT"},
		{"-i", bridge, "-j", "REJECT", "--reject-with", "icmp-net-unreachable"},
	} {
		args := append([]string{"-w", "-A", chain}, rule...)
		args = append(args, "-m", "comment", "--comment", "lanemesh-node "+cfg.NodeName)
		if err := run(t.Iptables, args...); err != nil {
			return err
		}
	}
	if runQuiet(t.Iptables, "-w", "-C", "FORWARD", "-j", chain) != nil {
		if err := run(t.Iptables, "-w", "-I", "FORWARD", "1", "-j", chain); err != nil {
			return err
		}
	}
	return nil
}

func setSysctl(s *StateStore, path, value string) error {
	cur, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	old := strings.TrimSpace(string(cur))
	if old == value {
		return nil
	}
	if err := s.UpdateNode(func(r *NodeRecord) {
		if r.Sysctls == nil {
			r.Sysctls = map[string]string{}
			r.SysctlsSet = map[string]string{}
		}
		if _, seen := r.Sysctls[path]; !seen {
			r.Sysctls[path] = old
		}
		r.SysctlsSet[path] = value
	}); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(value), 0o644)
}

// TeardownHost undoes SetupHost as recorded in rec, and removes recorded
// mount points that are still empty.
func TeardownHost(s *StateStore, t Tools, rec NodeRecord, log *slog.Logger) {
	if rec.IptablesChain != "" {
		for runQuiet(t.Iptables, "-w", "-D", "FORWARD", "-j", rec.IptablesChain) == nil {
		}
		_ = runQuiet(t.Iptables, "-w", "-F", rec.IptablesChain)
		_ = runQuiet(t.Iptables, "-w", "-X", rec.IptablesChain)
	}
	if rec.BridgeCreated && rec.Bridge != "" && linkExists(rec.Bridge) {
		if err := run(t.IP, "link", "del", rec.Bridge); err != nil {
			log.Warn("deleting the bridge", "err", err)
		}
	}
	// Restore a sysctl only if it still holds what this node wrote: someone
	// who changed it since has their own reason.
	for path, old := range rec.Sysctls {
		cur, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		if strings.TrimSpace(string(cur)) == rec.SysctlsSet[path] {
			_ = os.WriteFile(path, []byte(old), 0o644)
		}
	}
	mps := append([]string(nil), rec.MountPoints...)
	sort.Sort(sort.Reverse(sort.StringSlice(mps))) // children first
	for _, mp := range mps {
		removeIfEmpty(mp)
	}
	_ = s.UpdateNode(func(r *NodeRecord) { *r = NodeRecord{} })
}

// removeIfEmpty removes an empty directory or an empty regular file.
func removeIfEmpty(p string) {
	st, err := os.Lstat(p)
	if err != nil {
		return
	}
	if st.Mode().IsRegular() && st.Size() == 0 {
		_ = os.Remove(p)
		return
	}
	if st.IsDir() {
		_ = syscall.Rmdir(p) // fails when not empty
	}
}

// podNetNames derives the netns and host veth names from the pod UID.
func podNetNames(uid string) (netns, veth string) {
	hex := strings.ReplaceAll(uid, "-", "")
	if len(hex) > 12 {
		hex = hex[:12]
	}
	v := hex
	if len(v) > 11 {
		v = v[:11]
	}
	return "lm-" + hex, "lmv" + v
}

// SetupPodNetwork creates the pod's netns with eth0 (a veth whose host end
// joins the bridge, hairpin on), the address, lo up and the default route.
// Pod-level net.* sysctls are applied in the namespace.
func SetupPodNetwork(t Tools, netns, hostVeth, bridge string, ip net.IP, prefix int, gw net.IP, sysctls map[string]string) error {
	if err := run(t.IP, "netns", "add", netns); err != nil {
		return err
	}
	steps := [][]string{
		{"link", "add", hostVeth, "type", "veth", "peer", "name", "eth0", "netns", netns},
		{"link", "set", hostVeth, "master", bridge},
		{"link", "set", "dev", hostVeth, "type", "bridge_slave", "hairpin", "on"},
		{"link", "set", hostVeth, "up"},
		{"-n", netns, "link", "set", "lo", "up"},
		{"-n", netns, "addr", "add", fmt.Sprintf("%s/%d", ip, prefix), "dev", "eth0"},
		{"-n", netns, "link", "set", "eth0", "up"},
		{"-n", netns, "route", "add", "default", "via", gw.String()},
	}
	for _, s := range steps {
		if err := run(t.IP, s...); err != nil {
			return err
		}
	}
	// Like containerd: any UID may bind low ports and ping inside the pod.
	base := map[string]string{
		"net.ipv4.ip_unprivileged_port_start": "0",
		"net.ipv4.ping_group_range":           "0 2147483647",
	}
	for k, v := range sysctls {
		base[k] = v
	}
	keys := make([]string, 0, len(base))
	for k := range base {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if err := run(t.IP, "netns", "exec", netns, "sysctl", "-qw", k+"="+base[k]); err != nil {
			if _, user := sysctls[k]; user {
				return err
			}
		}
	}
	return nil
}

// TeardownPodNetwork kills what still runs in the netns and removes the veth and the netns.
func TeardownPodNetwork(t Tools, netns, hostVeth string) {
	if netns != "" {
		killNetnsProcesses(t, netns)
	}
	if hostVeth != "" && linkExists(hostVeth) {
		_ = runQuiet(t.IP, "link", "del", hostVeth)
	}
	if netns != "" {
		_ = runQuiet(t.IP, "netns", "del", netns)
	}
}

// killNetnsProcesses SIGKILLs every process in the named netns and waits briefly.
func killNetnsProcesses(t Tools, netns string) {
	for i := 0; i < 20; i++ {
		out, err := exec.Command(t.IP, "netns", "pids", netns).Output()
		if err != nil {
			return
		}
		pids := strings.Fields(string(out))
		if len(pids) == 0 {
			return
		}
		for _, p := range pids {
			if pid, err := strconv.Atoi(p); err == nil && pid > 1 && pid != os.Getpid() {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
}
