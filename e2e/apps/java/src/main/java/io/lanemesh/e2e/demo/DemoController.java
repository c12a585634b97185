package io.lanemesh.e2e.demo;

import java.io.ByteArrayOutputStream;
import java.net.URI;
import java.net.http.HttpClient;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.Arrays;
import java.util.concurrent.atomic.AtomicInteger;

import jakarta.servlet.http.HttpServletRequest;

import org.springframework.beans.factory.annotation.Value;
import org.springframework.http.MediaType;
import org.springframework.http.ResponseEntity;
import org.springframework.http.client.JdkClientHttpRequestFactory;
import org.springframework.util.StreamUtils;
import org.springframework.web.bind.annotation.GetMapping;
import org.springframework.web.bind.annotation.PostMapping;
import org.springframework.web.bind.annotation.RequestParam;
import org.springframework.web.bind.annotation.RestController;
import org.springframework.web.client.RestClient;
import org.springframework.web.client.RestClientException;

@RestController
public class DemoController {

	private static final Duration DOWNSTREAM_TIMEOUT = Duration.ofSeconds(10);

	private static final int ERROR_BODY_LIMIT = 200;

	private static final MediaType TEXT = new MediaType("text", "plain", StandardCharsets.UTF_8);

	private final String name;

	private final String next;

	private final String config;

	private final String podIp;

	private final RestClient downstream;

	private final AtomicInteger delayMs = new AtomicInteger();

	private final AtomicInteger failStatus = new AtomicInteger();

	DemoController(@Value("${name:app}") String name, @Value("${next:}") String next,
			@Value("${config:default}") String config, @Value("${pod-ip:}") String podIp,
			@Value("${delay-ms:0}") int delayMs, @Value("${fail-status:0}") int failStatus,
			RestClient.Builder restClient) {
		this.name = name;
		this.next = next.replaceAll("/+$", "");
		this.config = config;
		this.podIp = podIp;
		if (delayMs < 0 || !validStatus(failStatus)) {
			throw new IllegalArgumentException("--delay-ms must be >= 0 and --fail-status 0 or in [200, 599]");
		}
		this.delayMs.set(delayMs);
		this.failStatus.set(failStatus);
		// Pooled keep-alive connections, HTTP/1.1 only (no h2c upgrade attempt), no redirects followed.
		HttpClient http = HttpClient.newBuilder()
			.version(HttpClient.Version.HTTP_1_1)
			.connectTimeout(DOWNSTREAM_TIMEOUT)
			.followRedirects(HttpClient.Redirect.NEVER)
			.build();
		JdkClientHttpRequestFactory requestFactory = new JdkClientHttpRequestFactory(http);
		requestFactory.setReadTimeout(DOWNSTREAM_TIMEOUT);
		this.downstream = restClient.requestFactory(requestFactory).build();
	}

	/** The chain paths: answer with our name and, with --next, what the next service answers. */
	@GetMapping({ "/", "/a", "/b", "/c" })
	ResponseEntity<byte[]> chain(HttpServletRequest request) throws InterruptedException {
		String me = ident(request) + "[config=" + this.config + "]";
		int delay = this.delayMs.get();
		if (delay > 0) {
			Thread.sleep(delay);
		}
		int fail = this.failStatus.get();
		if (fail != 0) {
			return text(fail, me + " injected failure: " + fail);
		}
		if (this.next.isEmpty()) {
			return text(200, me);
		}
		// A fresh request: nothing of the incoming one (no lane header, no traceparent, no
		// baggage) is forwarded.
		URI url = URI.create(this.next + request.getRequestURI());
		Answer answer;
		try {
			answer = this.downstream.get()
				.uri(url)
				.exchange((req, res) -> new Answer(res.getStatusCode().value(),
						StreamUtils.copyToByteArray(res.getBody())));
		}
		catch (RestClientException ex) {
			// The I/O exception the client threw, e.g. java.net.ConnectException.
			Throwable cause = (ex.getCause() != null) ? ex.getCause() : ex;
			return text(502, me + " -> error: GET " + url + ": " + cause);
		}
		if (answer.status() < 200 || answer.status() > 299) {
			byte[] head = Arrays.copyOf(answer.body(), Math.min(answer.body().length, ERROR_BODY_LIMIT));
			return text(502, me + " -> error: " + answer.status() + " ", head);
		}
		return text(200, me + " -> ", answer.body());
	}

	@GetMapping("/greet1a")
	ResponseEntity<byte[]> greet1a(HttpServletRequest request) {
		return text(200, ident(request) + " greet1a");
	}

	@GetMapping("/greet1b")
	ResponseEntity<byte[]> greet1b(HttpServletRequest request) {
		return text(200, ident(request) + " greet1b");
	}

	@GetMapping("/healthz")
	ResponseEntity<byte[]> healthz() {
		return text(200, "ok");
	}

	@PostMapping("/admin/delay")
	ResponseEntity<byte[]> setDelay(@RequestParam(name = "ms", required = false) String ms) {
		Integer value = parse(ms);
		if (value == null || value < 0) {
			return text(400, "ms must be 0 or an integer in [0, 2147483647]");
		}
		this.delayMs.set(value);
		return text(200, "delay_ms=" + value);
	}

	@PostMapping("/admin/fail")
	ResponseEntity<byte[]> setFail(@RequestParam(name = "status", required = false) String status) {
		Integer value = parse(status);
		if (value == null || !validStatus(value)) {
			return text(400, "status must be 0 or an integer in [200, 599]");
		}
		this.failStatus.set(value);
		return text(200, "fail_status=" + value);
	}

	private String ident(HttpServletRequest request) {
		return this.name + "[" + (this.podIp.isEmpty() ? request.getLocalAddr() : this.podIp) + "]";
	}

	private static boolean validStatus(int status) {
		return status == 0 || (status >= 200 && status <= 599);
	}

	private static Integer parse(String value) {
		try {
			return (value == null) ? null : Integer.valueOf(value);
		}
		catch (NumberFormatException ex) {
			return null;
		}
	}

	private static ResponseEntity<byte[]> text(int status, String body) {
		return text(status, body, new byte[0]);
	}

	/** Bytes pass through unchanged, like in the Go and Python apps. */
	private static ResponseEntity<byte[]> text(int status, String prefix, byte[] rest) {
		ByteArrayOutputStream out = new ByteArrayOutputStream();
		out.writeBytes(prefix.getBytes(StandardCharsets.UTF_8));
		out.writeBytes(rest);
		return ResponseEntity.status(status).contentType(TEXT).body(out.toByteArray());
	}

	private record Answer(int status, byte[] body) {
	}

}
