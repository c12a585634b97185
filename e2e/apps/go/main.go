// Command demo-go is the Go demo app of the lanemesh e2e scenarios: a plain
// net/http service that answers with its name and, when --next is set, the
// answer of the next service in the chain. It knows nothing about the mesh:
// its outbound call forwards no incoming header (see ../README.md).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	downstreamTimeout = 10 * time.Second
	shutdownGrace     = 5 * time.Second
	errorBodyLimit    = 200
)

// Hook points for the `otel` build tag (otel.go): the variant built with
// `-tags otel` replaces them with OpenTelemetry's net/http instrumentation,
// which extracts the incoming W3C traceparent/baggage into the request context
// and injects them into the outbound request. The plain build keeps them as the
// identity and links no OpenTelemetry code. Handler code is the same in both.
var (
	instrumentHandler   = func(h http.Handler) http.Handler { return h }
	instrumentTransport = func(rt http.RoundTripper) http.RoundTripper { return rt }
)

// App holds the settings of one instance and its run-time fault injection.
type App struct {
	Name   string
	Next   string // base URL of the downstream, "" for the last service
	Config string
	PodIP  string // "" means: the local address the request arrived on

	client     *http.Client
	delayMs    atomic.Int64
	failStatus atomic.Int64
}

// NewApp returns an App with a pooled keep-alive client for the downstream.
func NewApp(name, next, config, podIP string) *App {
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.Proxy = nil // the mesh, not an HTTP proxy, sits in between
	transport.MaxIdleConns = 256
	transport.MaxIdleConnsPerHost = 64
	return &App{
		Name:   name,
		Next:   strings.TrimRight(next, "/"),
		Config: config,
		PodIP:  podIP,
		client: &http.Client{
			Transport: instrumentTransport(transport),
			Timeout:   downstreamTimeout,
			// A redirect is an answer like any other non-2xx one.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}
}

// Handler returns the app's routes wrapped in the request log.
func (a *App) Handler() http.Handler {
	mux := http.NewServeMux()
	for _, pattern := range []string{"GET /{$}", "GET /a", "GET /b", "GET /c"} {
		mux.HandleFunc(pattern, a.chain)
	}
	mux.HandleFunc("GET /greet1a", a.greet("greet1a"))
	mux.HandleFunc("GET /greet1b", a.greet("greet1b"))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { text(w, http.StatusOK, "ok") })
	mux.HandleFunc("POST /admin/delay", a.setting("ms", "delay_ms", 0, 1<<31-1, &a.delayMs))
	mux.HandleFunc("POST /admin/fail", a.setting("status", "fail_status", 200, 599, &a.failStatus))
	return logRequests(instrumentHandler(mux))
}

// SetDelay and SetFail set the fault injection (0 turns it off).
func (a *App) SetDelay(ms int)    { a.delayMs.Store(int64(ms)) }
func (a *App) SetFail(status int) { a.failStatus.Store(int64(status)) }

func (a *App) ident(r *http.Request) string {
	ip := a.PodIP
	if ip == "" {
		if addr, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
			ip = addr.String()
			if host, _, err := net.SplitHostPort(ip); err == nil {
				ip = host
			}
		}
	}
	return a.Name + "[" + ip + "]"
}

