package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"
)

func TestWriteAtomic(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "vol")
	files := map[string]fileSpec{
		"token":       {Data: []byte("t1"), Mode: 0o600},
		"ca.crt":      {Data: []byte("ca"), Mode: 0o644},
		"sub/dir/key": {Data: []byte("k"), Mode: 0o400},
	}
	if err := writeAtomic(dir, files, -1, -1, false); err != nil {
		t.Fatal(err)
	}
	read := func(p string) string {
		b, err := os.ReadFile(filepath.Join(dir, p))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	if read("token") != "t1" || read("ca.crt") != "ca" || read("sub/dir/key") != "k" {
		t.Fatal("content")
	}
	if l, _ := os.Readlink(filepath.Join(dir, "token")); l != "..data/token" {
		t.Fatalf("token is not a ..data symlink: %q", l)
	}
	st, _ := os.Stat(filepath.Join(dir, "token"))
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", st.Mode())
	}
	first, _ := os.Readlink(filepath.Join(dir, "..data"))
	// Unchanged payload: nothing rewritten.
	if err := writeAtomic(dir, files, -1, -1, false); err != nil {
		t.Fatal(err)
	}
	if again, _ := os.Readlink(filepath.Join(dir, "..data")); again != first {
		t.Fatal("unchanged payload was rewritten")
	}
	// Changed payload: new ..data, old timestamp dir and dropped key gone.
	delete(files, "ca.crt")
	files["token"] = fileSpec{Data: []byte("t2"), Mode: 0o600}
	if err := writeAtomic(dir, files, -1, -1, true); err != nil {
		t.Fatal(err)
	}
	if read("token") != "t2" {
		t.Fatal("not updated")
	}
	if _, err := os.Lstat(filepath.Join(dir, "ca.crt")); !os.IsNotExist(err) {
		t.Fatal("stale key kept")
	}
	if _, err := os.Stat(filepath.Join(dir, first)); !os.IsNotExist(err) {
		t.Fatal("old payload dir kept")
	}
	st, _ = os.Stat(filepath.Join(dir, "token"))
	if st.Mode().Perm() != 0o640 {
		t.Fatalf("groupRead mode %v", st.Mode())
	}
	for _, bad := range []string{"../x", "/abs", "a/../../b", "..data"} {
		if err := writeAtomic(dir, map[string]fileSpec{bad: {}}, -1, -1, false); err == nil {
			t.Errorf("path %q accepted", bad)
		}
	}
}

func TestProjectItemsAndOptional(t *testing.T) {
	files := map[string]fileSpec{}
	data := map[string][]byte{"a": []byte("1"), "b": []byte("2")}
	mode := int32(0o400)
	if err := project(files, data, []corev1.KeyToPath{{Key: "a", Path: "x/a.txt", Mode: &mode}}, nil, 0o644, "configmap", "c"); err != nil {
		t.Fatal(err)
	}
	if len(files) != 1 || files["x/a.txt"].Mode != 0o400 {
		t.Fatalf("%+v", files)
	}
	if err := project(map[string]fileSpec{}, data, []corev1.KeyToPath{{Key: "zz", Path: "z"}}, nil, 0o644, "configmap", "c"); err == nil || !strings.Contains(err.Error(), "no key") {
		t.Fatalf("missing key: %v", err)
	}
	opt := true
	if err := project(map[string]fileSpec{}, data, []corev1.KeyToPath{{Key: "zz", Path: "z"}}, &opt, 0o644, "configmap", "c"); err != nil {
		t.Fatal(err)
	}
}

func TestOwnership(t *testing.T) {
	pod := &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{
		{Name: "a", SecurityContext: &corev1.SecurityContext{RunAsUser: i64(1337)}},
		{Name: "b", SecurityContext: &corev1.SecurityContext{RunAsUser: i64(1337)}},
	}}}
	if u, g, gr := ownership(pod); u != 1337 || g != -1 || gr {
		t.Fatalf("single user: %d %d %v", u, g, gr)
	}
	pod.Spec.Containers[1].SecurityContext = nil
	if u, g, _ := ownership(pod); u != -1 || g != -1 {
		t.Fatalf("mixed users: %d %d", u, g)
	}
	pod.Spec.SecurityContext = &corev1.PodSecurityContext{FSGroup: i64(2000)}
	if u, g, gr := ownership(pod); u != 0 || g != 2000 || !gr {
		t.Fatalf("fsGroup: %d %d %v", u, g, gr)
	}
	_ = metav1.Now()
}

func TestSeekTail(t *testing.T) {
	p := filepath.Join(t.TempDir(), "log")
	if err := os.WriteFile(p, []byte("one\ntwo\nthree\nfour\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for n, want := range map[int]string{1: "four\n", 2: "three\nfour\n", 10: "one\ntwo\nthree\nfour\n"} {
		f, _ := os.Open(p)
		if err := seekTail(f, n); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 100)
		k, _ := f.Read(b)
		f.Close()
		if string(b[:k]) != want {
			t.Errorf("tail %d = %q, want %q", n, b[:k], want)
		}
	}
}

