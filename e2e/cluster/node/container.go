package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

const (
	crashBackoffInitial = 10 * time.Second
	crashBackoffMax     = 5 * time.Minute
	// A container that ran this long without crashing starts over at no backoff.
	crashBackoffReset = 10 * time.Minute
	// Image and configuration errors are retried faster: the fix (an image
	// table entry, a Secret) usually arrives within seconds in tests.
	configRetryMax = 20 * time.Second
	// minGrace is the kubelet's minimum time between SIGTERM and SIGKILL.
	minGrace = 2 * time.Second
)

// container is one (init, sidecar or app) container of a pod and its
// process. Status fields are guarded by the pod's mutex.
type container struct {
	pr      *podRuntime
	spec    corev1.Container
	init    bool
	sidecar bool // an init container with restartPolicy: Always

	state     corev1.ContainerState
	last      corev1.ContainerState
	restarts  int32
	started   bool
	ready     bool
	imageID   string
	proc      *Proc
	stopping  bool
	everRan   bool
	launched  bool   // a supervisor (or the init runner) owns this container
	hookError string // why the last instance was killed (hook, probe)
	identity  Identity
	env       []string
	workDir   string

	crashDelay  time.Duration
	configDelay time.Duration

	// ctx ends when the pod's lifecycle ends or the container is stopped for
	// good; it bounds the supervisor's waits, probes and hooks.
	ctx    context.Context
	cancel context.CancelFunc

	firstOnce  sync.Once
	firstStart chan struct{} // after the first start attempt (and its postStart hook)
	startOnce  sync.Once
	startedCh  chan struct{} // when started (startup probe passed) the first time
	exited     chan struct{} // supervisor returned
}

func newContainer(pr *podRuntime, spec corev1.Container, init bool) *container {
	c := &container{
		pr:         pr,
		spec:       spec,
		init:       init,
		sidecar:    init && spec.RestartPolicy != nil && *spec.RestartPolicy == corev1.ContainerRestartPolicyAlways,
		firstStart: make(chan struct{}),
		startedCh:  make(chan struct{}),
		exited:     make(chan struct{}),
	}
	c.ctx, c.cancel = context.WithCancel(pr.ctx)
	reason := "ContainerCreating"
	if !init && len(pr.pod.Spec.InitContainers) > 0 {
		reason = "PodInitializing"
	}
	if init {
		reason = "PodInitializing"
	}
	c.state = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason}}
	return c
}

// stop marks the container done (no more starts or restarts) and ends its
// waits; the caller holds the pod's lock.
func (c *container) stop() {
	c.stopping = true
	c.cancel()
}

func (c *container) signalFirst()   { c.firstOnce.Do(func() { close(c.firstStart) }) }
func (c *container) signalStarted() { c.startOnce.Do(func() { close(c.startedCh) }) }

// setWaiting records a waiting state (pod lock not held).
func (c *container) setWaiting(reason, msg string) {
	c.pr.mu.Lock()
	c.state = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: msg}}
	c.ready = false
	c.pr.mu.Unlock()
	c.pr.changed()
}

func (c *container) isStopping() bool {
	c.pr.mu.Lock()
	defer c.pr.mu.Unlock()
	return c.stopping || c.pr.terminating
}

// startErrKind classifies why a start failed.
type startErrKind int

const (
	errImage startErrKind = iota
	errConfig
	errStart
)

type containerStartError struct {
	kind startErrKind
	msg  string
}

func (e *containerStartError) Error() string { return e.msg }

