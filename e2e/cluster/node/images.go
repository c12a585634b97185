package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"sigs.k8s.io/yaml"
)

// ImageEntry is what an image reference stands for on this node: the local
// executable and its defaults, like a container image's config
// (ENTRYPOINT, CMD, ENV, WORKDIR).
type ImageEntry struct {
	// Entrypoint is replaced by a container's `command`.
	Entrypoint []string `json:"entrypoint,omitempty"`
	// Cmd is replaced by a container's `args`.
	Cmd []string `json:"cmd,omitempty"`
	// Env is added to the container's environment; the pod's env wins.
	Env ImageEnv `json:"env,omitempty"`
	// WorkingDir is used when the container sets no workingDir.
	WorkingDir string `json:"workingDir,omitempty"`
}

// ImageEnv is an image's environment, in order. In the table it is either a
// map (`{K: V}`, applied sorted by key) or a list of `K=V` strings (Docker's
// Config.Env form).
type ImageEnv []EnvPair

// EnvPair is one environment variable.
type EnvPair struct {
	Name  string
	Value string
}

// UnmarshalJSON accepts a map or a list of "K=V" strings.
func (e *ImageEnv) UnmarshalJSON(data []byte) error {
	data = bytes.TrimSpace(data)
	if bytes.Equal(data, []byte("null")) {
		*e = nil
		return nil
	}
	if len(data) > 0 && data[0] == '[' {
		var list []string
		if err := json.Unmarshal(data, &list); err != nil {
			return fmt.Errorf("env: a list must hold \"NAME=value\" strings: %w", err)
		}
		out := make(ImageEnv, 0, len(list))
		for _, kv := range list {
			name, value, ok := strings.Cut(kv, "=")
			if !ok || name == "" {
				return fmt.Errorf("env: %q is not NAME=value", kv)
			}
			out = append(out, EnvPair{Name: name, Value: value})
		}
		*e = out
		return nil
	}
	var m map[string]string
	if err := json.Unmarshal(data, &m); err != nil {
		return fmt.Errorf("env: must be a map of NAME: value or a list of NAME=value: %w", err)
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		if k == "" {
			return fmt.Errorf("env: empty variable name")
		}
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make(ImageEnv, 0, len(keys))
	for _, k := range keys {
		out = append(out, EnvPair{Name: k, Value: m[k]})
	}
	*e = out
	return nil
}

// MarshalJSON writes the list form (used for the image ID digest).
func (e ImageEnv) MarshalJSON() ([]byte, error) {
	list := make([]string, 0, len(e))
	for _, p := range e {
		list = append(list, p.Name+"="+p.Value)
	}
	return json.Marshal(list)
}

type imageTableFile struct {
	Images map[string]ImageEntry `json:"images"`
}

// ImageTable maps normalised image references (see NormalizeImage) to entries.
type ImageTable struct {
	entries map[string]ImageEntry
}

// ParseImageTable reads the YAML or JSON form:
//
//	images:
//	  lanemesh/proxy: {entrypoint: [/path/lanemesh-proxy]}
//	  busybox: {entrypoint: [], cmd: [sh]}
//
// Keys are normalised like references, so two keys naming the same image
// (`busybox` and `docker.io/library/busybox:1.36`) are an error. Unknown
// fields are an error (a typo must not silently drop an entrypoint).
func ParseImageTable(data []byte) (*ImageTable, error) {
	var f imageTableFile
	if err := yaml.UnmarshalStrict(data, &f); err != nil {
		return nil, err
	}
	if f.Images == nil {
		return nil, fmt.Errorf("no `images:` map")
	}
	t := &ImageTable{entries: make(map[string]ImageEntry, len(f.Images))}
	keys := make([]string, 0, len(f.Images))
	for k := range f.Images {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		n := NormalizeImage(k)
		if n == "" {
			return nil, fmt.Errorf("images: empty image reference %q", k)
		}
		if _, dup := t.entries[n]; dup {
			return nil, fmt.Errorf("images: %q names the same image as another key (%s)", k, n)
		}
		t.entries[n] = f.Images[k]
	}
	return t, nil
}

// Lookup finds the entry for an image reference as written in a pod spec.
func (t *ImageTable) Lookup(ref string) (ImageEntry, string, bool) {
	n := NormalizeImage(ref)
	e, ok := t.entries[n]
	return e, n, ok
}

// Len is the number of images in the table.
func (t *ImageTable) Len() int { return len(t.entries) }

// NormalizeImage drops the digest, the tag and a Docker Hub registry prefix:
// `docker.io/library/busybox:1.36@sha256:..` -> `busybox`,
// `localhost:5000/app:v1` -> `localhost:5000/app`.
func NormalizeImage(ref string) string {
	ref = strings.TrimSpace(ref)
	if i := strings.Index(ref, "@"); i >= 0 {
		ref = ref[:i]
	}
	// A tag is a ':' after the last '/', so a registry port survives.
	if i := strings.LastIndex(ref, ":"); i >= 0 && i > strings.LastIndex(ref, "/") {
		ref = ref[:i]
	}
	for _, p := range []string{"docker.io/", "index.docker.io/", "registry-1.docker.io/"} {
		if strings.HasPrefix(ref, p) {
			ref = strings.TrimPrefix(ref, p)
			break
		}
	}
	// Docker Hub's official images live under library/.
	if strings.HasPrefix(ref, "library/") && strings.Count(ref, "/") == 1 {
		ref = strings.TrimPrefix(ref, "library/")
	}
	return ref
}

// ImageID is a stable identifier for an entry, reported as a container's
// imageID: `<name>@sha256:<digest of the entry>`.
func ImageID(name string, e ImageEntry) string {
	b, _ := json.Marshal(e)
	sum := sha256.Sum256(b)
	return name + "@sha256:" + hex.EncodeToString(sum[:])
}

// ImageSource loads the table file and reloads it when it changes, so entries
// can be added while the node runs. A table that stops parsing keeps the last
// good one (and the error is logged by the caller).
type ImageSource struct {
	path string

	mu      sync.Mutex
	table   *ImageTable
	modTime time.Time
	size    int64
}

// NewImageSource loads path once; a missing or invalid table is an error.
func NewImageSource(path string) (*ImageSource, error) {
	s := &ImageSource{path: path}
	if _, err := s.Get(); err != nil {
		return nil, err
	}
	return s, nil
}

// Path is the table file.
func (s *ImageSource) Path() string { return s.path }

// Get returns the current table, re-reading the file when its size or mtime changed.
func (s *ImageSource) Get() (*ImageTable, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, err := os.Stat(s.path)
	if err != nil {
		if s.table != nil {
			return s.table, fmt.Errorf("image table %s: %w (using the last good table)", s.path, err)
		}
		return nil, fmt.Errorf("image table %s: %w", s.path, err)
	}
	if s.table != nil && st.ModTime().Equal(s.modTime) && st.Size() == s.size {
		return s.table, nil
	}
	data, err := os.ReadFile(s.path)
	if err != nil {
		if s.table != nil {
			return s.table, fmt.Errorf("image table %s: %w (using the last good table)", s.path, err)
		}
		return nil, fmt.Errorf("image table %s: %w", s.path, err)
	}
	t, err := ParseImageTable(data)
	if err != nil {
		if s.table != nil {
			return s.table, fmt.Errorf("image table %s: %w (using the last good table)", s.path, err)
		}
		return nil, fmt.Errorf("image table %s: %w", s.path, err)
	}
	s.table, s.modTime, s.size = t, st.ModTime(), st.Size()
	return t, nil
}
