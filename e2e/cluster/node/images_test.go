package main

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

func TestNormalizeImage(t *testing.T) {
	cases := map[string]string{
		"busybox":                              "busybox",
		"busybox:1.36":                         "busybox",
		"docker.io/library/busybox:latest":     "busybox",
		"docker.io/busybox":                    "busybox",
		"library/busybox":                      "busybox",
		"index.docker.io/library/busybox":      "busybox",
		"lanemesh/proxy:dev":                   "lanemesh/proxy",
		"docker.io/lanemesh/proxy@sha256:abcd": "lanemesh/proxy",
		"lanemesh/proxy:v1@sha256:abcd":        "lanemesh/proxy",
		"localhost:5000/app:v1":                "localhost:5000/app",
		"localhost:5000/app":                   "localhost:5000/app",
		"ghcr.io/org/app:1.2":                  "ghcr.io/org/app",
		"  busybox:1 ":                         "busybox",
	}
	for in, want := range cases {
		if got := NormalizeImage(in); got != want {
			t.Errorf("NormalizeImage(%q) = %q, want %q", in, got, want)
		}
	}
}

const tableYAML = `
images:
  lanemesh/proxy: {entrypoint: [/bin/lanemesh-proxy]}
  lanemesh/demo-java: {entrypoint: [java, -jar, /path/demo.jar], workingDir: /srv}
  docker.io/library/busybox:1.36: {entrypoint: [], cmd: [sh]}
  py:
    entrypoint: [python3]
    cmd: [-m, http.server]
    env: {B: "2", A: "1"}
  listenv:
    entrypoint: [env]
    env: ["X=1", "Y=a=b"]
`

func TestParseImageTableYAML(t *testing.T) {
	tab, err := ParseImageTable([]byte(tableYAML))
	if err != nil {
		t.Fatal(err)
	}
	if tab.Len() != 5 {
		t.Fatalf("len %d", tab.Len())
	}
	e, name, ok := tab.Lookup("docker.io/library/busybox:latest")
	if !ok || name != "busybox" || len(e.Entrypoint) != 0 || !reflect.DeepEqual(e.Cmd, []string{"sh"}) {
		t.Fatalf("busybox: %v %q %+v", ok, name, e)
	}
	e, _, ok = tab.Lookup("lanemesh/demo-java:v2")
	if !ok || e.WorkingDir != "/srv" || e.Entrypoint[0] != "java" {
		t.Fatalf("java: %+v", e)
	}
	e, _, _ = tab.Lookup("py")
	if !reflect.DeepEqual(e.Env, ImageEnv{{"A", "1"}, {"B", "2"}}) {
		t.Fatalf("map env sorted: %+v", e.Env)
	}
	e, _, _ = tab.Lookup("listenv:1")
	if !reflect.DeepEqual(e.Env, ImageEnv{{"X", "1"}, {"Y", "a=b"}}) {
		t.Fatalf("list env: %+v", e.Env)
	}
	if _, _, ok := tab.Lookup("nginx"); ok {
		t.Fatal("nginx should be missing")
	}
}

func TestParseImageTableJSON(t *testing.T) {
	tab, err := ParseImageTable([]byte(`{"images": {"a/b:1": {"entrypoint": ["/x"], "cmd": ["y"]}}}`))
	if err != nil {
		t.Fatal(err)
	}
	if e, _, ok := tab.Lookup("docker.io/a/b:2"); !ok || e.Entrypoint[0] != "/x" {
		t.Fatalf("%v %+v", ok, e)
	}
}

func TestParseImageTableErrors(t *testing.T) {
	for name, doc := range map[string]string{
		"no images":     `foo: {}`,
		"unknown field": "images:\n  a: {entrypont: [x]}\n",
		"duplicate":     "images:\n  busybox: {cmd: [sh]}\n  docker.io/library/busybox:1: {cmd: [sh]}\n",
		"bad env":       "images:\n  a: {cmd: [x], env: [\"NOEQUALS\"]}\n",
		"not yaml":      "images: [",
	} {
		if _, err := ParseImageTable([]byte(doc)); err == nil {
			t.Errorf("%s: expected an error", name)
		}
	}
}

func TestContainerArgv(t *testing.T) {
	img := ImageEntry{Entrypoint: []string{"/ep", "-x"}, Cmd: []string{"c1", "c2"}}
	env := map[string]string{"A": "alpha"}
	cases := []struct {
		cmd, args, want []string
	}{
		{nil, nil, []string{"/ep", "-x", "c1", "c2"}},
		{nil, []string{"a", "$(A)"}, []string{"/ep", "-x", "a", "alpha"}},
		{[]string{"/bin/sh", "-c"}, nil, []string{"/bin/sh", "-c"}},
		{[]string{"/bin/sh", "-c"}, []string{"echo $(A) $$(A) $(B)"}, []string{"/bin/sh", "-c", "echo alpha $(A) $(B)"}},
	}
	for _, c := range cases {
		got := ContainerArgv(img, &corev1.Container{Command: c.cmd, Args: c.args}, env)
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("command %v args %v: got %v want %v", c.cmd, c.args, got, c.want)
		}
	}
}

func TestImageSourceReloads(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "images.yaml")
	if err := os.WriteFile(p, []byte("images:\n  a: {cmd: [x]}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := NewImageSource(p)
	if err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(2 * time.Second)
	if err := os.WriteFile(p, []byte("images:\n  a: {cmd: [x]}\n  b: {cmd: [y]}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_ = os.Chtimes(p, later, later)
	tab, err := s.Get()
	if err != nil || tab.Len() != 2 {
		t.Fatalf("reload: %v %v", tab, err)
	}
	// A broken edit keeps the last good table and says so.
	if err := os.WriteFile(p, []byte("images: ["), 0o644); err != nil {
		t.Fatal(err)
	}
	later = later.Add(2 * time.Second)
	_ = os.Chtimes(p, later, later)
	tab, err = s.Get()
	if err == nil || tab == nil || tab.Len() != 2 || !strings.Contains(err.Error(), "last good") {
		t.Fatalf("broken reload: %v %v", tab, err)
	}
}
