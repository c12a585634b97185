package io.lanemesh.e2e.demo;

import org.junit.jupiter.api.Test;

import org.springframework.beans.factory.annotation.Autowired;
import org.springframework.boot.test.autoconfigure.web.servlet.AutoConfigureMockMvc;
import org.springframework.boot.test.context.SpringBootTest;
import org.springframework.test.web.servlet.MockMvc;

import static org.hamcrest.Matchers.startsWith;
import static org.springframework.test.web.servlet.request.MockMvcRequestBuilders.get;
import static org.springframework.test.web.servlet.result.MockMvcResultMatchers.content;
import static org.springframework.test.web.servlet.result.MockMvcResultMatchers.status;

/** Nothing listens on port 1: the connection error shows in a 502. */
@SpringBootTest(properties = { "name=A", "next=http://127.0.0.1:1", "pod-ip=10.1.2.3", "config=v2" })
@AutoConfigureMockMvc
class UnreachableDownstreamTests {

	@Autowired
	MockMvc mvc;

	@Test
	void connectionErrorAnswers502() throws Exception {
		this.mvc.perform(get("/a"))
			.andExpect(status().isBadGateway())
			.andExpect(content().string(startsWith("A[10.1.2.3][config=v2] -> error: GET http://127.0.0.1:1/a: java.net.ConnectException")));
	}

}
