package io.lanemesh.e2e.demo;

import java.util.concurrent.atomic.AtomicReference;

import org.springframework.boot.SpringApplication;
import org.springframework.boot.autoconfigure.SpringBootApplication;
import org.springframework.context.ConfigurableApplicationContext;

import sun.misc.Signal;

/**
 * The Java demo app of the lanemesh e2e scenarios: answers with its name and, when --next is set,
 * the answer of the next service in the chain. Flags: --name, --port, --next, --config, --delay-ms,
 * --fail-status (or env NAME, PORT, NEXT, CONFIG, DELAY_MS, FAIL_STATUS); see ../README.md.
 */
@SpringBootApplication
public class DemoApplication {

	public static void main(String[] args) {
		// Kubernetes stops a pod with SIGTERM. The JVM's own handler would run the shutdown hooks
		// (Spring's graceful shutdown) and then exit with 143; close the context ourselves (in-flight
		// requests get up to 5 s, see application.properties) and exit 0 instead.
		AtomicReference<ConfigurableApplicationContext> context = new AtomicReference<>();
		Signal.handle(new Signal("TERM"), signal -> {
			ConfigurableApplicationContext ctx = context.get();
			System.exit(ctx == null ? 0 : SpringApplication.exit(ctx));
		});
		context.set(SpringApplication.run(DemoApplication.class, args));
	}

}
