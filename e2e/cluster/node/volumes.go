package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// MountError is a volume that cannot be set up yet (the kubelet's FailedMount):
// the pod stays ContainerCreating and the node retries.
type MountError struct {
	Volume string
	Err    error
}

func (e *MountError) Error() string {
	return fmt.Sprintf("MountVolume.SetUp failed for volume %q : %v", e.Volume, e.Err)
}

// fileSpec is one file of a projected payload.
type fileSpec struct {
	Data []byte
	Mode os.FileMode
}

// VolumeManager materialises a pod's volumes under <pod dir>/volumes.
type VolumeManager struct {
	Client  kubernetes.Interface
	Objects ObjectSource
	Node    *Config
	State   *StateStore
	Alloc   corev1.ResourceList
}

// podVolumes is the prepared state of one pod's volumes.
type podVolumes struct {
	dir string
	// paths maps a volume name to its host path (the directory or hostPath).
	paths map[string]string
	// tokenRefresh is when a projected volume's token is due (80% of its lifetime).
	tokenRefresh map[string]time.Time
}

// ownership returns who should own projected files: root:fsGroup when the
// pod has an fsGroup; otherwise the single non-root runAsUser all containers
// share (so a 0600 token is readable by it); otherwise root.
func ownership(pod *corev1.Pod) (uid, gid int, groupRead bool) {
	uid, gid = -1, -1
	if sc := pod.Spec.SecurityContext; sc != nil && sc.FSGroup != nil {
		return 0, int(*sc.FSGroup), true
	}
	users := map[int64]bool{}
	all := append(append([]corev1.Container{}, pod.Spec.InitContainers...), pod.Spec.Containers...)
	for i := range all {
		id, err := ResolveIdentity(pod, &all[i])
		if err != nil {
			continue
		}
		users[id.UID] = true
	}
	if len(users) == 1 {
		for u := range users {
			if u != 0 {
				return int(u), -1, false
			}
		}
	}
	return -1, -1, false
}

// Prepare creates or refreshes every volume of pod. ctx carries the pod IP
// for downward API files. It is idempotent and cheap when nothing changed.
func (vm *VolumeManager) Prepare(ctx context.Context, pod *corev1.Pod, pv *podVolumes, env PodEnvContext, forceTokens bool) error {
	if pv.paths == nil {
		pv.paths = map[string]string{}
	}
	if pv.tokenRefresh == nil {
		pv.tokenRefresh = map[string]time.Time{}
	}
	uid, gid, groupRead := ownership(pod)
	for i := range pod.Spec.Volumes {
		v := &pod.Spec.Volumes[i]
		dir := filepath.Join(pv.dir, "volumes", v.Name)
		var err error
		switch {
		case v.EmptyDir != nil:
			err = vm.emptyDir(dir, v.EmptyDir, gid)
			pv.paths[v.Name] = dir
		case v.HostPath != nil:
			err = hostPath(v.HostPath)
			pv.paths[v.Name] = v.HostPath.Path
		case v.Secret != nil, v.ConfigMap != nil, v.DownwardAPI != nil, v.Projected != nil:
			due, ok := pv.tokenRefresh[v.Name]
			if _, done := pv.paths[v.Name]; done && v.Projected != nil && hasToken(v.Projected) && !forceTokens && ok && time.Now().Before(due) {
				// Token still fresh: refresh the other sources only when asked (forceTokens on resync).
				continue
			}
			var files map[string]fileSpec
			var refresh time.Time
			files, refresh, err = vm.payload(ctx, pod, v, env)
			if err == nil {
				err = writeAtomic(dir, files, uid, gid, groupRead)
			}
			if err == nil {
				pv.paths[v.Name] = dir
				if !refresh.IsZero() {
					pv.tokenRefresh[v.Name] = refresh
				}
			}
		default:
			err = fmt.Errorf("volume type not supported by lanemesh-node (emptyDir, hostPath, secret, configMap, downwardAPI and projected are)")
		}
		if err != nil {
			return &MountError{Volume: v.Name, Err: err}
		}
	}
	return nil
}

func hasToken(p *corev1.ProjectedVolumeSource) bool {
	for _, s := range p.Sources {
		if s.ServiceAccountToken != nil {
			return true
		}
	}
	return false
}

// NextTokenRefresh is the earliest token refresh due.
func (pv *podVolumes) NextTokenRefresh() time.Time {
	var next time.Time
	for _, t := range pv.tokenRefresh {
		if next.IsZero() || t.Before(next) {
			next = t
		}
	}
	return next
}

