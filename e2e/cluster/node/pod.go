package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// podRuntime is one pod on this node: its sandbox (netns, IP, files), its
// containers and the goroutine that drives its lifecycle.
type podRuntime struct {
	p   *Provider
	key string
	dir string
	log *slog.Logger

	mu           sync.Mutex
	pod          *corev1.Pod
	podIP        string
	netns, veth  string
	sandboxReady bool
	startTime    metav1.Time
	initialized  bool
	finished     bool // terminal: no container will run again
	phase        corev1.PodPhase
	reason       string
	message      string
	terminating  bool
	allocatedIP  string
	conds        map[corev1.PodConditionType]condState
	inits, apps  []*container
	vols         podVolumes
	record       PodRecord

	ctx           context.Context
	cancel        context.CancelFunc
	lifecycleDone chan struct{}
	resync        chan struct{}
	termOnce      sync.Once
	bg            sync.WaitGroup // background work that writes into the pod dir
	done          chan struct{}
}

type condState struct {
	status corev1.ConditionStatus
	since  metav1.Time
}

func newPodRuntime(p *Provider, pod *corev1.Pod) *podRuntime {
	ctx, cancel := context.WithCancel(p.ctx)
	pr := &podRuntime{
		p:             p,
		key:           pod.Namespace + "/" + pod.Name,
		dir:           p.state.PodDir(pod.Namespace, pod.Name, string(pod.UID)),
		log:           p.log.With("pod", pod.Namespace+"/"+pod.Name),
		pod:           pod.DeepCopy(),
		phase:         corev1.PodPending,
		startTime:     metav1.Now(),
		conds:         map[corev1.PodConditionType]condState{},
		ctx:           ctx,
		cancel:        cancel,
		lifecycleDone: make(chan struct{}),
		resync:        make(chan struct{}, 1),
		done:          make(chan struct{}),
	}
	pr.vols.dir = pr.dir
	pr.record = PodRecord{Namespace: pod.Namespace, Name: pod.Name, UID: string(pod.UID), Sessions: map[string]SessionRecord{}}
	for _, c := range pod.Spec.InitContainers {
		pr.inits = append(pr.inits, newContainer(pr, c, true))
	}
	for _, c := range pod.Spec.Containers {
		pr.apps = append(pr.apps, newContainer(pr, c, false))
	}
	return pr
}

func (pr *podRuntime) logPath(container string) string {
	return filepath.Join(pr.dir, "logs", container+".log")
}

// changed schedules a status push.
func (pr *podRuntime) changed() { pr.p.enqueueStatus(pr) }

func (pr *podRuntime) event(typ, reason, format string, args ...any) {
	pr.mu.Lock()
	pod := pr.pod
	pr.mu.Unlock()
	if pr.p.recorder != nil {
		pr.p.recorder.Eventf(pod, typ, reason, format, args...)
	}
	pr.log.Debug("event", "reason", reason, "message", fmt.Sprintf(format, args...))
}

// gracePeriod is the pod's terminationGracePeriodSeconds (default 30 s).
func (pr *podRuntime) gracePeriod() time.Duration {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	if g := pr.pod.Spec.TerminationGracePeriodSeconds; g != nil {
		return time.Duration(*g) * time.Second
	}
	return 30 * time.Second
}

func (pr *podRuntime) envContext(pod *corev1.Pod, podIP string) PodEnvContext {
	return PodEnvContext{
		PodIP:           podIP,
		PodIPs:          []string{podIP},
		HostIP:          pr.p.cfg.NodeIP.String(),
		ServiceEnv:      pr.p.serviceEnv(pod),
		NodeAllocatable: pr.p.allocatable,
	}
}

