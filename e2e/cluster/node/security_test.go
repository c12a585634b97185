package main

import (
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func i64(v int64) *int64 { return &v }
func boolp(v bool) *bool { return &v }

func TestIdentityDefaultsToRootWithDefaultCaps(t *testing.T) {
	pod := &corev1.Pod{}
	c := &corev1.Container{Name: "c"}
	id, err := ResolveIdentity(pod, c)
	if err != nil {
		t.Fatal(err)
	}
	if id.UID != 0 || id.GID != 0 || id.NoNewPrivs || id.AllCaps || !reflect.DeepEqual(id.Caps, defaultCaps) {
		t.Fatalf("%+v", id)
	}
	args := strings.Join(id.SetprivArgs(), " ")
	if !strings.Contains(args, "--reuid 0 --regid 0 --clear-groups --bounding-set -all,+audit_write,+chown") || !strings.Contains(args, "--inh-caps -all") {
		t.Fatalf("%s", args)
	}
}

func TestIdentityPodAndContainerLevels(t *testing.T) {
	pod := &corev1.Pod{Spec: corev1.PodSpec{SecurityContext: &corev1.PodSecurityContext{
		RunAsUser: i64(1000), RunAsGroup: i64(2000), FSGroup: i64(3000), SupplementalGroups: []int64{4000, 3000},
	}}}
	c := &corev1.Container{SecurityContext: &corev1.SecurityContext{
		RunAsUser:                i64(1337),
		AllowPrivilegeEscalation: boolp(false),
		Capabilities:             &corev1.Capabilities{Add: []corev1.Capability{"NET_BIND_SERVICE"}, Drop: []corev1.Capability{"ALL"}},
	}}
	id, err := ResolveIdentity(pod, c)
	if err != nil {
		t.Fatal(err)
	}
	if id.UID != 1337 || id.GID != 2000 || !reflect.DeepEqual(id.Groups, []int64{4000, 3000}) || !id.NoNewPrivs {
		t.Fatalf("%+v", id)
	}
	if !reflect.DeepEqual(id.Caps, []string{"net_bind_service"}) {
		t.Fatalf("caps %v", id.Caps)
	}
	want := "--reuid 1337 --regid 2000 --groups 4000,3000 --bounding-set -all,+net_bind_service --inh-caps -all --no-new-privs"
	if got := strings.Join(id.SetprivArgs(), " "); got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
}

func TestIdentityNonRootWithoutAddHasNoCaps(t *testing.T) {
	pod := &corev1.Pod{}
	c := &corev1.Container{SecurityContext: &corev1.SecurityContext{RunAsUser: i64(1337), RunAsGroup: i64(1337)}}
	id, _ := ResolveIdentity(pod, c)
	if len(id.Caps) != 0 || id.AllCaps {
		t.Fatalf("%+v", id)
	}
	if got := strings.Join(id.SetprivArgs(), " "); !strings.Contains(got, "--bounding-set -all --inh-caps") {
		t.Fatal(got)
	}
}

func TestIdentityRootAddDrop(t *testing.T) {
	c := &corev1.Container{SecurityContext: &corev1.SecurityContext{Capabilities: &corev1.Capabilities{
		Add: []corev1.Capability{"CAP_NET_ADMIN", "net_raw"}, Drop: []corev1.Capability{"KILL", "MKNOD"},
	}}}
	id, err := ResolveIdentity(&corev1.Pod{}, c)
	if err != nil {
		t.Fatal(err)
	}
	has := map[string]bool{}
	for _, c := range id.Caps {
		has[c] = true
	}
	if !has["net_admin"] || !has["net_raw"] || has["kill"] || has["mknod"] || !has["chown"] {
		t.Fatalf("%v", id.Caps)
	}
	// lanemesh-init: root, drop ALL, add NET_ADMIN+NET_RAW.
	c.SecurityContext.Capabilities.Drop = []corev1.Capability{"ALL"}
	id, _ = ResolveIdentity(&corev1.Pod{}, c)
	if !reflect.DeepEqual(id.Caps, []string{"net_admin", "net_raw"}) {
		t.Fatalf("%v", id.Caps)
	}
}

func TestIdentityPrivilegedAndErrors(t *testing.T) {
	c := &corev1.Container{SecurityContext: &corev1.SecurityContext{Privileged: boolp(true), AllowPrivilegeEscalation: boolp(false)}}
	id, _ := ResolveIdentity(&corev1.Pod{}, c)
	if !id.AllCaps || id.NoNewPrivs {
		t.Fatalf("%+v", id)
	}
	if strings.Contains(strings.Join(id.SetprivArgs(), " "), "bounding") {
		t.Fatal("privileged must keep the bounding set")
	}
	c = &corev1.Container{SecurityContext: &corev1.SecurityContext{RunAsNonRoot: boolp(true)}}
	if _, err := ResolveIdentity(&corev1.Pod{}, c); err == nil || !strings.Contains(err.Error(), "runAsNonRoot") {
		t.Fatalf("runAsNonRoot with root: %v", err)
	}
	c = &corev1.Container{SecurityContext: &corev1.SecurityContext{Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"FLY"}}}}
	if _, err := ResolveIdentity(&corev1.Pod{}, c); err == nil {
		t.Fatal("unknown capability accepted")
	}
}
