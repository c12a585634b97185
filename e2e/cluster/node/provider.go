package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"sort"
	"sync"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	"github.com/virtual-kubelet/virtual-kubelet/node/api"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"
	corev1listers "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/record"
	utilexec "k8s.io/utils/exec"
)

// Provider is the virtual-kubelet provider: it runs the pods the
// PodController hands it (node.PodLifecycleHandler + node.PodNotifier) and
// serves logs and exec for the kubelet API.
type Provider struct {
	cfg         *Config
	ctx         context.Context
	log         *slog.Logger
	client      kubernetes.Interface
	tools       Tools
	images      *ImageSource
	ipam        *IPAM
	dns         DNSConfig
	state       *StateStore
	volumes     *VolumeManager
	objects     ObjectSource
	svcLister   corev1listers.ServiceLister
	podLister   corev1listers.PodLister
	recorder    record.EventRecorder
	allocatable corev1.ResourceList

	mu           sync.Mutex
	pods         map[string]*podRuntime
	notifyFn     func(*corev1.Pod)
	dirty        map[*podRuntime]bool
	kick         chan struct{}
	shuttingDown bool
}

// apiObjects reads ConfigMaps and Secrets straight from the API server, so a
// pod sees an object created just before it.
type apiObjects struct{ client kubernetes.Interface }

func (a apiObjects) ConfigMap(ns, name string) (*corev1.ConfigMap, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return a.client.CoreV1().ConfigMaps(ns).Get(ctx, name, metav1.GetOptions{})
}

func (a apiObjects) Secret(ns, name string) (*corev1.Secret, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return a.client.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
}

func (p *Provider) serviceEnv(pod *corev1.Pod) []EnvPair {
	if p.svcLister == nil {
		return nil
	}
	var svcs []*corev1.Service
	if k, err := p.svcLister.Services(metav1.NamespaceDefault).Get("kubernetes"); err == nil {
		svcs = append(svcs, k)
	}
	if pod.Spec.EnableServiceLinks == nil || *pod.Spec.EnableServiceLinks {
		list, _ := p.svcLister.Services(pod.Namespace).List(labels.Everything())
		for _, s := range list {
			if s.Namespace == metav1.NamespaceDefault && s.Name == "kubernetes" {
				continue
			}
			svcs = append(svcs, s)
		}
	}
	return ServiceEnv(svcs)
}

func keyOf(ns, name string) string { return ns + "/" + name }

// CreatePod starts running pod. It returns at once; the status follows
// through NotifyPods.
func (p *Provider) CreatePod(_ context.Context, pod *corev1.Pod) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.shuttingDown {
		return fmt.Errorf("node is shutting down")
	}
	key := keyOf(pod.Namespace, pod.Name)
	if old, ok := p.pods[key]; ok {
		if old.pod.UID == pod.UID {
			return nil
		}
		// An earlier pod of that name is still stopping: start this one after it.
		pod = pod.DeepCopy()
		go func() {
			<-old.done
			if err := p.CreatePod(p.ctx, pod); err != nil {
				p.log.Error("starting pod", "pod", key, "err", err)
			}
		}()
		return nil
	}
	pr := newPodRuntime(p, pod)
	p.pods[key] = pr
	pr.log.Info("starting pod", "uid", pod.UID)
	go pr.run()
	p.enqueueLocked(pr)
	return nil
}

// UpdatePod takes label/annotation changes (downward API files follow) and
// image changes (the container restarts with the new image).
func (p *Provider) UpdatePod(ctx context.Context, pod *corev1.Pod) error {
	p.mu.Lock()
	pr, ok := p.pods[keyOf(pod.Namespace, pod.Name)]
	p.mu.Unlock()
	if !ok || pr.pod.UID != pod.UID {
		return p.CreatePod(ctx, pod)
	}
	var restart []*container
	pr.mu.Lock()
	newPod := pod.DeepCopy()
	for _, list := range [][]*container{pr.inits, pr.apps} {
		for _, c := range list {
			if nc := findContainer(newPod, c.spec.Name); nc != nil && nc.Image != c.spec.Image {
				c.spec.Image = nc.Image
				if c.proc != nil && (!c.init || c.sidecar) {
					restart = append(restart, c)
				}
			}
		}
	}
	pr.pod = newPod
	pr.mu.Unlock()
	for _, c := range restart {
		pr.mu.Lock()
		proc := c.proc
		pr.mu.Unlock()
		if proc != nil {
			pr.event(corev1.EventTypeNormal, "Killing", "Container %s definition changed, will be restarted", c.spec.Name)
			go c.stopInstance(proc, pr.gracePeriod(), true)
		}
	}
	select {
	case pr.resync <- struct{}{}:
	default:
	}
	pr.changed()
	return nil
}

