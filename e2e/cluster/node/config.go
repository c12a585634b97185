package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
)

// Config is the command line.
type Config struct {
	Kubeconfig    string
	NodeName      string
	PodCIDR       string
	Bridge        string
	Images        string
	StateDir      string
	ClusterDNS    string
	ClusterDomain string
	NodeIPFlag    string
	KubeletPort   int
	LogLevel      string
	PodWorkers    int

	// Derived by Parse.
	PodNet   *net.IPNet
	BridgeIP net.IP
	NodeIP   net.IP
}

// ParseFlags parses args (without the program name).
func ParseFlags(args []string, stderr io.Writer) (*Config, error) {
	c := &Config{}
	fs := flag.NewFlagSet("lanemesh-node", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.Kubeconfig, "kubeconfig", "", "kubeconfig of the API server (required)")
	fs.StringVar(&c.NodeName, "node-name", "lanemesh-node", "name of the Node object to register")
	fs.StringVar(&c.PodCIDR, "pod-cidr", "10.244.0.0/24", "IPv4 CIDR for pod IPs; its first host is the bridge's address")
	fs.StringVar(&c.Bridge, "bridge", "lm0", "name of the Linux bridge pods attach to (created on start, removed on exit)")
	fs.StringVar(&c.Images, "images", "", "image table file (YAML or JSON) mapping image references to local executables (required)")
	fs.StringVar(&c.StateDir, "state-dir", "", "directory for pod volumes, logs and the records used to clean up after a crash (required)")
	fs.StringVar(&c.ClusterDNS, "cluster-dns", "10.96.0.10", "nameserver written into ClusterFirst pods' /etc/resolv.conf")
	fs.StringVar(&c.ClusterDomain, "cluster-domain", "cluster.local", "cluster DNS domain")
	fs.StringVar(&c.NodeIPFlag, "node-ip", "", "node InternalIP (default: the bridge address, the first host of --pod-cidr)")
	fs.IntVar(&c.KubeletPort, "kubelet-port", 10250, "HTTPS port (on the node IP) for kubectl logs/exec through the API server; 0 disables it")
	fs.StringVar(&c.LogLevel, "log-level", "info", "debug, info, warn or error")
	fs.IntVar(&c.PodWorkers, "pod-sync-workers", 4, "virtual-kubelet pod sync workers")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	return c, c.validate()
}

func (c *Config) validate() error {
	var missing []string
	if c.Kubeconfig == "" {
		missing = append(missing, "--kubeconfig")
	}
	if c.Images == "" {
		missing = append(missing, "--images")
	}
	if c.StateDir == "" {
		missing = append(missing, "--state-dir")
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing %s", strings.Join(missing, ", "))
	}
	if c.NodeName == "" {
		return fmt.Errorf("--node-name must not be empty")
	}
	if c.Bridge == "" || len(c.Bridge) > 15 || strings.ContainsAny(c.Bridge, "/ \t") {
		return fmt.Errorf("--bridge %q: must be a network interface name of 1-15 characters", c.Bridge)
	}
	ip, n, err := net.ParseCIDR(c.PodCIDR)
	if err != nil || ip.To4() == nil {
		return fmt.Errorf("--pod-cidr %q: must be an IPv4 CIDR", c.PodCIDR)
	}
	c.PodNet = n
	ipam, err := NewIPAM(n)
	if err != nil {
		return err
	}
	c.BridgeIP = ipam.Gateway()
	c.NodeIP = c.BridgeIP
	if c.NodeIPFlag != "" {
		c.NodeIP = net.ParseIP(c.NodeIPFlag)
		if c.NodeIP == nil || c.NodeIP.To4() == nil {
			return fmt.Errorf("--node-ip %q: must be an IPv4 address", c.NodeIPFlag)
		}
	}
	if net.ParseIP(c.ClusterDNS) == nil {
		return fmt.Errorf("--cluster-dns %q: must be an IP address", c.ClusterDNS)
	}
	if c.ClusterDomain == "" {
		return fmt.Errorf("--cluster-domain must not be empty")
	}
	if c.KubeletPort < 0 || c.KubeletPort > 65535 {
		return fmt.Errorf("--kubelet-port %d out of range", c.KubeletPort)
	}
	if c.PodWorkers < 1 {
		c.PodWorkers = 1
	}
	abs, err := filepath.Abs(c.StateDir)
	if err != nil {
		return err
	}
	c.StateDir = abs
	if abs, err := filepath.Abs(c.Images); err == nil {
		c.Images = abs
	}
	return nil
}