func TestPodNetNames(t *testing.T) {
	ns, veth := podNetNames("0f4c6a2e-1b2c-4d5e-8f90-123456789abc")
	if ns != "lm-0f4c6a2e1b2c" || veth != "lmv0f4c6a2e1b2" || len(veth) > 15 {
		t.Fatalf("%s %s", ns, veth)
	}
}

func TestParseFlags(t *testing.T) {
	var sink strings.Builder
	cfg, err := ParseFlags([]string{"--kubeconfig", "k", "--images", "i.yaml", "--state-dir", "s"}, &sink)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.NodeName != "lanemesh-node" || cfg.BridgeIP.String() != "10.244.0.1" || cfg.NodeIP.String() != "10.244.0.1" || !filepath.IsAbs(cfg.StateDir) {
		t.Fatalf("%+v", cfg)
	}
	cfg, err = ParseFlags([]string{"--kubeconfig", "k", "--images", "i", "--state-dir", "s", "--pod-cidr", "10.9.0.0/16", "--node-ip", "192.0.2.9"}, &sink)
	if err != nil || cfg.BridgeIP.String() != "10.9.0.1" || cfg.NodeIP.String() != "192.0.2.9" {
		t.Fatalf("%+v %v", cfg, err)
	}
	for _, bad := range [][]string{
		{},
		{"--kubeconfig", "k", "--images", "i", "--state-dir", "s", "--pod-cidr", "fd00::/64"},
		{"--kubeconfig", "k", "--images", "i", "--state-dir", "s", "--bridge", "a-very-long-bridge-name"},
		{"--kubeconfig", "k", "--images", "i", "--state-dir", "s", "extra"},
	} {
		if _, err := ParseFlags(bad, &sink); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
}

func TestProjectedTokenRequestAndRefresh(t *testing.T) {
	client := fake.NewSimpleClientset()
	var requests []*authenticationv1.TokenRequest
	client.PrependReactor("create", "serviceaccounts", func(a clienttesting.Action) (bool, runtime.Object, error) {
		ca, ok := a.(clienttesting.CreateAction)
		if !ok || a.GetSubresource() != "token" {
			return false, nil, nil
		}
		tr := ca.GetObject().(*authenticationv1.TokenRequest).DeepCopy()
		requests = append(requests, tr)
		tr.Status.Token = fmt.Sprintf("token-%d", len(requests))
		return true, tr, nil
	})
	objs := fakeObjects{cms: map[string]*corev1.ConfigMap{"ns/kube-root-ca.crt": {Data: map[string]string{"ca.crt": "CA"}}}}
	vm := &VolumeManager{Client: client, Objects: objs}
	exp := int64(600)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p", UID: "uid-1"},
		Spec: corev1.PodSpec{
			ServiceAccountName: "sa",
			Volumes: []corev1.Volume{{Name: "tok", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{
				{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Audience: "lanemesh", ExpirationSeconds: &exp, Path: "lanemesh-token"}},
				{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "kube-root-ca.crt"}, Items: []corev1.KeyToPath{{Key: "ca.crt", Path: "ca.crt"}}}},
			}}}}},
		},
	}
	pv := &podVolumes{dir: t.TempDir()}
	before := time.Now()
	if err := vm.Prepare(context.Background(), pod, pv, PodEnvContext{}, false); err != nil {
		t.Fatal(err)
	}
	if len(requests) != 1 {
		t.Fatalf("%d token requests", len(requests))
	}
	r := requests[0]
	if r.Spec.Audiences[0] != "lanemesh" || *r.Spec.ExpirationSeconds != 600 || r.Spec.BoundObjectRef.Kind != "Pod" ||
		r.Spec.BoundObjectRef.Name != "p" || r.Spec.BoundObjectRef.UID != "uid-1" {
		t.Fatalf("request %+v", r.Spec)
	}
	read := func() string {
		b, _ := os.ReadFile(filepath.Join(pv.dir, "volumes", "tok", "lanemesh-token"))
		return string(b)
	}
	if read() != "token-1" {
		t.Fatalf("token %q", read())
	}
	due := pv.NextTokenRefresh()
	if d := due.Sub(before); d < 475*time.Second || d > 485*time.Second {
		t.Fatalf("refresh due after %v, want 80%% of 600s", d)
	}
	// Not due: no new request.
	if err := vm.Prepare(context.Background(), pod, pv, PodEnvContext{}, false); err != nil || len(requests) != 1 {
		t.Fatalf("early refresh: %v %d", err, len(requests))
	}
	// Due: a new token, written atomically in place.
	pv.tokenRefresh["tok"] = time.Now().Add(-time.Second)
	if err := vm.Prepare(context.Background(), pod, pv, PodEnvContext{}, false); err != nil {
		t.Fatal(err)
	}
	if len(requests) != 2 || read() != "token-2" {
		t.Fatalf("refresh: %d %q", len(requests), read())
	}
	if b, _ := os.ReadFile(filepath.Join(pv.dir, "volumes", "tok", "ca.crt")); string(b) != "CA" {
		t.Fatal("ca.crt lost on refresh")
	}
}