// prepare resolves everything a start needs from the current pod spec: the
// image entry, identity, env, argv, mounts.
func (c *container) prepare() (ProcSpec, string, error) {
	pr := c.pr
	p := pr.p
	pr.mu.Lock()
	pod := pr.pod.DeepCopy()
	podIP := pr.podIP
	spec := *c.spec.DeepCopy()
	pr.mu.Unlock()

	table, terr := p.images.Get()
	if table == nil {
		return ProcSpec{}, "", &containerStartError{errImage, terr.Error()}
	}
	if terr != nil {
		pr.log.Warn("image table", "err", terr)
	}
	entry, name, ok := table.Lookup(spec.Image)
	if !ok {
		return ProcSpec{}, "", &containerStartError{errImage, fmt.Sprintf(
			"image %q (%s) is not in the image table %s: lanemesh-node runs images as local executables; add `%s: {entrypoint: [/path/to/executable]}` under `images:`",
			spec.Image, name, p.images.Path(), name)}
	}
	imageID := ImageID(name, entry)

	id, err := ResolveIdentity(pod, &spec)
	if err != nil {
		return ProcSpec{}, imageID, &containerStartError{errConfig, err.Error()}
	}
	envCtx := pr.envContext(pod, podIP)
	kenv, err := ResolveEnv(pod, &spec, envCtx, p.objects)
	if err != nil {
		return ProcSpec{}, imageID, &containerStartError{errConfig, err.Error()}
	}
	base := []EnvPair{{Name: "PATH", Value: defaultPath}}
	if !pod.Spec.HostNetwork {
		base = append(base, EnvPair{Name: "HOSTNAME", Value: PodHostname(pod)})
	}
	final := MergeEnv(base, entry.Env, kenv)
	if _, ok := EnvMap(final)["HOME"]; !ok {
		final = append(final, EnvPair{Name: "HOME", Value: homeOf(id.UID)})
	}
	argv := ContainerArgv(entry, &spec, EnvMap(kenv))
	if len(argv) == 0 {
		return ProcSpec{}, imageID, &containerStartError{errStart, "no command specified: the container sets no command and the image table entry has no entrypoint or cmd"}
	}
	wd := spec.WorkingDir
	if wd == "" {
		wd = entry.WorkingDir
	}
	if wd == "" {
		wd = "/"
	}
	resolved, err := ResolveCommand(argv[0], EnvMap(final)["PATH"], wd)
	if err != nil {
		return ProcSpec{}, imageID, &containerStartError{errStart, err.Error()}
	}
	argv[0] = resolved

	mounts, err := pr.mountsFor(pod, &spec, EnvMap(kenv))
	if err != nil {
		return ProcSpec{}, imageID, &containerStartError{errConfig, err.Error()}
	}
	hostname := ""
	if !pod.Spec.HostNetwork {
		hostname = PodHostname(pod)
	}
	ps := ProcSpec{
		Netns:      pr.netns,
		Hostname:   hostname,
		Mounts:     mounts,
		Identity:   id,
		Argv:       argv,
		Env:        EnvStrings(final),
		WorkingDir: wd,
		Log:        pr.logPath(spec.Name),
	}
	pr.mu.Lock()
	c.identity = id
	c.env = ps.Env
	c.workDir = wd
	pr.mu.Unlock()
	return ps, imageID, nil
}

func homeOf(uid int64) string {
	if u, err := user.LookupId(strconv.FormatInt(uid, 10)); err == nil && u.HomeDir != "" {
		return u.HomeDir
	}
	if uid == 0 {
		return "/root"
	}
	return "/"
}

// startOnce prepares and starts one instance. On success the container is
// Running.
func (c *container) startInstance() (*Proc, error) {
	ps, imageID, err := c.prepare()
	c.pr.mu.Lock()
	if imageID != "" {
		c.imageID = imageID
	}
	c.pr.mu.Unlock()
	if err != nil {
		return nil, err
	}
	proc, err := StartProcess(c.pr.p.tools, ps)
	if err != nil {
		var se *StartError
		if errors.As(err, &se) {
			return nil, &containerStartError{errStart, se.Msg}
		}
		return nil, &containerStartError{errStart, err.Error()}
	}
	pr := c.pr
	pr.mu.Lock()
	if c.stopping || pr.terminating {
		pr.mu.Unlock()
		proc.Signal(syscall.SIGKILL)
		<-proc.Done()
		return nil, context.Canceled
	}
	c.proc = proc
	c.everRan = true
	c.started = false
	c.ready = false
	c.hookError = ""
	c.state = corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(proc.Started)}}
	pr.record.Sessions[c.spec.Name] = SessionRecord{Pid: proc.Pid, Start: proc.StartTime}
	_ = WritePodRecord(pr.dir, &pr.record)
	pr.mu.Unlock()
	pr.event(corev1.EventTypeNormal, "Started", "Started container %s (pid %d)", c.spec.Name, proc.Pid)
	pr.changed()
	return proc, nil
}