// DeletePod stops the pod (asynchronously) with its deletion grace period.
func (p *Provider) DeletePod(_ context.Context, pod *corev1.Pod) error {
	p.mu.Lock()
	pr, ok := p.pods[keyOf(pod.Namespace, pod.Name)]
	p.mu.Unlock()
	if !ok || (pod.UID != "" && pr.pod.UID != pod.UID) {
		return errdefs.NotFoundf("pod %s/%s is not running on this node", pod.Namespace, pod.Name)
	}
	grace := 30 * time.Second
	if g := pod.Spec.TerminationGracePeriodSeconds; g != nil {
		grace = time.Duration(*g) * time.Second
	}
	if g := pod.DeletionGracePeriodSeconds; g != nil {
		grace = time.Duration(*g) * time.Second
	}
	pr.requestTermination(grace, pod.DeletionTimestamp != nil, "", "")
	return nil
}

// GetPod returns the pod with its current status. A pod that is stopping is
// not found: the pod controller then calls CreatePod for a new pod of the same
// name (a StatefulSet's), which starts once the old one is gone, instead of
// comparing the new spec with the old pod's and doing nothing.
func (p *Provider) GetPod(_ context.Context, namespace, name string) (*corev1.Pod, error) {
	p.mu.Lock()
	pr, ok := p.pods[keyOf(namespace, name)]
	p.mu.Unlock()
	if !ok {
		return nil, errdefs.NotFoundf("pod %s/%s is not known", namespace, name)
	}
	pr.mu.Lock()
	stopping := pr.terminating
	pr.mu.Unlock()
	if stopping {
		return nil, errdefs.NotFoundf("pod %s/%s is stopping", namespace, name)
	}
	return pr.podWithStatus(), nil
}

// GetPodStatus returns the pod's current status.
func (p *Provider) GetPodStatus(ctx context.Context, namespace, name string) (*corev1.PodStatus, error) {
	pod, err := p.GetPod(ctx, namespace, name)
	if err != nil {
		return nil, err
	}
	return &pod.Status, nil
}

// GetPods lists the pods this node runs.
func (p *Provider) GetPods(context.Context) ([]*corev1.Pod, error) {
	p.mu.Lock()
	prs := make([]*podRuntime, 0, len(p.pods))
	for _, pr := range p.pods {
		prs = append(prs, pr)
	}
	p.mu.Unlock()
	out := make([]*corev1.Pod, 0, len(prs))
	for _, pr := range prs {
		out = append(out, pr.podWithStatus())
	}
	sort.Slice(out, func(i, j int) bool {
		return keyOf(out[i].Namespace, out[i].Name) < keyOf(out[j].Namespace, out[j].Name)
	})
	return out, nil
}

// NotifyPods registers the status callback and starts pushing changes.
func (p *Provider) NotifyPods(ctx context.Context, cb func(*corev1.Pod)) {
	p.mu.Lock()
	p.notifyFn = cb
	p.mu.Unlock()
	go p.notifier(ctx)
}

func (p *Provider) enqueueStatus(pr *podRuntime) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.enqueueLocked(pr)
}