func (vm *VolumeManager) emptyDir(dir string, src *corev1.EmptyDirVolumeSource, gid int) error {
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return err
	}
	if src.Medium == corev1.StorageMediumMemory && !isMountPoint(dir) {
		opts := "mode=0777"
		if src.SizeLimit != nil && !src.SizeLimit.IsZero() {
			opts += fmt.Sprintf(",size=%d", src.SizeLimit.Value())
		}
		if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
			return fmt.Errorf("mounting tmpfs: %w", err)
		}
	}
	if gid >= 0 {
		_ = os.Chown(dir, 0, gid)
	}
	return os.Chmod(dir, 0o777)
}

func isMountPoint(dir string) bool {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && unescapeMountinfo(f[4]) == dir {
			return true
		}
	}
	return false
}

func hostPath(src *corev1.HostPathVolumeSource) error {
	p := src.Path
	t := corev1.HostPathUnset
	if src.Type != nil {
		t = *src.Type
	}
	st, statErr := os.Stat(p)
	switch t {
	case corev1.HostPathUnset:
		return nil
	case corev1.HostPathDirectoryOrCreate:
		if statErr != nil {
			return os.MkdirAll(p, 0o755)
		}
		if !st.IsDir() {
			return fmt.Errorf("hostPath type check failed: %s is not a directory", p)
		}
	case corev1.HostPathDirectory:
		if statErr != nil || !st.IsDir() {
			return fmt.Errorf("hostPath type check failed: %s is not a directory", p)
		}
	case corev1.HostPathFileOrCreate:
		if statErr != nil {
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return err
			}
			f, err := os.OpenFile(p, os.O_CREATE|os.O_RDWR, 0o644)
			if err != nil {
				return err
			}
			return f.Close()
		}
		if !st.Mode().IsRegular() {
			return fmt.Errorf("hostPath type check failed: %s is not a file", p)
		}
	case corev1.HostPathFile:
		if statErr != nil || !st.Mode().IsRegular() {
			return fmt.Errorf("hostPath type check failed: %s is not a file", p)
		}
	case corev1.HostPathSocket:
		if statErr != nil || st.Mode()&os.ModeSocket == 0 {
			return fmt.Errorf("hostPath type check failed: %s is not a socket file", p)
		}
	case corev1.HostPathCharDev:
		if statErr != nil || st.Mode()&os.ModeCharDevice == 0 {
			return fmt.Errorf("hostPath type check failed: %s is not a character device", p)
		}
	case corev1.HostPathBlockDev:
		if statErr != nil || st.Mode()&os.ModeDevice == 0 || st.Mode()&os.ModeCharDevice != 0 {
			return fmt.Errorf("hostPath type check failed: %s is not a block device", p)
		}
	default:
		return fmt.Errorf("unknown hostPath type %q", t)
	}
	return nil
}

func modeOr(m *int32, def int32) os.FileMode {
	if m != nil {
		return os.FileMode(*m) & 0o777
	}
	return os.FileMode(def) & 0o777
}

// payload computes the files of a secret, configMap, downwardAPI or projected
// volume, and when a token in it is due for refresh.
func (vm *VolumeManager) payload(ctx context.Context, pod *corev1.Pod, v *corev1.Volume, env PodEnvContext) (map[string]fileSpec, time.Time, error) {
	files := map[string]fileSpec{}
	var refresh time.Time
	switch {
	case v.Secret != nil:
		err := vm.secretFiles(files, pod, v.Secret.SecretName, v.Secret.Items, v.Secret.Optional, modeOr(v.Secret.DefaultMode, corev1.SecretVolumeSourceDefaultMode))
		return files, refresh, err
	case v.ConfigMap != nil:
		err := vm.configMapFiles(files, pod, v.ConfigMap.Name, v.ConfigMap.Items, v.ConfigMap.Optional, modeOr(v.ConfigMap.DefaultMode, corev1.ConfigMapVolumeSourceDefaultMode))
		return files, refresh, err
	case v.DownwardAPI != nil:
		err := vm.downwardFiles(files, pod, v.DownwardAPI.Items, modeOr(v.DownwardAPI.DefaultMode, corev1.DownwardAPIVolumeSourceDefaultMode), env)
		return files, refresh, err
	case v.Projected != nil:
		def := modeOr(v.Projected.DefaultMode, corev1.ProjectedVolumeSourceDefaultMode)
		for _, s := range v.Projected.Sources {
			var err error
			switch {
			case s.Secret != nil:
				err = vm.secretFiles(files, pod, s.Secret.Name, s.Secret.Items, s.Secret.Optional, def)
			case s.ConfigMap != nil:
				err = vm.configMapFiles(files, pod, s.ConfigMap.Name, s.ConfigMap.Items, s.ConfigMap.Optional, def)
			case s.DownwardAPI != nil:
				err = vm.downwardFiles(files, pod, s.DownwardAPI.Items, def, env)
			case s.ServiceAccountToken != nil:
				var due time.Time
				due, err = vm.tokenFile(ctx, files, pod, s.ServiceAccountToken, def)
				if err == nil && (refresh.IsZero() || due.Before(refresh)) {
					refresh = due
				}
			case s.ClusterTrustBundle != nil:
				err = fmt.Errorf("clusterTrustBundle projections are not supported by lanemesh-node")
			default:
				err = fmt.Errorf("unsupported projected volume source")
			}
			if err != nil {
				return nil, refresh, err
			}
		}
		return files, refresh, nil
	}
	return nil, refresh, fmt.Errorf("not a projected volume")
}

