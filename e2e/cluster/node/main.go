// Command lanemesh-node is a Kubernetes node for the local cluster test tier:
// a virtual-kubelet NodeController and PodController whose provider runs each
// pod's containers as processes in the pod's own network namespace (see
// README.md).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	vklog "github.com/virtual-kubelet/virtual-kubelet/log"
	vkslog "github.com/virtual-kubelet/virtual-kubelet/log/slog"
	"github.com/virtual-kubelet/virtual-kubelet/node"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == helperCommand {
		os.Exit(runHelper())
	}
	os.Exit(runNode(os.Args[1:]))
}

func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	switch strings.ToLower(level) {
	case "debug":
		l = slog.LevelDebug
	case "info", "":
		l = slog.LevelInfo
	case "warn", "warning":
		l = slog.LevelWarn
	case "error":
		l = slog.LevelError
	default:
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}

func runNode(args []string) int {
	cfg, err := ParseFlags(args, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "lanemesh-node: %v\n", err)
		return 2
	}
	log, err := newLogger(cfg.LogLevel)
	if err != nil {
		fmt.Fprintf(os.Stderr, "lanemesh-node: %v\n", err)
		return 2
	}
	vkLevel := slog.LevelWarn
	if strings.EqualFold(cfg.LogLevel, "debug") {
		vkLevel = slog.LevelDebug
	}
	vklog.L = vkslog.FromSlog(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: vkLevel})).With("component", "virtual-kubelet"))
	klog.SetSlogLogger(log.With("component", "client-go"))
	if err := serve(cfg, log); err != nil {
		log.Error("lanemesh-node failed", "err", err)
		return 1
	}
	return 0
}

