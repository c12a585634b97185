package main

import (
	"bufio"
	"context"
	"log/slog"
	"os"
	"runtime"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// nodeResources are the capacity and allocatable this node reports.
func nodeResources() corev1.ResourceList {
	return corev1.ResourceList{
		corev1.ResourceCPU:              resource.MustParse("8"),
		corev1.ResourceMemory:           resource.MustParse("32Gi"),
		corev1.ResourcePods:             resource.MustParse("110"),
		corev1.ResourceEphemeralStorage: resource.MustParse("100Gi"),
	}
}

// NewNodeObject is the Node this process registers: no taints (the real
// scheduler may place pods on it), Ready, the pod CIDR and one InternalIP
// address (no Hostname address: the API server would try to resolve it to
// reach the kubelet port).
func NewNodeObject(cfg *Config, kubeletVersion string) *corev1.Node {
	now := metav1.Now()
	cond := func(t corev1.NodeConditionType, s corev1.ConditionStatus, reason, msg string) corev1.NodeCondition {
		return corev1.NodeCondition{Type: t, Status: s, Reason: reason, Message: msg, LastHeartbeatTime: now, LastTransitionTime: now}
	}
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	kernel := unix.ByteSliceToString(uts.Release[:])
	machineID, _ := os.ReadFile("/etc/machine-id")
	bootID, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	res := nodeResources()
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: cfg.NodeName,
			Labels: map[string]string{
				"kubernetes.io/hostname":   cfg.NodeName,
				"kubernetes.io/os":         "linux",
				"kubernetes.io/arch":       runtime.GOARCH,
				"beta.kubernetes.io/os":    "linux",
				"beta.kubernetes.io/arch":  runtime.GOARCH,
				"node.lanemesh.io/runtime": "process",
			},
		},
		Spec: corev1.NodeSpec{
			PodCIDR:  cfg.PodNet.String(),
			PodCIDRs: []string{cfg.PodNet.String()},
		},
		Status: corev1.NodeStatus{
			Capacity:    res.DeepCopy(),
			Allocatable: res.DeepCopy(),
			Phase:       corev1.NodeRunning,
			Conditions: []corev1.NodeCondition{
				cond(corev1.NodeReady, corev1.ConditionTrue, "KubeletReady", "lanemesh-node is posting ready status"),
				cond(corev1.NodeMemoryPressure, corev1.ConditionFalse, "KubeletHasSufficientMemory", "lanemesh-node has sufficient memory available"),
				cond(corev1.NodeDiskPressure, corev1.ConditionFalse, "KubeletHasNoDiskPressure", "lanemesh-node has no disk pressure"),
				cond(corev1.NodePIDPressure, corev1.ConditionFalse, "KubeletHasSufficientPID", "lanemesh-node has sufficient PID available"),
				cond(corev1.NodeNetworkUnavailable, corev1.ConditionFalse, "RouteCreated", "lanemesh-node created the pod bridge"),
			},
			Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: cfg.NodeIP.String()}},
			DaemonEndpoints: corev1.NodeDaemonEndpoints{
				KubeletEndpoint: corev1.DaemonEndpoint{Port: int32(cfg.KubeletPort)},
			},
			NodeInfo: corev1.NodeSystemInfo{
				MachineID:               strings.TrimSpace(string(machineID)),
				BootID:                  strings.TrimSpace(string(bootID)),
				KernelVersion:           kernel,
				OSImage:                 osImage(),
				ContainerRuntimeVersion: "lanemesh://" + nodeVersion,
				KubeletVersion:          kubeletVersion,
				KubeProxyVersion:        "",
				OperatingSystem:         "linux",
				Architecture:            runtime.GOARCH,
			},
		},
	}
}

// nodeVersion is this program's version, reported as the container runtime's.
const nodeVersion = "0.1.0"

func osImage() string {
	f, err := os.Open("/etc/os-release")
	if err != nil {
		return "Linux"
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "PRETTY_NAME="); ok {
			return strings.Trim(v, `"`)
		}
	}
	return "Linux"
}

// clearConditionTaints removes the not-ready/unreachable taints from the
// node while it runs: the API server's TaintNodesByCondition admission adds
// node.kubernetes.io/not-ready when a node registers, and normally the
// controller-manager's node lifecycle controller lifts it once the node is
// Ready. The local test cluster runs no controller-manager, so the node does
// it itself (the node is Ready for as long as this process runs), and the
// real kube-scheduler can place pods here.
func clearConditionTaints(ctx context.Context, client kubernetes.Interface, name string, log *slog.Logger) {
	for {
		if err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
			n, err := client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			var keep []corev1.Taint
			for _, t := range n.Spec.Taints {
				if t.Key == corev1.TaintNodeNotReady || t.Key == corev1.TaintNodeUnreachable {
					continue
				}
				keep = append(keep, t)
			}
			if len(keep) == len(n.Spec.Taints) {
				return nil
			}
			n.Spec.Taints = keep
			_, err = client.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{})
			if err == nil {
				log.Info("removed the not-ready taint the API server put on the new node")
			}
			return err
		}); err != nil && ctx.Err() == nil {
			log.Warn("removing node condition taints", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(20 * time.Second):
		}
	}
}

// nodeProvider keeps the node Ready for as long as the process runs.
type nodeProvider struct{}

func (nodeProvider) Ping(ctx context.Context) error { return ctx.Err() }

func (nodeProvider) NotifyNodeStatus(context.Context, func(*corev1.Node)) {}