func (vm *VolumeManager) secretFiles(files map[string]fileSpec, pod *corev1.Pod, name string, items []corev1.KeyToPath, optional *bool, def os.FileMode) error {
	s, err := vm.Objects.Secret(pod.Namespace, name)
	if err != nil {
		if apierrors.IsNotFound(err) {
			if optional != nil && *optional {
				return nil
			}
			return fmt.Errorf("secret %q not found", name)
		}
		return err
	}
	return project(files, s.Data, items, optional, def, "secret", name)
}

func (vm *VolumeManager) configMapFiles(files map[string]fileSpec, pod *corev1.Pod, name string, items []corev1.KeyToPath, optional *bool, def os.FileMode) error {
	cm, err := vm.Objects.ConfigMap(pod.Namespace, name)
	if err != nil {
		if apierrors.IsNotFound(err) {
			if optional != nil && *optional {
				return nil
			}
			return fmt.Errorf("configmap %q not found", name)
		}
		return err
	}
	data := make(map[string][]byte, len(cm.Data)+len(cm.BinaryData))
	for k, v := range cm.Data {
		data[k] = []byte(v)
	}
	for k, v := range cm.BinaryData {
		data[k] = v
	}
	return project(files, data, items, optional, def, "configmap", name)
}

// project adds keys (all, or the listed items with their paths and modes) to files.
func project(files map[string]fileSpec, data map[string][]byte, items []corev1.KeyToPath, optional *bool, def os.FileMode, kind, name string) error {
	if len(items) == 0 {
		for k, v := range data {
			files[k] = fileSpec{Data: v, Mode: def}
		}
		return nil
	}
	for _, it := range items {
		v, ok := data[it.Key]
		if !ok {
			if optional != nil && *optional {
				continue
			}
			return fmt.Errorf("configuration of %s %q has no key %q", kind, name, it.Key)
		}
		files[it.Path] = fileSpec{Data: v, Mode: modeOr(it.Mode, int32(def))}
	}
	return nil
}

func (vm *VolumeManager) downwardFiles(files map[string]fileSpec, pod *corev1.Pod, items []corev1.DownwardAPIVolumeFile, def os.FileMode, env PodEnvContext) error {
	for _, it := range items {
		var val string
		var err error
		switch {
		case it.FieldRef != nil:
			val, err = PodFieldValue(pod, it.FieldRef.FieldPath, env)
		case it.ResourceFieldRef != nil:
			val, err = ContainerResourceValue(pod, nil, it.ResourceFieldRef, vm.Alloc)
		default:
			err = fmt.Errorf("downwardAPI item %q has no fieldRef or resourceFieldRef", it.Path)
		}
		if err != nil {
			return err
		}
		files[it.Path] = fileSpec{Data: []byte(val), Mode: modeOr(it.Mode, int32(def))}
	}
	return nil
}

// tokenFile asks the API server for a token bound to the pod (TokenRequest)
// and returns when to refresh it: at 80% of the requested lifetime (the
// server may extend the token's own expiry), at most 24h.
func (vm *VolumeManager) tokenFile(ctx context.Context, files map[string]fileSpec, pod *corev1.Pod, src *corev1.ServiceAccountTokenProjection, def os.FileMode) (time.Time, error) {
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	exp := int64(3600)
	if src.ExpirationSeconds != nil {
		exp = *src.ExpirationSeconds
	}
	req := &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{
			ExpirationSeconds: &exp,
			BoundObjectRef: &authenticationv1.BoundObjectReference{
				Kind:       "Pod",
				APIVersion: "v1",
				Name:       pod.Name,
				UID:        pod.UID,
			},
		},
	}
	if src.Audience != "" {
		req.Spec.Audiences = []string{src.Audience}
	}
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	issued := time.Now()
	tr, err := vm.Client.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(cctx, sa, req, metav1.CreateOptions{})
	if err != nil {
		return time.Time{}, fmt.Errorf("failed to fetch token: %w", err)
	}
	lifetime := time.Duration(exp) * time.Second
	if tr.Spec.ExpirationSeconds != nil && *tr.Spec.ExpirationSeconds < exp {
		lifetime = time.Duration(*tr.Spec.ExpirationSeconds) * time.Second
	}
	if lifetime > 24*time.Hour {
		lifetime = 24 * time.Hour
	}
	mode := def
	files[src.Path] = fileSpec{Data: []byte(tr.Status.Token), Mode: mode}
	return issued.Add(lifetime * 8 / 10), nil
}