func (p *Provider) enqueueLocked(pr *podRuntime) {
	p.dirty[pr] = true
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

func (p *Provider) notifier(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.kick:
		}
		p.mu.Lock()
		batch := make([]*podRuntime, 0, len(p.dirty))
		for pr := range p.dirty {
			batch = append(batch, pr)
		}
		p.dirty = map[*podRuntime]bool{}
		cb := p.notifyFn
		p.mu.Unlock()
		if cb == nil {
			continue
		}
		for _, pr := range batch {
			cb(pr.podWithStatus())
		}
	}
}

// pushStatusNow sends pr's status synchronously (the final one, before the
// pod is forgotten).
func (p *Provider) pushStatusNow(pr *podRuntime) {
	p.mu.Lock()
	cb := p.notifyFn
	delete(p.dirty, pr)
	p.mu.Unlock()
	if cb != nil {
		cb(pr.podWithStatus())
	}
}

func (p *Provider) forget(pr *podRuntime) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if cur, ok := p.pods[pr.key]; ok && cur == pr {
		delete(p.pods, pr.key)
	}
	delete(p.dirty, pr)
}

// writeFinalStatus writes the final status and, for a deleted pod, removes
// the object, as the kubelet's status manager does once a deleted pod's
// containers are gone.
func (p *Provider) writeFinalStatus(pr *podRuntime, deleteObject bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	pod := pr.podWithStatus()
	pods := p.client.CoreV1().Pods(pod.Namespace)
	cur, err := pods.Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil || cur.UID != pod.UID {
		return
	}
	pod.ResourceVersion = cur.ResourceVersion
	if _, err := pods.UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		pr.log.Warn("writing the final status", "err", err)
	}
	if !deleteObject {
		return
	}
	zero := int64(0)
	err = pods.Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero, Preconditions: metav1.NewUIDPreconditions(string(pod.UID))})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		pr.log.Warn("deleting the pod object", "err", err)
	}
}

// podWithStatus is the pod as the API server has it (metadata from the
// informer when it is the same pod, so a status write does not revert a
// label), with this node's status.
func (pr *podRuntime) podWithStatus() *corev1.Pod {
	pr.mu.Lock()
	base := pr.pod
	pr.mu.Unlock()
	var external []corev1.PodCondition
	var qos corev1.PodQOSClass
	if pr.p.podLister != nil {
		if cur, err := pr.p.podLister.Pods(base.Namespace).Get(base.Name); err == nil && cur.UID == base.UID {
			base = cur
			for _, c := range cur.Status.Conditions {
				if !ownConditions[c.Type] {
					external = append(external, c)
				}
			}
			qos = cur.Status.QOSClass
		}
	}
	pod := base.DeepCopy()
	pr.mu.Lock()
	s := pr.snapshotLocked()
	s.External = external
	st := BuildPodStatus(s, pr.conds, metav1.Now())
	pr.mu.Unlock()
	if qos == "" {
		qos = pod.Status.QOSClass
	}
	st.QOSClass = qos
	st.NominatedNodeName = pod.Status.NominatedNodeName
	st.ObservedGeneration = pod.Generation
	pod.Status = st
	return pod
}

// lookupContainer finds a container of a pod this node runs.
func (p *Provider) lookupContainer(namespace, podName, name string) (*podRuntime, *container, error) {
	p.mu.Lock()
	pr, ok := p.pods[keyOf(namespace, podName)]
	p.mu.Unlock()
	if !ok {
		return nil, nil, errdefs.NotFoundf("pod %s/%s is not running on this node", namespace, podName)
	}
	for _, c := range append(append([]*container{}, pr.inits...), pr.apps...) {
		if c.spec.Name == name {
			return pr, c, nil
		}
	}
	return nil, nil, errdefs.NotFoundf("container %q not found in pod %s/%s", name, namespace, podName)
}