func serve(cfg *Config, log *slog.Logger) error {
	if os.Geteuid() != 0 {
		return errors.New("must run as root (it creates network namespaces, a bridge and iptables rules)")
	}
	tools, err := FindTools()
	if err != nil {
		return err
	}
	images, err := NewImageSource(cfg.Images)
	if err != nil {
		return err
	}
	state, err := OpenState(cfg.StateDir)
	if err != nil {
		return err
	}
	defer state.Close()
	CleanLeftovers(state, tools, log)

	restCfg, err := clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
	if err != nil {
		return fmt.Errorf("kubeconfig %s: %w", cfg.Kubeconfig, err)
	}
	restCfg.UserAgent = "lanemesh-node/" + nodeVersion
	restCfg.QPS, restCfg.Burst = 50, 100
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return err
	}
	sv, err := client.Discovery().ServerVersion()
	if err != nil {
		return fmt.Errorf("reaching the API server: %w", err)
	}

	ipam, err := NewIPAM(cfg.PodNet, cfg.NodeIP)
	if err != nil {
		return err
	}
	if err := SetupHost(state, tools, cfg, log); err != nil {
		TeardownHost(state, tools, state.Node(), log)
		return fmt.Errorf("setting up the host network: %w", err)
	}
	defer func() {
		TeardownHost(state, tools, state.Node(), log)
		log.Info("host network cleaned up")
	}()

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)

	// Pods of this node only; Services, ConfigMaps and Secrets cluster-wide
	// (the pod controller requires their informers).
	podFactory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", cfg.NodeName).String()
	}))
	otherFactory := informers.NewSharedInformerFactory(client, 0)
	podInformer := podFactory.Core().V1().Pods()
	svcInformer := otherFactory.Core().V1().Services()
	cmInformer := otherFactory.Core().V1().ConfigMaps()
	secretInformer := otherFactory.Core().V1().Secrets()

	broadcaster := record.NewBroadcaster()
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	defer broadcaster.Shutdown()
	recorder := broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "kubelet", Host: cfg.NodeName})

	nodeCtx, cancelNode := context.WithCancel(context.Background())
	defer cancelNode()
	provider := &Provider{
		cfg:         cfg,
		ctx:         nodeCtx,
		log:         log,
		client:      client,
		tools:       tools,
		images:      images,
		ipam:        ipam,
		dns:         DNSConfig{ClusterDNS: cfg.ClusterDNS, ClusterDomain: cfg.ClusterDomain, HostResolvConf: readHostResolvConf()},
		state:       state,
		objects:     apiObjects{client: client},
		svcLister:   svcInformer.Lister(),
		podLister:   podInformer.Lister(),
		recorder:    recorder,
		allocatable: nodeResources(),
		pods:        map[string]*podRuntime{},
		dirty:       map[*podRuntime]bool{},
		kick:        make(chan struct{}, 1),
	}
	provider.volumes = &VolumeManager{Client: client, Objects: provider.objects, Node: cfg, State: state, Alloc: provider.allocatable}

	pc, err := node.NewPodController(node.PodControllerConfig{
		PodClient:                 client.CoreV1(),
		PodInformer:               podInformer,
		EventRecorder:             recorder,
		Provider:                  provider,
		ConfigMapInformer:         cmInformer,
		SecretInformer:            secretInformer,
		ServiceInformer:           svcInformer,
		SkipDownwardAPIResolution: true, // env is resolved when a container starts, with the pod IP
	})
	if err != nil {
		return err
	}
	podFactory.Start(nodeCtx.Done())
	otherFactory.Start(nodeCtx.Done())
	syncCtx, cancelSync := context.WithTimeout(nodeCtx, 60*time.Second)
	ok := cache.WaitForCacheSync(syncCtx.Done(), podInformer.Informer().HasSynced, svcInformer.Informer().HasSynced,
		cmInformer.Informer().HasSynced, secretInformer.Informer().HasSynced)
	cancelSync()
	if !ok {
		return errors.New("informer caches did not sync within 60s")
	}

	nodeObj := NewNodeObject(cfg, sv.GitVersion)
	nc, err := node.NewNodeController(nodeProvider{}, nodeObj, client.CoreV1().Nodes(),
		node.WithNodeEnableLeaseV1(client.CoordinationV1().Leases(corev1.NamespaceNodeLease), 40),
		node.WithNodeStatusUpdateErrorHandler(func(ctx context.Context, err error) error {
			if !apierrors.IsNotFound(err) {
				return err
			}
			log.Warn("the Node object is gone; registering it again")
			n := nodeObj.DeepCopy()
			n.ResourceVersion = ""
			_, err = client.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{})
			return err
		}),
	)
	if err != nil {
		return err
	}
	vkCtx, cancelVK := context.WithCancel(nodeCtx)
	defer cancelVK()
	go func() {
		if err := nc.Run(vkCtx); err != nil && vkCtx.Err() == nil {
			log.Error("node controller stopped", "err", err)
		}
	}()
	select {
	case <-nc.Ready():
	case <-nc.Done():
		return fmt.Errorf("registering the node: %w", nc.Err())
	case s := <-sigs:
		log.Info("signal before the node was ready", "signal", s)
		return nil
	}
	log.Info("node registered", "node", cfg.NodeName, "kubeletVersion", sv.GitVersion, "podCIDR", cfg.PodNet, "nodeIP", cfg.NodeIP, "bridge", cfg.Bridge)

	go clearConditionTaints(vkCtx, client, cfg.NodeName, log)
	go func() {
		if err := pc.Run(vkCtx, cfg.PodWorkers); err != nil && vkCtx.Err() == nil {
			log.Error("pod controller stopped", "err", err)
		}
	}()
	if cfg.KubeletPort > 0 {
		stop, err := serveKubeletAPI(nodeCtx, cfg, provider, podInformer.Lister(), log)
		if err != nil {
			log.Warn("kubelet API not served (kubectl logs/exec will not work)", "err", err)
		} else {
			defer stop()
		}
	}

	var fatal error
	select {
	case s := <-sigs:
		log.Info("stopping", "signal", s)
	case <-pc.Done():
		fatal = fmt.Errorf("pod controller: %v", pc.Err())
	case <-nc.Done():
		fatal = fmt.Errorf("node controller: %v", nc.Err())
	}

	// Stop every pod as for a deletion; a second signal cuts the wait short.
	stopped := make(chan struct{})
	go func() {
		provider.shutdown(10 * time.Minute)
		close(stopped)
	}()
	select {
	case <-stopped:
	case s := <-sigs:
		log.Warn("second signal: killing what is left", "signal", s)
	}
	setNodeNotReady(client, cfg.NodeName, log)
	cancelVK()
	waitOrTimeout(pc.Done(), 5*time.Second)
	cancelNode()
	// Whatever is left (after a second signal) dies with its netns here.
	provider.mu.Lock()
	left := make([]*podRuntime, 0, len(provider.pods))
	for _, pr := range provider.pods {
		left = append(left, pr)
	}
	provider.mu.Unlock()
	for _, pr := range left {
		pr.teardownNetwork()
		removePodDir(pr.dir, log)
	}
	log.Info("all pods stopped")
	return fatal
}

// setNodeNotReady marks the node NotReady on the way out (there is no
// controller-manager in the test cluster to notice the lease expiring).
func setNodeNotReady(client kubernetes.Interface, name string, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	n, err := client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return
	}
	now := metav1.Now()
	for i := range n.Status.Conditions {
		if n.Status.Conditions[i].Type == corev1.NodeReady {
			n.Status.Conditions[i].Status = corev1.ConditionFalse
			n.Status.Conditions[i].Reason = "KubeletStopped"
			n.Status.Conditions[i].Message = "lanemesh-node stopped"
			n.Status.Conditions[i].LastTransitionTime = now
			n.Status.Conditions[i].LastHeartbeatTime = now
		}
	}
	if _, err := client.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		log.Warn("marking the node NotReady", "err", err)
	}
}
