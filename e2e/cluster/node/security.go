package main

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// Identity is how a container process runs: its credentials, its capability
// bounding set and no_new_privs.
type Identity struct {
	UID, GID int64
	// Groups are the supplementary groups: the pod's supplementalGroups and fsGroup.
	Groups     []int64
	NoNewPrivs bool
	// AllCaps keeps every capability (privileged).
	AllCaps bool
	// Caps is the bounding set (lower-case names without CAP_) when !AllCaps.
	Caps []string
}

// defaultCaps is the capability set container runtimes (Docker, containerd,
// CRI-O) give a root container that neither adds nor drops any.
var defaultCaps = []string{
	"audit_write", "chown", "dac_override", "fowner", "fsetid", "kill", "mknod",
	"net_bind_service", "net_raw", "setfcap", "setgid", "setpcap", "setuid", "sys_chroot",
}

// knownCaps are the capability names this node accepts (setpriv --list-caps of util-linux 2.38).
var knownCaps = map[string]bool{}

func init() {
	for _, c := range strings.Fields(`chown dac_override dac_read_search fowner fsetid kill setgid setuid setpcap
		linux_immutable net_bind_service net_broadcast net_admin net_raw ipc_lock ipc_owner sys_module
		sys_rawio sys_chroot sys_ptrace sys_pacct sys_admin sys_boot sys_nice sys_resource sys_time
		sys_tty_config mknod lease audit_write audit_control setfcap mac_override mac_admin syslog
		wake_alarm block_suspend audit_read perfmon bpf checkpoint_restore`) {
		knownCaps[c] = true
	}
}

// normalizeCap turns `NET_ADMIN` / `CAP_NET_ADMIN` into `net_admin`; "all" stays "all".
func normalizeCap(c corev1.Capability) (string, error) {
	s := strings.ToLower(strings.TrimSpace(string(c)))
	s = strings.TrimPrefix(s, "cap_")
	if s == "all" || knownCaps[s] {
		return s, nil
	}
	return "", fmt.Errorf("unknown capability %q", string(c))
}

// ResolveIdentity applies the pod's and the container's securityContext:
// runAsUser/runAsGroup (container over pod, default root), supplementalGroups
// and fsGroup as supplementary groups, runAsNonRoot, allowPrivilegeEscalation
// (false: no_new_privs) and capabilities:
//   - privileged: every capability;
//   - root: the runtime default set plus add, minus drop (drop ALL empties the set first);
//   - non-root: only add (as if drop ALL), since a non-root process has no
//     effective capabilities anyway and nothing should be gained by exec.
func ResolveIdentity(pod *corev1.Pod, c *corev1.Container) (Identity, error) {
	var id Identity
	psc := pod.Spec.SecurityContext
	if psc == nil {
		psc = &corev1.PodSecurityContext{}
	}
	sc := c.SecurityContext
	if sc == nil {
		sc = &corev1.SecurityContext{}
	}
	if psc.RunAsUser != nil {
		id.UID = *psc.RunAsUser
	}
	if sc.RunAsUser != nil {
		id.UID = *sc.RunAsUser
	}
	if psc.RunAsGroup != nil {
		id.GID = *psc.RunAsGroup
	}
	if sc.RunAsGroup != nil {
		id.GID = *sc.RunAsGroup
	}
	if id.UID < 0 || id.GID < 0 {
		return id, configErrorf("negative runAsUser/runAsGroup")
	}
	nonRoot := psc.RunAsNonRoot
	if sc.RunAsNonRoot != nil {
		nonRoot = sc.RunAsNonRoot
	}
	if nonRoot != nil && *nonRoot && id.UID == 0 {
		return id, configErrorf("container has runAsNonRoot and image will run as root (pod: %q, container: %s)", pod.Namespace+"/"+pod.Name, c.Name)
	}
	seen := map[int64]bool{}
	for _, g := range psc.SupplementalGroups {
		if !seen[g] {
			seen[g] = true
			id.Groups = append(id.Groups, g)
		}
	}
	if psc.FSGroup != nil && !seen[*psc.FSGroup] {
		id.Groups = append(id.Groups, *psc.FSGroup)
	}

	privileged := sc.Privileged != nil && *sc.Privileged
	if sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation && !privileged {
		id.NoNewPrivs = true
	}
	if privileged {
		id.AllCaps = true
		return id, nil
	}

	var add, drop []string
	dropAll := false
	if sc.Capabilities != nil {
		for _, a := range sc.Capabilities.Add {
			n, err := normalizeCap(a)
			if err != nil {
				return id, configErrorf("capabilities.add: %v", err)
			}
			add = append(add, n)
		}
		for _, d := range sc.Capabilities.Drop {
			n, err := normalizeCap(d)
			if err != nil {
				return id, configErrorf("capabilities.drop: %v", err)
			}
			if n == "all" {
				dropAll = true
			}
			drop = append(drop, n)
		}
	}
	set := map[string]bool{}
	if id.UID == 0 && !dropAll {
		for _, c := range defaultCaps {
			set[c] = true
		}
	}
	addAll := false
	for _, a := range add {
		if a == "all" {
			addAll = true
			continue
		}
		set[a] = true
	}
	if id.UID == 0 {
		for _, d := range drop {
			delete(set, d)
		}
		if addAll {
			// add ALL (without privileged) grants every capability, as in the runtimes.
			id.AllCaps = true
			return id, nil
		}
	}
	for c := range set {
		id.Caps = append(id.Caps, c)
	}
	sort.Strings(id.Caps)
	if id.Caps == nil {
		id.Caps = []string{}
	}
	return id, nil
}

// SetprivArgs renders the identity as setpriv(1) options (before `--`).
func (id Identity) SetprivArgs() []string {
	args := []string{
		"--reuid", strconv.FormatInt(id.UID, 10),
		"--regid", strconv.FormatInt(id.GID, 10),
	}
	if len(id.Groups) == 0 {
		args = append(args, "--clear-groups")
	} else {
		gs := make([]string, len(id.Groups))
		for i, g := range id.Groups {
			gs[i] = strconv.FormatInt(g, 10)
		}
		args = append(args, "--groups", strings.Join(gs, ","))
	}
	if !id.AllCaps {
		spec := "-all"
		for _, c := range id.Caps {
			spec += ",+" + c
		}
		args = append(args, "--bounding-set", spec)
		// Root's permitted set after exec is its inheritable set plus the
		// bounding set: keep the inheritable set inside the bounding set.
		args = append(args, "--inh-caps", "-all")
	}
	if id.NoNewPrivs {
		args = append(args, "--no-new-privs")
	}
	return args
}
