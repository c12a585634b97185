package main

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Pod condition types the kubelet owns; others (readiness gates,
// DisruptionTarget, ...) are kept as the API server has them.
var ownConditions = map[corev1.PodConditionType]bool{
	corev1.PodScheduled:              true,
	corev1.PodReadyToStartContainers: true,
	corev1.PodInitialized:            true,
	corev1.ContainersReady:           true,
	corev1.PodReady:                  true,
}

// containerSnapshot is the status-relevant view of one container.
type containerSnapshot struct {
	Name         string
	Image        string
	ImageID      string
	Init         bool
	Sidecar      bool
	State        corev1.ContainerState
	Last         corev1.ContainerState
	Ready        bool
	Started      bool
	RestartCount int32
	ContainerID  string
}

// podSnapshot is what BuildPodStatus needs, taken under the pod's lock.
type podSnapshot struct {
	RestartPolicy corev1.RestartPolicy
	HostIP        string
	PodIP         string
	StartTime     metav1.Time
	SandboxReady  bool
	Initialized   bool
	Finished      bool
	Phase         corev1.PodPhase // used when Finished
	Reason        string
	Message       string
	Inits, Apps   []containerSnapshot
	// ReadinessGates are the pod's readiness gate condition types, and
	// External the conditions the API server has that the node does not own.
	ReadinessGates []corev1.PodConditionType
	External       []corev1.PodCondition
}

func (pr *podRuntime) snapshotLocked() podSnapshot {
	s := podSnapshot{
		RestartPolicy: pr.pod.Spec.RestartPolicy,
		HostIP:        pr.p.cfg.NodeIP.String(),
		PodIP:         pr.podIP,
		StartTime:     pr.startTime,
		SandboxReady:  pr.sandboxReady,
		Initialized:   pr.initialized,
		Finished:      pr.finished,
		Phase:         pr.phase,
		Reason:        pr.reason,
		Message:       pr.message,
	}
	snap := func(c *container) containerSnapshot {
		cs := containerSnapshot{
			Name: c.spec.Name, Image: c.spec.Image, ImageID: c.imageID, Init: c.init, Sidecar: c.sidecar,
			State: *c.state.DeepCopy(), Last: *c.last.DeepCopy(), Ready: c.ready, Started: c.started,
			RestartCount: c.restarts,
		}
		if c.proc != nil {
			cs.ContainerID = containerID(c.proc.Pid)
		} else if t := c.state.Terminated; t != nil {
			cs.ContainerID = t.ContainerID
		}
		return cs
	}
	for _, c := range pr.inits {
		s.Inits = append(s.Inits, snap(c))
	}
	for _, c := range pr.apps {
		s.Apps = append(s.Apps, snap(c))
	}
	for _, g := range pr.pod.Spec.ReadinessGates {
		s.ReadinessGates = append(s.ReadinessGates, g.ConditionType)
	}
	return s
}

// BuildPodStatus computes the pod status as the kubelet would (phase,
// conditions, container statuses). prev holds the conditions last reported,
// whose lastTransitionTime is kept while their status is unchanged.
func BuildPodStatus(s podSnapshot, prev map[corev1.PodConditionType]condState, now metav1.Time) corev1.PodStatus {
	st := corev1.PodStatus{
		Phase:     podPhase(s),
		Reason:    s.Reason,
		Message:   s.Message,
		HostIP:    s.HostIP,
		StartTime: s.StartTime.DeepCopy(),
	}
	if s.HostIP != "" {
		st.HostIPs = []corev1.HostIP{{IP: s.HostIP}}
	}
	if s.PodIP != "" {
		st.PodIP = s.PodIP
		st.PodIPs = []corev1.PodIP{{IP: s.PodIP}}
	}
	toStatus := func(c containerSnapshot) corev1.ContainerStatus {
		started := c.Started
		cs := corev1.ContainerStatus{
			Name:                 c.Name,
			State:                c.State,
			LastTerminationState: c.Last,
			Ready:                c.Ready,
			RestartCount:         c.RestartCount,
			Image:                c.Image,
			ImageID:              c.ImageID,
			ContainerID:          c.ContainerID,
			Started:              &started,
		}
		if c.Init && !c.Sidecar {
			// A regular init container is ready once it completed successfully.
			cs.Ready = c.State.Terminated != nil && c.State.Terminated.ExitCode == 0
		}
		return cs
	}
	for _, c := range s.Inits {
		st.InitContainerStatuses = append(st.InitContainerStatuses, toStatus(c))
	}
	for _, c := range s.Apps {
		st.ContainerStatuses = append(st.ContainerStatuses, toStatus(c))
	}

	cond := func(t corev1.PodConditionType, ok bool, reason, msg string) corev1.PodCondition {
		status := corev1.ConditionFalse
		if ok {
			status = corev1.ConditionTrue
			reason, msg = "", ""
		}
		since := now
		if p, found := prev[t]; found && p.status == status {
			since = p.since
		}
		prev[t] = condState{status: status, since: since}
		return corev1.PodCondition{Type: t, Status: status, Reason: reason, Message: msg, LastTransitionTime: since}
	}

	terminal := st.Phase == corev1.PodSucceeded || st.Phase == corev1.PodFailed
	var incompleteInit, unreadySidecars []string
	for _, c := range s.Inits {
		if c.Sidecar {
			if !c.Started {
				incompleteInit = appendIfMissing(incompleteInit, c.Name)
			}
			if !c.Ready {
				unreadySidecars = append(unreadySidecars, c.Name)
			}
			continue
		}
		if t := c.State.Terminated; t == nil || t.ExitCode != 0 {
			incompleteInit = append(incompleteInit, c.Name)
		}
	}
	initialized := s.Initialized || (len(incompleteInit) == 0)
	var unready []string
	for _, c := range s.Apps {
		if !c.Ready {
			unready = append(unready, c.Name)
		}
	}
	unreadyAll := append(append([]string{}, unreadySidecars...), unready...)
	if terminal {
		// A terminal pod is not ready.
		unreadyAll = nil
		for _, c := range s.Inits {
			if c.Sidecar {
				unreadyAll = append(unreadyAll, c.Name)
			}
		}
		for _, c := range s.Apps {
			unreadyAll = append(unreadyAll, c.Name)
		}
	}
	containersReady := initialized && len(unreadyAll) == 0

	var gatesMissing []string
	for _, g := range s.ReadinessGates {
		ok := false
		for _, e := range s.External {
			if e.Type == g && e.Status == corev1.ConditionTrue {
				ok = true
			}
		}
		if !ok {
			gatesMissing = append(gatesMissing, string(g))
		}
	}

	st.Conditions = []corev1.PodCondition{
		cond(corev1.PodReadyToStartContainers, s.SandboxReady, "", ""),
		cond(corev1.PodInitialized, initialized, "ContainersNotInitialized",
			fmt.Sprintf("containers with incomplete status: [%s]", strings.Join(incompleteInit, " "))),
	}
	readyMsg := fmt.Sprintf("containers with unready status: [%s]", strings.Join(unreadyAll, " "))
	if terminal {
		st.Conditions = append(st.Conditions,
			cond(corev1.ContainersReady, false, "PodCompleted", ""),
			cond(corev1.PodReady, false, "PodCompleted", ""))
	} else {
		st.Conditions = append(st.Conditions, cond(corev1.ContainersReady, containersReady, "ContainersNotReady", readyMsg))
		switch {
		case !containersReady:
			st.Conditions = append(st.Conditions, cond(corev1.PodReady, false, "ContainersNotReady", readyMsg))
		case len(gatesMissing) > 0:
			st.Conditions = append(st.Conditions, cond(corev1.PodReady, false, "ReadinessGatesNotReady",
				fmt.Sprintf("corresponding condition of pod readiness gate %q does not exist or is not True", strings.Join(gatesMissing, ", "))))
		default:
			st.Conditions = append(st.Conditions, cond(corev1.PodReady, true, "", ""))
		}
	}
	st.Conditions = append(st.Conditions, cond(corev1.PodScheduled, true, "", ""))
	for _, e := range s.External {
		if !ownConditions[e.Type] {
			st.Conditions = append(st.Conditions, e)
		}
	}
	return st
}

func appendIfMissing(l []string, s string) []string {
	for _, x := range l {
		if x == s {
			return l
		}
	}
	return append(l, s)
}

// podPhase follows the kubelet's getPhase. A pod becomes Succeeded or Failed
// only when the node has finished it (sidecars stopped too): the API server
// takes no status change after a terminal phase.
func podPhase(s podSnapshot) corev1.PodPhase {
	if s.Finished {
		return s.Phase
	}
	p := runningPhase(s)
	if p == corev1.PodSucceeded || p == corev1.PodFailed {
		return corev1.PodRunning
	}
	return p
}

func runningPhase(s podSnapshot) corev1.PodPhase {
	if !s.Initialized {
		return corev1.PodPending
	}
	var waiting, running, stopped, succeeded int
	for _, c := range s.Apps {
		switch {
		case c.State.Running != nil:
			running++
		case c.State.Terminated != nil:
			stopped++
			if c.State.Terminated.ExitCode == 0 {
				succeeded++
			}
		case c.State.Waiting != nil:
			if c.Last.Terminated != nil {
				stopped++
			} else {
				waiting++
			}
		}
	}
	switch {
	case waiting > 0:
		return corev1.PodPending
	case running > 0:
		return corev1.PodRunning
	case stopped > 0:
		if s.RestartPolicy == corev1.RestartPolicyAlways || s.RestartPolicy == "" {
			return corev1.PodRunning
		}
		if stopped == succeeded {
			return corev1.PodSucceeded
		}
		if s.RestartPolicy == corev1.RestartPolicyNever {
			return corev1.PodFailed
		}
		return corev1.PodRunning
	}
	return corev1.PodPending
}