// handleStartError records a failed start. It returns true when the failure
// counts as a container exit (StartError: exit code 128, subject to the
// restart policy), false when the start is simply retried later.
func (c *container) handleStartError(err error) bool {
	var cse *containerStartError
	if !errors.As(err, &cse) {
		return false
	}
	switch cse.kind {
	case errImage:
		c.pr.event(corev1.EventTypeWarning, "Failed", "Failed to pull image %q: %s", c.spec.Image, cse.msg)
		c.setWaiting("ErrImagePull", cse.msg)
		return false
	case errConfig:
		c.pr.event(corev1.EventTypeWarning, "Failed", "Error: %s", cse.msg)
		c.setWaiting("CreateContainerConfigError", cse.msg)
		return false
	}
	c.pr.event(corev1.EventTypeWarning, "Failed", "Error: failed to start container %q: %s", c.spec.Name, cse.msg)
	now := metav1.Now()
	c.pr.mu.Lock()
	c.everRan = true
	c.state = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
		ExitCode: 128, Reason: "StartError", Message: cse.msg, StartedAt: now, FinishedAt: now,
	}}
	c.ready, c.started = false, false
	c.pr.mu.Unlock()
	c.pr.changed()
	return true
}

// nextConfigDelay is the retry delay for image and configuration errors.
func (c *container) nextConfigDelay() time.Duration {
	if c.configDelay == 0 {
		c.configDelay = time.Second
	} else {
		c.configDelay *= 2
		if c.configDelay > configRetryMax {
			c.configDelay = configRetryMax
		}
	}
	return c.configDelay
}

// nextCrashDelay is the kubelet's crash-loop backoff: the first restart is
// immediate, then 10 s doubling up to 5 min; a container that ran for 10
// minutes starts over.
func (c *container) nextCrashDelay(ranFor time.Duration) time.Duration {
	if ranFor >= crashBackoffReset {
		c.crashDelay = 0
	}
	d := c.crashDelay
	switch {
	case c.crashDelay == 0:
		c.crashDelay = crashBackoffInitial
	default:
		c.crashDelay *= 2
		if c.crashDelay > crashBackoffMax {
			c.crashDelay = crashBackoffMax
		}
	}
	return d
}

// runInstance drives one running instance: the postStart hook, the probes,
// and the exit. It returns the exit code and how long the instance ran.
func (c *container) runInstance(ctx context.Context, proc *Proc) (int, time.Duration) {
	pr := c.pr
	ictx, cancel := context.WithCancel(ctx)
	defer cancel()

	hookOK := true
	if !c.init || c.sidecar {
		if h := c.spec.Lifecycle; h != nil && h.PostStart != nil {
			if err := runLifecycleHandler(ictx, c.target(proc), h.PostStart, 5*time.Minute); err != nil && ictx.Err() == nil {
				hookOK = false
				msg := fmt.Sprintf("PostStartHook failed: %v", err)
				pr.event(corev1.EventTypeWarning, "FailedPostStartHook", "%s", msg)
				pr.mu.Lock()
				c.hookError = msg
				pr.mu.Unlock()
				go c.stopInstance(proc, pr.gracePeriod(), false)
			}
		}
	}
	c.signalFirst()
	if hookOK {
		go c.probeLoop(ictx, proc)
	}

	<-proc.Done()
	cancel()
	// What the process left in its session dies with it, as in a container.
	proc.Signal(syscall.SIGKILL)
	code := proc.ExitCode()
	ran := time.Since(proc.Started)
	now := metav1.Now()
	pr.mu.Lock()
	reason := "Completed"
	if code != 0 {
		reason = "Error"
	}
	msg := c.hookError
	if msg == "" && code != 0 && c.spec.TerminationMessagePolicy == corev1.TerminationMessageFallbackToLogsOnError {
		msg = tailFile(pr.logPath(c.spec.Name), 80, 2048)
	}
	c.state = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
		ExitCode:    int32(code),
		Reason:      reason,
		Message:     msg,
		StartedAt:   metav1.NewTime(proc.Started),
		FinishedAt:  now,
		ContainerID: containerID(proc.Pid),
	}}
	c.proc = nil
	c.started, c.ready = false, false
	delete(pr.record.Sessions, c.spec.Name)
	_ = WritePodRecord(pr.dir, &pr.record)
	pr.mu.Unlock()
	pr.log.Info("container exited", "container", c.spec.Name, "exitCode", code)
	pr.changed()
	return code, ran
}

func containerID(pid int) string { return "lanemesh://" + strconv.Itoa(pid) }

// target is the probe/hook view of the running instance.
func (c *container) target(proc *Proc) probeTarget {
	pr := c.pr
	pr.mu.Lock()
	defer pr.mu.Unlock()
	return probeTarget{
		podIP:       pr.podIP,
		hostNetwork: pr.pod.Spec.HostNetwork,
		container:   &c.spec,
		pid:         proc.Pid,
		identity:    c.identity,
		env:         c.env,
		workingDir:  c.workDir,
		tools:       pr.p.tools,
	}
}

