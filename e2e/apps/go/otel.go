//go:build otel

// The demo-go-otel variant (see ../README.md): the same app, with
// OpenTelemetry's net/http instrumentation around the server handler and the
// client transport, so that the outbound call carries the incoming W3C
// traceparent and baggage. Handler code is unchanged: chain already builds the
// outbound request from r.Context(), which is where otelhttp puts them.
//
// No SDK and no exporter: the global tracer provider stays the no-op one. Its
// spans are non-recording but keep the parent's span context, so the outbound
// traceparent has the incoming trace id (and parent id), and baggage travels
// in the context (otel_test.go checks both).

package main

import (
	"net/http"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
)

func init() {
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
	instrumentHandler = func(h http.Handler) http.Handler { return otelhttp.NewHandler(h, "demo-go") }
	instrumentTransport = func(rt http.RoundTripper) http.RoundTripper { return otelhttp.NewTransport(rt) }
}
