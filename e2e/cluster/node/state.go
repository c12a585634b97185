package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

// NodeRecord is what this node changed on the host, kept in
// <state-dir>/node.json so a later run (or the exit path) can undo it.
type NodeRecord struct {
	Bridge        string `json:"bridge,omitempty"`
	BridgeCreated bool   `json:"bridgeCreated,omitempty"`
	// Sysctls maps a /proc/sys path to the value it had before this node set it.
	Sysctls map[string]string `json:"sysctls,omitempty"`
	// SysctlsSet maps a /proc/sys path to the value this node wrote.
	SysctlsSet    map[string]string `json:"sysctlsSet,omitempty"`
	IptablesChain string            `json:"iptablesChain,omitempty"`
	// MountPoints are directories and files created on the host as bind-mount
	// targets (a container's mountPath that did not exist); removed if still empty.
	MountPoints []string `json:"mountPoints,omitempty"`
}

// PodRecord is a pod's host footprint, kept in <pod dir>/sandbox.json.
type PodRecord struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	UID       string `json:"uid"`
	Netns     string `json:"netns,omitempty"`
	HostVeth  string `json:"hostVeth,omitempty"`
	IP        string `json:"ip,omitempty"`
	// Sessions are the container processes (session leaders) with their start times.
	Sessions map[string]SessionRecord `json:"sessions,omitempty"`
}

// SessionRecord identifies one container process.
type SessionRecord struct {
	Pid   int    `json:"pid"`
	Start uint64 `json:"start"`
}

// StateStore owns --state-dir: node.json, pods/<ns>_<name>_<uid>/.
type StateStore struct {
	dir  string
	lock *os.File

	mu   sync.Mutex
	node NodeRecord
}

// OpenState creates the directory and takes its lock (one node per state dir).
func OpenState(dir string) (*StateStore, error) {
	if err := os.MkdirAll(filepath.Join(dir, "pods"), 0o755); err != nil {
		return nil, err
	}
	// Volumes are bind-mounted from here, so containers of any UID must be
	// able to reach them through the mount; the directory itself stays root's.
	_ = os.Chmod(dir, 0o755)
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("state dir %s is in use by another lanemesh-node", dir)
	}
	s := &StateStore{dir: dir, lock: f}
	if b, err := os.ReadFile(s.nodeFile()); err == nil {
		_ = json.Unmarshal(b, &s.node)
	}
	return s, nil
}

func (s *StateStore) nodeFile() string { return filepath.Join(s.dir, "node.json") }

// PodsDir is <state-dir>/pods.
func (s *StateStore) PodsDir() string { return filepath.Join(s.dir, "pods") }

// PodDir is the directory of one pod.
func (s *StateStore) PodDir(ns, name, uid string) string {
	return filepath.Join(s.PodsDir(), ns+"_"+name+"_"+uid)
}

// Node returns a copy of the node record.
func (s *StateStore) Node() NodeRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.node
}

// UpdateNode changes the node record and writes it.
func (s *StateStore) UpdateNode(f func(*NodeRecord)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(&s.node)
	return writeJSONAtomic(s.nodeFile(), &s.node)
}

// AddMountPoint records a host path created as a mount target.
func (s *StateStore) AddMountPoint(p string) {
	_ = s.UpdateNode(func(r *NodeRecord) {
		for _, x := range r.MountPoints {
			if x == p {
				return
			}
		}
		r.MountPoints = append(r.MountPoints, p)
	})
}

// Close releases the lock.
func (s *StateStore) Close() {
	if s.lock != nil {
		s.lock.Close()
	}
}

func writeJSONAtomic(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// WritePodRecord stores rec in dir/sandbox.json.
func WritePodRecord(dir string, rec *PodRecord) error {
	return writeJSONAtomic(filepath.Join(dir, "sandbox.json"), rec)
}

// CleanLeftovers undoes what a previous run under this state dir left behind:
// every recorded pod's processes, netns, veth and directory, then the bridge,
// iptables chain, sysctls and mount points of node.json.
func CleanLeftovers(s *StateStore, t Tools, log *slog.Logger) {
	entries, _ := os.ReadDir(s.PodsDir())
	for _, e := range entries {
		dir := filepath.Join(s.PodsDir(), e.Name())
		var rec PodRecord
		if b, err := os.ReadFile(filepath.Join(dir, "sandbox.json")); err == nil {
			_ = json.Unmarshal(b, &rec)
		}
		log.Info("cleaning up a pod left by a previous run", "dir", e.Name(), "netns", rec.Netns)
		for _, ses := range rec.Sessions {
			KillSession(ses.Pid, ses.Start, syscall.SIGKILL)
		}
		if rec.Netns != "" {
			killNetnsProcesses(t, rec.Netns)
		}
		if rec.HostVeth != "" {
			_ = runQuiet(t.IP, "link", "del", rec.HostVeth)
		}
		if rec.Netns != "" {
			_ = runQuiet(t.IP, "netns", "del", rec.Netns)
		}
		removePodDir(dir, log)
	}
	node := s.Node()
	TeardownHost(s, t, node, log)
}

// removePodDir deletes a pod directory, first unmounting anything still
// mounted below it (a tmpfs emptyDir), never following mounts.
func removePodDir(dir string, log *slog.Logger) {
	if data, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		var mps []string
		for _, line := range strings.Split(string(data), "\n") {
			f := strings.Fields(line)
			if len(f) > 4 {
				mp := unescapeMountinfo(f[4])
				if strings.HasPrefix(mp, dir+"/") {
					mps = append(mps, mp)
				}
			}
		}
		sort.Sort(sort.Reverse(sort.StringSlice(mps)))
		for _, mp := range mps {
			_ = syscall.Unmount(mp, syscall.MNT_DETACH)
		}
	}
	for i := 0; i < 3; i++ {
		err := os.RemoveAll(dir)
		if err == nil || errors.Is(err, os.ErrNotExist) {
			return
		}
		log.Warn("removing pod directory", "dir", dir, "err", err)
		time.Sleep(200 * time.Millisecond)
	}
}