// run is the pod's lifecycle: sandbox, volumes, init containers (sidecars
// started in place), app containers in order, completion.
func (pr *podRuntime) run() {
	defer close(pr.lifecycleDone)
	ctx := pr.ctx
	if !pr.setupSandbox(ctx) {
		return
	}
	if !pr.setupVolumes(ctx) {
		return
	}
	pr.bg.Add(1)
	go func() {
		defer pr.bg.Done()
		pr.resyncLoop(ctx)
	}()

	for _, c := range pr.inits {
		pr.mu.Lock()
		c.launched = true
		pr.mu.Unlock()
		if c.sidecar {
			go c.supervise(c.ctx)
			select {
			case <-c.startedCh:
			case <-ctx.Done():
				return
			}
			continue
		}
		if !pr.runInitContainer(c.ctx, c) {
			return
		}
	}
	pr.mu.Lock()
	pr.initialized = true
	pr.mu.Unlock()
	pr.changed()

	for _, c := range pr.apps {
		pr.mu.Lock()
		c.launched = true
		pr.mu.Unlock()
		go c.supervise(c.ctx)
		select {
		case <-c.firstStart:
		case <-ctx.Done():
			return
		}
	}
	for _, c := range pr.apps {
		select {
		case <-c.exited:
		case <-ctx.Done():
			return
		}
	}
	// Every app container is done for good (restartPolicy Never/OnFailure).
	phase := corev1.PodSucceeded
	pr.mu.Lock()
	for _, c := range pr.apps {
		if t := c.state.Terminated; t == nil || t.ExitCode != 0 {
			phase = corev1.PodFailed
		}
	}
	pr.mu.Unlock()
	pr.log.Info("all containers finished", "phase", phase)
	pr.stopSidecars(pr.gracePeriod())
	pr.finish(phase, "", "")
	pr.teardownNetwork()
}

// runInitContainer runs a regular init container to success; false when the
// pod failed or is terminating.
func (pr *podRuntime) runInitContainer(ctx context.Context, c *container) bool {
	defer close(c.exited)
	for {
		if ctx.Err() != nil {
			return false
		}
		proc, err := c.startInstance()
		var code int
		var ran time.Duration
		if err != nil {
			if errors.Is(err, context.Canceled) {
				return false
			}
			if !c.handleStartError(err) {
				if !sleepCtx(ctx, c.nextConfigDelay()) {
					return false
				}
				continue
			}
			code = 128
		} else {
			code, ran = c.runInstance(ctx, proc)
		}
		if ctx.Err() != nil {
			return false
		}
		if code == 0 {
			return true
		}
		pr.mu.Lock()
		policy := pr.pod.Spec.RestartPolicy
		pr.mu.Unlock()
		if policy == corev1.RestartPolicyNever {
			pr.log.Info("init container failed, pod fails", "container", c.spec.Name, "exitCode", code)
			pr.stopSidecars(pr.gracePeriod())
			pr.finish(corev1.PodFailed, "", "")
			pr.teardownNetwork()
			return false
		}
		if !c.crashBackoff(ctx, ran) {
			return false
		}
	}
}

// finish marks the pod terminal with phase.
func (pr *podRuntime) finish(phase corev1.PodPhase, reason, message string) {
	pr.mu.Lock()
	pr.finished = true
	pr.phase = phase
	if reason != "" {
		pr.reason, pr.message = reason, message
	}
	for _, c := range append(append([]*container{}, pr.inits...), pr.apps...) {
		c.stop()
	}
	pr.mu.Unlock()
	pr.changed()
}

// stopSidecars stops the running sidecars in reverse order.
func (pr *podRuntime) stopSidecars(grace time.Duration) {
	deadline := time.Now().Add(grace)
	for i := len(pr.inits) - 1; i >= 0; i-- {
		c := pr.inits[i]
		if !c.sidecar {
			continue
		}
		pr.mu.Lock()
		c.stop()
		proc := c.proc
		launched := c.launched
		pr.mu.Unlock()
		if proc != nil {
			c.stopInstance(proc, time.Until(deadline), true)
		}
		if launched {
			// The supervisor records the exit; a terminal status must include it.
			if !waitOrTimeout(c.exited, 10*time.Second) {
				pr.log.Warn("sidecar supervisor did not finish", "container", c.spec.Name)
			}
		}
	}
}