// writeAtomic writes files into dir the way the kubelet's AtomicWriter does:
// the payload goes into a fresh `..<timestamp>` directory, `..data` is
// switched to it with one rename, and each top-level name is a symlink
// through `..data`, so a reader never sees a half-written update. Nothing is
// written when the payload is unchanged.
func writeAtomic(dir string, files map[string]fileSpec, uid, gid int, groupRead bool) error {
	for p := range files {
		if err := validPayloadPath(p); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	_ = os.Chmod(dir, 0o755)
	if gid >= 0 || uid >= 0 {
		_ = os.Lchown(dir, uid, gid)
	}
	dataLink := filepath.Join(dir, "..data")
	if cur, err := os.Readlink(dataLink); err == nil && payloadEqual(filepath.Join(dir, cur), files, groupRead) {
		return nil
	}
	ts, err := os.MkdirTemp(dir, ".."+time.Now().UTC().Format("2006_01_02_15_04_05.")+"")
	if err != nil {
		return err
	}
	_ = os.Chmod(ts, 0o755)
	if gid >= 0 || uid >= 0 {
		_ = os.Lchown(ts, uid, gid)
	}
	for p, f := range files {
		full := filepath.Join(ts, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return err
		}
		mode := f.Mode
		if groupRead {
			mode |= 0o440
		}
		if err := os.WriteFile(full, f.Data, mode); err != nil {
			return err
		}
		if err := os.Chmod(full, mode); err != nil {
			return err
		}
		if gid >= 0 || uid >= 0 {
			if err := os.Lchown(full, uid, gid); err != nil {
				return err
			}
			for d := filepath.Dir(full); d != ts; d = filepath.Dir(d) {
				_ = os.Lchown(d, uid, gid)
			}
		}
	}
	tmpLink := filepath.Join(dir, "..data_tmp")
	_ = os.Remove(tmpLink)
	if err := os.Symlink(filepath.Base(ts), tmpLink); err != nil {
		return err
	}
	if err := os.Rename(tmpLink, dataLink); err != nil {
		return err
	}
	top := map[string]bool{}
	for p := range files {
		top[strings.SplitN(p, "/", 2)[0]] = true
	}
	for name := range top {
		link := filepath.Join(dir, name)
		if target, err := os.Readlink(link); err == nil && target == filepath.Join("..data", name) {
			continue
		}
		_ = os.RemoveAll(link)
		if err := os.Symlink(filepath.Join("..data", name), link); err != nil {
			return err
		}
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		n := e.Name()
		if strings.HasPrefix(n, "..") {
			if n != "..data" && n != filepath.Base(ts) {
				_ = os.RemoveAll(filepath.Join(dir, n))
			}
			continue
		}
		if !top[n] {
			_ = os.RemoveAll(filepath.Join(dir, n))
		}
	}
	return nil
}

func validPayloadPath(p string) error {
	if p == "" || filepath.IsAbs(p) {
		return fmt.Errorf("invalid path %q: must be relative", p)
	}
	for _, part := range strings.Split(p, "/") {
		if part == ".." || part == "" {
			return fmt.Errorf("invalid path %q: must not contain '..' or empty elements", p)
		}
	}
	if strings.HasPrefix(p, "..") {
		return fmt.Errorf("invalid path %q: must not start with '..'", p)
	}
	return nil
}

func payloadEqual(dir string, files map[string]fileSpec, groupRead bool) bool {
	count := 0
	err := filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if info.IsDir() {
			return nil
		}
		count++
		rel, _ := filepath.Rel(dir, path)
		f, ok := files[rel]
		if !ok {
			return fmt.Errorf("extra")
		}
		mode := f.Mode
		if groupRead {
			mode |= 0o440
		}
		if info.Mode().Perm() != mode.Perm() {
			return fmt.Errorf("mode")
		}
		b, err := os.ReadFile(path)
		if err != nil || !bytes.Equal(b, f.Data) {
			return fmt.Errorf("data")
		}
		return nil
	})
	return err == nil && count == len(files)
}
