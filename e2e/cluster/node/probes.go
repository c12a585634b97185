package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// probeTarget is what a probe or hook runs against: the container's running
// process and addresses.
type probeTarget struct {
	podIP       string
	hostNetwork bool
	container   *corev1.Container
	pid         int
	identity    Identity
	env         []string
	workingDir  string
	tools       Tools
}

// resolvePort turns a port number or a container port name into a number.
func resolvePort(p intstr.IntOrString, c *corev1.Container) (int, error) {
	if p.Type == intstr.Int {
		if p.IntVal <= 0 || p.IntVal > 65535 {
			return 0, fmt.Errorf("invalid port %d", p.IntVal)
		}
		return int(p.IntVal), nil
	}
	if n, err := strconv.Atoi(p.StrVal); err == nil && n > 0 && n <= 65535 {
		return n, nil
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return int(cp.ContainerPort), nil
		}
	}
	return 0, fmt.Errorf("couldn't find port %q in container %s", p.StrVal, c.Name)
}

// runHandler runs a probe's or hook's action once. It returns nil on
// success; output is a short text for events and messages.
func runHandler(ctx context.Context, t probeTarget, h corev1.ProbeHandler, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	switch {
	case h.Exec != nil:
		return execAction(ctx, t, h.Exec.Command)
	case h.HTTPGet != nil:
		return httpGetAction(ctx, t, h.HTTPGet, timeout)
	case h.TCPSocket != nil:
		port, err := resolvePort(h.TCPSocket.Port, t.container)
		if err != nil {
			return "", err
		}
		host := h.TCPSocket.Host
		if host == "" {
			host = t.podIP
		}
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			return "", err
		}
		conn.Close()
		return "", nil
	case h.GRPC != nil:
		return grpcAction(ctx, t, h.GRPC)
	}
	return "", fmt.Errorf("probe or hook has no action")
}

func execAction(ctx context.Context, t probeTarget, argv []string) (string, error) {
	if len(argv) == 0 {
		return "", fmt.Errorf("exec: empty command")
	}
	if t.pid <= 0 {
		return "", fmt.Errorf("container is not running")
	}
	cmd := ExecInContainer(t.tools, t.pid, t.hostNetwork, t.identity, t.env, t.workingDir, argv)
	var out bytes.Buffer
	cmd.Stdout = &limitedWriter{w: &out, n: 10 << 10}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		return "", err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			return out.String(), fmt.Errorf("command %q exited with %v: %s", strings.Join(argv, " "), err, strings.TrimSpace(out.String()))
		}
		return out.String(), nil
	case <-ctx.Done():
		KillSession(cmd.Process.Pid, 0, syscall.SIGKILL)
		_ = cmd.Process.Kill()
		<-done
		return out.String(), fmt.Errorf("command %q timed out", strings.Join(argv, " "))
	}
}

type limitedWriter struct {
	w io.Writer
	n int
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	if l.n <= 0 {
		return len(p), nil
	}
	q := p
	if len(q) > l.n {
		q = q[:l.n]
	}
	l.n -= len(q)
	_, _ = l.w.Write(q)
	return len(p), nil
}

func httpGetAction(ctx context.Context, t probeTarget, g *corev1.HTTPGetAction, timeout time.Duration) (string, error) {
	port, err := resolvePort(g.Port, t.container)
	if err != nil {
		return "", err
	}
	host := g.Host
	if host == "" {
		host = t.podIP
	}
	scheme := strings.ToLower(string(g.Scheme))
	if scheme == "" {
		scheme = "http"
	}
	path := g.Path
	if path == "" {
		path = "/"
	}
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	u := &url.URL{Scheme: scheme, Host: net.JoinHostPort(host, strconv.Itoa(port))}
	full := u.String() + path
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, full, nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("User-Agent", "kube-probe/lanemesh-node")
	req.Header.Set("Accept", "*/*")
	for _, h := range g.HTTPHeaders {
		if strings.EqualFold(h.Name, "Host") {
			req.Host = h.Value
			continue
		}
		req.Header.Add(h.Name, h.Value)
	}
	client := &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // as the kubelet: probes do not verify
			DisableKeepAlives: true,
			Proxy:             nil,
		},
		CheckRedirect: func(r *http.Request, via []*http.Request) error {
			if len(via) >= 10 || r.URL.Hostname() != host {
				return http.ErrUseLastResponse
			}
			return nil
		},
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 10<<10))
	if resp.StatusCode >= 200 && resp.StatusCode < 400 {
		return string(body), nil
	}
	return string(body), fmt.Errorf("HTTP probe failed with statuscode: %d", resp.StatusCode)
}

func grpcAction(ctx context.Context, t probeTarget, g *corev1.GRPCAction) (string, error) {
	if g.Port <= 0 || g.Port > 65535 {
		return "", fmt.Errorf("invalid port %d", g.Port)
	}
	addr := net.JoinHostPort(t.podIP, strconv.Itoa(int(g.Port)))
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return "", err
	}
	defer conn.Close()
	svc := ""
	if g.Service != nil {
		svc = *g.Service
	}
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
	if err != nil {
		return "", fmt.Errorf("gRPC health check to %s failed: %v", addr, err)
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		return "", fmt.Errorf("service unhealthy (responded with %q)", resp.GetStatus())
	}
	return "", nil
}

// runLifecycleHandler runs a postStart/preStop hook.
func runLifecycleHandler(ctx context.Context, t probeTarget, h *corev1.LifecycleHandler, timeout time.Duration) error {
	switch {
	case h.Sleep != nil:
		select {
		case <-time.After(time.Duration(h.Sleep.Seconds) * time.Second):
		case <-ctx.Done():
		}
		return nil
	case h.Exec != nil:
		_, err := runHandler(ctx, t, corev1.ProbeHandler{Exec: h.Exec}, timeout)
		return err
	case h.HTTPGet != nil:
		_, err := runHandler(ctx, t, corev1.ProbeHandler{HTTPGet: h.HTTPGet}, timeout)
		return err
	case h.TCPSocket != nil:
		// Deprecated and never executed by the kubelet either.
		return nil
	}
	return fmt.Errorf("lifecycle hook has no action")
}

// probeSettings are a probe's timing with Kubernetes defaults applied.
type probeSettings struct {
	initialDelay, period, timeout time.Duration
	success, failure              int
}

func settingsOf(p *corev1.Probe) probeSettings {
	s := probeSettings{
		initialDelay: time.Duration(p.InitialDelaySeconds) * time.Second,
		period:       time.Duration(p.PeriodSeconds) * time.Second,
		timeout:      time.Duration(p.TimeoutSeconds) * time.Second,
		success:      int(p.SuccessThreshold),
		failure:      int(p.FailureThreshold),
	}
	if s.period <= 0 {
		s.period = 10 * time.Second
	}
	if s.timeout <= 0 {
		s.timeout = time.Second
	}
	if s.success <= 0 {
		s.success = 1
	}
	if s.failure <= 0 {
		s.failure = 3
	}
	return s
}