// chain serves /, /a, /b and /c.
func (a *App) chain(w http.ResponseWriter, r *http.Request) {
	me := a.ident(r) + "[config=" + a.Config + "]"
	if ms := a.delayMs.Load(); ms > 0 {
		select {
		case <-time.After(time.Duration(ms) * time.Millisecond):
		case <-r.Context().Done():
			return
		}
	}
	if status := a.failStatus.Load(); status != 0 {
		text(w, int(status), fmt.Sprintf("%s injected failure: %d", me, status))
		return
	}
	if a.Next == "" {
		text(w, http.StatusOK, me)
		return
	}
	// A fresh request: nothing of the incoming one (no lane header, no
	// traceparent, no baggage) is forwarded.
	req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, a.Next+r.URL.Path, nil)
	if err != nil {
		text(w, http.StatusBadGateway, me+" -> error: "+err.Error())
		return
	}
	resp, err := a.client.Do(req)
	if err != nil {
		text(w, http.StatusBadGateway, me+" -> error: "+err.Error())
		return
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	switch {
	case resp.StatusCode < 200 || resp.StatusCode > 299:
		if len(body) > errorBodyLimit {
			body = body[:errorBodyLimit]
		}
		text(w, http.StatusBadGateway, fmt.Sprintf("%s -> error: %d %s", me, resp.StatusCode, body))
	case err != nil:
		text(w, http.StatusBadGateway, me+" -> error: reading the body: "+err.Error())
	default:
		text(w, http.StatusOK, me+" -> "+string(body))
	}
}

func (a *App) greet(what string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		text(w, http.StatusOK, a.ident(r)+" "+what)
	}
}

// setting serves POST /admin/delay?ms=N and POST /admin/fail?status=S.
func (a *App) setting(param, label string, min, max int64, v *atomic.Int64) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.ParseInt(r.URL.Query().Get(param), 10, 64)
		if err != nil || (n != 0 && (n < min || n > max)) {
			text(w, http.StatusBadRequest, fmt.Sprintf("%s must be 0 or an integer in [%d, %d]", param, min, max))
			return
		}
		v.Store(n)
		text(w, http.StatusOK, fmt.Sprintf("%s=%d", label, n))
	}
}

func text(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(status)
	io.WriteString(w, body)
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// logRequests writes one line per request to stdout.
func logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(rec, r)
		log.Printf("%s %s %d %.1fms", r.Method, r.URL.Path, rec.status, float64(time.Since(start).Microseconds())/1000)
	})
}

func envInt(name string, def int) int {
	if v, ok := os.LookupEnv(name); ok && v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			log.Fatalf("env %s=%q: not an integer", name, v)
		}
		return n
	}
	return def
}

func envString(name, def string) string {
	if v, ok := os.LookupEnv(name); ok && v != "" {
		return v
	}
	return def
}

func main() {
	log.SetOutput(os.Stdout)
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)

	// Flags win over the environment, which wins over the defaults.
	name := flag.String("name", envString("NAME", "app"), "display name (env NAME)")
	port := flag.Int("port", envInt("PORT", 8080), "listen port (env PORT)")
	next := flag.String("next", envString("NEXT", ""), "base URL of the downstream, e.g. http://spring-cloud-b:20002 (env NEXT)")
	config := flag.String("config", envString("CONFIG", "default"), "config string shown in answers (env CONFIG)")
	delayMs := flag.Int("delay-ms", envInt("DELAY_MS", 0), "delay of every chain-path answer in ms (env DELAY_MS)")
	failStatus := flag.Int("fail-status", envInt("FAIL_STATUS", 0), "status every chain path answers, 0 = off (env FAIL_STATUS)")
	flag.Parse()
	if flag.NArg() > 0 {
		log.Fatalf("unexpected arguments: %q", flag.Args())
	}
	if *delayMs < 0 || (*failStatus != 0 && (*failStatus < 200 || *failStatus > 599)) {
		log.Fatalf("--delay-ms must be >= 0 and --fail-status 0 or in [200, 599]")
	}

	app := NewApp(*name, *next, *config, os.Getenv("POD_IP"))
	app.SetDelay(*delayMs)
	app.SetFail(*failStatus)

	ln, err := net.Listen("tcp4", fmt.Sprintf("0.0.0.0:%d", *port))
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{
		Handler:           app.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Printf("%s listening on %s (next=%q config=%q)", *name, ln.Addr(), app.Next, *config)

	select {
	case err := <-errc:
		log.Fatal(err)
	case <-ctx.Done():
	}
	log.Printf("shutting down (in-flight requests get up to %s)", shutdownGrace)
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		log.Printf("shutdown: %v", err)
	}
	log.Printf("stopped")
}
