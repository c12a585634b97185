package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

func get(t *testing.T, method, url string, header http.Header) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

func serve(t *testing.T, app *App) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(app.Handler()) // listens on 127.0.0.1
	t.Cleanup(srv.Close)
	return srv
}

func TestChain(t *testing.T) {
	c := serve(t, NewApp("C", "", "default", ""))
	b := serve(t, NewApp("B", c.URL, "default", ""))
	a := serve(t, NewApp("A", b.URL+"/", "v2", ""))
	for _, path := range []string{"/", "/a", "/b", "/c"} {
		status, body := get(t, "GET", a.URL+path, nil)
		want := "A[127.0.0.1][config=v2] -> B[127.0.0.1][config=default] -> C[127.0.0.1][config=default]"
		if status != 200 || body != want {
			t.Errorf("GET %s = %d %q, want 200 %q", path, status, body, want)
		}
	}
	if status, _ := get(t, "GET", a.URL+"/d", nil); status != 404 {
		t.Errorf("GET /d = %d, want 404", status)
	}
}

func TestPodIPAndGreet(t *testing.T) {
	a := serve(t, NewApp("Agray", "", "default", "10.1.2.3"))
	for path, want := range map[string]string{
		"/a":       "Agray[10.1.2.3][config=default]",
		"/greet1a": "Agray[10.1.2.3] greet1a",
		"/greet1b": "Agray[10.1.2.3] greet1b",
		"/healthz": "ok",
	} {
		if status, body := get(t, "GET", a.URL+path, nil); status != 200 || body != want {
			t.Errorf("GET %s = %d %q, want 200 %q", path, status, body, want)
		}
	}
}

func TestForwardsNoIncomingHeader(t *testing.T) {
	var mu sync.Mutex
	var seen http.Header
	var path string
	down := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen, path = r.Header.Clone(), r.URL.Path
		mu.Unlock()
		io.WriteString(w, "down")
	}))
	defer down.Close()
	a := serve(t, NewApp("A", down.URL, "default", ""))
	in := http.Header{
		"X-Mse-Tag":   {"gray"},
		"Traceparent": {"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
		"Baggage":     {"lane=gray"},
		"X-Custom":    {"1"},
	}
	if status, body := get(t, "GET", a.URL+"/b?x=1", in); status != 200 || body != "A[127.0.0.1][config=default] -> down" {
		t.Fatalf("GET /b = %d %q", status, body)
	}
	mu.Lock()
	defer mu.Unlock()
	if path != "/b" {
		t.Errorf("downstream path = %q, want /b", path)
	}
	for k := range seen {
		switch k {
		case "User-Agent", "Accept-Encoding":
		default:
			t.Errorf("downstream got header %s: %q", k, seen[k])
		}
	}
}

func TestDownstreamErrors(t *testing.T) {
	long := strings.Repeat("x", 300)
	down := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/a" {
			w.WriteHeader(503)
			io.WriteString(w, "no healthy upstream")
			return
		}
		w.WriteHeader(429)
		io.WriteString(w, long)
	}))
	a := serve(t, NewApp("A", down.URL, "default", ""))
	if status, body := get(t, "GET", a.URL+"/a", nil); status != 502 || body != "A[127.0.0.1][config=default] -> error: 503 no healthy upstream" {
		t.Errorf("GET /a = %d %q", status, body)
	}
	if status, body := get(t, "GET", a.URL+"/b", nil); status != 502 || body != "A[127.0.0.1][config=default] -> error: 429 "+long[:200] {
		t.Errorf("GET /b = %d %q", status, body)
	}
	down.Close()
	status, body := get(t, "GET", a.URL+"/a", nil)
	if status != 502 || !strings.HasPrefix(body, "A[127.0.0.1][config=default] -> error: ") || !strings.Contains(body, "refused") {
		t.Errorf("GET /a with the downstream down = %d %q", status, body)
	}
}

func TestFaultInjection(t *testing.T) {
	a := serve(t, NewApp("C", "", "default", ""))
	if status, body := get(t, "POST", a.URL+"/admin/delay?ms=200", nil); status != 200 || body != "delay_ms=200" {
		t.Fatalf("POST /admin/delay = %d %q", status, body)
	}
	start := time.Now()
	if status, _ := get(t, "GET", a.URL+"/c", nil); status != 200 {
		t.Errorf("GET /c = %d", status)
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Errorf("GET /c took %s, want >= 200ms", d)
	}
	start = time.Now()
	get(t, "GET", a.URL+"/greet1a", nil)
	if d := time.Since(start); d >= 200*time.Millisecond {
		t.Errorf("GET /greet1a took %s: the delay is for chain paths only", d)
	}
	get(t, "POST", a.URL+"/admin/delay?ms=0", nil)

	if status, body := get(t, "POST", a.URL+"/admin/fail?status=503", nil); status != 200 || body != "fail_status=503" {
		t.Fatalf("POST /admin/fail = %d %q", status, body)
	}
	if status, body := get(t, "GET", a.URL+"/c", nil); status != 503 || body != "C[127.0.0.1][config=default] injected failure: 503" {
		t.Errorf("GET /c = %d %q", status, body)
	}
	if status, _ := get(t, "GET", a.URL+"/healthz", nil); status != 200 {
		t.Errorf("GET /healthz = %d while failing", status)
	}
	get(t, "POST", a.URL+"/admin/fail?status=0", nil)
	if status, _ := get(t, "GET", a.URL+"/c", nil); status != 200 {
		t.Errorf("GET /c = %d after turning the failure off", status)
	}

	for _, bad := range []string{"/admin/fail?status=42", "/admin/fail", "/admin/delay?ms=-1", "/admin/delay?ms=x"} {
		if status, _ := get(t, "POST", a.URL+bad, nil); status != 400 {
			t.Errorf("POST %s = %d, want 400", bad, status)
		}
	}
	if status, _ := get(t, "GET", a.URL+"/admin/delay?ms=5", nil); status != 405 {
		t.Errorf("GET /admin/delay = %d, want 405", status)
	}
}