// GetContainerLogs serves `kubectl logs`: the container's log file (all
// instances appended), with tailLines, limitBytes and follow.
func (p *Provider) GetContainerLogs(ctx context.Context, namespace, podName, containerName string, opts api.ContainerLogOpts) (io.ReadCloser, error) {
	pr, _, err := p.lookupContainer(namespace, podName, containerName)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(pr.logPath(containerName))
	if err != nil {
		if os.IsNotExist(err) {
			return io.NopCloser(bytes.NewReader(nil)), nil
		}
		return nil, err
	}
	if opts.Tail > 0 {
		if err := seekTail(f, opts.Tail); err != nil {
			f.Close()
			return nil, err
		}
	}
	var r io.ReadCloser = f
	if opts.Follow {
		r = &followReader{f: f, ctx: ctx, done: pr.done}
	}
	if opts.LimitBytes > 0 {
		return struct {
			io.Reader
			io.Closer
		}{io.LimitReader(r, int64(opts.LimitBytes)), r}, nil
	}
	return r, nil
}

// seekTail positions f at the start of its last n lines.
func seekTail(f *os.File, n int) error {
	st, err := f.Stat()
	if err != nil {
		return err
	}
	size := st.Size()
	const chunk = 8192
	lines := 0
	pos := size
	buf := make([]byte, chunk)
	// A final newline ends the last line rather than starting an empty one.
	skipLast := true
	for pos > 0 {
		step := int64(chunk)
		if pos < step {
			step = pos
		}
		pos -= step
		if _, err := f.ReadAt(buf[:step], pos); err != nil && err != io.EOF {
			return err
		}
		for i := step - 1; i >= 0; i-- {
			if buf[i] != '\n' {
				continue
			}
			if skipLast && pos+i == size-1 {
				skipLast = false
				continue
			}
			lines++
			if lines == n {
				_, err := f.Seek(pos+i+1, io.SeekStart)
				return err
			}
		}
	}
	_, err = f.Seek(0, io.SeekStart)
	return err
}

type followReader struct {
	f    *os.File
	ctx  context.Context
	done <-chan struct{}
}

func (r *followReader) Read(b []byte) (int, error) {
	for {
		n, err := r.f.Read(b)
		if n > 0 {
			return n, nil
		}
		if err != nil && err != io.EOF {
			return 0, err
		}
		select {
		case <-r.ctx.Done():
			return 0, io.EOF
		case <-r.done:
			return 0, io.EOF
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func (r *followReader) Close() error { return r.f.Close() }

// RunInContainer serves `kubectl exec` (without a TTY: one is not allocated).
func (p *Provider) RunInContainer(ctx context.Context, namespace, podName, containerName string, cmd []string, attach api.AttachIO) error {
	pr, c, err := p.lookupContainer(namespace, podName, containerName)
	if err != nil {
		return err
	}
	pr.mu.Lock()
	proc := c.proc
	pr.mu.Unlock()
	if proc == nil {
		return fmt.Errorf("container %s is not running", containerName)
	}
	t := c.target(proc)
	x := ExecInContainer(p.tools, t.pid, t.hostNetwork, t.identity, t.env, t.workingDir, cmd)
	if in := attach.Stdin(); in != nil {
		x.Stdin = in
	}
	if out := attach.Stdout(); out != nil {
		x.Stdout = out
	}
	if e := attach.Stderr(); e != nil {
		x.Stderr = e
	} else if attach.TTY() && x.Stdout != nil {
		x.Stderr = x.Stdout
	}
	if err := x.Start(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- x.Wait() }()
	select {
	case err = <-done:
	case <-ctx.Done():
		KillSession(x.Process.Pid, 0, 9)
		err = <-done
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return utilexec.CodeExitError{Err: err, Code: ee.ExitCode()}
	}
	return err
}

// shutdown stops every pod (as deletions, without deleting the objects) and waits.
func (p *Provider) shutdown(timeout time.Duration) {
	p.mu.Lock()
	p.shuttingDown = true
	prs := make([]*podRuntime, 0, len(p.pods))
	for _, pr := range p.pods {
		prs = append(prs, pr)
	}
	p.mu.Unlock()
	for _, pr := range prs {
		pr.requestTermination(pr.gracePeriod(), false, "Terminated", "Pod was terminated in response to the node shutting down")
	}
	deadline := time.After(timeout)
	for _, pr := range prs {
		select {
		case <-pr.done:
		case <-deadline:
			p.log.Error("pods still stopping at the shutdown deadline")
			return
		}
	}
}
