package main

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func running() corev1.ContainerState {
	return corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}
}

func exited(code int32) corev1.ContainerState {
	return corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: code}}
}

func condOf(st corev1.PodStatus, t corev1.PodConditionType) corev1.PodCondition {
	for _, c := range st.Conditions {
		if c.Type == t {
			return c
		}
	}
	return corev1.PodCondition{}
}

func TestPodPhase(t *testing.T) {
	waiting := corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ContainerCreating"}}
	cases := []struct {
		name   string
		policy corev1.RestartPolicy
		init   bool
		apps   []containerSnapshot
		want   corev1.PodPhase
	}{
		{"init running", corev1.RestartPolicyAlways, false, []containerSnapshot{{State: waiting}}, corev1.PodPending},
		{"creating", corev1.RestartPolicyAlways, true, []containerSnapshot{{State: waiting}}, corev1.PodPending},
		{"running", corev1.RestartPolicyAlways, true, []containerSnapshot{{State: running()}, {State: running()}}, corev1.PodRunning},
		{"crashloop", corev1.RestartPolicyAlways, true, []containerSnapshot{{State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff"}}, Last: exited(1)}}, corev1.PodRunning},
		{"never ok", corev1.RestartPolicyNever, true, []containerSnapshot{{State: exited(0)}}, corev1.PodSucceeded},
		{"never failed", corev1.RestartPolicyNever, true, []containerSnapshot{{State: exited(0)}, {State: exited(2)}}, corev1.PodFailed},
		{"onfailure failed", corev1.RestartPolicyOnFailure, true, []containerSnapshot{{State: exited(2)}}, corev1.PodRunning},
		{"one still running", corev1.RestartPolicyNever, true, []containerSnapshot{{State: exited(0)}, {State: running()}}, corev1.PodRunning},
	}
	for _, c := range cases {
		got := runningPhase(podSnapshot{RestartPolicy: c.policy, Initialized: c.init, Apps: c.apps})
		if got != c.want {
			t.Errorf("%s: %s, want %s", c.name, got, c.want)
		}
	}
	// Terminal only once the node finished the pod.
	if got := podPhase(podSnapshot{RestartPolicy: corev1.RestartPolicyNever, Initialized: true, Apps: []containerSnapshot{{State: exited(0)}}}); got != corev1.PodRunning {
		t.Errorf("not finished: %s", got)
	}
	if got := podPhase(podSnapshot{Finished: true, Phase: corev1.PodFailed, Initialized: true, Apps: []containerSnapshot{{State: running()}}}); got != corev1.PodFailed {
		t.Errorf("finished: %s", got)
	}
}

func TestConditionsAndSidecarReadiness(t *testing.T) {
	prev := map[corev1.PodConditionType]condState{}
	t0 := metav1.NewTime(time.Unix(1000, 0))
	s := podSnapshot{
		RestartPolicy: corev1.RestartPolicyAlways, SandboxReady: true, Initialized: true, PodIP: "10.244.0.2", HostIP: "10.244.0.1",
		Inits: []containerSnapshot{{Name: "proxy", Sidecar: true, Init: true, State: running(), Started: true, Ready: false}},
		Apps:  []containerSnapshot{{Name: "app", State: running(), Started: true, Ready: true}},
	}
	st := BuildPodStatus(s, prev, t0)
	if st.Phase != corev1.PodRunning || st.PodIP != "10.244.0.2" || len(st.PodIPs) != 1 || st.HostIP != "10.244.0.1" {
		t.Fatalf("%+v", st)
	}
	if c := condOf(st, corev1.PodReady); c.Status != corev1.ConditionFalse || c.Message != "containers with unready status: [proxy]" {
		t.Fatalf("an unready sidecar keeps the pod unready: %+v", c)
	}
	if c := condOf(st, corev1.PodInitialized); c.Status != corev1.ConditionTrue {
		t.Fatalf("initialized: %+v", c)
	}
	// The sidecar becomes ready later: Ready flips with a new transition time,
	// the unchanged conditions keep theirs.
	t1 := metav1.NewTime(time.Unix(2000, 0))
	s.Inits[0].Ready = true
	st = BuildPodStatus(s, prev, t1)
	if c := condOf(st, corev1.PodReady); c.Status != corev1.ConditionTrue || !c.LastTransitionTime.Equal(&t1) {
		t.Fatalf("ready: %+v", c)
	}
	if c := condOf(st, corev1.PodScheduled); !c.LastTransitionTime.Equal(&t0) {
		t.Fatalf("scheduled transition moved: %+v", c)
	}
	if st.InitContainerStatuses[0].Name != "proxy" || !*st.InitContainerStatuses[0].Started {
		t.Fatalf("%+v", st.InitContainerStatuses)
	}
	// A readiness gate that is not True keeps the pod unready.
	s.ReadinessGates = []corev1.PodConditionType{"example.com/gate"}
	st = BuildPodStatus(s, prev, t1)
	if c := condOf(st, corev1.PodReady); c.Status != corev1.ConditionFalse || c.Reason != "ReadinessGatesNotReady" {
		t.Fatalf("gate: %+v", c)
	}
	s.External = []corev1.PodCondition{{Type: "example.com/gate", Status: corev1.ConditionTrue}}
	st = BuildPodStatus(s, prev, t1)
	if c := condOf(st, corev1.PodReady); c.Status != corev1.ConditionTrue {
		t.Fatalf("gate true: %+v", c)
	}
	if c := condOf(st, "example.com/gate"); c.Status != corev1.ConditionTrue {
		t.Fatal("external condition not kept")
	}
}

func TestInitializedWhileInitRuns(t *testing.T) {
	s := podSnapshot{
		Inits: []containerSnapshot{{Name: "setup", Init: true, State: running()}},
		Apps:  []containerSnapshot{{Name: "app", State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "PodInitializing"}}}},
	}
	st := BuildPodStatus(s, map[corev1.PodConditionType]condState{}, metav1.Now())
	if st.Phase != corev1.PodPending {
		t.Fatal(st.Phase)
	}
	if c := condOf(st, corev1.PodInitialized); c.Status != corev1.ConditionFalse || c.Message != "containers with incomplete status: [setup]" {
		t.Fatalf("%+v", c)
	}
}
