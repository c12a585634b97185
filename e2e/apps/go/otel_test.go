//go:build otel

package main

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/baggage"
)

// recorder is a downstream that answers with the traceparent and baggage it
// got ("tp=<traceparent> bg=<baggage>"), so that each caller sees what its own
// request carried, and keeps every request's headers.
type recorder struct {
	mu    sync.Mutex
	seen  []http.Header
	delay time.Duration
}

func (rec *recorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rec.mu.Lock()
	rec.seen = append(rec.seen, r.Header.Clone())
	rec.mu.Unlock()
	if rec.delay > 0 {
		time.Sleep(rec.delay) // keeps the concurrent requests in flight together
	}
	io.WriteString(w, "tp="+r.Header.Get("Traceparent")+" bg="+r.Header.Get("Baggage"))
}

func (rec *recorder) headers() []http.Header {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return append([]http.Header(nil), rec.seen...)
}

// traceID returns the trace-id field of a version-00 traceparent, or "".
func traceID(tp string) string {
	f := strings.Split(tp, "-")
	if len(f) != 4 || f[0] != "00" || len(f[1]) != 32 || len(f[2]) != 16 || len(f[3]) != 2 {
		return ""
	}
	return f[1]
}

// laneOf returns the x-mse-tag member of a baggage header, or "".
func laneOf(t *testing.T, header string) string {
	t.Helper()
	b, err := baggage.Parse(header)
	if err != nil {
		t.Errorf("baggage %q: %v", header, err)
		return ""
	}
	return b.Member("x-mse-tag").Value()
}

const incomingTraceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

func TestOtelForwardsTraceparentAndBaggage(t *testing.T) {
	down := &recorder{}
	d := httptest.NewServer(down)
	defer d.Close()
	// Two instrumented hops: client -> A -> B -> downstream.
	b := serve(t, NewApp("B", d.URL, "default", ""))
	a := serve(t, NewApp("A", b.URL, "default", ""))
	in := http.Header{
		"Traceparent": {incomingTraceparent},
		"Baggage":     {"x-mse-tag=gray"},
		"X-Mse-Tag":   {"gray"},
		"X-Custom":    {"1"},
	}
	status, body := get(t, "GET", a.URL+"/b", in)
	if status != 200 || !strings.HasPrefix(body, "A[127.0.0.1][config=default] -> B[127.0.0.1][config=default] -> tp=") {
		t.Fatalf("GET /b = %d %q", status, body)
	}
	seen := down.headers()
	if len(seen) != 1 {
		t.Fatalf("downstream got %d requests, want 1", len(seen))
	}
	h := seen[0]
	if got := traceID(h.Get("Traceparent")); got != "0af7651916cd43dd8448eb211c80319c" {
		t.Errorf("downstream traceparent = %q, want trace id 0af7651916cd43dd8448eb211c80319c", h.Get("Traceparent"))
	}
	if got := laneOf(t, h.Get("Baggage")); got != "gray" {
		t.Errorf("downstream baggage = %q, want x-mse-tag=gray", h.Get("Baggage"))
	}
	// Only the W3C context is carried: other incoming headers are not.
	for k := range h {
		switch k {
		case "User-Agent", "Accept-Encoding", "Traceparent", "Baggage":
		default:
			t.Errorf("downstream got header %s: %q", k, h[k])
		}
	}
}

// Without an SDK no trace is started: baggage alone is still carried, and no
// traceparent is made up.
func TestOtelBaggageWithoutTraceparent(t *testing.T) {
	down := &recorder{}
	d := httptest.NewServer(down)
	defer d.Close()
	a := serve(t, NewApp("A", d.URL, "default", ""))
	if status, body := get(t, "GET", a.URL+"/a", http.Header{"Baggage": {"x-mse-tag=gray"}}); status != 200 {
		t.Fatalf("GET /a = %d %q", status, body)
	}
	h := down.headers()[0]
	if got := laneOf(t, h.Get("Baggage")); got != "gray" {
		t.Errorf("downstream baggage = %q, want x-mse-tag=gray", h.Get("Baggage"))
	}
	if tp := h.Get("Traceparent"); tp != "" {
		t.Errorf("downstream traceparent = %q, want none (no incoming one, no SDK)", tp)
	}
}

// 50 requests in flight together, half gray and half base, each with its own
// trace id: every downstream request carries the context of the incoming
// request it was made for.
func TestOtelConcurrentNoMixing(t *testing.T) {
	const n = 50
	down := &recorder{delay: 20 * time.Millisecond}
	d := httptest.NewServer(down)
	defer d.Close()
	a := serve(t, NewApp("A", d.URL, "default", ""))

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: n}, Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	start := make(chan struct{})
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			lane := "base"
			if i%2 == 0 {
				lane = "gray"
			}
			id := fmt.Sprintf("%032x", 0x1000+i)
			req, err := http.NewRequest("GET", a.URL+"/b", nil)
			if err != nil {
				errs <- err
				return
			}
			req.Header.Set("Traceparent", "00-"+id+"-b7ad6b7169203331-01")
			req.Header.Set("Baggage", fmt.Sprintf("x-mse-tag=%s,req=%d", lane, i))
			<-start
			resp, err := client.Do(req)
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				errs <- err
				return
			}
			// body: A[...][config=default] -> tp=<traceparent> bg=<baggage>
			_, got, ok := strings.Cut(string(body), " -> tp=")
			tp, bg, ok2 := strings.Cut(got, " bg=")
			if resp.StatusCode != 200 || !ok || !ok2 {
				errs <- fmt.Errorf("request %d: %d %q", i, resp.StatusCode, body)
				return
			}
			b, err := baggage.Parse(bg)
			switch {
			case err != nil:
				errs <- fmt.Errorf("request %d: downstream baggage %q: %v", i, bg, err)
			case traceID(tp) != id:
				errs <- fmt.Errorf("request %d: downstream traceparent %q, want trace id %s", i, tp, id)
			case b.Member("x-mse-tag").Value() != lane || b.Member("req").Value() != fmt.Sprint(i):
				errs <- fmt.Errorf("request %d (lane %s): downstream baggage %q", i, lane, bg)
			}
		}(i)
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// The downstream saw each trace id exactly once.
	ids := map[string]int{}
	for _, h := range down.headers() {
		ids[traceID(h.Get("Traceparent"))]++
	}
	if len(ids) != n {
		t.Errorf("downstream saw %d distinct trace ids in %d requests, want %d: %v", len(ids), len(down.headers()), n, ids)
	}
}