// probeLoop runs the startup probe, then readiness and liveness, for one instance.
func (c *container) probeLoop(ctx context.Context, proc *Proc) {
	pr := c.pr
	t := c.target(proc)
	if sp := c.spec.StartupProbe; sp != nil {
		ok := c.runProbe(ctx, t, sp, "Startup", func(bool) {})
		if !ok {
			return
		}
	}
	pr.mu.Lock()
	c.started = true
	if c.spec.ReadinessProbe == nil {
		c.ready = true
	}
	pr.mu.Unlock()
	c.signalStarted()
	pr.changed()
	if rp := c.spec.ReadinessProbe; rp != nil {
		go c.runProbe(ctx, t, rp, "Readiness", func(ok bool) {
			pr.mu.Lock()
			changed := c.ready != ok
			if c.proc == proc {
				c.ready = ok
			}
			pr.mu.Unlock()
			if changed {
				pr.changed()
			}
		})
	}
	if lp := c.spec.LivenessProbe; lp != nil {
		go c.runProbe(ctx, t, lp, "Liveness", func(bool) {})
	}
}

// runProbe probes until ctx ends. Startup returns true on its first
// success; a startup or liveness probe that reaches its failure threshold
// kills the instance and returns false. Readiness reports every result
// change through set, honouring the thresholds.
func (c *container) runProbe(ctx context.Context, t probeTarget, probe *corev1.Probe, kind string, set func(bool)) bool {
	s := settingsOf(probe)
	if !sleepCtx(ctx, s.initialDelay) {
		return false
	}
	successes, failures := 0, 0
	result := false
	for {
		_, err := runHandler(ctx, t, probe.ProbeHandler, s.timeout)
		if ctx.Err() != nil {
			return false
		}
		if err == nil {
			successes++
			failures = 0
			if kind == "Startup" {
				return true
			}
			if !result && successes >= s.success {
				result = true
				set(true)
			}
		} else {
			failures++
			successes = 0
			if failures == 1 || failures >= s.failure {
				c.pr.event(corev1.EventTypeWarning, "Unhealthy", "%s probe failed: %v", kind, err)
			}
			if failures >= s.failure {
				switch kind {
				case "Readiness":
					if result || failures == s.failure {
						result = false
						set(false)
					}
				case "Startup", "Liveness":
					msg := fmt.Sprintf("Container %s failed %s probe, will be restarted", c.spec.Name, strings.ToLower(kind))
					c.pr.event(corev1.EventTypeNormal, "Killing", "%s", msg)
					c.pr.mu.Lock()
					c.hookError = msg
					proc := c.proc
					c.pr.mu.Unlock()
					if proc != nil {
						grace := c.pr.gracePeriod()
						if probe.TerminationGracePeriodSeconds != nil {
							grace = time.Duration(*probe.TerminationGracePeriodSeconds) * time.Second
						}
						go c.stopInstance(proc, grace, true)
					}
					return false
				}
			}
		}
		if !sleepCtx(ctx, s.period) {
			return false
		}
	}
}

// stopInstance stops one running instance as the kubelet's killContainer
// does: preStop hook, SIGTERM, wait the grace period (what the hook left of
// it, at least 2 s), SIGKILL.
func (c *container) stopInstance(proc *Proc, grace time.Duration, preStop bool) {
	select {
	case <-proc.Done():
		return
	default:
	}
	start := time.Now()
	if preStop && (!c.init || c.sidecar) {
		if h := c.spec.Lifecycle; h != nil && h.PreStop != nil {
			ctx, cancel := context.WithTimeout(context.Background(), grace)
			if err := runLifecycleHandler(ctx, c.target(proc), h.PreStop, grace); err != nil {
				c.pr.event(corev1.EventTypeWarning, "FailedPreStopHook", "PreStopHook failed: %v", err)
			}
			cancel()
		}
	}
	remaining := grace - time.Since(start)
	if remaining < minGrace {
		remaining = minGrace
	}
	proc.Signal(syscall.SIGTERM)
	select {
	case <-proc.Done():
	case <-time.After(remaining):
		c.pr.log.Info("grace period over, killing", "container", c.spec.Name)
	}
	proc.Signal(syscall.SIGKILL)
	select {
	case <-proc.Done():
	case <-time.After(10 * time.Second):
		c.pr.log.Error("container process did not die after SIGKILL", "container", c.spec.Name, "pid", proc.Pid)
	}
}

