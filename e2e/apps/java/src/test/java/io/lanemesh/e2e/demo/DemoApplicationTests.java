package io.lanemesh.e2e.demo;

import java.io.IOException;
import java.net.InetSocketAddress;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;

import com.sun.net.httpserver.HttpServer;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;

import org.springframework.boot.test.context.SpringBootTest;
import org.springframework.boot.test.web.server.LocalServerPort;
import org.springframework.test.context.DynamicPropertyRegistry;
import org.springframework.test.context.DynamicPropertySource;

import static org.assertj.core.api.Assertions.assertThat;

/** The contract of ../README.md, against the app on a real port with a fake downstream. */
@SpringBootTest(webEnvironment = SpringBootTest.WebEnvironment.RANDOM_PORT, properties = "name=B")
class DemoApplicationTests {

	static final String LONG = "x".repeat(300);

	static final Map<String, Map<String, List<String>>> seenHeaders = new ConcurrentHashMap<>();

	static final HttpServer downstream = startDownstream();

	static HttpServer startDownstream() {
		try {
			HttpServer server = HttpServer.create(new InetSocketAddress("127.0.0.1", 0), 0);
			server.createContext("/", exchange -> {
				String path = exchange.getRequestURI().getPath();
				seenHeaders.put(path, exchange.getRequestHeaders());
				int status = switch (path) {
					case "/b" -> 503;
					case "/c" -> 429;
					default -> 200;
				};
				byte[] body = switch (path) {
					case "/b" -> "no healthy upstream".getBytes(StandardCharsets.UTF_8);
					case "/c" -> LONG.getBytes(StandardCharsets.UTF_8);
					default -> "C[10.0.0.3][config=default]".getBytes(StandardCharsets.UTF_8);
				};
				exchange.sendResponseHeaders(status, body.length);
				exchange.getResponseBody().write(body);
				exchange.close();
			});
			server.start();
			return server;
		}
		catch (IOException ex) {
			throw new IllegalStateException(ex);
		}
	}

	@DynamicPropertySource
	static void next(DynamicPropertyRegistry registry) {
		registry.add("next", () -> "http://127.0.0.1:" + downstream.getAddress().getPort());
	}

	@AfterAll
	static void stopDownstream() {
		downstream.stop(0);
	}

	@LocalServerPort
	int port;

	final HttpClient client = HttpClient.newBuilder().version(HttpClient.Version.HTTP_1_1).build();

	HttpResponse<String> call(String method, String path, String... headers) throws Exception {
		HttpRequest.Builder request = HttpRequest.newBuilder(URI.create("http://127.0.0.1:" + this.port + path))
			.method(method, HttpRequest.BodyPublishers.noBody());
		if (headers.length > 0) {
			request.headers(headers);
		}
		return this.client.send(request.build(), HttpResponse.BodyHandlers.ofString());
	}

	@AfterEach
	void resetFaults() throws Exception {
		call("POST", "/admin/delay?ms=0");
		call("POST", "/admin/fail?status=0");
	}

	@Test
	void chainForwardsNoIncomingHeader() throws Exception {
		for (String path : List.of("/", "/a")) {
			HttpResponse<String> response = call("GET", path, "x-mse-tag", "gray", "traceparent",
					"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "baggage", "lane=gray");
			assertThat(response.statusCode()).isEqualTo(200);
			assertThat(response.headers().firstValue("content-type")).hasValueSatisfying(
					(type) -> assertThat(type).startsWith("text/plain"));
			assertThat(response.body())
				.isEqualTo("B[127.0.0.1][config=default] -> C[10.0.0.3][config=default]");
			assertThat(seenHeaders.get(path).keySet())
				.allSatisfy((name) -> assertThat(name.toLowerCase()).isIn("host", "user-agent", "connection",
						"content-length"));
		}
	}

	@Test
	void downstreamErrorsAnswer502() throws Exception {
		HttpResponse<String> response = call("GET", "/b");
		assertThat(response.statusCode()).isEqualTo(502);
		assertThat(response.body()).isEqualTo("B[127.0.0.1][config=default] -> error: 503 no healthy upstream");
		response = call("GET", "/c");
		assertThat(response.statusCode()).isEqualTo(502);
		assertThat(response.body())
			.isEqualTo("B[127.0.0.1][config=default] -> error: 429 " + LONG.substring(0, 200));
	}

	@Test
	void greetAndHealth() throws Exception {
		assertThat(call("GET", "/greet1a").body()).isEqualTo("B[127.0.0.1] greet1a");
		assertThat(call("GET", "/greet1b").body()).isEqualTo("B[127.0.0.1] greet1b");
		assertThat(call("GET", "/healthz").body()).isEqualTo("ok");
		assertThat(call("GET", "/d").statusCode()).isEqualTo(404);
	}

	@Test
	void faultInjection() throws Exception {
		HttpResponse<String> response = call("POST", "/admin/delay?ms=200");
		assertThat(response.statusCode()).isEqualTo(200);
		assertThat(response.body()).isEqualTo("delay_ms=200");
		long start = System.nanoTime();
		assertThat(call("GET", "/a").statusCode()).isEqualTo(200);
		assertThat((System.nanoTime() - start) / 1_000_000).isGreaterThanOrEqualTo(200);
		call("POST", "/admin/delay?ms=0");

		response = call("POST", "/admin/fail?status=503");
		assertThat(response.body()).isEqualTo("fail_status=503");
		response = call("GET", "/a");
		assertThat(response.statusCode()).isEqualTo(503);
		assertThat(response.body()).isEqualTo("B[127.0.0.1][config=default] injected failure: 503");
		assertThat(call("GET", "/healthz").statusCode()).isEqualTo(200);
		call("POST", "/admin/fail?status=0");
		assertThat(call("GET", "/a").statusCode()).isEqualTo(200);

		for (String bad : List.of("/admin/fail?status=42", "/admin/fail", "/admin/delay?ms=-1", "/admin/delay?ms=x")) {
			assertThat(call("POST", bad).statusCode()).as(bad).isEqualTo(400);
		}
		assertThat(call("GET", "/admin/delay?ms=5").statusCode()).isEqualTo(405);
	}

}