func (pr *podRuntime) setupSandbox(ctx context.Context) bool {
	pod := pr.pod
	delay := time.Second
	for {
		err := pr.trySetupSandbox(pod)
		if err == nil {
			pr.mu.Lock()
			pr.sandboxReady = true
			pr.mu.Unlock()
			pr.changed()
			return true
		}
		pr.log.Error("creating the pod sandbox", "err", err)
		pr.event(corev1.EventTypeWarning, "FailedCreatePodSandBox", "Failed to create pod sandbox: %v", err)
		pr.teardownNetwork()
		if !sleepCtx(ctx, delay) {
			return false
		}
		if delay < 30*time.Second {
			delay *= 2
		}
	}
}

func (pr *podRuntime) trySetupSandbox(pod *corev1.Pod) error {
	p := pr.p
	for _, d := range []string{"logs", "volumes", "etc"} {
		if err := os.MkdirAll(filepath.Join(pr.dir, d), 0o755); err != nil {
			return err
		}
	}
	if err := WritePodRecord(pr.dir, &pr.record); err != nil {
		return err
	}
	var ip string
	if pod.Spec.HostNetwork {
		ip = p.cfg.NodeIP.String()
	} else {
		netns, veth := podNetNames(string(pod.UID))
		addr, err := p.ipam.Allocate(pr.key)
		if err != nil {
			return err
		}
		ip = addr.String()
		pr.mu.Lock()
		pr.netns, pr.veth, pr.podIP, pr.allocatedIP = netns, veth, ip, ip
		pr.record.Netns, pr.record.HostVeth, pr.record.IP = netns, veth, ip
		rec := pr.record
		pr.mu.Unlock()
		// Recorded before anything exists, so a crash in between is cleaned up.
		if err := WritePodRecord(pr.dir, &rec); err != nil {
			return err
		}
		sysctls := map[string]string{}
		if sc := pod.Spec.SecurityContext; sc != nil {
			for _, s := range sc.Sysctls {
				if strings.HasPrefix(s.Name, "net.") {
					sysctls[s.Name] = s.Value
					continue
				}
				// Without an IPC namespace a kernel.* sysctl would change the host.
				pr.event(corev1.EventTypeWarning, "SysctlIgnored", "sysctl %s is not applied: lanemesh-node gives pods only a network namespace", s.Name)
			}
		}
		if err := SetupPodNetwork(p.tools, netns, veth, p.cfg.Bridge, addr, p.ipam.PrefixLen(), p.cfg.BridgeIP, sysctls); err != nil {
			return err
		}
	}
	pr.mu.Lock()
	pr.podIP = ip
	pr.mu.Unlock()
	resolv, err := ResolvConf(pod, p.dns)
	if err != nil {
		return err
	}
	files := map[string]string{
		"resolv.conf": resolv,
		"hosts":       HostsFile(pod, ip, p.cfg.ClusterDomain),
		"hostname":    PodHostname(pod) + "\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(pr.dir, "etc", name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func (pr *podRuntime) setupVolumes(ctx context.Context) bool {
	delay := time.Second
	for {
		pr.mu.Lock()
		pod := pr.pod.DeepCopy()
		ip := pr.podIP
		pr.mu.Unlock()
		err := pr.p.volumes.Prepare(ctx, pod, &pr.vols, pr.envContext(pod, ip), false)
		if err == nil {
			return true
		}
		pr.log.Warn("preparing volumes", "err", err)
		pr.event(corev1.EventTypeWarning, "FailedMount", "%v", err)
		pr.mu.Lock()
		for _, c := range append(append([]*container{}, pr.inits...), pr.apps...) {
			if c.state.Waiting != nil {
				c.state.Waiting.Reason = "ContainerCreating"
				c.state.Waiting.Message = err.Error()
				break
			}
		}
		pr.mu.Unlock()
		pr.changed()
		if !sleepCtx(ctx, delay) {
			return false
		}
		if delay < 10*time.Second {
			delay *= 2
		}
	}
}

// resyncLoop refreshes projected volumes: tokens before 80% of their
// lifetime, ConfigMaps/Secrets/downward API every 30 s or when the pod changed.
func (pr *podRuntime) resyncLoop(ctx context.Context) {
	for {
		wait := 30 * time.Second
		pr.mu.Lock()
		if next := pr.vols.NextTokenRefresh(); !next.IsZero() && time.Until(next) < wait {
			wait = time.Until(next)
		}
		pr.mu.Unlock()
		if wait < time.Second {
			wait = time.Second
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		case <-pr.resync:
		}
		pr.mu.Lock()
		pod := pr.pod.DeepCopy()
		ip := pr.podIP
		pr.mu.Unlock()
		if err := pr.p.volumes.Prepare(ctx, pod, &pr.vols, pr.envContext(pod, ip), false); err != nil && ctx.Err() == nil {
			pr.log.Warn("refreshing volumes", "err", err)
		}
	}
}

// mountsFor lists a container's bind mounts: its volumeMounts (subPath,
// subPathExpr, readOnly) and the pod's /etc/resolv.conf, /etc/hosts and
// /etc/hostname. Missing targets are created on the host.
func (pr *podRuntime) mountsFor(pod *corev1.Pod, c *corev1.Container, env map[string]string) ([]Mount, error) {
	var out []Mount
	for _, vm := range c.VolumeMounts {
		pr.mu.Lock()
		src, ok := pr.vols.paths[vm.Name]
		pr.mu.Unlock()
		if !ok {
			return nil, fmt.Errorf("volume %q of mount %s is not prepared", vm.Name, vm.MountPath)
		}
		sub := vm.SubPath
		if vm.SubPathExpr != "" {
			sub = Expand(vm.SubPathExpr, MappingFor(env))
		}
		if sub != "" {
			if err := validPayloadPath(filepath.Clean(sub)); err != nil || strings.HasPrefix(filepath.Clean(sub), "..") {
				return nil, fmt.Errorf("subPath %q: must be a relative path inside the volume", sub)
			}
			full := filepath.Join(src, sub)
			if _, err := os.Stat(full); err != nil {
				if err := os.MkdirAll(full, 0o755); err != nil {
					return nil, fmt.Errorf("subPath %q: %v", sub, err)
				}
			}
			src = full
		}
		if !filepath.IsAbs(vm.MountPath) {
			return nil, fmt.Errorf("mountPath %q must be absolute", vm.MountPath)
		}
		st, err := os.Stat(src)
		if err != nil {
			return nil, fmt.Errorf("volume %q: %v", vm.Name, err)
		}
		if err := ensureMountTarget(pr.p.state, vm.MountPath, st.IsDir()); err != nil {
			return nil, fmt.Errorf("creating mount point %s: %v", vm.MountPath, err)
		}
		out = append(out, Mount{Source: src, Target: vm.MountPath, ReadOnly: vm.ReadOnly})
	}
	etc := filepath.Join(pr.dir, "etc")
	for _, f := range []string{"resolv.conf", "hosts", "hostname"} {
		target := "/etc/" + f
		if pod.Spec.HostNetwork && f != "resolv.conf" {
			continue // host network pods see the host's names
		}
		if mountedBy(out, target) {
			continue
		}
		if _, err := os.Stat(target); err != nil {
			continue
		}
		out = append(out, Mount{Source: filepath.Join(etc, f), Target: target})
	}
	return out, nil
}

func mountedBy(ms []Mount, target string) bool {
	for _, m := range ms {
		if filepath.Clean(m.Target) == target {
			return true
		}
	}
	return false
}

// requestTermination starts stopping the pod (idempotent).
func (pr *podRuntime) requestTermination(grace time.Duration, deleteFromAPI bool, reason, message string) {
	pr.termOnce.Do(func() {
		go pr.terminate(grace, deleteFromAPI, reason, message)
	})
}

// terminate stops the pod as the kubelet does on deletion: app containers
// (and a running init container) in parallel with their preStop hooks,
// SIGTERM, grace period, SIGKILL; then sidecars in reverse order; then the
// sandbox. The final status has every container terminated.
func (pr *podRuntime) terminate(grace time.Duration, deleteFromAPI bool, reason, message string) {
	start := time.Now()
	deadline := start.Add(grace)
	pr.mu.Lock()
	pr.terminating = true
	if reason != "" {
		pr.reason, pr.message = reason, message
	}
	all := append(append([]*container{}, pr.inits...), pr.apps...)
	for _, c := range all {
		c.stop()
	}
	pr.mu.Unlock()
	pr.log.Info("stopping pod", "grace", grace)
	pr.cancel()

	var wg sync.WaitGroup
	for _, c := range all {
		if c.sidecar {
			continue
		}
		pr.mu.Lock()
		proc := c.proc
		pr.mu.Unlock()
		if proc == nil {
			continue
		}
		pr.event(corev1.EventTypeNormal, "Killing", "Stopping container %s", c.spec.Name)
		wg.Add(1)
		go func(c *container, proc *Proc) {
			defer wg.Done()
			c.stopInstance(proc, time.Until(deadline), true)
		}(c, proc)
	}
	wg.Wait()
	pr.stopSidecars(time.Until(deadline))

	// Wait for the lifecycle and supervisors to record the exits.
	waitOrTimeout(pr.lifecycleDone, 10*time.Second)
	for _, c := range all {
		pr.mu.Lock()
		launched := c.launched
		pr.mu.Unlock()
		if launched {
			select {
			case <-c.exited:
			case <-time.After(10 * time.Second):
				pr.log.Warn("container supervisor did not finish", "container", c.spec.Name)
			}
		}
	}
	bgDone := make(chan struct{})
	go func() { pr.bg.Wait(); close(bgDone) }()
	waitOrTimeout(bgDone, 20*time.Second)
	pr.teardownNetwork()
	now := metav1.Now()
	pr.mu.Lock()
	for _, c := range all {
		if c.state.Terminated != nil {
			continue
		}
		if c.last.Terminated != nil {
			// Waiting to restart: its last exit is its final state.
			c.state = corev1.ContainerState{Terminated: c.last.Terminated.DeepCopy()}
			continue
		}
		// Never ran: as the kubelet reports it for a terminal pod.
		c.state = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
			ExitCode: 137, Reason: "ContainerStatusUnknown", StartedAt: now, FinishedAt: now,
			Message: "The container could not be located when the pod was terminated",
		}}
	}
	phase := corev1.PodSucceeded
	for _, c := range pr.apps {
		if t := c.state.Terminated; t == nil || t.ExitCode != 0 {
			phase = corev1.PodFailed
		}
	}
	if !pr.finished {
		pr.phase = phase
	}
	pr.finished = true
	for k := range pr.record.Sessions {
		delete(pr.record.Sessions, k)
	}
	pr.mu.Unlock()
	pr.log.Info("pod stopped", "took", time.Since(start).Round(time.Millisecond), "phase", pr.phase)
	pr.p.pushStatusNow(pr)
	// The final status is also written directly: the pod controller may be
	// stopping (node shutdown) or the object about to be deleted.
	pr.p.writeFinalStatus(pr, deleteFromAPI)
	removePodDir(pr.dir, pr.log)
	pr.p.forget(pr)
	close(pr.done)
}

// teardownNetwork removes the pod's netns and veth and releases its IP
// (idempotent); what still runs in the netns is killed. The status keeps the
// pod IP, as the kubelet's does for a terminal pod.
func (pr *podRuntime) teardownNetwork() {
	pr.mu.Lock()
	netns, veth, ip := pr.netns, pr.veth, pr.allocatedIP
	pr.netns, pr.veth, pr.allocatedIP = "", "", ""
	pr.sandboxReady = false
	sessions := make([]SessionRecord, 0, len(pr.record.Sessions))
	for _, s := range pr.record.Sessions {
		sessions = append(sessions, s)
	}
	pr.mu.Unlock()
	for _, s := range sessions {
		KillSession(s.Pid, s.Start, 9)
	}
	if netns != "" {
		TeardownPodNetwork(pr.p.tools, netns, veth)
	}
	if ip != "" {
		pr.p.ipam.Release(net.ParseIP(ip))
	}
}

func waitOrTimeout(ch <-chan struct{}, d time.Duration) bool {
	select {
	case <-ch:
		return true
	case <-time.After(d):
		return false
	}
}