// supervise runs a restartable container (sidecar or app) until the pod's
// lifecycle ends or the restart policy says it is done.
func (c *container) supervise(ctx context.Context) {
	defer close(c.exited)
	defer c.signalFirst()
	pr := c.pr
	for {
		if ctx.Err() != nil || c.isStopping() {
			return
		}
		proc, err := c.startInstance()
		if err != nil {
			if errors.Is(err, context.Canceled) {
				return
			}
			if !c.handleStartError(err) {
				if !c.sidecar {
					c.signalFirst()
				}
				if !sleepCtx(ctx, c.nextConfigDelay()) {
					return
				}
				continue
			}
			c.configDelay = 0
			if !c.sidecar {
				c.signalFirst()
			}
			if !c.shouldRestart(128) {
				return
			}
			if !c.crashBackoff(ctx, 0) {
				return
			}
			continue
		}
		c.configDelay = 0
		code, ran := c.runInstance(ctx, proc)
		if ctx.Err() != nil || c.isStopping() || !c.shouldRestart(code) {
			return
		}
		if !c.crashBackoff(ctx, ran) {
			return
		}
		_ = pr
	}
}

func (c *container) shouldRestart(code int) bool {
	if c.sidecar {
		return true
	}
	c.pr.mu.Lock()
	policy := c.pr.pod.Spec.RestartPolicy
	c.pr.mu.Unlock()
	switch policy {
	case corev1.RestartPolicyNever:
		return false
	case corev1.RestartPolicyOnFailure:
		return code != 0
	}
	return true
}

// crashBackoff waits before a restart, showing CrashLoopBackOff, and moves
// the terminated state into lastState with restartCount+1.
func (c *container) crashBackoff(ctx context.Context, ran time.Duration) bool {
	pr := c.pr
	d := c.nextCrashDelay(ran)
	pr.mu.Lock()
	if c.state.Terminated != nil {
		c.last = corev1.ContainerState{Terminated: c.state.Terminated.DeepCopy()}
	}
	if d > 0 {
		c.state = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{
			Reason:  "CrashLoopBackOff",
			Message: fmt.Sprintf("back-off %s restarting failed container=%s pod=%s_%s(%s)", d, c.spec.Name, pr.pod.Name, pr.pod.Namespace, pr.pod.UID),
		}}
	}
	pr.mu.Unlock()
	if d > 0 {
		pr.event(corev1.EventTypeWarning, "BackOff", "Back-off restarting failed container %s", c.spec.Name)
		pr.changed()
	}
	if !sleepCtx(ctx, d) {
		return false
	}
	pr.mu.Lock()
	c.restarts++
	pr.mu.Unlock()
	return true
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// tailFile returns at most the last lines/bytes of a file.
func tailFile(path string, lines, maxBytes int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	off := st.Size() - int64(maxBytes)
	if off < 0 {
		off = 0
	}
	buf := make([]byte, st.Size()-off)
	if _, err := f.ReadAt(buf, off); err != nil && len(buf) == 0 {
		return ""
	}
	parts := strings.Split(strings.TrimRight(string(buf), "\n"), "\n")
	if len(parts) > lines {
		parts = parts[len(parts)-lines:]
	}
	return strings.Join(parts, "\n")
}

// ensureMountTarget makes sure a bind-mount target exists on the host,
// creating (and recording, for removal on exit) what is missing.
func ensureMountTarget(s *StateStore, target string, isDir bool) error {
	if _, err := os.Lstat(target); err == nil {
		return nil
	}
	// Create missing parents one by one so each created one is recorded.
	var missing []string
	for d := filepath.Dir(target); d != "/" && d != "."; d = filepath.Dir(d) {
		if _, err := os.Lstat(d); err == nil {
			break
		}
		missing = append(missing, d)
	}
	for i := len(missing) - 1; i >= 0; i-- {
		if err := os.Mkdir(missing[i], 0o755); err != nil && !os.IsExist(err) {
			return err
		}
		s.AddMountPoint(missing[i])
	}
	if isDir {
		if err := os.Mkdir(target, 0o755); err != nil && !os.IsExist(err) {
			return err
		}
	} else {
		f, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		f.Close()
	}
	s.AddMountPoint(target)
	return nil
}
